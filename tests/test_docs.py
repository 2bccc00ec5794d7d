"""Every code block of README.md and docs/*.md runs as written.

Each document's blocks run in order in one fresh folder (so a file one block writes, e.g. with
``cat > plan.yaml``, is there for the next), which holds links to the shipped ``scenarios/`` and
``examples/`` folders. How a block runs depends on its language:

- ``bash``: the block is a bash script (``set -e``; every command must succeed);
- ``console``: each ``$ `` line is run (the output shown is illustrative);
- ``python``: the block is a script run by this venv's Python;
- ``yaml``: a block starting ``# NAME.yaml`` is written to that file first; then it is loaded as
  what it is: a plan (a list of steps), a scenario file (``scenarios:``) or a configuration
  (strict: an unknown key fails);
- ``json``: every JSON value in it is parsed, planner actions as the planner parses them;
- ``toml``: parsed, and an entry-point table must name visagent's group;
- ``text``: sample output, not run.

The commands run offline on the tiny profile (``VISAGENT_PROFILE=tiny``: commands written for the
real checkpoints run on tiny random ones, so only that they run is checked), with a tiny
``visagent serve`` named by ``VISAGENT_SERVER`` (client mode: each ``visagent ask`` costs about
a second) whose planner decisions are scripted (one look at the media, then an answer: the tiny
LLaVA's are random), and an OpenAI-compatible endpoint standing in for a chat model
(``OPENAI_BASE_URL``): it calls ``visual_question`` / ``count`` once, then answers.

A command block whose text already ran in another document, on the same files (the README and
docs/ share some), is not run twice. One line is not run: ``make test`` (it is the command running
this suite).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT
from tests.test_planner_chat_apis import FakeChatServer
from tests.test_server import free_port, start, stop

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = {"make test": "the command running this suite"}
RUNNABLE = {"bash", "console", "python", "yaml", "json", "toml", "text"}


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    code: str

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line} ({self.lang})"


def blocks(doc: Path) -> list[Block]:
    out, lines, i = [], doc.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start_line, lang, body = i + 1, lines[i][3:].strip(), []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append(Block(doc, start_line, lang, "\n".join(body) + "\n"))
        i += 1
    return out


# -- the stand-ins: a tiny visagent server and an OpenAI-compatible chat model ----------------
#: the docs' visagent server: the tiny profile, and for the planner's decisions (the tiny LLaVA's
#: are random) one look at the first image or video, then an answer citing it
DOCS_SERVER = """
import sys
from visagent.agent import Agent
from visagent.config import load_config
from visagent.planners import FunctionPlanner
from visagent.server import load_settings, serve

def plan(state):
    if state.steps:
        return {"final": "Here is what I saw.", "evidence": ["obs_1"]}
    images = [m.id for m in state.media if m.kind == "image"]
    if images:
        return {"tool": "caption", "args": {"image": images[0]}}
    return {"tool": "video_qa", "args": {"video": "vid_0", "question": state.question}}

