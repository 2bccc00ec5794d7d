"""``visagent doctor``: what is usable, what to do about the rest, and an exit code that says it."""

from __future__ import annotations

import pytest
import yaml

from visagent.cli import main
from visagent.config import TINY_MODELS

FAMILIES = tuple(f for f in TINY_MODELS if f != "ocr")  # the families whose checkpoints come from the Hub
#: models the doctor checks (every family of a profile)
N = len(TINY_MODELS)


def _config(tmp_path, **models: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return str(path)


def test_doctor_tiny_profile_is_ready(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["doctor", "--profile", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "HF_HUB_OFFLINE=1: offline" in out and "nothing is downloaded" in out
    assert out.rstrip().splitlines()[-1] == f"ready: {N} of {N} models usable"


def test_doctor_explains_an_unset_hub_offline_and_advises_it_when_all_is_cached(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["doctor", "--profile", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "HF_HUB_OFFLINE is not set: the Hugging Face Hub will be contacted" in out
    assert "a missing one fails at once with an error naming it" in out and "`export HF_HUB_OFFLINE=1`" in out


def test_doctor_exits_1_with_advice_when_no_model_is_usable(tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as s:  # the Hub on a closed local port: nothing leaves this machine
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    models = {f: {"checkpoint": f"visagent-absent/{f}-model"} for f in FAMILIES}
    models["ocr"] = {"checkpoint": str(tmp_path / "no-ocr-here"), "backend": "rapidocr"}
    assert main(["doctor", "--config", _config(tmp_path, **models)]) == 1
    out = capsys.readouterr().out
    for family in FAMILIES:
        assert f"{family}: visagent-absent/{family}-model is not in the Hugging Face cache: run `hf download visagent-absent/{family}-model`" in out
    assert "ocr: " in out and "is no file or folder here" in out
    assert "--profile tiny" in out
    assert "export HF_HUB_OFFLINE=1" not in out  # nothing cached to use offline
    assert f"the Hub ({endpoint}) cannot be reached from here" in out and "copy its ~/.cache/huggingface here" in out
    assert out.rstrip().splitlines()[-1].startswith(f"not ready: 0 of {N} models usable")


def test_doctor_exits_1_when_the_planner_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, planner={"checkpoint": "visagent-absent/planner"})
    assert main(["doctor", "--profile", "tiny", "--config", config]) == 1
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last == f"not ready: {N - 1} of {N} models usable; the planner (visagent-absent/planner) is not usable, so `visagent ask` cannot plan"


@pytest.mark.parametrize("family", ["caption", "video"])
def test_doctor_is_ready_with_gaps_when_a_tool_model_is_missing(tmp_path, monkeypatch, capsys, family):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, **{family: {"checkpoint": f"visagent-absent/{family}"}})
    assert main(["doctor", "--profile", "tiny", "--config", config]) == 0
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.startswith(f"ready, with gaps: {N - 1} of {N} models usable") and family in last
