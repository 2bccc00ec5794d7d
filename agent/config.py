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
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from visagent.errors import UsageError
from visagent.safe import load_yaml_file
from visagent.secrets import redact

PROFILES = ("default", "tiny")

#: per model family: the real checkpoint (see MODEL_FACTS.md in the design notes) and the tiny random
#: checkpoint of the same architecture (``tiny:NAME`` is built on first use); OCR ships its weights
_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "planner": ("llava-hf/llava-1.5-7b-hf", "tiny:llava"),
    "caption": ("Salesforce/blip-image-captioning-large", "tiny:blip"),
    "vqa": ("Salesforce/blip-vqa-base", "tiny:blip-vqa"),
    "detect": ("IDEA-Research/grounding-dino-tiny", "tiny:grounding-dino"),
    "segment": ("facebook/sam-vit-base", "tiny:sam"),
    "search": ("openai/clip-vit-large-patch14", "tiny:clip"),
    "video": ("LanguageBind/Video-LLaVA-7B-hf", "tiny:video-llava"),
    "video_segment": ("facebook/sam2.1-hiera-small", "tiny:sam2-video"),
}
_BUILTIN = {"ocr": {"checkpoint": "builtin", "backend": "rapidocr"}}
DEFAULT_MODELS: dict[str, dict[str, Any]] = {f: {"checkpoint": real} for f, (real, _) in _CHECKPOINTS.items()} | _BUILTIN
TINY_MODELS: dict[str, dict[str, Any]] = {f: {"checkpoint": tiny} for f, (_, tiny) in _CHECKPOINTS.items()} | _BUILTIN


