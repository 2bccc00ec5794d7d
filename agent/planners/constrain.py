"""Constrained decoding: the planner model can only emit a valid action.

The action schema (``action_schema``) is a JSON schema with one alternative per tool,
``{"thought": str, "tool": <const name>, "args": <the tool's Input schema>}``, plus the final
answer ``{"thought": str, "final": str, "evidence": [<known ids>]}``. Tool Input schemas are
taken from ``Tool.input_schema()`` (pydantic's ``model_json_schema``), ``$ref``s inlined, and
bounded so that a generation always ends within the token budget:

- strings: at most ``limits.string_chars`` characters (``thought``: ``thought_chars``, ``final``:
  ``final_chars``) of printable ASCII without quotes/backslashes (``charset="ascii"``, default) or
  of any character but control characters (``charset="unicode"``);
- arrays: at most ``limits.array_items`` items (or the schema's own ``maxItems``);
- numbers without bounds: within +-``limits.number_bound``;
- fields named ``image`` / ``video`` (``images``: a list) hold only ids of that kind that exist
  in the run; a tool whose required media field has none (an image tool in a video-only run, before
  ``video_frames`` registered frames) is not on offer; evidence holds known ids (up to
  ``enum_ids`` of them listed exactly; beyond that, any id of the right shape);
- with ``max_bytes`` (the planner passes ``max_new_tokens``), each alternative's bounds shrink
  until its longest JSON (``max_chars``) fits: every token is at least one byte, so an action
  always ends within the budget.

Decoding is enforced with xgrammar (``GrammarCompiler.compile_json_schema`` and its transformers
``LogitsProcessor``): it compiles JSON schemas (anyOf, const, enum, min/max for numbers, lengths,
patterns) to a token mask over the model's own vocabulary and runs on transformers 5.
lm-format-enforcer's transformers integration does not import on transformers 5 and it enforces
neither numeric bounds nor digit counts, so an action could be cut at the token budget.
Pydantic validators that JSON schema cannot express (e.g. "boxes or points") are still checked by
the loop and come back as an argument error.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from visagent import ids

ASCII_CHARS = r"[ !#-\[\]-~]"
UNICODE_CHARS = r"[^\"\\\x00-\x1f\x7f]"
#: the shape of a citable id, used instead of the exact list when more than ``enum_ids`` are known


@dataclass(frozen=True)
class SchemaLimits:
    """Bounds that keep a constrained action finite (characters, items, absolute number value)."""

    thought_chars: int = 160
    final_chars: int = 200
    string_chars: int = 48
    array_items: int = 8
    number_bound: float = 100_000.0
    evidence_items: int = 8
    enum_ids: int = 64
    charset: str = "ascii"


def _string_schema(n: int, charset: str, least: int = 0) -> dict[str, Any]:
    """Strings of ``least``..``n`` characters of ``charset``, as a pattern."""
    chars = ASCII_CHARS if charset == "ascii" else UNICODE_CHARS
    n = max(n, least)
    # xgrammar accepts repetition counts up to 128: longer bounds are chained runs
    runs, left, need = [], n, least
    while left > 0:
        size = min(left, 100)
        lo = min(need, size)
        runs.append(f"{chars}{{{lo},{size}}}")
        left -= size
        need -= lo
    return {"type": "string", "pattern": "^" + "".join(runs) + "$"}


def _inline_refs(node: Any, defs: Mapping[str, Any], depth: int = 0) -> Any:
    if depth > 20:
        raise ValueError("tool input schema nests $refs too deeply to constrain")
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            target = copy.deepcopy(defs[name])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return _inline_refs({**target, **extra}, defs, depth + 1)
        return {k: _inline_refs(v, defs, depth + 1) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs, depth + 1) for v in node]
    return node


class NoMedia(ValueError):
    """A required media-id field has no media of its kind in the run (the tool is not on offer)."""


def _media_kind(key: str | None, media: Mapping[str, list[str]]) -> tuple[str | None, bool]:
    """(``image`` / ``video`` or None, whether the field is a list of ids: ``images``)."""
    if key is None:
        return None, False
    if key in media:
        return key, False
    if key.endswith("s") and key[:-1] in media:
        return key[:-1], True
    return None, False


def _bound(node: Any, limits: SchemaLimits, media: Mapping[str, list[str]], key: str | None = None) -> Any:
    """Return a copy of a JSON schema node with lengths, items and numbers bounded.

    A field named after a media kind of ``media`` (``image``, ``video``; ``images``: a list) holds
    only ids of that kind that exist; with none of them, ``NoMedia`` (a required field) drops the
    tool, an optional one is left out."""
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in {"title", "description", "examples", "default", "format"}}
    kind, plural = _media_kind(key, media)
    if kind is not None:
        if not media[kind]:
            raise NoMedia(f"no {kind} in the run")
        if not plural and node.get("type") == "string" and "enum" not in node:
            return {"enum": list(media[kind])}
        if plural and node.get("type") == "array":
            return {"type": "array", "items": {"enum": list(media[kind])}, "minItems": min(1, int(node.get("minItems", 0))),
                    "maxItems": min(limits.array_items, len(media[kind]))}
        if "anyOf" in node or "oneOf" in node:  # Optional[str] / Optional[list[str]]: keep the id alternatives
            alts = [a for a in node.get("anyOf", node.get("oneOf", [])) if a.get("type") != "null"]
            if len(alts) == 1:
                return _bound(alts[0], limits, media, key)
    for union in ("anyOf", "oneOf"):
        if union in node:
            node["anyOf"] = [_bound(s, limits, media, key) for s in node.pop(union)]
    if "allOf" in node:
        node["allOf"] = [_bound(s, limits, media, key) for s in node["allOf"]]
    typ = node.get("type")
    if typ == "string" and "enum" not in node and "const" not in node:
        n = min(int(node.get("maxLength", limits.string_chars)), limits.string_chars)
        if "pattern" in node:  # keep the tool's own pattern; bound its length
            node["maxLength"] = n
            node.pop("minLength", None)
        else:
            node = _string_schema(n, limits.charset, int(node.get("minLength", 0)))
    elif typ in ("number", "integer"):
        b = limits.number_bound
        if "minimum" not in node and "exclusiveMinimum" not in node:
            node["minimum"] = -b
        if "maximum" not in node and "exclusiveMaximum" not in node:
            node["maximum"] = b
    elif typ == "array":
        node["maxItems"] = max(int(node.get("minItems", 0)), min(int(node.get("maxItems", limits.array_items)), limits.array_items))
        if "items" in node:
            node["items"] = _bound(node["items"], limits, media, None)
        if "prefixItems" in node:
            node["prefixItems"] = [_bound(s, limits, media, None) for s in node["prefixItems"]]
    elif typ == "object" or "properties" in node:
        props = node.get("properties", {})
        required = set(node.get("required", []))
        bounded = {}
        for k, v in props.items():
            try:
                bounded[k] = _bound(v, limits, media, k)
            except NoMedia:
                if k in required:
                    raise
        node["properties"] = bounded
        node["additionalProperties"] = False
    return node


def max_chars(node: Any, char_bytes: int = 1) -> float:
    """The longest compact JSON (``", "`` / ``": "`` separators, as xgrammar writes it) that a
    bounded schema admits, in bytes (``char_bytes`` per string character); inf when unbounded.
    With a byte-level tokenizer every token is at least one byte, so a schema whose ``max_chars``
    fits ``max_new_tokens`` always ends within the budget."""
    import math
    import re

    if not isinstance(node, dict):
        return math.inf
    if "const" in node:
        return len(json.dumps(node["const"]))
    if "enum" in node:
        return max((len(json.dumps(v)) for v in node["enum"]), default=0)
    if "anyOf" in node:
        return max((max_chars(a, char_bytes) for a in node["anyOf"]), default=0)
    typ = node.get("type")
    if isinstance(typ, list):
        return max(max_chars({**node, "type": t}, char_bytes) for t in typ)
    if typ == "string":
        if "maxLength" in node:
            return 2 + int(node["maxLength"]) * char_bytes
        runs = re.findall(r"\{(\d+),(\d+)\}", node.get("pattern", ""))
        if node.get("pattern", "").startswith("^") and runs:
            return 2 + sum(int(hi) for _, hi in runs) * char_bytes
        return math.inf
    if typ in ("number", "integer"):
        lo, hi = node.get("minimum", node.get("exclusiveMinimum")), node.get("maximum", node.get("exclusiveMaximum"))
        if lo is None or hi is None:
            return math.inf
        digits = max(len(f"{abs(float(lo)):.0f}"), len(f"{abs(float(hi)):.0f}")) + 1
        return digits + (0 if typ == "integer" else 8)  # sign, point and xgrammar's 6 fraction digits
    if typ == "boolean":
        return 5
    if typ == "null":
        return 4
    if typ == "array":
        n = node.get("maxItems")
        if n is None:
            return math.inf
        items = [max_chars(p, char_bytes) for p in node.get("prefixItems", [])]
        rest = max(0, int(n) - len(items))
        if rest:
            items += [max_chars(node.get("items", {}), char_bytes)] * rest
        return 2 + sum(items) + 2 * max(0, len(items) - 1)
    if typ == "object" or "properties" in node:
        props = node.get("properties", {})
        if node.get("additionalProperties", True) is not False:
            return math.inf
        parts = [len(json.dumps(k)) + 2 + max_chars(v, char_bytes) for k, v in props.items()]
        return 2 + sum(parts) + 2 * max(0, len(parts) - 1)
    return math.inf


#: how far the bounds shrink to fit a token budget (factors of the configured limits)
_SCALES = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05, 0.0)


def _scaled(limits: SchemaLimits, f: float) -> SchemaLimits:
    return dataclasses.replace(
        limits,
        thought_chars=max(4, int(limits.thought_chars * f)),
        final_chars=max(8, int(limits.final_chars * f)),
        string_chars=max(4, int(limits.string_chars * f)),
        array_items=max(1, int(limits.array_items * f)),
        evidence_items=max(1, int(limits.evidence_items * f)),
    )


def _fitted(build: Any, limits: SchemaLimits, budget: int | None) -> dict[str, Any] | None:
    """``build(limits)`` at the largest scale whose ``max_chars`` fits ``budget`` (None: none fits)."""
    if budget is None:
        return build(limits)
    char_bytes = 1 if limits.charset == "ascii" else 4
    for f in _SCALES:
        option = build(_scaled(limits, f) if f < 1.0 else limits)
        if max_chars(option, char_bytes) <= budget:
            return option
    return None


def tool_args_schema(input_schema: Mapping[str, Any], limits: SchemaLimits, media: Mapping[str, list[str]]) -> dict[str, Any]:
    """A tool's Input JSON schema, refs inlined and bounded (see module docstring)."""
    defs = input_schema.get("$defs", {})
    inlined = _inline_refs(dict(input_schema), defs)
    out = _bound(inlined, limits, media)
    out.setdefault("type", "object")
    return out


