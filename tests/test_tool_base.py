"""The tool contract: a wrongly declared tool fails when it is defined."""

from __future__ import annotations

import pytest

from visagent.tools.base import Region, Tool, ToolInput, ToolOutput, clip_text


class In(ToolInput):
    image: str
    labels: list[str]
    threshold: float = 0.35


class Out(ToolOutput):
    regions_: list[Region] = []

    def observation(self) -> str:
        return "ok"


def test_well_declared_tool_and_its_spec():
    class Good(Tool):
        name = "good"
        description = "A good tool for tests."
        Input = In
        Output = Out

        def run(self, inp, ctx):
            return Out()

    assert Good.signature() == "good(image: str, labels: list[str], threshold?: float = 0.35)"
    spec = Good.spec()
    assert spec["name"] == "good" and spec["input_schema"]["required"] == ["image", "labels"]


@pytest.mark.parametrize(
    "attrs, fragment",
    [
        ({"name": "Bad Name"}, "`name` must be a lowercase identifier"),
        ({"description": "short"}, "`description` must be a sentence"),
        ({"Input": dict}, "`Input` must be a pydantic BaseModel"),
        ({"Output": In}, "`Output` must subclass tools.base.ToolOutput"),
        ({"run": None}, None),
    ],
)
def test_wrong_declarations_fail_at_definition(attrs, fragment):
    body = {"name": "t", "description": "A tool for tests.", "Input": In, "Output": Out, "run": lambda self, i, c: Out()}
    body.update(attrs)
    if body["run"] is None:
        del body["run"]
        fragment = "`run(input, ctx)` must be implemented"
    with pytest.raises(TypeError, match="wrongly declared") as exc:
        type("T", (Tool,), body)
    assert fragment in str(exc.value)


def test_output_without_observation_fails():
    class NoObs(ToolOutput):
        x: int = 0

    with pytest.raises(TypeError, match="observation"):
        type("T", (Tool,), {"name": "t", "description": "A tool for tests.", "Input": In, "Output": NoObs, "run": lambda s, i, c: None})


def test_clip_text():
    assert clip_text("abc") == "abc"
    clipped = clip_text("x" * 1000)
    assert len(clipped) <= 500 and clipped.endswith("(truncated)")