class ModelConfig(BaseModel):
    """One model family's settings. ``checkpoint``: Hub id, local folder/file, ``tiny:NAME`` or ``builtin``.

    Batching (families whose tools batch: detect, caption, vqa, search, segment): concurrent calls
    to the model from different runs are gathered into one forward of at most ``max_batch`` items
    (1 disables batching); a forward's leader waits at most ``batch_wait_ms`` for calls other runs
    have announced, never when nothing else is in flight (``visagent.batching``)."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str
    backend: str = "transformers"
    revision: str | None = None
    device: str | None = None  # None: the global device
    dtype: str | None = None  # None: the global dtype
    options: dict[str, Any] = Field(default_factory=dict)
    max_batch: int = Field(8, ge=1, le=1024)  # most items in one batched forward; 1: no batching
    batch_wait_ms: float = Field(2.0, ge=0, le=1000)  # how long a forward may wait for announced calls


class PromptSettings(BaseModel):
    """Prompt options every model planner takes."""

    model_config = ConfigDict(extra="forbid")
    examples: bool = True  # show the worked examples in the system prompt
    max_images: int = Field(4, ge=0)  # most images shown to the planner at once


class LlavaOptions(PromptSettings):
    """Options of the local LLaVA planner (``kind: llava``)."""

    format: str = "json"  # the action format: json, or llava_plus (LLaVA-Plus checkpoints)
    charset: Literal["ascii", "unicode"] = "ascii"  # characters constrained decoding allows in strings
    cache_implementation: str | None = None  # transformers' generate(cache_implementation=...)


class ChatOptions(PromptSettings):
    """Options of the chat planners (``kind: openai`` and ``kind: langchain``)."""

    tool_calling: bool | Literal["auto"] = "auto"  # native tool calls (true), JSON actions in text (false), or try (auto)
    context_tokens: int = Field(32768, ge=256)  # the served model's context window
    image_tokens: int = Field(600, ge=0)  # what one image costs in the context
    timeout: float = Field(120.0, gt=0)  # seconds per request
    max_retries: int = Field(1, ge=0)  # the client's retries of a failed request


class PlannerConfig(LlavaOptions, ChatOptions):
    """Planner settings. ``kind``: llava, openai, langchain, script:PATH.

    The common settings below, then each kind's typed options, all flat in the ``planner:``
    section (an option of another kind is allowed: switching ``--planner`` keeps one config
    file); ``llava()`` / ``chat()`` return the options of one kind."""

    kind: str = "llava"
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    constrained: bool = True
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"

    def llava(self) -> LlavaOptions:
        return LlavaOptions.model_validate(self.model_dump(include=set(LlavaOptions.model_fields)))

    def chat(self) -> ChatOptions:
        return ChatOptions.model_validate(self.model_dump(include=set(ChatOptions.model_fields)))


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_pixels: int = 50_000_000
    max_steps: int = 8
    max_retries: int = 3  # consecutive errors the planner may recover from before the run fails
    tool_timeout_s: float | None = 300.0
    allow_urls: bool = False
    max_video_pixels: int = 8_294_400  # 3840 x 2160 per frame
    #: folders that file paths from outside (media, tool arguments naming files or folders) must lie
    #: in, symlinks resolved; None: any path (a local user's own files), []: no paths at all
    allowed_roots: list[str] | None = None


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget_bytes: int | None = None  # None: no limit on CPU; 90% of GPU memory on CUDA


class ServerSettings(BaseModel):
    """Server settings (config section ``server:``; every key optional).

    - ``token``: bearer token required on ``/v1`` routes (None: no auth; env ``VISAGENT_TOKEN``).
    - ``allowed_roots``: folders whose files JSON requests may name by server-side path.
    - ``max_request_bytes``: largest request body (413 beyond).
    - ``max_files``: most media in one request, uploaded files or JSON items alike (413 beyond).
    - ``max_pixels``: most pixels per image (413 beyond); None: the agent's ``limits.max_pixels``.
    - ``max_total_pixels``: most decoded pixels of all a request's images together (413 beyond).
    - ``max_question_chars``: longest question, JSON or multipart (400 beyond).
    - ``max_steps``: the largest ``max_steps`` a request may ask for; None: ``limits.max_steps``.
    - ``timeout_s``: wall time per request (504 beyond; the run stops at its next step, and stops
      loading media).
    - ``max_concurrency``: runs at once; ``max_queue``: requests waiting for a slot (429 beyond).
    - ``read_timeout_s``: the whole time a request's headers and body may take to arrive (the
      connection is closed beyond, however slowly the bytes trickle in).
    - ``max_connections``: open connections in all (503 beyond); ``max_connections_per_client``:
      open connections per client address (closed at once beyond); ``max_requests_per_client``:
      requests in progress per client address (429 beyond).
    - ``include_trace``: whether answers carry the full trace by default.
    - ``ui``: serve the web page (``visagent.ui``) at ``/ui``, behind the same token.
    - ``trace_dir``: folder where each request's trace is written as ``<trace.meta.run_id>.jsonl``,
      with copies of its inputs, so that any request can be inspected and replayed.
    - ``max_sessions`` / ``session_ttl_s``: sessions kept between requests (``"session": "new"``),
      and how long an unused one is kept (see ``visagent.http_sessions``).
    - ``allow_plans``: whether a request may carry a scripted ``plan`` (``visagent ask --planner
      script:PLAN.yaml`` against a server sends its plan); its steps are calls any planner could make.
    """

    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: str | None = None
    allowed_roots: list[str] = Field(default_factory=list)
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_files: int = Field(8, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    max_total_pixels: int = Field(200_000_000, ge=1)
    max_question_chars: int = Field(4000, ge=1)
    max_steps: int | None = Field(None, ge=1)
    timeout_s: float = Field(300.0, gt=0)
    max_concurrency: int = Field(2, ge=1)
    max_queue: int = Field(16, ge=0)
    read_timeout_s: float = Field(20.0, gt=0)
    max_connections: int = Field(128, ge=1)
    max_connections_per_client: int = Field(32, ge=1)
    max_requests_per_client: int = Field(16, ge=1)
    include_trace: bool = True
    trace_dir: str | None = None
    mcp_images: bool = True  # /mcp results carry the regions drawn as image content
    ui: bool = False  # the web page at /ui (visagent serve --ui; needs the ui extra)
    max_sessions: int = Field(64, ge=0)
    session_ttl_s: float = Field(1800.0, gt=0)
    allow_plans: bool = True


class RayAutoscaling(BaseModel):
    """Replicas added and removed under load (Ray Serve's ``autoscaling_config``)."""

    model_config = ConfigDict(extra="forbid")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)  # requests in flight per replica Ray Serve aims at


class RayDeployment(BaseModel):
    """One Ray Serve deployment: ``num_replicas`` fixed, or ``autoscaling`` (not both); the
    resources of each replica (``num_gpus`` / ``num_cpus``, fractions allowed); the requests one
    replica takes at once before Ray Serve queues them (``max_ongoing_requests``)."""

    model_config = ConfigDict(extra="forbid")
    num_replicas: int | None = Field(None, ge=1)  # None: 1, or the autoscaling range
    autoscaling: RayAutoscaling | None = None
    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(1.0, ge=0)
    max_ongoing_requests: int | None = Field(None, ge=1)  # None: 2 x max_batch of the family (ingress: its limits)