cfg = load_config(profile="tiny")
serve(Agent(cfg, planner=FunctionPlanner(plan)), load_settings(cfg, port=int(sys.argv[1]), max_steps=16))
"""

IDS = re.compile(r"\b(?:det|mask|ocr)_\d+_\d+\b|\bobs_\d+\b")


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "").strip()


def chat_model(body: dict[str, Any]) -> dict[str, Any]:
    """A chat model that calls one tool, then answers citing what it returned."""
    tools = {t["function"]["name"] for t in body.get("tools") or []}
    said = [m for m in body["messages"] if m.get("role") == "tool" or (m.get("role") == "user" and _text(m).startswith("obs_"))]
    if said:
        ids = IDS.findall(json.dumps(said[-1].get("content"))) or ["obs_1"]
        if "final_answer" in tools:
            return {"tool_call": ("final_answer", {"answer": "Done.", "evidence": ids[:1]})}
        if not tools:
            return {"content": json.dumps({"final": "Done.", "evidence": ids[:1]})}
        return {"content": "Done."}
    if "visual_question" in tools:
        return {"tool_call": ("visual_question", {"question": "How many cups are there?", "media": ["sample:coffee"]})}
    if "count" in tools:
        return {"tool_call": ("count", {"image": "img_0", "label": "cup"})}
    return {"content": json.dumps({"tool": "count", "args": {"image": "img_0", "label": "cup"}})}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("docs-server")
    venv_bin = str(Path(sys.executable).parent)
    base = {k: v for k, v in os.environ.items() if k not in ("VISAGENT_LOCAL", "VISAGENT_SERVER", "VISAGENT_TOKEN")}
    base.update(
        HF_HUB_OFFLINE="1", VISAGENT_PROFILE="tiny", PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        VISAGENT__limits__max_steps="4",  # the tiny planner's meaningless runs stay short
        OPENAI_API_KEY="sk-docs", VISAGENT_OPENAI_MODEL="llava",
    )  # fmt: skip
    port = free_port()
    proc = start([sys.executable, "-c", DOCS_SERVER, str(port)], port, tmp / "server.log", env=base)
    with FakeChatServer(chat_model) as model:
        yield {**base, "VISAGENT_SERVER": f"http://127.0.0.1:{port}", "OPENAI_BASE_URL": model.url}
    stop(proc)


# -- running one block ------------------------------------------------------------------------
def run_shell(script: str, cwd: Path, env: dict[str, str], what: str) -> str:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
    return done.stdout


def load_yaml_block(block: Block, cwd: Path) -> None:
    from visagent.config import load_config
    from visagent.planners.scripted import plans_from_data
    from visagent.scenarios import load_file

    first = block.code.splitlines()[0]
    named = re.match(r"#\s*([\w.-]+\.ya?ml)\b", first)
    path = cwd / (named.group(1) if named else f"block-{block.line}.yaml")
    path.write_text(block.code)
    data = yaml.safe_load(block.code)
    if isinstance(data, list):
        plans_from_data(data, str(block))
    elif isinstance(data, dict) and "scenarios" in data:
        assert load_file(path), f"{block}: no scenarios"
    elif isinstance(data, dict) and "applications" in data:
        load_serve_config(data, cwd, str(block))
    else:
        load_config(path, environ={})


def load_serve_config(data: dict[str, Any], cwd: Path, what: str) -> None:
    """A Ray Serve config file (``serve deploy``): valid for Ray's own schema, and each visagent
    application builds from its args (the visagent config it names, relative to ``cwd``)."""
    from ray.serve.schema import ServeDeploySchema

    from visagent import ray_serve

    schema = ServeDeploySchema.model_validate(data)
    built = 0
    for application in schema.applications:
        if application.import_path != "visagent.ray_serve:app":
            continue
        args = dict(application.args)
        if "config_path" in args:
            args["config_path"] = str(cwd / args["config_path"])
        assert ray_serve.app(args) is not None, what
        built += 1
    assert built, f"{what}: no application with import_path visagent.ray_serve:app"


def load_json_block(block: Block) -> None:
    from visagent.planners.parsing import decision_from_dict

    decoder, text, pos = json.JSONDecoder(), block.code, 0
    values = []
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)
    assert values, f"{block}: no JSON"
    for value in values:
        if isinstance(value, dict) and ("tool" in value or "final" in value):
            decision_from_dict(value)


#: (language, text, files it names) of each command block that ran: the README and docs/ share some
ALREADY_RAN: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()


def files_named(code: str, folder: Path) -> tuple[tuple[str, str], ...]:
    """The files of ``folder`` that ``code`` names, with a digest of their content."""
    import hashlib

    named = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name in code:
            named.append((path.name, hashlib.sha256(path.read_bytes()).hexdigest()))
    return tuple(named)


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> None:
    if block.lang == "bash":
        lines = [line for line in block.code.splitlines() if line.split("#")[0].strip() not in NOT_RUN]
        # `make` targets run where the Makefile is, as the README says (a fresh clone's root)
        where = ROOT if all(line.startswith("make ") for line in lines if line.strip()) else cwd
        run_shell("\n".join(lines), where, env, str(block))
    elif block.lang == "console":
        for line in block.code.splitlines():
            if line.startswith("$ "):
                run_shell(line[2:], cwd, env, f"{block}: {line[2:]}")
    elif block.lang == "python":
        script = cwd / f"block-{block.line}.py"
        script.write_text(block.code)
        done = subprocess.run([sys.executable, script.name], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{block} failed:\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
    elif block.lang == "yaml":
        load_yaml_block(block, cwd)
    elif block.lang == "json":
        load_json_block(block)
    elif block.lang == "toml":
        data = tomllib.loads(block.code)
        groups = data.get("project", {}).get("entry-points", {})
        assert "visagent.tools" in groups, f"{block}: no [project.entry-points.\"visagent.tools\"] table"


def test_every_block_has_a_language_it_can_run() -> None:
    unknown = [f"{b} {b.lang or 'no language'}" for doc in DOCS for b in blocks(doc) if b.lang not in RUNNABLE]
    assert not unknown, "blocks the docs test cannot run: " + "; ".join(unknown)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_the_blocks_run_as_written(doc: Path, env: dict[str, str], tmp_path: Path) -> None:
    for name in ("scenarios", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    try:
        for block in blocks(doc):
            inputs = (block.lang, block.code, files_named(block.code, tmp_path))
            if block.lang in ("bash", "console", "python") and inputs in ALREADY_RAN:
                continue  # the same text ran in another document, on the same files: it ran as written
            run_block(block, tmp_path, env)
            ALREADY_RAN.add(inputs)
    finally:  # a block that starts a background server stops it; if it failed before, stop it here
        subprocess.run([sys.executable, "-m", "visagent.cli", "stop"], env=env, capture_output=True, timeout=60)

