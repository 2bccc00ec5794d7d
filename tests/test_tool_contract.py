"""The shared contract, checked for every registered tool (``visagent.registry.load_builtin_tools``):
spec and schema, Input strictness and JSON round-trip, Output round-trip, observation length,
regions, model families.

Inputs and outputs are generated from the JSON schemas (a tool may give ``examples`` in its
Input's ``json_schema_extra`` when its validators need more than the schema says)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from visagent.config import DEFAULT_MODELS, TINY_MODELS
from visagent.registry import load_builtin_tools
from visagent.tools.base import OBSERVATION_LIMIT, Region, Tool, ToolInput, ToolOutput

TOOLS = load_builtin_tools()


def _resolve(prop: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        prop = root.get("$defs", {})[name]
    return prop


def example(prop: dict[str, Any], root: dict[str, Any], name: str = "", *, every: bool, n: int = 1, text: int = 0) -> Any:
    """A value that matches ``prop``. ``every``: fill optional fields too; ``n``: list length;
    ``text``: extra characters in free strings (to stress observation lengths)."""
    prop = _resolve(prop, root)
    if "examples" in prop and prop["examples"]:
        return prop["examples"][0]
    if "const" in prop:
        return prop["const"]
    if "enum" in prop:
        return prop["enum"][0]
    if "anyOf" in prop or "oneOf" in prop:
        options = [o for o in prop.get("anyOf", prop.get("oneOf", [])) if o.get("type") != "null"]
        return example(options[0], root, name, every=every, n=n, text=text) if options else None
    typ = prop.get("type")
    if isinstance(typ, list):
        typ = next(t for t in typ if t != "null")
    if typ == "object" or "properties" in prop:
        props = prop.get("properties", {})
        required = set(prop.get("required", []))
        return {
            key: example(sub, root, key, every=every, n=n, text=text)
            for key, sub in props.items()
            if every or key in required
        }
    if typ == "array":
        items = prop.get("items", {})
        if "prefixItems" in prop:
            return [example(p, root, name, every=every, n=n, text=text) for p in prop["prefixItems"]]
        count = max(n, int(prop.get("minItems", 1)))
        if "maxItems" in prop:
            count = min(count, int(prop["maxItems"]))
        if name in {"box", "bbox"} or prop.get("minItems") == 4:
            return [1.0, 2.0, 30.0, 40.0][: max(count, 4)]
        values = [example(items, root, name, every=every, n=n, text=text) for _ in range(count)]
        # distinct items (validators often reject duplicates)
        return [f"{v} {i}" if i and isinstance(v, str) and not v.startswith(("img_", "det_", "vid_")) else v for i, v in enumerate(values)]
    if typ == "string":
        if name in {"image", "media"}:
            return "img_0"
        if name == "id" or name.endswith("_id"):
            return "det_1_0"
        if name == "video":
            return "vid_0"
        return "cup" + "x" * text
    if typ == "integer":
        low = prop.get("minimum", prop.get("exclusiveMinimum", 0))
        high = prop.get("maximum", low + 10)
        return int(min(max(low, 1), high))
    if typ == "number":
        low = prop.get("minimum", prop.get("exclusiveMinimum", 0.0))
        high = prop.get("maximum", prop.get("exclusiveMaximum", low + 1.0))
        return (float(low) + float(high)) / 2
    if typ == "boolean":
        return False
    return None


def valid_input(tool: type[Tool]) -> ToolInput:
    schema = tool.Input.model_json_schema()
    candidates = list(schema.get("examples", []))
    required = example(schema, schema, every=False)
    full = example(schema, schema, every=True)
    candidates += [required, full]
    # validators may need one optional argument, or reject combinations: add them one at a time
    candidates += [{**required, key: value} for key, value in full.items() if key not in required]
    errors = []
    for args in candidates:
        try:
            return tool.Input.model_validate(args)
        except Exception as exc:  # noqa: BLE001 - try the next candidate
            errors.append(f"{args}: {exc}")
    pytest.fail(f"no valid {tool.name} input could be generated from its schema; add examples: {errors}")


def outputs(tool: type[Tool]) -> list[ToolOutput]:
    schema = tool.Output.model_json_schema()
    made = []
    for kwargs in ({"every": False}, {"every": True}, {"every": True, "n": 60, "text": 300}):
        made.append(tool.Output.model_validate(example(schema, schema, **kwargs)))
    return made


def test_tools_are_registered():
    assert TOOLS, "no tools registered"
    for name in ("caption", "vqa", "detect", "count"):
        assert name in TOOLS


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_spec_and_schema(name):
    tool = TOOLS[name]
    assert tool.name == name
    spec = tool.spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["input_schema"]["type"] == "object" and spec["input_schema"]["properties"]
    assert len(tool.description) <= 300 and tool.description[0].isupper()
    assert tool.signature().startswith(f"{name}(")


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_input_round_trip_and_strictness(name):
    tool = TOOLS[name]
    inp = valid_input(tool)
    dumped = inp.model_dump_json()
    assert tool.Input.model_validate_json(dumped) == inp
    assert tool.Input.model_validate(json.loads(dumped)) == inp
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        tool.Input.model_validate({**json.loads(dumped), "not_an_argument": 1})


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_output_round_trip_observation_and_regions(name):
    tool = TOOLS[name]
    for out in outputs(tool):
        dumped = out.model_dump_json()
        again = tool.Output.model_validate_json(dumped)
        assert again == out and again.model_dump(mode="json") == json.loads(dumped)
        obs = out.observation()
        assert isinstance(obs, str) and obs.strip()
        assert len(obs) <= OBSERVATION_LIMIT, f"{name} observation is {len(obs)} characters"
        for region in out.regions():
            assert isinstance(region, Region) and region.id and len(region.box) == 4


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_families_are_configured(name):
    tool = TOOLS[name]
    for family in tool.families:
        assert family in DEFAULT_MODELS and family in TINY_MODELS, f"{name} uses unknown model family {family!r}"
