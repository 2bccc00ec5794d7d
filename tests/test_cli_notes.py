"""The tiny-profile note: shown by a command on the tiny profile, once per demo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from visagent.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOTE = "profile 'tiny': tiny random checkpoints"


def _ask(tmp_path, capsys) -> str:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump([{"final": "an answer"}]))
    assert main(["ask", "sample:coins", "q", "--profile", "tiny", "--planner", f"script:{plan}", "--local"]) == 0
    return capsys.readouterr().err


@pytest.mark.parametrize(("value", "shown"), [(None, True), ("0", True), ("1", False), ("yes", False)])
def test_tiny_note_and_visagent_quiet_tiny(tmp_path, capsys, monkeypatch, value, shown):
    if value is None:
        monkeypatch.delenv("VISAGENT_QUIET_TINY", raising=False)
    else:
        monkeypatch.setenv("VISAGENT_QUIET_TINY", value)
    assert (NOTE in _ask(tmp_path, capsys)) is shown


def test_make_demo_shows_the_note_once():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    asks = [line.strip() for line in recipe.splitlines() if "visagent ask" in line]
    assert len(asks) >= 2
    assert "VISAGENT_QUIET_TINY" not in asks[0]  # the first command says it
    assert all(line.startswith("VISAGENT_QUIET_TINY=1 ") for line in asks[1:])
