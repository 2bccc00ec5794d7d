"""The distribution as a user installs it: the wheel in a fresh virtual environment, run from a
folder that holds a user's own ``tools.py`` and ``agent/`` package, and a tool plugin installed
beside it.

The fresh environment gets the wheel (``--no-deps``) and sees the test environment's
dependencies (torch, transformers, ...) through a ``.pth`` line, so nothing is downloaded; the
test environment's own (editable) visagent is not on that path: ``.pth`` files of a folder added
that way are not processed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "visagent-shout"
version = "0.1"

[project.entry-points."visagent.tools"]
shout = "visagent_shout:ShoutTool"
broken = "visagent_shout:NotThere"
"""

PLUGIN_MODULE = '''\
"""A visagent tool plugin: upper-cases text."""

from visagent.tools.base import Tool, ToolInput, ToolOutput


class ShoutIn(ToolInput):
    text: str


class ShoutOut(ToolOutput):
    text: str

    def observation(self) -> str:
        return self.text


class ShoutTool(Tool):
    name = "shout"
    description = "Upper-case the given text (a plugin tool)."
    Input = ShoutIn
    Output = ShoutOut

    def run(self, inp, ctx):
        return ShoutOut(text=inp.text.upper())
'''


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A new virtual environment with the visagent wheel and the plugin distribution installed."""
    base = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = base / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], base, env)
    (wheel,) = wheels.glob("visagent-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base, env).stdout.strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], base, env)
    plugin = base / "plugin"
    plugin.mkdir()
    (plugin / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (plugin / "visagent_shout.py").write_text(PLUGIN_MODULE)
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", str(plugin)], base, env)
    # the user's folder: its own tools.py and agent/ package, as the issue reports users have
    user = base / "project"
    (user / "agent").mkdir(parents=True)
    (user / "tools.py").write_text("RAISE = 'this is the user tools.py'\n")
    (user / "agent" / "__init__.py").write_text("WHO = 'the user agent package'\n")
    return {"wheel": wheel, "venv": venv, "py": py, "bin": venv / "bin" / "visagent", "user": user, "env": env, "site": site}


def test_wheel_installs_one_package_named_visagent(fresh_env: dict[str, Any]) -> None:
    names = zipfile.ZipFile(fresh_env["wheel"]).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"visagent", next(t for t in tops if t.endswith(".dist-info"))}
    assert "visagent/prompts/system.j2" in names and "visagent/tools/base.py" in names and "visagent/tools/tiny/text.py" in names
    probe = "import agent, tools, visagent, visagent.tools.base; print(visagent.__file__); print(agent.WHO); print(tools.RAISE)"
    out = _run([str(fresh_env["py"]), "-c", probe], fresh_env["user"], fresh_env["env"]).stdout.splitlines()
    assert out[0].startswith(str(fresh_env["site"])), out  # the installed wheel, not the source tree
    assert out[1:] == ["the user agent package", "this is the user tools.py"]  # the user's own modules are untouched


def test_installed_cli_answers_beside_user_modules(fresh_env: dict[str, Any], tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text('- {tool: caption, args: {image: img_0}}\n- {final: "an astronaut", evidence: [obs_1]}\n')
    cmd = [str(fresh_env["bin"]), "ask", "sample:astronaut", "What is in the image?", "--profile", "tiny", "--planner", f"script:{plan}", "--json"]
    proc = _run(cmd, fresh_env["user"], fresh_env["env"])
    answer = json.loads(proc.stdout)
    assert answer["status"] == "answered" and answer["answer"] == "an astronaut"
    assert [e["id"] for e in answer["evidence"]] == ["obs_1"] and answer["evidence"][0]["tool"] == "caption"


def test_plugin_tool_is_listed_and_callable(fresh_env: dict[str, Any], tmp_path: Path) -> None:
    proc = _run([str(fresh_env["bin"]), "tools", "--json"], fresh_env["user"], fresh_env["env"])
    tools = {t["name"]: t for t in json.loads(proc.stdout)}
    assert tools["shout"]["origin"].startswith("plugin visagent-shout (shout = visagent_shout:ShoutTool)")
    assert tools["shout"]["input_schema"]["required"] == ["text"] and tools["detect"]["origin"] == "builtin"
    # the broken entry point: one warning line naming it, the others still load
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'broken' from visagent-shout" in warnings[0] and "AttributeError" in warnings[0]
    human = _run([str(fresh_env["bin"]), "tools"], fresh_env["user"], fresh_env["env"]).stdout
    assert "from plugin visagent-shout" in human
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        - {tool: shout, args: {text: hello}}
        - {final: "it says HELLO", evidence: [obs_1]}
    """))
    cmd = [str(fresh_env["bin"]), "ask", "sample:coffee", "Shout hello", "--profile", "tiny", "--planner", f"script:{plan}", "--json"]
    answer = json.loads(_run(cmd, fresh_env["user"], fresh_env["env"]).stdout)
    tool_steps = [s for s in answer["trace"]["steps"] if s["type"] == "tool"]
    assert answer["status"] == "answered" and tool_steps[0]["tool"] == "shout" and tool_steps[0]["observation"] == "HELLO"


def test_the_all_extra_brings_every_other_extra() -> None:
    """``make test`` / CI install ``.[all,dev]``: an extra left out of ``all`` is never installed there."""
    import re
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (spec,) = extras["all"]
    named = set(re.fullmatch(r"visagent\[([\w,-]+)\]", spec).group(1).split(","))
    assert named == set(extras) - {"all", "dev"}, f"missing from all: {sorted(set(extras) - {'all', 'dev'} - named)}"
