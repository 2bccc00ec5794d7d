"""LangChain adapters inside ``langchain.agents.create_agent``, driven by fake chat models that
issue real tool calls; tools run for real (fakes for the machinery, the tiny SAM for segment)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from tests.fakes import FAKE_TOOLS, FindOut
from visagent.langchain import ToolSession, VisualQuestionInput, make_agent_tool, make_tools
from visagent.types import Answer


class ToolCallingFake(FakeMessagesListChatModel):
    """A scripted chat model that accepts ``bind_tools`` (records the tool schemas it was given)."""

    bound: list[dict[str, Any]] = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        self.bound = [convert_to_openai_tool(t) for t in tools]
        return self


def call(name: str, args: dict[str, Any], ident: str) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": ident, "type": "tool_call"}])


def tool_messages(result: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def test_make_tools_schemas(make_agent: Any) -> None:
    agent = make_agent([{"final": "x"}], tools=FAKE_TOOLS)
    tools = make_tools(agent)
    assert [t.name for t in tools] == [t.name for t in agent.tools.values()]
    find = next(t for t in tools if t.name == "fake_find")
    assert find.args_schema is agent.tools["fake_find"].Input
    assert find.response_format == "content_and_artifact"
    spec = convert_to_openai_tool(find)["function"]
    assert spec["name"] == "fake_find"
    assert set(spec["parameters"]["properties"]) == {"image", "label", "threshold", "n"}
    assert "file path" in spec["description"]
    with pytest.raises(Exception, match="unknown tool"):
        make_tools(agent, names=["nope"])


def test_tools_in_create_agent_keep_media_and_regions(make_agent: Any) -> None:
    from visagent.tools.segment import Segment, SegmentOutput

    agent = make_agent([{"final": "x"}], tools=[*FAKE_TOOLS, Segment])
    tools = make_tools(agent, names=["fake_find", "segment"])
    model = ToolCallingFake(
        responses=[
            call("fake_find", {"image": "sample:coffee", "label": "cup", "n": 2}, "c1"),
            # the region id from the first call, in a second call: the session kept it
            call("segment", {"image": "img_0", "boxes": ["det_1_1"]}, "c2"),
            call("fake_find", {"image": "sample:coffee", "label": "saucer", "n": 1}, "c3"),
            AIMessage(content="two cups; the second one is segmented"),
        ]
    )
    graph = create_agent(model, tools)
    result = graph.invoke({"messages": [HumanMessage("segment the second cup in sample:coffee")]})
    assert {t["function"]["name"] for t in model.bound} == {"fake_find", "segment"}
    msgs = tool_messages(result)
    assert [m.name for m in msgs] == ["fake_find", "segment", "fake_find"]
    assert all(m.status == "success" for m in msgs), [m.content for m in msgs]
    first, seg, again = msgs
    assert isinstance(first.artifact, FindOut)
    assert [d.id for d in first.artifact.detections] == ["det_1_0", "det_1_1"]
    assert first.artifact.detections[1].box == [1, 1, 300.0, 200.0]  # from coffee's 600x400
    assert "det_1_0" in first.content and "[media: sample:coffee = img_0]" in first.content
    assert isinstance(seg.artifact, SegmentOutput)
    assert seg.artifact.masks[0].id == "mask_2_0"
    assert seg.artifact.masks[0].image == "img_0"
    # the same source maps to the same id; no new media note; call numbering continues
    assert [d.id for d in again.artifact.detections] == ["det_3_0"]
    assert "[media:" not in again.content
    assert result["messages"][-1].content == "two cups; the second one is segmented"
    session = tools[0].metadata["visagent_session"]
    assert isinstance(session, ToolSession)
    assert session.media.ids() == ["img_0"]
    assert set(session.regions) == {"det_1_0", "det_1_1", "mask_2_0", "det_3_0"}


def test_tool_errors_come_back_as_messages(make_agent: Any, tmp_path: Any) -> None:
    agent = make_agent([{"final": "x"}], tools=FAKE_TOOLS)
    tools = make_tools(agent)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    model = ToolCallingFake(
        responses=[
            call("fake_find", {"image": "img_3", "label": "cup"}, "c1"),  # unknown media id
            call("fake_find", {"image": str(bad), "label": "cup"}, "c2"),  # corrupt file
            call("fake_find", {"image": "sample:coins", "label": "coin", "threshold": 2.0}, "c3"),  # out of range
            call("echo", {"text": "t", "fail": True}, "c4"),  # the tool crashes
            call("echo", {"text": "fine"}, "c5"),
            AIMessage(content="gave up"),
        ]
    )
    result = create_agent(model, tools).invoke({"messages": [HumanMessage("find cups")]})
    msgs = tool_messages(result)
    assert [m.status for m in msgs] == ["error", "error", "error", "error", "success"]
    assert "unknown media id 'img_3'" in msgs[0].content
    assert "bad.png" in msgs[1].content and "not an image" in msgs[1].content
    assert "threshold" in msgs[2].content
    assert "echo failed: RuntimeError: boom" in msgs[3].content
    assert msgs[4].content == "fine"
    # failed calls take no call number: the one success is call 1
    assert tools[0].metadata["visagent_session"].calls == 1


def test_agent_tool_in_create_agent(make_agent: Any) -> None:
    agent = make_agent(
        [
            {"tool": "fake_find", "args": {"image": "img_0", "label": "cup", "n": 1}},
            {"final": "one cup", "evidence": ["det_1_0"]},
        ],
        tools=FAKE_TOOLS,
    )
    vq = make_agent_tool(agent)
    assert vq.name == "visual_question" and vq.args_schema is VisualQuestionInput
    model = ToolCallingFake(
        responses=[
            call("visual_question", {"question": "how many cups?", "media": ["sample:coffee"]}, "v1"),
            call("visual_question", {"question": "and here?", "media": ["sample:nope"]}, "v2"),
            AIMessage(content="There is one cup."),
        ]
    )
    result = create_agent(model, [vq]).invoke({"messages": [HumanMessage("how many cups in sample:coffee?")]})
    ok, bad = tool_messages(result)
    assert ok.status == "success"
    assert isinstance(ok.artifact, Answer)
    assert ok.artifact.ok and ok.artifact.answer == "one cup"
    assert ok.artifact.evidence[0].id == "det_1_0"
    assert ok.content.startswith("one cup\nevidence:\n- det_1_0 (fake_find, img_0) 'cup' score 0.90 box [0, 0, 300, 200]")
    assert bad.status == "error" and "unknown sample image 'sample:nope'" in bad.content
    assert result["messages"][-1].content == "There is one cup."


def test_agent_tool_async_and_failed_run(make_agent: Any) -> None:
    agent = make_agent([{"tool": "echo", "args": {"text": "a"}}], tools=FAKE_TOOLS)  # the plan runs out
    vq = make_agent_tool(agent, max_steps=3)

    async def main() -> ToolMessage:
        return await vq.ainvoke(
            {"type": "tool_call", "name": "visual_question", "id": "x", "args": {"question": "q", "media": ["sample:coins"]}}
        )

    msg = asyncio.run(main())
    assert isinstance(msg.artifact, Answer)
    assert msg.artifact.status == "failed"
    assert msg.content.startswith("no answer (failed): the scripted plan ran out")


def test_tools_async_in_create_agent(make_agent: Any) -> None:
    agent = make_agent([{"final": "x"}], tools=FAKE_TOOLS)
    tools = make_tools(agent, media=["sample:astronaut"])
    model = ToolCallingFake(
        responses=[
            AIMessage(
                content="",
                tool_calls=[  # two calls in one message: LangChain may run them in parallel
                    {"name": "fake_find", "args": {"image": "img_0", "label": "person", "n": 1}, "id": "a", "type": "tool_call"},
                    {"name": "fake_find", "args": {"image": "img_0", "label": "face", "n": 1}, "id": "b", "type": "tool_call"},
                ],
            ),
            AIMessage(content="done"),
        ]
    )
    result = asyncio.run(create_agent(model, tools).ainvoke({"messages": [HumanMessage("find")]}))
    msgs = tool_messages(result)
    assert len(msgs) == 2 and all(m.status == "success" for m in msgs)
    ids = sorted(m.artifact.detections[0].id for m in msgs)
    assert ids == ["det_1_0", "det_2_0"]  # serialized in the session: distinct call numbers
    assert all(m.artifact.detections[0].box == [0, 0, 256.0, 256.0] for m in msgs)  # astronaut 512x512
