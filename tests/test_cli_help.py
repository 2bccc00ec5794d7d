"""Help text: flags show as flags (no value type), options with values show their type."""

from __future__ import annotations

import re

import pytest

from visagent.cli import main

FLAGS = {
    (): ["--version", "--help"],
    ("ask",): ["--json", "--verbose", "--local"],
    ("run",): ["--resume", "--local"],
    ("serve",): ["--detach", "--ui"],
    ("replay",): ["--json", "--trust-trace-config"],
    ("chat",): ["--verbose"],
    ("mcp",): ["--images"],
    ("models",): ["--json"],
}


@pytest.mark.parametrize("command", list(FLAGS), ids=lambda c: " ".join(c) or "visagent")
def test_help_shows_flags_without_a_value_type(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "<bool>" not in out
    for flag in FLAGS[command]:
        row = next((line for line in out.splitlines() if re.search(rf"│ {re.escape(flag)}\b", line)), None)
        assert row is not None, f"{flag} missing from the help of {command}"
        assert not re.search(rf"{re.escape(flag)}\s+(-\w\s+)?(--no-\S+\s+)?<", row), row  # no <type> after the flag


def test_help_still_shows_the_type_of_options_with_values(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["ask", "--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"--max-steps\s+<int range>", out) and re.search(r"--trace\s+<path>", out)
