"""Scenarios: YAML files of media + question(s) + expectations (+ an optional scripted plan).

File format: one scenario (a mapping with ``name``), a list of scenarios, or a mapping with a
``scenarios:`` list. A scenario:

```yaml
name: coins-count            # unique in its file
media: [sample:coins]        # paths relative to this file, or sample:NAME
question: How many coins?    # or a list of turns (a conversation)
plan:                        # optional scripted plan (a list of lists for several turns)
  - {tool: detect, args: {image: img_0, labels: [coin]}}
  - {final: "3 coins", evidence: [det_1_0]}
profile: tiny                # optional: the profile this scenario needs (else --profile)
requires: [detect]           # optional: model families that must be real, available checkpoints
max_steps: 8                 # optional
expect:
  answer_contains: coin      # str or list (all, case-insensitive)
  answer_equals: 3 coins     # case-insensitive, surrounding spaces and a final period ignored
  answer_regex: '\\b3\\b'     # re.search, case-insensitive
  count: {value: 3, tolerance: 0, source: answer}   # or just 3; source: answer | tool | both
  tools: [detect]            # must be used
  evidence: [det_1_0]        # must be cited (fnmatch patterns: det_*)
  iou: {box: [x0, y0, x1, y1], threshold: 0.5, image: img_0}   # best cited box vs this box
  output_contains: {tool: ocr, text: [Region]}  # text in a tool's full output
  status: answered           # default
```

A scenario that cannot run here (``requires`` names a family served by a tiny or missing
checkpoint) is skipped with the reason. Results are dicts (one JSON line each), see
``ScenarioRunner.run``.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator

from visagent.errors import UsageError
from visagent.grounding import answer_number
from visagent.media import SAMPLES
from visagent.render import iter_regions
from visagent.safe import load_yaml_file
from visagent.types import Answer, ToolStep

KINDS = (
    "status", "answer_contains", "answer_equals", "answer_regex", "count", "tools", "evidence", "iou",
    "output_contains",
)  # fmt: skip



class ScenarioError(UsageError):
    """An invalid scenario file: the message names the file, the scenario and the field."""


class CountExpect(BaseModel):
    """``value`` +- ``tolerance``, read from the answer text (first number) and/or a tool output."""

    model_config = ConfigDict(extra="forbid")
    value: int = Field(ge=0)
    tolerance: int = Field(default=0, ge=0)
    source: Literal["answer", "tool", "both"] = "answer"
    tool: str | None = None  # tool whose output is counted (default: the last count/detect-like step)
    label: str | None = None  # count only regions with this label (tool source)


class IouExpect(BaseModel):
    model_config = ConfigDict(extra="forbid")
    box: list[float] = Field(min_length=4, max_length=4)
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    image: str | None = None

    @field_validator("box")
    @classmethod
    def _box(cls, v: list[float]) -> list[float]:
        if not all(math.isfinite(x) for x in v) or v[2] <= v[0] or v[3] <= v[1]:
            raise ValueError("box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
        return v


class OutputContains(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: str | None = None
    text: list[str] = Field(min_length=1)

    @field_validator("text", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Expect(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["answered", "max_steps", "failed"] = "answered"
    answer_contains: list[str] | None = None
    answer_equals: str | None = None
    answer_regex: str | None = None
    count: CountExpect | None = None
    tools: list[str] | None = None
    evidence: list[str] | None = None
    iou: list[IouExpect] | None = None
    output_contains: list[OutputContains] | None = None

    @field_validator("answer_contains", mode="before")
    @classmethod
    def _contains(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("count", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        return {"value": v} if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("iou", "output_contains", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @field_validator("answer_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    media: list[str] = Field(default_factory=list)
    question: str | list[str]
    plan: list[Any] | None = None
    profile: Literal["default", "tiny"] | None = None
    requires: list[str] = Field(default_factory=list)
    max_steps: int | None = Field(default=None, ge=1)
    tags: list[str] = Field(default_factory=list)
    expect: Expect = Field(default_factory=Expect)
    _file: Path = PrivateAttr(default=Path("."))

    @field_validator("media", mode="before")
    @classmethod
    def _media(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("question")
    @classmethod
    def _question(cls, v: str | list[str]) -> str | list[str]:
        turns = [v] if isinstance(v, str) else v
        if not turns or any(not isinstance(t, str) or not t.strip() for t in turns):
            raise ValueError("must be a non-empty question or a non-empty list of non-empty questions")
        return v

    @field_validator("plan")
    @classmethod
    def _plans(cls, plan: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        if plan is None:
            return plan
        from visagent.planners.scripted import plan_from_data

        question = info.data.get("question")
        multi = isinstance(question, list)
        plans = plan if multi and plan and all(isinstance(p, list) for p in plan) else [plan]
        if multi and len(plans) != len(question):
            raise ValueError(f"{len(question)} turns need a list of {len(question)} plans, one per turn")
        for k, p in enumerate(plans):
            try:
                plan_from_data(p, "plan" if len(plans) == 1 else f"plan of turn {k + 1}")
            except UsageError as exc:
                raise ValueError(str(exc).removeprefix("plan: ")) from None
        return plan

    @property
    def turns(self) -> list[str]:
        return [self.question] if isinstance(self.question, str) else list(self.question)

    def plans(self) -> list[list[Any]]:
        """One scripted plan per turn ([] when the scenario has no plan)."""
        if self.plan is None:
            return []
        if isinstance(self.question, list) and self.plan and all(isinstance(p, list) for p in self.plan):
            return list(self.plan)
        return [self.plan]

    @property
    def file(self) -> Path:
        return self._file

    @property
    def id(self) -> str:
        try:
            rel = os.path.relpath(self._file)
        except ValueError:
            rel = str(self._file)
        return f"{rel}::{self.name}"

    @property
    def key(self) -> str:
        """The scenario's identity for ``--resume``: its file's absolute path and its content, so a
        results file means the same scenarios from any working folder, and an edited one runs again."""
        import hashlib

        content = json.dumps(self.model_dump(mode="json"), sort_keys=True, default=str)
        return hashlib.sha256(f"{self._file.resolve()}::{content}".encode()).hexdigest()[:16]

    def media_sources(self) -> list[str]:
        base = self._file.parent
        return [m if m.startswith("sample:") else str((base / m).resolve()) for m in self.media]


# -- loading ------------------------------------------------------------------------------------
def _fmt_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(scenario)"


def load_file(path: str | Path) -> list[Scenario]:
    """Parse and validate one scenario file. Raises ``ScenarioError`` naming file, scenario and field."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"scenario file not found: {p}")
    try:
        data = load_yaml_file(p, "scenario file")
    except ValueError as exc:  # BoundsError included
        raise ScenarioError(str(exc)) from None
    if isinstance(data, dict) and "scenarios" in data:
        extra = set(data) - {"scenarios"}
        if extra:
            raise ScenarioError(f"{p}: unknown top-level keys: {', '.join(sorted(extra))} (expected `scenarios:`)")
        data = data["scenarios"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ScenarioError(f"{p}: expected a scenario mapping, a list of scenarios or `scenarios: [...]`")
    out: list[Scenario] = []
    seen: set[str] = set()
    for k, item in enumerate(data):
        label = f"scenario #{k + 1}"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label = f"scenario '{item['name']}'"
        if not isinstance(item, dict):
            raise ScenarioError(f"{p}: {label}: must be a mapping with name, media, question, expect")
        try:
            sc = Scenario.model_validate(item)
        except ValidationError as exc:
            err = exc.errors()[0]
            msg = err["msg"].removeprefix("Value error, ")
            raise ScenarioError(f"{p}: {label}: field {_fmt_loc(err['loc'])}: {msg}") from None
        if sc.name in seen:
            raise ScenarioError(f"{p}: {label}: field name: duplicate scenario name in this file")
        seen.add(sc.name)
        sc._file = p.resolve()
        for i, m in enumerate(sc.media):
            if m.startswith("sample:"):
                if m[len("sample:") :] not in SAMPLES:
                    raise ScenarioError(f"{p}: {label}: field media[{i}]: unknown sample '{m}'; available: {', '.join(SAMPLES)}")
            elif not (p.parent / m).exists():
                raise ScenarioError(f"{p}: {label}: field media[{i}]: file not found: {m} (paths are relative to the scenario file)")
        out.append(sc)
    return out


def find_files(paths: Iterable[str | Path]) -> list[Path]:
    """Scenario files from files and folders (``*.yaml`` / ``*.yml``, recursively, sorted)."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml") and q.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise ScenarioError(f"scenario path not found: {p}")
    if not files:
        raise ScenarioError("no scenario files (*.yaml) in: " + ", ".join(str(p) for p in paths))
    return list(dict.fromkeys(files))


def load_scenarios(paths: Iterable[str | Path]) -> list[Scenario]:
    out: list[Scenario] = []
    for f in find_files(paths):
        out += load_file(f)
    return out


# -- checking -----------------------------------------------------------------------------------
#: the first number an answer states (digits or a number word; region ids ignored), as the grounding policy reads it
first_number = answer_number


def tool_count(answer: Answer, tool: str | None = None, label: str | None = None) -> int | None:
    """A count from the tool outputs: the last step of ``tool`` (default: the last step with an
    integer ``count`` field, else the last step with regions): its ``count``, else its regions
    (those with ``label`` when given)."""
    steps = [s for s in answer.trace.tool_steps() if tool is None or s.tool == tool]
    if tool is None:
        with_count = [s for s in steps if isinstance(s.output.get("count"), int)]
        steps = with_count or [s for s in steps if any(True for _ in iter_regions(s.output))]
    if not steps:
        return None
    out = steps[-1].output
    if label is None and isinstance(out.get("count"), int):
        return int(out["count"])
    regions = list(iter_regions(out))
    if label is not None:
        regions = [r for r in regions if str(r.get("label", "")).lower() == label.lower()]
    return len(regions)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _norm(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).lower()


def check(expect: Expect, answer: Answer, used_tools: Sequence[ToolStep] | None = None) -> list[dict[str, Any]]:
    """Each expectation -> ``{"kind", "passed", "expected", "got"}``."""
    text = answer.answer or ""
    steps = list(used_tools) if used_tools is not None else answer.trace.tool_steps()
    checks: list[dict[str, Any]] = []

    def add(kind: str, passed: bool, expected: Any, got: Any) -> None:
        checks.append({"kind": kind, "passed": bool(passed), "expected": expected, "got": got})

    add("status", answer.status == expect.status, expect.status, answer.status if not answer.error else f"{answer.status}: {answer.error}")
    if expect.answer_contains is not None:
        missing = [t for t in expect.answer_contains if t.lower() not in text.lower()]
        add("answer_contains", not missing, expect.answer_contains, text if not missing else f"{text!r} lacks {missing}")
    if expect.answer_equals is not None:
        add("answer_equals", _norm(text) == _norm(expect.answer_equals), expect.answer_equals, text)
    if expect.answer_regex is not None:
        add("answer_regex", re.search(expect.answer_regex, text, re.IGNORECASE) is not None, expect.answer_regex, text)
    if expect.count is not None:
        c = expect.count
        got: dict[str, Any] = {}
        ok = True
        if c.source in ("answer", "both"):
            n = first_number(text)
            got["answer"] = n
            ok &= n is not None and abs(n - c.value) <= c.tolerance
        if c.source in ("tool", "both"):
            n_tool = tool_count(answer, c.tool, c.label)
            got["tool"] = n_tool
            ok &= n_tool is not None and abs(n_tool - c.value) <= c.tolerance
        add("count", ok, f"{c.value} +- {c.tolerance} ({c.source})", got)
    if expect.tools is not None:
        used = sorted({s.tool for s in steps})
        missing = [t for t in expect.tools if t not in used]
        add("tools", not missing, expect.tools, used)
    if expect.evidence is not None:
        cited = [e.id for e in answer.evidence]
        missing = [pat for pat in expect.evidence if not any(fnmatch.fnmatchcase(c, pat) for c in cited)]
        add("evidence", not missing, expect.evidence, cited)
    for exp in expect.iou or []:
        boxes = [
            e.region["box"]
            for e in answer.evidence
            if e.region and (exp.image is None or e.region.get("image") == exp.image)
        ]
        best = max((iou(b, exp.box) for b in boxes), default=0.0)
        add("iou", best >= exp.threshold, f">= {exp.threshold} vs {exp.box}", round(best, 4))
    for exp in expect.output_contains or []:
        blobs = [json.dumps(s.output, ensure_ascii=False).lower() for s in steps if exp.tool is None or s.tool == exp.tool]
        missing = [t for t in exp.text if not any(t.lower() in b for b in blobs)]
        add("output_contains", bool(blobs) and not missing, exp.text, f"missing {missing}" if missing else "all found")
    return checks


# -- running ------------------------------------------------------------------------------------
class ScenarioRunner:
    """Runs scenarios on agents that share one ModelPool (one agent per profile; thread-safe).

    ``profile``: for scenarios that name none. ``planner``: for scenarios without a plan.
    ``server``: a ``visagent.client.RemoteServer`` that answers the scenarios whose profile it runs
    (the others run here).
    """

    def __init__(
        self,
        profile: str | None = None,
        config_path: str | Path | None = None,
        planner: str | None = None,
        pool: Any = None,
        overrides: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        self.profile = profile
        self.config_path = config_path
        self.planner = planner
        self.overrides = overrides or {}
        self.server = server
        self._pool = pool
        self._agents: dict[str, Any] = {}
        self._configs: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def pool(self) -> Any:
        """The model pool the local agents share (made when the first one is)."""
        from visagent.pool import ModelPool

        with self._lock:
            if self._pool is None:
                self._pool = ModelPool()
            return self._pool

    def config(self, scenario: Scenario) -> Any:
        from visagent.config import load_config

        profile = scenario.profile or self.profile
        key = profile or ""
        with self._lock:
            if key not in self._configs:
                self._configs[key] = load_config(self.config_path, profile=profile, overrides=self.overrides)
            return self._configs[key]

    def agent(self, scenario: Scenario) -> Any:
        from visagent.agent import Agent

        cfg = self.config(scenario)
        pool = self.pool
        with self._lock:
            if cfg.profile not in self._agents:
                self._agents[cfg.profile] = Agent(cfg, planner=self.planner, pool=pool)
            return self._agents[cfg.profile]

    def remote(self, scenario: Scenario) -> Any:
        """The server that runs ``scenario`` (it runs the scenario's profile and planner, and its
        plans name no local paths), or None."""
        from visagent.client import plan_dicts

        if self.server is None:
            return None
        plans = [plan_dicts(p) for p in scenario.plans()]
        if self.server.mismatch(self.config(scenario).profile, None if scenario.plan else self.planner, plans):
            return None
        return self.server

    def skip_reason(self, scenario: Scenario) -> str | None:
        """Why ``scenario`` cannot run here (a required family is tiny or missing), or None."""
        from visagent.checkpoints import is_available

        cfg = self.config(scenario)
        families = list(scenario.requires)
        if not scenario.plan and (self.planner or cfg.planner.kind) == "llava" and "planner" not in families:
            families.append("planner")
        for family in families:
            if family not in cfg.models:
                return f"requires model family '{family}', which is not configured"
            mc = cfg.models[family]
            if mc.checkpoint.startswith("tiny:"):
                return f"requires the real {family} checkpoint; profile '{cfg.profile}' serves {mc.checkpoint}"
            ok, where = is_available(mc.checkpoint, family=family, backend=mc.backend, cache_dir=cfg.cache_path)
            if not ok:
                return f"requires the real {family} checkpoint {mc.checkpoint} ({where})"
        return None

    def run(self, scenario: Scenario) -> dict[str, Any]:
        """Run one scenario -> result dict: ``id, file, name, passed, skipped, status, text, error,
        checks[], ms, tools[], evidence[], profile, answer`` (``answer``: the Answer as JSON)."""
        from visagent.planners import ScriptedPlanner

        result: dict[str, Any] = {
            "id": scenario.id, "key": scenario.key, "file": str(scenario.file.resolve()), "name": scenario.name, "passed": False,
            "skipped": None, "status": None, "text": None, "error": None, "checks": [], "ms": 0.0,
            "tools": [], "evidence": [], "profile": scenario.profile or self.profile, "answer": None,
        }  # fmt: skip
        t0 = time.perf_counter()
        try:
            reason = self.skip_reason(scenario)
            if reason:
                result["skipped"] = reason
                result["passed"] = None
                return result
            cfg = self.config(scenario)
            result["profile"] = cfg.profile
            plans = scenario.plans()
            all_steps: list[ToolStep] = []
            answer: Answer | None = None
            # the turns of a scenario are one conversation: media, region ids and call numbers carry over
            remote = self.remote(scenario)
            if remote is not None:
                conversation: Any = remote.chat(scenario.media_sources(), max_steps=scenario.max_steps, limits=cfg.limits)
            else:
                conversation = self.agent(scenario).chat(scenario.media_sources(), max_steps=scenario.max_steps)
            for k, question in enumerate(scenario.turns):
                planner = ScriptedPlanner(plans[k]) if plans else None
                answer = conversation.ask(question, planner=planner)
                all_steps += answer.trace.tool_steps()
                if not answer.ok:
                    break
            assert answer is not None
            result.update(
                status=answer.status, text=answer.answer, error=answer.error,
                tools=[s.tool for s in all_steps], evidence=[e.id for e in answer.evidence],
                answer=answer.model_dump(mode="json"),
            )  # fmt: skip
            result["checks"] = check(scenario.expect, answer, all_steps)
            result["passed"] = all(c["passed"] for c in result["checks"])
        except UsageError as exc:
            result.update(status="failed", error=f"{type(exc).__name__}: {exc}", passed=False)
            result["checks"] = [{"kind": "status", "passed": False, "expected": scenario.expect.status, "got": f"error: {exc}"}]
        except Exception as exc:  # noqa: BLE001 - one broken scenario does not stop the suite
            result.update(status="failed", error=f"{type(exc).__name__}: {exc}", passed=False)
            result["checks"] = [{"kind": "status", "passed": False, "expected": scenario.expect.status, "got": f"error: {exc}"}]
        finally:
            result["ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return result


def failure_text(result: dict[str, Any]) -> str:
    """Human-readable lines for a failed result."""
    lines = [f"{result['id']}: FAILED" + (f" ({result['error']})" if result.get("error") else "")]
    if result.get("text") is not None:
        lines.append(f"  answer: {result['text']!r}")
    for c in result.get("checks", []):
        if not c["passed"]:
            lines.append(f"  {c['kind']}: expected {c['expected']}, got {c['got']}")
    return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{total, passed, failed, skipped, kinds: {kind: [passed, total]}, p50_ms, p95_ms}``."""
    ran = [r for r in results if not r.get("skipped")]
    kinds: dict[str, list[int]] = {}
    for r in ran:
        for c in r.get("checks", []):
            k = kinds.setdefault(c["kind"], [0, 0])
            k[0] += int(bool(c["passed"]))
            k[1] += 1
    ms = [float(r.get("ms", 0.0)) for r in ran]
    return {
        "total": len(results),
        "passed": sum(1 for r in ran if r.get("passed")),
        "failed": sum(1 for r in ran if not r.get("passed")),
        "skipped": len(results) - len(ran),
        "kinds": {k: kinds[k] for k in KINDS if k in kinds},
        "p50_ms": round(percentile(ms, 0.5), 1),
        "p95_ms": round(percentile(ms, 0.95), 1),
    }


def write_junit(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """JUnit XML (one ``testcase`` per scenario; ``failure`` / ``skipped`` children)."""
    import xml.etree.ElementTree as ET

    s = summarize(results)
    suite = ET.Element(
        "testsuite",
        name="visagent scenarios",
        tests=str(s["total"]),
        failures=str(s["failed"]),
        skipped=str(s["skipped"]),
        errors="0",
        time=f"{sum(float(r.get('ms', 0)) for r in results) / 1000:.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite, "testcase", classname=os.path.relpath(r["file"]) if r.get("file") else "", name=r["name"], time=f"{float(r.get('ms', 0)) / 1000:.3f}"
        )
        if r.get("skipped"):
            ET.SubElement(case, "skipped", message=str(r["skipped"]))
        elif not r.get("passed"):
            failed = [c["kind"] for c in r.get("checks", []) if not c["passed"]]
            el = ET.SubElement(case, "failure", message=f"failed: {', '.join(failed) or 'run'}")
            el.text = failure_text(r)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(p, encoding="utf-8", xml_declaration=True)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The complete result lines of a results file (a line cut off by a kill is dropped)."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "id" in data:
            out.append(data)
    return out