class RayConfig(BaseModel):
    """Ray Serve settings (config section ``ray:``; used by ``visagent serve --ray`` and the
    ``visagent.ray_serve:app`` builder, see docs/scaling.md).

    - ``address``: the Ray cluster to join (``auto``, ``ray://HOST:10001``, ``HOST:6379``); None
      starts a local Ray instance (``num_cpus`` / ``num_gpus`` / ``object_store_memory`` size it).
    - ``families``: the model families served as deployments; None: every configured family but
      the planner (the planner runs in the ingress, or behind an OpenAI-compatible endpoint).
      A family not listed loads in the ingress replica, as in ``visagent serve``.
    - ``default``: the deployment settings of every family without its own entry in
      ``deployments`` (``deployments.detect: {num_replicas: 2, num_gpus: 0.25}``).
    - ``ingress``: the deployment holding the agent loop, sessions and the HTTP API.
    - ``host`` / ``port``: where Ray Serve's HTTP proxy listens; None: ``server.host`` /
      ``server.port``.
    - ``retries``: how many times a model call whose replica died is sent again (to another
      replica); beyond, the call fails with an error the run records.
    - ``app_name``: the Ray Serve application's name; ``start_timeout_s``: how long deployments
      may take to start before ``visagent serve --ray`` gives up naming the ones still starting.
    """

    model_config = ConfigDict(extra="forbid")
    address: str | None = None
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)
    object_store_memory: int | None = Field(None, ge=78_643_200)  # bytes; Ray's minimum is 75 MiB
    families: list[str] | None = None
    default: RayDeployment = Field(default_factory=RayDeployment)
    deployments: dict[str, RayDeployment] = Field(default_factory=dict)
    ingress: RayDeployment = Field(default_factory=RayDeployment)
    host: str | None = None
    port: int | None = Field(None, ge=0, le=65535)
    retries: int = Field(2, ge=0, le=10)
    app_name: str = Field("visagent", pattern=r"^[A-Za-z0-9_.-]+$")
    start_timeout_s: float = Field(600.0, gt=0)


class Config(BaseModel):
    """The whole configuration. ``model_dump()``, secrets masked (``visagent.secrets.redact``), is
    recorded in every trace. Unknown keys are errors naming the nearest valid key."""

    model_config = ConfigDict(extra="forbid")
    profile: Literal["default", "tiny"] = "default"
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: str = "~/.cache/visagent"
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    limits: Limits = Field(default_factory=Limits)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    server: ServerSettings = Field(default_factory=ServerSettings)
    ray: RayConfig = Field(default_factory=RayConfig)

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
        data = load_yaml_file(p, "config file") or {}
    except ValueError as exc:  # BoundsError included
        raise UsageError(str(exc)) from None
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


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section at ``loc`` (the model that rejected an extra key)."""
    model: Any = Config
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            if model is Config or not isinstance(part, str):
                return []
            # a mapping of sections (models.FAMILY): step into its value type
            model = ModelConfig if model == "models" else model[1] if isinstance(model, tuple) else None
            continue
        annotation = field.annotation
        values = typing.get_args(annotation) if typing.get_origin(annotation) is dict else ()
        if part == "models":
            model = "models"
        elif values and isinstance(values[-1], type) and issubclass(values[-1], BaseModel):
            model = ("mapping", values[-1])  # e.g. ray.deployments.FAMILY
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(getattr(model, "model_fields", {}))


def _format_validation(exc: ValidationError, origin: str) -> str:
    import difflib

    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        valid = _fields_at(tuple(err["loc"][:-1]))
        near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f" (did you mean '{'.'.join([*map(str, err['loc'][:-1]), near[0]])}'?)" if near else (
            f" (valid keys here: {', '.join(valid)})" if valid else ""
        )
        return f"unknown configuration key{origin}: {loc}{hint}"
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
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise UsageError(_format_validation(exc, f" ({path})" if path else "")) from None
    redact(config.model_dump(mode="json"))  # registers every secret value, so it is scrubbed wherever it would appear
    return config
