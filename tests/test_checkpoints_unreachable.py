"""A checkpoint that is neither local nor reachable fails fast with a one-line error naming it, how to
get it and ``--profile tiny``: ``visagent ask`` exits 2, ``visagent serve`` refuses to start (or
starts with a warning under ``--allow-missing``).

The Hub is made unreachable with ``HF_ENDPOINT`` on a closed port of 127.0.0.1 and an empty Hugging
Face cache; no traffic leaves this machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_server import free_port, start, stop
from visagent import checkpoints
from visagent.errors import ModelUnavailableError

REPO = Path(__file__).resolve().parents[1]
PLANNER = "llava-hf/llava-1.5-7b-hf"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable(tmp_path: Path) -> dict[str, str]:
    """The environment of a user without Hub access: online, nothing cached, the Hub unreachable."""
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VISAGENT_")) and k.lower() not in ("https_proxy", "http_proxy")}
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
        VISAGENT_CACHE_DIR=str(tmp_path / "visagent"),
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def _visagent(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "visagent.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - t0


def test_ask_fails_fast_when_the_hub_is_unreachable(unreachable: dict[str, str]) -> None:
    done, seconds = _visagent(["ask", "sample:coins", "How many coins are there?", "--profile", "default"], unreachable)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    line = lines[0]
    assert line.startswith(f"error: checkpoint '{PLANNER}' for planner is not in the Hugging Face cache")
    assert f"the Hub ({unreachable['HF_ENDPOINT']}) cannot be reached" in line
    assert f"`hf download {PLANNER}`" in line and "~/.cache/huggingface" in line and "models.planner.checkpoint" in line
    assert "--profile tiny" in line
    assert "Retrying" not in done.stderr  # one probe, not huggingface_hub's download retries
    print(f"visagent ask with the Hub unreachable: exit {done.returncode} after {seconds:.1f} s")


def test_ask_offline_names_hf_hub_offline(unreachable: dict[str, str]) -> None:
    done, _ = _visagent(["ask", "sample:coins", "How many coins?", "--profile", "default"], {**unreachable, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip()
    assert f"checkpoint '{PLANNER}' for planner is not available offline (not in the Hugging Face cache, and HF_HUB_OFFLINE=1" in line
    assert "--profile tiny" in line and "\n" not in line


def test_serve_refuses_to_start_naming_the_missing_checkpoints(unreachable: dict[str, str]) -> None:
    done, _ = _visagent(["serve", "--profile", "default", "--port", str(free_port())], unreachable)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip()
    assert line.startswith("error: not serving: planner (llava-hf/llava-1.5-7b-hf), ") and "\n" not in line
    for family, checkpoint in (("detect", "IDEA-Research/grounding-dino-tiny"), ("segment", "facebook/sam-vit-base")):
        assert f"{family} ({checkpoint})" in line
    assert "ocr" not in line  # ships with its package
    assert "cannot be reached" in line and "hf download ID" in line and "--profile tiny" in line and "--allow-missing" in line


def test_serve_allow_missing_starts_with_a_warning(unreachable: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "visagent.cli", "serve", "--profile", "default", "--port", str(port), "--allow-missing"]
    proc = start(cmd, port, log, env=unreachable)
    stop(proc)
    text = log.read_text()
    assert "warning: serving without these checkpoints (--allow-missing): planner (llava-hf/llava-1.5-7b-hf)" in text


def test_missing_reason_probes_the_hub_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    closed = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    reason = checkpoints.missing_reason("visagent-absent/model", family="detect")
    assert reason is not None and f"the Hub ({closed}) cannot be reached" in reason and "models.detect.checkpoint" in reason
    with pytest.raises(ModelUnavailableError, match="visagent-absent/model"):
        checkpoints.resolve_checkpoint("visagent-absent/model", family="detect", backend="transformers", cache_dir=tmp_path)
    with socket.socket() as listening:  # a Hub that answers: the checkpoint is downloadable
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        assert checkpoints.missing_reason("visagent-absent/model", family="detect") is None
    assert checkpoints.missing_reason(str(tmp_path), family="detect") is None  # a local folder
