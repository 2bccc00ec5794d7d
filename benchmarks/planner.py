"""Planner benchmarks.

1. Step breakdown of the LLaVA planner on the tiny random checkpoint (CPU or GPU): prompt build
   (template rendering, chat template, processor incl. image preprocessing and the context fit),
   generate, parse — median ms over ``--steps`` planner steps.
2. Constrained vs unconstrained decoding (xgrammar token masks vs none): generation ms per token
   of each, measured in this one run, and their ratio.
3. ``--real-size`` (needs CUDA; imports only torch + transformers): LLaVA-1.5-7B's architecture
   (CLIP ViT-L/14-336 + a 7B Llama, ``LlavaConfig`` defaults) with random fp16 weights; greedy
   decode tokens/s at batch 1 after a 576-image-token + text prefill, against the memory-bandwidth
   floor (every decode step reads all weights once: measured device-copy bandwidth / weight bytes).

    python -m benchmarks.planner [--steps 10] [--json out.json]
    python -m benchmarks.planner --real-size-only [--compile] [--json out.json]   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any


def _tiny_setup() -> tuple[Any, Any, Any]:
    from pydantic import Field

    from visagent.config import load_config
    from visagent.planners.base import PlannerState
    from visagent.pool import ModelPool
    from visagent.tools.base import Prob, Region, Tool, ToolInput, ToolOutput

    class FindIn(ToolInput):
        image: str = Field(description="image id")
        labels: list[str] = Field(min_length=1, description="object names")
        threshold: Prob = 0.3

    class FindOut(ToolOutput):
        found: list[Region]

        def observation(self) -> str:
            return "; ".join(r.describe() for r in self.found)

    class Find(Tool):
        name = "find"
        description = "Find objects by name (benchmark stand-in for detect)."
        Input = FindIn
        Output = FindOut

        def run(self, inp: FindIn, ctx: Any) -> FindOut:
            return FindOut(found=[])

    class CountIn(ToolInput):
        image: str
        label: str

    class Count(Tool):
        name = "count"
        description = "Count objects of one name (benchmark stand-in)."
        Input = CountIn
        Output = FindOut

        def run(self, inp: CountIn, ctx: Any) -> FindOut:
            return FindOut(found=[])

    os.environ.setdefault("VISAGENT_CACHE_DIR", tempfile.mkdtemp(prefix="visagent-bench-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(profile="tiny")
    from visagent.media import MediaStore

    store = MediaStore()
    store.add("sample:coffee")
    state = PlannerState(
        question="How many cups are there?",
        media=store.infos(),
        steps=[],
        tools={"find": Find, "count": Count},
        images=store.image,
    )
    return config, ModelPool(), state


def tiny_breakdown(steps: int) -> dict[str, Any]:
    from visagent.planners.llava import LlavaPlanner

    config, pool, state = _tiny_setup()
    rows: dict[str, Any] = {}
    for constrained in (True, False):
        cfg = config.model_copy(update={"planner": config.planner.model_copy(update={"constrained": constrained, "max_new_tokens": 256})})
        planner = LlavaPlanner(cfg, pool=pool)
        try:
            planner.next(state)  # warm-up: load, grammar compiler
        except Exception:  # noqa: BLE001 - unconstrained random text need not parse
            pass
        timings = []
        for _ in range(steps):
            try:
                planner.next(state)
            except Exception:  # noqa: BLE001
                pass
            timings.append(dict(planner.last_timings) if planner.last_timings else None)
        timings = [t for t in timings if t]
        if not timings:  # unconstrained: parse fails each time, so time generate alone
            timings = _raw_generate(planner, state, steps)
        med = {k: statistics.median(t[k] for t in timings) for k in ("prompt_ms", "generate_ms", "parse_ms", "new_tokens")}
        med["ms_per_token"] = med["generate_ms"] / max(med["new_tokens"], 1)
        rows["constrained" if constrained else "unconstrained"] = med
    rows["constrained_overhead_ratio"] = rows["constrained"]["ms_per_token"] / rows["unconstrained"]["ms_per_token"]
    return rows


def _raw_generate(planner: Any, state: Any, steps: int) -> list[dict[str, float]]:
    """Prompt + generate timings without parsing (for text that is not an action)."""
    import torch

    from visagent.planners.llava import _to_hf
    from visagent.planners.prompting import build_messages

    out = []
    with planner.models.use("planner") as bundle:
        for _ in range(steps):
            t0 = time.perf_counter()
            msgs = build_messages(state, planner.options)
            prompt = bundle.processor.apply_chat_template(_to_hf(msgs), add_generation_prompt=True, tokenize=False)
            inputs = bundle.processor(images=[state.image("img_0")], text=prompt, return_tensors="pt")
            t1 = time.perf_counter()
            with torch.inference_mode():
                ids = bundle.model.generate(**inputs, max_new_tokens=planner.config.planner.max_new_tokens, do_sample=False)
            t2 = time.perf_counter()
            new = ids.shape[1] - inputs["input_ids"].shape[1]
            out.append({"prompt_ms": (t1 - t0) * 1000, "generate_ms": (t2 - t1) * 1000, "parse_ms": 0.0, "new_tokens": float(new)})
    return out


def real_size(new_tokens: int = 128, compile_decode: bool = False) -> dict[str, Any]:
    """LLaVA-1.5-7B architecture, random fp16 weights, greedy decode tokens/s vs bandwidth floor.

    ``compile_decode``: also time a static KV cache, with which transformers compiles the decode
    step (``torch.compile``, CUDA graphs), removing eager decoding's per-kernel launch cost."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    assert torch.cuda.is_available(), "--real-size needs a CUDA GPU"
    dev = torch.device("cuda")
    # bandwidth: device-to-device copy of 4 GiB (bytes read + written)
    a = torch.empty(2**31, dtype=torch.float16, device=dev)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 10
    for _ in range(reps):
        b.copy_(a)
    torch.cuda.synchronize()
    bandwidth = 2 * a.numel() * a.element_size() * reps / (time.perf_counter() - t)
    del a, b
    torch.cuda.empty_cache()

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=4096)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000, vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576)
    torch.manual_seed(0)
    t = time.perf_counter()
    torch.set_default_dtype(torch.float16)
    with dev:
        model = LlavaForConditionalGeneration(config).eval()
    torch.set_default_dtype(torch.float32)
    build_s = time.perf_counter() - t
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    lm_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "vision_tower" not in n)
    ids = torch.cat([torch.tensor([[1]]), torch.full((1, 576), 32000), torch.randint(3, 31000, (1, 100))], dim=1).to(dev)
    pixels = torch.randn(1, 3, 336, 336, dtype=torch.float16, device=dev)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}

    def timed(n: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**kwargs, max_new_tokens=n, min_new_tokens=n)
        torch.cuda.synchronize()
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - t0

    timed(4)  # warm-up
    prefill = min(timed(1) for _ in range(3))
    full = min(timed(new_tokens + 1) for _ in range(2))
    decode_s = (full - prefill) / new_tokens
    floor_tps = bandwidth / lm_bytes
    compiled: dict[str, Any] = {}
    if compile_decode:
        # a static cache makes transformers compile the decode step (generation_config.compile_config)
        kwargs["cache_implementation"] = "static"
        t = time.perf_counter()
        timed(4)
        timed(new_tokens + 1)
        compiled["compile_warmup_s"] = round(time.perf_counter() - t, 1)
        c_prefill = min(timed(1) for _ in range(3))
        c_full = min(timed(new_tokens + 1) for _ in range(2))
        c_decode = (c_full - c_prefill) / new_tokens
        compiled["compiled_decode_tokens_per_s"] = round(1 / c_decode, 1)
        compiled["compiled_fraction_of_floor"] = round((1 / c_decode) / floor_tps, 3)
    return {
        "device": torch.cuda.get_device_name(0),
        "params_b": round(weight_bytes / 2 / 1e9, 3),
        "weight_gb": round(weight_bytes / 1e9, 2),
        "language_model_gb": round(lm_bytes / 1e9, 2),
        "build_s": round(build_s, 1),
        "copy_bandwidth_tb_s": round(bandwidth / 1e12, 2),
        "prefill_ms": round(prefill * 1000, 1),
        "decode_ms_per_token": round(decode_s * 1000, 2),
        "decode_tokens_per_s": round(1 / decode_s, 1),
        "floor_tokens_per_s": round(floor_tps, 1),
        "fraction_of_floor": round((1 / decode_s) / floor_tps, 3),
        **compiled,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed planner steps per mode")
    ap.add_argument("--real-size", action="store_true", help="also run the real-size GPU measurement")
    ap.add_argument("--real-size-only", action="store_true", help="only the real-size GPU measurement")
    ap.add_argument("--compile", action="store_true", help="real size: also time static cache + torch.compile")
    ap.add_argument("--json", dest="json_path", help="write the results as JSON")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    if not args.real_size_only:
        rows = tiny_breakdown(args.steps)
        results["tiny"] = rows
        print(f"tiny LLaVA planner step (median of {args.steps}, ms)")
        print(f"{'mode':14s} {'prompt':>8s} {'generate':>9s} {'parse':>7s} {'tokens':>7s} {'ms/token':>9s}")
        for mode in ("constrained", "unconstrained"):
            r = rows[mode]
            print(f"{mode:14s} {r['prompt_ms']:8.1f} {r['generate_ms']:9.1f} {r['parse_ms']:7.2f} {r['new_tokens']:7.0f} {r['ms_per_token']:9.2f}")
        print(f"constrained / unconstrained ms per token: {rows['constrained_overhead_ratio']:.2f}x")
    if args.real_size or args.real_size_only:
        r = real_size(compile_decode=args.compile)
        results["real_size"] = r
        print("real-size LLaVA-1.5-7B architecture (random fp16 weights), batch 1, greedy")
        for k, v in r.items():
            print(f"  {k:22s} {v}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
