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
- fields named ``image`` / ``video`` hold one of the run's media ids; evidence holds known ids
  (up to ``enum_ids`` of them listed exactly; beyond that, any id of the right shape).

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


def _bound(node: Any, limits: SchemaLimits, media: Mapping[str, list[str]], key: str | None = None) -> Any:
    """Return a copy of a JSON schema node with lengths, items and numbers bounded."""
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in {"title", "description", "examples", "default", "format"}}
    if key in media and media[key] and node.get("type") == "string" and "enum" not in node:
        return {"enum": list(media[key])}
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
        node["maxItems"] = min(int(node.get("maxItems", limits.array_items)), limits.array_items)
        if "items" in node:
            node["items"] = _bound(node["items"], limits, media, None)
        if "prefixItems" in node:
            node["prefixItems"] = [_bound(s, limits, media, None) for s in node["prefixItems"]]
    elif typ == "object" or "properties" in node:
        props = node.get("properties", {})
        node["properties"] = {k: _bound(v, limits, media, k) for k, v in props.items()}
        node["additionalProperties"] = False
    return node


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
) -> dict[str, Any]:
    """The JSON schema of one planner action over ``tools`` ({name: Tool class or instance}).

    ``media``: ``{"image": [ids], "video": [ids]}`` to restrict media-id fields; ``known_ids``:
    the region / observation ids a final answer may cite (at least one of them when
    ``require_evidence`` and there are any).
    """
    limits = limits or SchemaLimits()
    media = media or {}
    thought = _string_schema(limits.thought_chars, limits.charset)
    options: list[dict[str, Any]] = []
    for name, tool in tools.items():
        options.append(
            {
                "type": "object",
                "properties": {
                    "thought": thought,
                    "tool": {"const": name},
                    "args": tool_args_schema(tool.input_schema(), limits, media),
                },
                "required": ["thought", "tool", "args"],
                "additionalProperties": False,
            }
        )
    if allow_final:
        citable = list(dict.fromkeys(known_ids))
        if not citable:
            evidence: dict[str, Any] = {"type": "array", "maxItems": 0}
        elif len(citable) <= limits.enum_ids:
            evidence = {"type": "array", "items": {"enum": citable}, "maxItems": min(limits.evidence_items, len(citable))}
        else:  # too many to list (grammar size): the id shape; the loop rejects unknown ones
            evidence = {"type": "array", "items": {"type": "string", "pattern": ids.citable_json_pattern()}, "maxItems": limits.evidence_items}
        if citable and require_evidence:
            evidence["minItems"] = 1
        options.append(
            {
                "type": "object",
                "properties": {
                    "thought": thought,
                    "final": _string_schema(limits.final_chars, limits.charset),
                    "evidence": evidence,
                },
                "required": ["thought", "final", "evidence"],
                "additionalProperties": False,
            }
        )
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
