"""Small fake tools for loop tests (the planner's decisions are scripted; tools are trivial)."""

from __future__ import annotations

import time

from visagent.tools.base import Prob, Region, Tool, ToolInput, ToolOutput


class FindIn(ToolInput):
    image: str
    label: str
    threshold: Prob = 0.3
    n: int = 2


class FindOut(ToolOutput):
    detections: list[Region]

    def observation(self) -> str:
        return f"{len(self.detections)} {self.detections[0].label if self.detections else ''} found: " + "; ".join(
            d.describe() for d in self.detections
        )


class FakeFind(Tool):
    name = "fake_find"
    description = "Find objects by label in an image (fake, for tests)."
    Input = FindIn
    Output = FindOut
    region_prefixes = ("det",)

    def run(self, inp: FindIn, ctx) -> FindOut:  # noqa: ANN001
        w, h = ctx.image(inp.image).size
        return FindOut(
            detections=[
                Region(id=ctx.region_id("det", i), image=inp.image, box=[i, i, w / 2, h / 2], score=0.9, label=inp.label)
                for i in range(inp.n)
            ]
        )


class EchoIn(ToolInput):
    text: str = ""
    sleep: float = 0.0
    fail: bool = False


class EchoOut(ToolOutput):
    text: str

    def observation(self) -> str:
        return self.text


class Echo(Tool):
    name = "echo"
    description = "Echo the text back (fake, for tests); optionally sleep or fail."
    Input = EchoIn
    Output = EchoOut

    def run(self, inp: EchoIn, ctx) -> EchoOut:  # noqa: ANN001
        if inp.sleep:
            time.sleep(inp.sleep)
        if inp.fail:
            raise RuntimeError("boom")
        return EchoOut(text=inp.text or "x" * 2000)


class NoopIn(ToolInput):
    i: int = 0


class NoopOut(ToolOutput):
    i: int

    def observation(self) -> str:
        return "ok"


class Noop(Tool):
    name = "noop"
    description = "Do nothing (benchmarks and tests)."
    Input = NoopIn
    Output = NoopOut

    def run(self, inp: NoopIn, ctx) -> NoopOut:  # noqa: ANN001
        return NoopOut(i=inp.i)


FAKE_TOOLS = [FakeFind, Echo, Noop]