def action_schema(
    tools: Mapping[str, Any],
    *,
    known_ids: Iterable[str] = (),
    media: Mapping[str, list[str]] | None = None,
    limits: SchemaLimits | None = None,
    allow_final: bool = True,
    require_evidence: bool = False,
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """The JSON schema of one planner action over ``tools`` ({name: Tool class or instance}).

    ``media``: ``{"image": [ids], "video": [ids]}`` to restrict media-id fields (a tool whose
    required media field has no id of its kind is left out); ``known_ids``: the region /
    observation ids a final answer may cite (at least one of them when ``require_evidence`` and
    there are any). ``max_bytes``: the token budget (``max_new_tokens``): each alternative's bounds
    shrink until its longest JSON fits (``max_chars``), so a generation always ends in time; an
    alternative that fits at no scale is left out.
    """
    limits = limits or SchemaLimits()
    media = media or {}
    options: list[dict[str, Any]] = []

    def tool_option(name: str, tool: Any) -> Any:
        def build(lim: SchemaLimits) -> dict[str, Any]:
            return {
                "type": "object",
                "properties": {
                    "thought": _string_schema(lim.thought_chars, lim.charset),
                    "tool": {"const": name},
                    "args": tool_args_schema(tool.input_schema(), lim, media),
                },
                "required": ["thought", "tool", "args"],
                "additionalProperties": False,
            }

        return build

    for name, tool in tools.items():
        try:
            option = _fitted(tool_option(name, tool), limits, max_bytes)
        except NoMedia:
            continue
        if option is not None:
            options.append(option)
    if allow_final:
        citable = list(dict.fromkeys(known_ids))

        def final_option(lim: SchemaLimits) -> dict[str, Any]:
            if not citable:
                evidence: dict[str, Any] = {"type": "array", "maxItems": 0}
            elif len(citable) <= lim.enum_ids:
                evidence = {"type": "array", "items": {"enum": citable}, "maxItems": min(lim.evidence_items, len(citable))}
            else:  # too many to list (grammar size): the id shape; the loop rejects unknown ones
                evidence = {"type": "array", "items": {"type": "string", "pattern": ids.citable_json_pattern()}, "maxItems": lim.evidence_items}
            if citable and require_evidence:
                evidence["minItems"] = 1
            return {
                "type": "object",
                "properties": {
                    "thought": _string_schema(lim.thought_chars, lim.charset),
                    "final": _string_schema(lim.final_chars, lim.charset, least=1 if max_bytes is not None else 0),
                    "evidence": evidence,
                },
                "required": ["thought", "final", "evidence"],
                "additionalProperties": False,
            }

        option = _fitted(final_option, limits, max_bytes) if max_bytes is not None else final_option(limits)
        options.append(option if option is not None else final_option(_scaled(limits, 0.0)))
    if not options:
        raise ValueError("no tools and no final answer: nothing to constrain to")
    return options[0] if len(options) == 1 else {"anyOf": options}


def validate_action(obj: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Errors of ``obj`` against ``schema`` (empty when valid), with the ``jsonschema`` package."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errs = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    return [f"{'/'.join(str(p) for p in e.path) or 'action'}: {e.message}" for e in errs]


class GrammarCache:
    """Per-tokenizer xgrammar state: ``TokenizerInfo`` and a ``GrammarCompiler`` (thread-safe)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        try:
            import xgrammar as xgr
        except ModuleNotFoundError:
            from visagent.errors import UsageError

            raise UsageError(
                "constrained decoding needs xgrammar: pip install 'visagent[constrained]' "
                "(or set planner.constrained: false)"
            ) from None

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._lock = threading.Lock()

    def logits_processor(self, schema: Mapping[str, Any]) -> Any:
        """A fresh transformers ``LogitsProcessor`` enforcing ``schema`` (one per generation)."""
        text = json.dumps(schema)
        with self._lock:
            grammar = self.compiler.compile_json_schema(text, any_whitespace=False, strict_mode=True)
        return self._xgr.contrib.hf.LogitsProcessor(grammar)


def grammar_cache(bundle: Any) -> GrammarCache:
    """The ``GrammarCache`` of a loaded planner bundle (built once, kept in ``bundle.info``)."""
    cache = bundle.info.get("grammar")
    if cache is None:
        tok = bundle.tokenizer
        config = bundle.model.config
        text_config = getattr(config, "text_config", config)
        vocab = int(getattr(text_config, "vocab_size", len(tok)))
        stops = [tok.eos_token_id] if tok.eos_token_id is not None else []
        cache = GrammarCache(tok, max(vocab, len(tok)), stops)
        bundle.info["grammar"] = cache
    return cache
