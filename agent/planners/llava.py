"""The LLaVA planner (``--planner llava``, the default): a local vision-language model chooses
each next action from the images, the question and the observations so far.

The model is the ``planner`` family of the configuration (``llava-hf/llava-1.5-7b-hf`` by
default; LLaVA-NeXT and LLaVA-OneVision checkpoints load the same way through
``AutoModelForImageTextToText`` and their processor's chat template), served by the agent's
ModelPool. Each step:

1. prompt build: ``prompting.fit_messages`` renders ``prompts/*.j2`` and shortens older
   observations until prompt tokens (images included) + ``max_new_tokens`` fit the context;
2. generate: greedy by default (``planner.temperature: 0``); with ``planner.constrained: true``
   (default) xgrammar masks every token so the text is one action valid under the action schema
   (``constrain.action_schema``: a known tool with arguments matching its Input schema, or a
   final answer citing known ids);
3. parse: the JSON text becomes an ``Action`` / ``Final``; the raw text and the number of
   generated tokens go into the trace (``PlannerStep.raw`` / ``tokens``).

Every step seeds torch with ``planner.seed + k`` where k is the index its ``PlannerStep`` gets in
the trace (``trace.meta.seed`` records ``planner.seed``), so sampled runs replay.
Planner options (``config.planner``, typed in ``config.LlavaOptions``): ``max_new_tokens``, ``temperature``,
``top_p``, ``seed``, ``constrained``, ``max_images`` (4), ``examples`` (true), ``charset``
(``ascii`` | ``unicode``), ``format`` (``json`` | ``llava_plus`` for LLaVA-Plus checkpoints,
unconstrained), ``cache_implementation`` (``static`` on a GPU: transformers compiles the decode
step; 3.5x faster decoding of LLaVA-1.5-7B on an H100 after ~80 s of compilation).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from visagent.errors import PlannerOutputError, UsageError
from visagent.grounding import final_rules
from visagent.planners import register_planner
from visagent.planners.base import PlannerState
from visagent.planners.constrain import SchemaLimits, action_schema, grammar_cache
from visagent.planners.parsing import decision_from_dict, parse_action
from visagent.planners.prompting import Message, PromptOptions, fit_messages
from visagent.types import PlannerReply

log = logging.getLogger(__name__)

FAMILY = "planner"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_json_text(raw: str) -> Any:
    """Parse generated action JSON (control characters inside strings tolerated and replaced)."""
    decoder = json.JSONDecoder(strict=False)
    start = raw.find("{")
    if start == -1:
        return parse_action(raw)  # raises a PlannerOutputError naming the problem
    try:
        obj, _ = decoder.raw_decode(raw, start)
    except json.JSONDecodeError:
        return parse_action(raw)
    if not isinstance(obj, dict):
        return parse_action(raw)
    for key in ("thought", "final"):
        if isinstance(obj.get(key), str):
            obj[key] = _CONTROL.sub(" ", obj[key])
    return decision_from_dict(obj, raw=raw)




class LlavaPlanner:
    """A transformers vision-language model as planner (see module docstring)."""

    name = "llava"

    def __init__(self, config: Any, pool: Any = None, fmt: str | None = None) -> None:
        from visagent.context import Models
        from visagent.pool import ModelPool

        self.config = config
        self.pool = pool if pool is not None else ModelPool(config.pool.budget_bytes)
        self.models = Models(config, self.pool)
        pc = config.planner
        opts = pc.llava()
        self.format = fmt or opts.format
        if self.format not in ("json", "llava_plus"):
            raise UsageError(f"planner.format must be json or llava_plus, got '{self.format}'")
        self.options = PromptOptions(examples=opts.examples, max_images=opts.max_images)
        self.limits = SchemaLimits(charset=opts.charset)
        self.constrained = bool(pc.constrained) and self.format == "json"
        #: e.g. "static": a static KV cache, with which transformers compiles the decode step
        self.cache_implementation = opts.cache_implementation
        #: timings of the last step in ms: prompt, generate, parse (for benchmarks)
        self.last_timings: dict[str, float] = {}
        self.name = f"llava:{config.model(FAMILY).checkpoint}"

    # -- one step ----------------------------------------------------------------------------
    def next(self, state: PlannerState) -> PlannerReply:
        import torch

        pc = self.config.planner
        if self.format == "llava_plus":
            from visagent.planners.llava_plus import followup

            then = followup(list(state.steps), state.tools)
            if then is not None:  # grounding_dino+sam: its segmentation half, no generation needed
                return PlannerReply(decision=then, raw="", tokens=0)
        t0 = time.perf_counter()
        with self.models.use(FAMILY) as bundle:
            processor = bundle.processor
            budget = bundle.context_length - pc.max_new_tokens
            images_cache: dict[str, Any] = {}

            def pixels(messages: list[Message]) -> list[Any]:
                out = []
                for m in messages:
                    for part in m["content"]:
                        if part["type"] == "image":
                            if part["id"] not in images_cache:
                                images_cache[part["id"]] = state.image(part["id"])
                            out.append(images_cache[part["id"]])
                return out

            def encode(messages: list[Message]) -> dict[str, Any]:
                prompt = processor.apply_chat_template(_to_hf(messages), add_generation_prompt=True, tokenize=False)
                imgs = pixels(messages)
                return processor(images=imgs or None, text=prompt, return_tensors="pt")

            last: list[Any] = [None, None]  # the messages counted last and their encoding

            def count(messages: list[Message]) -> int:
                last[:] = [messages, encode(messages)]
                return int(last[1]["input_ids"].shape[1])

            if self.format == "llava_plus":  # LLaVA-Plus's own conversation (planners/llava_plus_prompt.py)
                from visagent.errors import RunError
                from visagent.planners.llava_plus_prompt import build_llava_plus_messages

                messages, level = build_llava_plus_messages(state, self.options.max_images), 0
                n_prompt = count(messages)
                if n_prompt > budget:
                    raise RunError(f"the LLaVA-Plus prompt needs {n_prompt} tokens, over the budget of {budget} (context minus max_new_tokens)")
            else:
                messages, level, n_prompt = fit_messages(state, count, budget, self.options)
            if level:
                log.info("planner prompt shortened to level %d (%d tokens)", level, n_prompt)
            assert last[0] is messages
            inputs = last[1]
            inputs = {k: (v.to(bundle.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
            if "pixel_values" in inputs and bundle.dtype is not None:
                inputs["pixel_values"] = inputs["pixel_values"].to(bundle.dtype)
            t1 = time.perf_counter()

            tok = bundle.tokenizer
            step_seed = int(pc.seed) + len(state.steps)
            gen: dict[str, Any] = {
                "max_new_tokens": pc.max_new_tokens,
                "do_sample": pc.temperature > 0,
                "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            }
            if self.cache_implementation:
                gen["cache_implementation"] = self.cache_implementation
            if pc.temperature > 0:
                gen.update(temperature=pc.temperature, top_p=pc.top_p)
            else:  # greedy: unset sampling defaults a checkpoint's generation config may carry
                gen.update(temperature=None, top_p=None, top_k=None)
            schema = None
            if self.constrained:
                allow_final, require_evidence = final_rules(state, state.citable)
                schema = action_schema(
                    state.tools,
                    known_ids=state.citable,
                    allow_final=allow_final or not state.tools,
                    require_evidence=require_evidence,
                    media={
                        "image": [m.id for m in state.media if m.kind == "image"],
                        "video": [m.id for m in state.media if m.kind == "video"],
                    },
                    limits=self.limits,
                    max_bytes=pc.max_new_tokens - 1,  # every action ends within the budget (and its stop token)
                )
                gen["logits_processor"] = [grammar_cache(bundle).logits_processor(schema)]
            torch.manual_seed(step_seed)
            with torch.inference_mode():
                out = bundle.model.generate(**inputs, **gen)
            new = out[0, inputs["input_ids"].shape[1] :]
            raw = tok.decode(new, skip_special_tokens=True).strip()
            n_new = int(new.shape[0])
            t2 = time.perf_counter()
            sizes = {m.id: (m.width, m.height) for m in state.media if m.kind == "image"}
        try:
            if self.format == "llava_plus":
                from visagent.planners.llava_plus import parse_llava_plus

                decision = parse_llava_plus(raw, sizes=sizes, image=next(iter(sizes), "img_0"), tools=state.tools)
            else:
                decision = parse_json_text(raw)
        except PlannerOutputError as exc:
            if self.constrained and n_new >= pc.max_new_tokens:
                raise PlannerOutputError(
                    f"the action was cut at max_new_tokens={pc.max_new_tokens}; raise planner.max_new_tokens", raw=raw
                ) from None
            exc.raw = exc.raw or raw
            raise
        t3 = time.perf_counter()
        self.last_timings = {
            "prompt_ms": (t1 - t0) * 1000,
            "generate_ms": (t2 - t1) * 1000,
            "parse_ms": (t3 - t2) * 1000,
            "prompt_tokens": float(n_prompt),
            "new_tokens": float(n_new),
            "level": float(level),
            "seed": float(step_seed),
        }
        return PlannerReply(decision=decision, raw=raw, tokens=n_new)


def _to_hf(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages -> the processor chat-template format (``{"type": "image"}`` parts)."""
    out = []
    for m in messages:
        parts = [{"type": "image"} if p["type"] == "image" else {"type": "text", "text": p["text"]} for p in m["content"]]
        out.append({"role": m["role"], "content": parts})
    return out


@register_planner("llava")
def make_llava_planner(config: Any, **kwargs: Any) -> LlavaPlanner:
    """``pool=``: the agent's ModelPool (a private one otherwise); ``format=``: json | llava_plus."""
    return LlavaPlanner(config, pool=kwargs.get("pool"), fmt=kwargs.get("format"))
