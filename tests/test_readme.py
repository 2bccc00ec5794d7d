"""The README's Python API and asyncio examples, run in this process, print what the README says
(tests/test_docs.py runs every block of the docs as written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).parents[1] / "README.md"


def sections() -> dict[str, list[tuple[str, str]]]:
    """``{heading: [(language, code), ...]}`` for every fenced block of the README."""
    out: dict[str, list[tuple[str, str]]] = {}
    heading = ""
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```") and len(line) > 3:
            lang, body = line[3:].strip(), []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.setdefault(heading, []).append((lang, "\n".join(body) + "\n"))
        i += 1
    return out


def block(heading: str, lang: str, contains: str) -> str:
    found = [code for lg, code in sections().get(heading, []) if lg == lang and contains in code]
    assert found, f"README: no {lang} block with {contains!r} under '{heading}'"
    return found[0]


@pytest.fixture
def readme_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    plan = block("Embedding visagent", "yaml", "# plan.yaml")
    (tmp_path / "plan.yaml").write_text(plan)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(code: str, **names: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "readme_example", **names}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
    return namespace


def test_python_api_example(readme_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ns = run(block("Python API", "python", "Agent.load("))
    answer = ns["answer"]
    assert answer.ok and answer.answer == "There is one object in the box."
    assert [e.id for e in answer.evidence] == ["mask_1_0"] and answer.evidence[0].tool == "segment"
    assert ns["run"].answer.answer == answer.answer
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "answered There is one object in the box." and printed[1].startswith("mask_1_0 (segment, img_0) ")
    assert len(printed[1]) < 200  # one line, no RLE


def test_asyncio_example(readme_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(block("asyncio", "python", "asyncio.run(main())"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "There is one object in the box. There is one object in the box."
    assert "tool" in printed and "final" in printed
