"""Configuration: one YAML file + environment variables + CLI flags, over a profile's defaults.

Precedence (lowest first): profile defaults < config file < environment < explicit overrides.

Environment variables:
- ``VISAGENT_CONFIG``: path of the YAML config file.
- ``VISAGENT_PROFILE``, ``VISAGENT_DEVICE``, ``VISAGENT_DTYPE``, ``VISAGENT_CACHE_DIR``.
- ``VISAGENT__<section>__<key>...``: any nested key, e.g.
  ``VISAGENT__models__detect__checkpoint=/models/gdino`` or ``VISAGENT__limits__max_steps=12``
  (values are parsed as YAML scalars).

Profiles: ``default`` serves the real checkpoints; ``tiny`` serves tiny random checkpoints of the
same architectures, built locally on first use (real pipeline, meaningless answers).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import UsageError

PROFILES = ("default", "tiny")

#: real checkpoints per model family (see MODEL_FACTS.md in the design notes)
DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    "planner": {"checkpoint": "llava-hf/llava-1.5-7b-hf"},
    "caption": {"checkpoint": "Salesforce/blip-image-captioning-large"},
    "vqa": {"checkpoint": "Salesforce/blip-vqa-base"},
    "detect": {"checkpoint": "IDEA-Research/grounding-dino-tiny"},
    "segment": {"checkpoint": "facebook/sam-vit-base"},
    "search": {"checkpoint": "openai/clip-vit-large-patch14"},
    "video": {"checkpoint": "LanguageBind/Video-LLaVA-7B-hf"},
    "ocr": {"checkpoint": "builtin", "backend": "rapidocr"},
}

#: tiny random checkpoints of the same architectures (``tiny:NAME`` is built on first use)
TINY_MODELS: dict[str, dict[str, Any]] = {
    "planner": {"checkpoint": "tiny:llava"},
    "caption": {"checkpoint": "tiny:blip"},
    "vqa": {"checkpoint": "tiny:blip-vqa"},
    "detect": {"checkpoint": "tiny:grounding-dino"},
    "segment": {"checkpoint": "tiny:sam"},
    "search": {"checkpoint": "tiny:clip"},
    "video": {"checkpoint": "tiny:video-llava"},
    "ocr": {"checkpoint": "builtin", "backend": "rapidocr"},
}


class ModelConfig(BaseModel):
    """One model family's settings. ``checkpoint``: Hub id, local folder/file, ``tiny:NAME`` or ``builtin``."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str
    backend: str = "transformers"
    revision: str | None = None
    device: str | None = None  # None: the global device
    dtype: str | None = None  # None: the global dtype
    options: dict[str, Any] = Field(default_factory=dict)


class PlannerConfig(BaseModel):
    """Planner settings. ``kind``: llava, openai, langchain, script:PATH."""

    model_config = ConfigDict(extra="allow")
    kind: str = "llava"
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    constrained: bool = True
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_pixels: int = 50_000_000
    max_steps: int = 8
    max_retries: int = 3  # consecutive errors the planner may recover from before the run fails
    tool_timeout_s: float | None = 300.0
    allow_urls: bool = False
    max_video_pixels: int = 8_294_400  # 3840 x 2160 per frame


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget_bytes: int | None = None  # None: no limit on CPU; 90% of GPU memory on CUDA


class Config(BaseModel):
    """The whole configuration. ``model_dump()`` is recorded in every trace."""

    model_config = ConfigDict(extra="allow")
    profile: Literal["default", "tiny"] = "default"
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: str = "~/.cache/visagent"
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    limits: Limits = Field(default_factory=Limits)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    server: dict[str, Any] = Field(default_factory=dict)

    @property
    def cache_path(self) -> Path:
        return Path(os.path.expanduser(self.cache_dir))

    def model(self, family: str) -> ModelConfig:
        try:
            return self.models[family]
        except KeyError:
            raise UsageError(
                f"no model configured for '{family}'; configured: {', '.join(sorted(self.models))}"
            ) from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def profile_defaults(profile: str) -> dict[str, Any]:
    if profile not in PROFILES:
        raise UsageError(f"unknown profile '{profile}'; available: {', '.join(PROFILES)}")
    models = TINY_MODELS if profile == "tiny" else DEFAULT_MODELS
    return {"profile": profile, "models": copy.deepcopy(models)}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(f"config file {p} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {p} must hold a mapping at the top level")
    return data


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, key in (
        ("VISAGENT_PROFILE", "profile"),
        ("VISAGENT_DEVICE", "device"),
        ("VISAGENT_DTYPE", "dtype"),
        ("VISAGENT_CACHE_DIR", "cache_dir"),
    ):
        if env.get(name):
            out[key] = env[name]
    for name, raw in env.items():
        if not name.startswith("VISAGENT__"):
            continue
        path = [p for p in name[len("VISAGENT__") :].split("__") if p]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _format_validation(exc: ValidationError, origin: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"invalid configuration{origin}: {loc}: {err['msg']}"


def load_config(
    path: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build the configuration. ``overrides`` is a nested dict (CLI flags, ``Agent.load`` kwargs)."""
    env = os.environ if environ is None else environ
    path = path or env.get("VISAGENT_CONFIG") or None
    file_data = read_config_file(path) if path else {}
    env_data = env_overrides(env)
    overrides = overrides or {}
    chosen = profile or overrides.get("profile") or env_data.get("profile") or file_data.get("profile") or "default"
    data = profile_defaults(chosen)
    for layer in (file_data, env_data, overrides):
        data = _merge(data, layer)
    data["profile"] = chosen
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise UsageError(_format_validation(exc, f" ({path})" if path else "")) from None
