"""Scale-out on Ray Serve: each model family a deployment, the agent loop the ingress.

Layout of the Ray Serve application (``build_app``):

- one **model deployment** per served family (``detect``, ``segment``, ...; config
  ``ray.families``), named after the family. Each replica loads the family's model through the
  normal ``Models`` / ``ModelPool`` / registered loader (the same checkpoints and options as
  ``visagent serve``) when it starts, so a replica that cannot load its model fails at start
  with ``cannot start the 'FAMILY' deployment: checkpoint C (backend B): REASON``. It serves the
  bundle's methods: ``call(method, args, kwargs)`` runs one, and ``call_many(method, items)``
  runs a batched entry point (``detect_many``, ``generate_many``, ``embed_many``,
  ``decode_many``, ``image_features_many``, ...; each takes a list, returns a list of the same
  length) with ``@serve.batch``: concurrent calls from every ingress replica are gathered, their
  items concatenated into one call of the method (at most ``models.FAMILY.max_batch`` calls per
  batch, waiting at most ``models.FAMILY.batch_wait_ms``). A batch that raises is run again call
  by call, so each caller gets its own result or error. Errors raised by the model travel back
  as values and are raised again, with their own type, in the caller.
- the **ingress deployment** (``ingress``) holds the ``Agent`` (loop, planner, sessions, media)
  and serves visagent's own FastAPI app (``visagent.server.create_app``) through
  ``@serve.ingress``: the HTTP API, auth, limits, sessions, streaming and trace options are the
  same code as ``visagent serve``. Its model pool is a ``RemotePool``: for a served family,
  ``ctx.model(family)`` (and ``ctx.batched(family)``) yield a ``RemoteBundle`` proxy whose
  attributes are the bundle's plain attributes (``kind``, ``backend``, ``logit_scale``, ...,
  read once from a replica) and whose methods call the deployment from the tool's worker thread
  (``handle.call.remote(...).result()``). The proxy holds no lock, and calls are not gathered in
  the ingress: many calls are in flight at once, spread over the replicas by Ray Serve's router
  and gathered there. Families not served (the planner by default) load in the ingress replica.
- **SAM image embeddings travel with the call**: ``embed`` returns the image's embedding state
  (tensors moved to the CPU), the segment tool keeps it in the session's media cache as it does
  in one process, and sends it with every ``decode``. Any replica can decode for any image, so
  replicas stay interchangeable (no sticky routing, nothing lost when a replica dies or is
  scaled down); the cost is the embedding's size per call (SAM ViT: 256 x 64 x 64 floats, 4 MB at
  fp32), small next to a decode on the GPU. Tensors arriving at a GPU replica move to its device.
- **Faults**: a call whose replica died (``RayActorError``, ``ActorDiedError``,
  ``ActorUnavailableError``) is sent again, up to ``ray.retries`` times with a short backoff;
  Ray Serve's router sends it to a live replica. Retries are counted per family in
  ``/v1/models`` (``pool.deployments``) and ``/healthz`` (``deployments``). A call still failing
  raises a ``ToolError`` that the run records as an error step (the request is answered; the
  planner sees the failure). The ingress itself keeps serving.

Front doors: ``visagent serve --ray`` (``serve_ray``: starts or joins Ray, deploys, serves on
``ray.host``/``ray.port`` until Ctrl-C, then shuts Serve down) and the application builder
``app`` for Ray's CLI: ``serve run visagent.ray_serve:app config_path=visagent.yaml`` (args:
``config_path``, ``profile``, ``planner``), or a Serve config file for ``serve deploy`` naming
``import_path: visagent.ray_serve:app`` (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from visagent.errors import ModelUnavailableError, ToolError, UsageError
from visagent.pool import ModelKey, ModelPool

try:
    import ray
    from ray import serve
except ImportError:  # pragma: no cover - the extra is not installed
    raise UsageError("Ray Serve is not installed: pip install 'visagent[ray]'") from None

if TYPE_CHECKING:  # pragma: no cover
    from visagent.config import Config, RayDeployment
    from visagent.server import ServerSettings

log = logging.getLogger(__name__)

__all__ = ["INGRESS", "ModelDeployment", "RemoteBundle", "RemotePool", "VisagentIngress", "app", "build_app", "serve_ray"]

INGRESS = "ingress"
#: the start of the message a model deployment fails with when its model cannot load
START_ERROR = "cannot start the '"
_START_LINE = re.compile(r"cannot start the '[^']+' deployment: [^\n]*")


class DeploymentStartError(RuntimeError):
    """A model deployment's replica could not load its model (the message names family, checkpoint, reason)."""


# -- values crossing the wire ----------------------------------------------------------------
def _plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)) and depth < 2 and len(value) <= 64:
        return all(_plain(v, depth + 1) for v in value)
    return False


def bundle_surface(bundle: Any) -> dict[str, Any]:
    """``{"attributes": {name: plain value}, "methods": [name]}``: what a proxy of ``bundle`` can
    read and call (public names only; attributes are str / int / float / bool / None, or short
    lists of those)."""
    attributes: dict[str, Any] = {}
    methods: list[str] = []
    for name in dir(bundle):
        if name.startswith("_"):
            continue
        try:
            value = getattr(bundle, name)
        except Exception:  # noqa: BLE001 - a property that cannot be read is not part of the surface
            continue
        if callable(value) and not isinstance(value, type):
            methods.append(name)
        elif _plain(value):
            attributes[name] = value
    return {"attributes": attributes, "methods": methods}


def _map_tensors(obj: Any, fn: Callable[[Any], Any], depth: int = 0) -> Any:
    """``obj`` with every torch tensor inside (dicts, lists, tuples, dataclasses; 5 levels) mapped by ``fn``."""
    torch = sys.modules.get("torch")
    if torch is None or depth > 5:
        return obj
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, fn, depth + 1) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_map_tensors(v, fn, depth + 1) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            value = getattr(obj, f.name)
            mapped = _map_tensors(value, fn, depth + 1)
            if mapped is not value:
                changes[f.name] = mapped
        return dataclasses.replace(obj, **changes) if changes else obj
    return obj


def to_cpu(obj: Any) -> Any:
    """Tensors moved to the CPU (what leaves a replica: a GPU tensor cannot be read elsewhere)."""
    return _map_tensors(obj, lambda t: t if t.device.type == "cpu" else t.detach().cpu())


def to_device(obj: Any, device: str) -> Any:
    """Tensors moved to ``device`` (what arrives at a GPU replica); unchanged on the CPU."""
    if not device or device == "cpu":
        return obj
    return _map_tensors(obj, lambda t: t.to(device))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the model deployment --------------------------------------------------------------------
class ModelDeployment:
    """One replica of a model family's deployment (see the module docstring).

    ``config``: the visagent config as JSON (``Config.model_dump(mode="json")``); ``family``: the
    model family this deployment serves."""

    def __init__(self, config: dict[str, Any], family: str) -> None:
        from visagent.config import Config
        from visagent.context import Models

        cfg = Config.model_validate(config)
        self.family = family
        self.models = Models(cfg, ModelPool())
        mc = cfg.model(family)
        try:
            with self.models.use(family) as bundle:
                self.surface = bundle_surface(bundle)
                self.device = str(getattr(bundle, "device", "cpu") or "cpu")
        except Exception as exc:  # noqa: BLE001 - named below, in one line
            raise DeploymentStartError(
                f"{START_ERROR}{family}' deployment: checkpoint {mc.checkpoint} (backend {mc.backend}): {_first_line(exc)}"
            ) from None
        self._gather.set_max_batch_size(max(1, int(getattr(mc, "max_batch", 8))))
        self._gather.set_batch_wait_timeout_s(max(0.0, float(getattr(mc, "batch_wait_ms", 2.0))) / 1000)
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (a direct test)
            self.replica = f"pid{os.getpid()}"
        self._lock = threading.Lock()
        self.calls = 0
        self.batches: Counter[int] = Counter()  # calls gathered per batch -> batches
        self.items = 0
        self.fallbacks = 0
        log.info("deployment %s replica %s ready on %s", family, self.replica, self.device)

    # -- what the proxy asks ----------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """``{"family", "replica", "device", "attributes", "methods"}``."""
        return {"family": self.family, "replica": self.replica, "device": self.device, **self.surface}

    def stats(self) -> dict[str, Any]:
        """This replica's counts: ``calls``, ``items``, ``batches`` (``{calls in the batch: batches}``, keys
        as strings), ``max_batch_seen``, ``fallbacks`` (batches re-run call by call)."""
        with self._lock:
            return {
                "family": self.family,
                "replica": self.replica,
                "pid": os.getpid(),
                "calls": self.calls,
                "items": self.items,
                "batches": {str(k): v for k, v in sorted(self.batches.items())},
                "max_batch_seen": max(self.batches, default=0),
                "fallbacks": self.fallbacks,
            }

    async def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
        """Run ``bundle.<method>(*args, **kwargs)`` -> ``("ok", result, info)`` or ``("error", exception, info)``."""
        with self._lock:
            self.calls += 1
        status, value = await asyncio.to_thread(self._run, method, args, kwargs)
        return status, value, {"replica": self.replica, "batch": 1}

    async def call_many(self, method: str, items: list[Any]) -> tuple[str, Any, dict[str, Any]]:
        """Run the batched entry point ``bundle.<method>(items)``, gathered with concurrent calls ->
        ``("ok", results, info)`` (one result per item) or ``("error", exception, info)``;
        ``info``: ``{"replica", "batch"}`` (calls in the batch this one ran in)."""
        with self._lock:
            self.calls += 1
        status, value, size = await self._gather((method, list(items)))
        return status, value, {"replica": self.replica, "batch": size}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _gather(self, calls: list[tuple[str, list[Any]]]) -> list[tuple[str, Any, int]]:
        with self._lock:
            self.batches[len(calls)] += 1
            self.items += sum(len(items) for _, items in calls)
        return await asyncio.to_thread(self._run_batch, calls)

    # -- running -------------------------------------------------------------------------
    def _run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
        if method.startswith("_") or method not in self.surface["methods"]:
            return "error", ToolError(f"the {self.family} model has no method '{method}'")
        try:
            with self.models.use(self.family) as bundle:
                result = getattr(bundle, method)(*to_device(tuple(args), self.device), **to_device(dict(kwargs), self.device))
            return "ok", to_cpu(result)
        except Exception as exc:  # noqa: BLE001 - travels back to the caller, raised there
            return "error", _portable(exc)

    def _run_batch(self, calls: list[tuple[str, list[Any]]]) -> list[tuple[str, Any, int]]:
        size = len(calls)
        out: list[tuple[str, Any, int]] = [("error", RuntimeError("not run"), size)] * size
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (method, _) in enumerate(calls):
            groups[method].append(i)
        for method, idxs in groups.items():
            flat = [item for i in idxs for item in calls[i][1]]
            status, value = self._run(method, (flat,), {})
            if status == "ok" and isinstance(value, (list, tuple)) and len(value) == len(flat):
                pos = 0
                for i in idxs:
                    n = len(calls[i][1])
                    out[i] = ("ok", list(value[pos : pos + n]), size)
                    pos += n
                continue
            if status == "ok":
                value = ToolError(f"{self.family}.{method} returned {len(value) if hasattr(value, '__len__') else '?'} results for {len(flat)} items")
            if len(idxs) == 1:
                out[idxs[0]] = ("error", value, size)
                continue
            with self._lock:
                self.fallbacks += 1
            for i in idxs:  # one bad call fails only its caller
                status, one = self._run(method, (list(calls[i][1]),), {})
                out[i] = (status, one, size)
        return out


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it can be pickled back to the caller, else a ``ToolError`` with its message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        exc.__traceback__ = None
        return exc
    except Exception:  # noqa: BLE001
        return ToolError(f"{type(exc).__name__}: {_first_line(exc)}")


# -- the ingress side: a pool whose served families are proxies -------------------------------
_RETRYABLE: tuple[type[BaseException], ...] = (ray.exceptions.RayActorError,)


class RemoteBundle:
    """Stands in for a family's loaded bundle in the ingress: plain attributes read from a
    replica, methods run on the deployment (``RemotePool.call``)."""

    def __init__(self, pool: "RemotePool", family: str, surface: dict[str, Any]) -> None:
        self._pool = pool
        self._family = family
        self._attributes = dict(surface.get("attributes", {}))
        self._methods = set(surface.get("methods", ()))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._attributes:
            return self._attributes[name]
        if name not in self._methods:
            raise AttributeError(f"the {self._family} model has no attribute '{name}'")
        pool, family = self._pool, self._family

        def method(*args: Any, **kwargs: Any) -> Any:
            return pool.call(family, name, args, kwargs)

        method.__name__ = name
        return method

    def __repr__(self) -> str:
        return f"RemoteBundle({self._family!r})"


class _DirectBatcher:
    """``pool.batcher(...)`` for a served family: each item goes to the deployment at once, as
    ``op([item])`` (the deployment gathers concurrent calls)."""

    def __init__(self, pool: "RemotePool", family: str, op: str) -> None:
        self.pool, self.family, self.op = pool, family, op

    def submit(self, item: Any, alive: Callable[[], bool] | None = None) -> Any:
        return self.pool.call(self.family, self.op, ([item],), {})[0]

    def stats(self) -> dict[str, Any]:
        return {}


class _NoGroup:
    def expect(self) -> Any:
        return nullcontext()


@dataclasses.dataclass
class _FamilyStats:
    calls: int = 0
    retries: int = 0
    failed: int = 0
    replicas: Counter = dataclasses.field(default_factory=Counter)  # replica id -> calls answered
    batch_sizes: Counter = dataclasses.field(default_factory=Counter)  # batch size -> calls

    def view(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "retries": self.retries,
            "failed": self.failed,
            "replicas_seen": dict(self.replicas),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "max_batch_seen": max(self.batch_sizes, default=0),
        }


class RemotePool(ModelPool):
    """A ``ModelPool`` whose families in ``handles`` are served by Ray deployments (see the module
    docstring); other families load here as usual.

    ``handles``: family -> ``DeploymentHandle``; ``retries``: times a call whose replica died is
    sent again; ``timeout_s``: longest wait for one call (None: no limit)."""

    remote = True

    def __init__(
        self, handles: dict[str, Any], retries: int = 2, timeout_s: float | None = None, budget_bytes: int | None = None
    ) -> None:
        super().__init__(budget_bytes)
        self.handles = dict(handles)
        self.retries = retries
        self.timeout_s = timeout_s
        self._bundles: dict[str, RemoteBundle] = {}
        self._stats: dict[str, _FamilyStats] = {f: _FamilyStats() for f in self.handles}
        self._slock = threading.Lock()
        self.status: dict[str, Any] = {}  # family -> {"status", "replicas": {state: n}}, refreshed by the ingress

    def serves_remotely(self, family: str) -> bool:
        return family in self.handles

    # -- the pool's doors ------------------------------------------------------------------
    @contextmanager
    def use(self, key: ModelKey, loader: Callable[[], Any]) -> Iterator[Any]:
        if key.family not in self.handles:
            with super().use(key, loader) as value:
                yield value
            return
        yield self.bundle(key.family)

    def peek(self, key: ModelKey, load: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
        if key.family in self.handles:
            return self.bundle(key.family)
        return super().peek(key, load, *args, **kwargs)  # type: ignore[misc]

    def batch_group(self, key: ModelKey, *args: Any, **kwargs: Any) -> Any:
        if key.family in self.handles:
            return _NoGroup()
        return super().batch_group(key, *args, **kwargs)  # type: ignore[misc]

    def batcher(self, key: ModelKey, op: str, run: Callable[[list[Any]], list[Any]], *args: Any, **kwargs: Any) -> Any:
        if key.family in self.handles:
            return _DirectBatcher(self, key.family, op)
        return super().batcher(key, op, run, *args, **kwargs)  # type: ignore[misc]

    def resident(self, key: ModelKey) -> bool:
        return key.family in self.handles or super().resident(key)

    # -- calls -----------------------------------------------------------------------------
    def bundle(self, family: str) -> RemoteBundle:
        with self._slock:
            bundle = self._bundles.get(family)
        if bundle is None:
            surface = self._send(family, lambda h: h.describe.remote(), record=False)
            bundle = RemoteBundle(self, family, surface)
            with self._slock:
                self._bundles.setdefault(family, bundle)
        return bundle

    def call(self, family: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``method`` of ``family``'s model on its deployment (batched entry points, names
        ending in ``_many`` with one list argument, through ``call_many``)."""
        batched = method.endswith("_many") and len(args) == 1 and not kwargs and isinstance(args[0], (list, tuple))
        if batched:
            status, value, info = self._send(family, lambda h: h.call_many.remote(method, list(args[0])))
        else:
            status, value, info = self._send(family, lambda h: h.call.remote(method, tuple(args), dict(kwargs)))
        with self._slock:
            st = self._stats[family]
            st.replicas[str(info.get("replica"))] += 1
            st.batch_sizes[int(info.get("batch", 1))] += 1
        if status == "error":
            raise value
        return value

    def _send(self, family: str, request: Callable[[Any], Any], record: bool = True) -> Any:
        handle = self.handles[family]
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(0.1 * 2**attempt, 2.0))
            try:
                result = request(handle).result(timeout_s=self.timeout_s)
                if record:
                    with self._slock:
                        self._stats[family].calls += 1
                return result
            except _RETRYABLE as exc:
                last = exc
                with self._slock:
                    self._stats[family].retries += 1
                log.warning("a %s replica died during a call (%s); sending it again", family, _first_line(exc))
        with self._slock:
            self._stats[family].failed += 1
        raise ToolError(
            f"the {family} deployment lost this call {self.retries + 1} times (its replicas died: "
            f"{_first_line(last) if last else 'unknown'}); ray.retries sets how often a call is sent again"
        )

    # -- reporting ---------------------------------------------------------------------------
    def deployment_stats(self) -> dict[str, Any]:
        """Per served family: ``calls``, ``retries``, ``failed``, ``replicas_seen`` (replica id ->
        calls it answered), ``batch_sizes`` (``{size: calls}``: the size of the batch each call ran
        in), ``max_batch_seen``, and ``status`` / ``replicas`` (``{state: count}``) from Ray Serve."""
        with self._slock:
            out = {f: s.view() for f, s in self._stats.items()}
        for family, status in dict(self.status).items():
            if family in out:
                out[family].update(status)
        return out

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["deployments"] = self.deployment_stats()
        return out

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` adds: ``{"deployments": deployment_stats()}``."""
        return {"deployments": self.deployment_stats()}


def _serve_status(app_name: str) -> dict[str, Any]:
    """``{deployment: {"status", "replicas": {state: count}}}`` of ``app_name`` (empty when unknown)."""
    try:
        app_status = serve.status().applications.get(app_name)
    except Exception:  # noqa: BLE001 - a status we cannot read is left out
        return {}
    if app_status is None:
        return {}
    return {
        name: {"status": str(d.status), "replicas": {str(k): v for k, v in d.replica_states.items()}}
        for name, d in app_status.deployments.items()
    }


# -- the ingress ------------------------------------------------------------------------------
@serve.ingress()
class VisagentIngress:
    """The agent loop and visagent's HTTP API (``create_app``) over ``RemotePool``.

    ``config``: the visagent config as JSON; ``planner``: a planner spec (``--planner``) or None;
    ``handles``: family -> deployment (Ray Serve passes handles); ``settings``: the server
    settings as JSON."""

    def __init__(self, config: dict[str, Any], planner: str | None, handles: dict[str, Any], settings: dict[str, Any]) -> None:
        from visagent.agent import Agent
        from visagent.config import Config
        from visagent.secrets import redact
        from visagent.server import ServerSettings

        cfg = Config.model_validate(config)
        redact(cfg.model_dump(mode="json"))  # every secret value registered, so it is scrubbed
        self.settings = ServerSettings.model_validate(settings)
        self.app_name = cfg.ray.app_name
        self.pool = RemotePool(handles, retries=cfg.ray.retries, timeout_s=cfg.limits.tool_timeout_s, budget_bytes=cfg.pool.budget_bytes)
        self.agent = Agent(cfg, planner=planner, pool=self.pool)
        _ = self.agent.planner  # a bad planner spec fails at start
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="visagent-ray-status", daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.pool.status = _serve_status(self.app_name)
            self._stop.wait(5.0)

    def __serve_build_asgi_app__(self) -> Any:
        from visagent.server import create_app

        return create_app(self.agent, self.settings)

    def __del__(self) -> None:
        self._stop.set()


# -- building the application -----------------------------------------------------------------
def served_families(config: "Config") -> list[str]:
    """The families served as deployments (``ray.families``; default: every configured family but the planner)."""
    families = config.ray.families
    if families is None:
        return [f for f in config.models if f != "planner"]
    return list(dict.fromkeys(families))


def check_ray_config(config: "Config") -> None:
    """Refuse a ``ray:`` section that cannot be deployed, in one line naming the key."""
    configured = sorted(config.models)
    families = served_families(config)
    for family in families:
        if family not in config.models:
            raise UsageError(f"ray.families: no model configured for '{family}'; configured: {', '.join(configured)}")
    for family in config.ray.deployments:
        if family not in families:
            raise UsageError(
                f"ray.deployments.{family}: '{family}' is not a served family; served: {', '.join(families) or 'none'} (ray.families)"
            )
    sections = {f"ray.deployments.{f}": d for f, d in config.ray.deployments.items()}
    sections.update({"ray.default": config.ray.default, "ray.ingress": config.ray.ingress})
    for where, d in sections.items():
        if d.num_replicas is not None and d.autoscaling is not None:
            raise UsageError(f"{where}: set num_replicas or autoscaling, not both")
        if d.autoscaling is not None and d.autoscaling.min_replicas > d.autoscaling.max_replicas:
            raise UsageError(
                f"{where}.autoscaling: min_replicas ({d.autoscaling.min_replicas}) is above max_replicas ({d.autoscaling.max_replicas})"
            )


def _options(d: "RayDeployment", name: str, ongoing: int) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        "max_ongoing_requests": d.max_ongoing_requests or ongoing,
    }
    if d.autoscaling is not None:
        opts["autoscaling_config"] = {
            "min_replicas": d.autoscaling.min_replicas,
            "max_replicas": d.autoscaling.max_replicas,
            "target_ongoing_requests": d.autoscaling.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = d.num_replicas or 1
    return opts


def _absolute(config: "Config") -> "Config":
    """``config`` with its folders made absolute (replicas do not run in this working directory)."""
    data = config.model_dump()
    data["cache_dir"] = str(config.cache_path.resolve())
    if config.limits.allowed_roots is not None:
        data["limits"]["allowed_roots"] = [str(Path(os.path.expanduser(r)).resolve()) for r in config.limits.allowed_roots]
    data["server"]["allowed_roots"] = [str(Path(os.path.expanduser(r)).resolve()) for r in config.server.allowed_roots]
    if config.server.trace_dir:
        data["server"]["trace_dir"] = str(Path(os.path.expanduser(config.server.trace_dir)).resolve())
    return type(config).model_validate(data)


def _absolute_planner(planner: str | None) -> str | None:
    if planner and planner.startswith("script:"):
        return "script:" + str(Path(planner[len("script:") :]).expanduser().resolve())
    return planner


def build_app(config: "Config", planner: str | None = None, settings: "ServerSettings | None" = None) -> Any:
    """The Ray Serve application (``serve.run(build_app(cfg))``): a model deployment per served
    family and the ingress. ``settings``: the server settings (default: ``config.server`` with the
    environment, as ``visagent serve`` reads them). Refuses a bad ``ray:`` section (``UsageError``)."""
    from visagent.server import load_settings

    check_ray_config(config)
    config = _absolute(config)
    if settings is None:
        settings = load_settings(config)
    settings = settings.model_copy(update={"allowed_roots": [str(Path(os.path.expanduser(r)).resolve()) for r in settings.allowed_roots]})
    if settings.trace_dir:
        settings = settings.model_copy(update={"trace_dir": str(Path(os.path.expanduser(settings.trace_dir)).resolve())})
    data = config.model_dump(mode="json")
    handles = {}
    for family in served_families(config):
        d = config.ray.deployments.get(family, config.ray.default)
        ongoing = 2 * max(1, int(getattr(config.model(family), "max_batch", 8)))
        try:
            handles[family] = serve.deployment(ModelDeployment).options(**_options(d, family, ongoing)).bind(data, family)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"ray.deployments.{family}: {_first_line(exc)}") from None
    ongoing = settings.max_concurrency + settings.max_queue + 16  # the server's own gate answers 429s, /healthz passes
    try:
        ingress = serve.deployment(VisagentIngress).options(**_options(config.ray.ingress, INGRESS, ongoing))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"ray.ingress: {_first_line(exc)}") from None
    return ingress.bind(data, _absolute_planner(planner), handles, settings.model_dump(mode="json"))


def prepare_checkpoints(config: "Config") -> None:
    """Build the served tiny checkpoints here, once, before replicas start (several replicas
    would otherwise build the same one at the same time)."""
    from visagent.context import Models

    models = Models(config, ModelPool())
    for family in served_families(config):
        if config.model(family).checkpoint.startswith("tiny:"):
            models.resolve(family)


def app(args: dict[str, str]) -> Any:
    """Application builder for Ray's CLI: ``serve run visagent.ray_serve:app config_path=visagent.yaml
    [profile=tiny] [planner=script:plan.yaml]`` (or ``args:`` of a Serve config file). The server
    settings come from the config's ``server:`` section and the environment (``VISAGENT_TOKEN``)."""
    from visagent.config import load_config

    unknown = sorted(set(args) - {"config_path", "profile", "planner"})
    if unknown:
        raise UsageError(f"unknown argument '{unknown[0]}' for visagent.ray_serve:app; use config_path, profile, planner")
    config = load_config(args.get("config_path") or None, profile=args.get("profile") or None)
    prepare_checkpoints(config)
    return build_app(config, planner=args.get("planner") or None)


# -- running it (visagent serve --ray) ---------------------------------------------------------
def start_ray(config: "Config") -> bool:
    """Join ``ray.address`` or start a local Ray instance (no dashboard); returns whether this
    call started it. Already connected: nothing to do (False)."""
    if ray.is_initialized():
        return False
    rc = config.ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if rc.address is None:
        kwargs.update(address="local", num_cpus=rc.num_cpus, num_gpus=rc.num_gpus, object_store_memory=rc.object_store_memory)
    else:
        kwargs["address"] = rc.address
    try:
        ray.init(**{k: v for k, v in kwargs.items() if v is not None or k == "address"})
    except Exception as exc:  # noqa: BLE001 - named in one line
        where = f"the Ray cluster at {rc.address} (ray.address)" if rc.address else "a local Ray instance"
        raise UsageError(f"cannot start or join {where}: {_first_line(exc)}") from None
    return True


def deploy(application: Any, config: "Config", host: str, port: int, route_prefix: str | None = "/") -> Any:
    """Start Serve's HTTP proxy on ``host:port``, deploy ``application`` under ``ray.app_name``
    at ``route_prefix`` and wait until it runs (``ray.start_timeout_s``). A deployment that fails
    raises ``ModelUnavailableError`` naming it and why. Returns the ingress handle."""
    rc = config.ray
    serve.start(http_options={"host": host, "port": port})
    failure: list[BaseException] = []
    handle: list[Any] = []

    def run() -> None:
        try:
            handle.append(serve.run(application, name=rc.app_name, route_prefix=route_prefix))
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="visagent-ray-deploy", daemon=True)
    thread.start()
    thread.join(rc.start_timeout_s)
    if handle:
        return handle[0]
    states = _serve_status(rc.app_name)
    message = _failure_message(rc.app_name, failure[0] if failure else None)
    if message:
        raise ModelUnavailableError(message)
    waiting = ", ".join(f"{name} ({s['status']})" for name, s in states.items() if s["status"] != "HEALTHY") or "the application"
    raise ModelUnavailableError(f"Ray Serve did not start {waiting} within {rc.start_timeout_s:g} s (ray.start_timeout_s)")


def _failure_message(app_name: str, exc: BaseException | None) -> str | None:
    """One line for a failed deployment: the model's own start error where a replica gave one."""
    texts = [str(exc)] if exc is not None else []
    try:
        app_status = serve.status().applications.get(app_name)
        if app_status is not None:
            texts.append(app_status.message or "")
            texts += [f"{name}: {d.message}" for name, d in app_status.deployments.items() if d.message]
    except Exception:  # noqa: BLE001
        pass
    for text in texts:
        found = _START_LINE.search(text)
        if found:
            return found.group(0).strip()
    for text in texts:
        for line in text.splitlines():
            if line.strip() and ("Error" in line or "error" in line):
                return f"Ray Serve could not deploy {app_name}: {line.strip()[:400]}"
    if exc is not None:
        return f"Ray Serve could not deploy {app_name}: {_first_line(exc)[:400]}"
    return None


def stop(started_ray: bool) -> None:
    """Shut Serve down (and Ray, where ``start_ray`` started it)."""
    try:
        serve.shutdown()
    finally:
        if started_ray:
            ray.shutdown()


def serve_ray(config: "Config", settings: "ServerSettings", planner: str | None = None, ready: Callable[[str, int], None] | None = None) -> None:
    """``visagent serve --ray``: build the application (a bad ``ray:`` section fails here, before
    Ray starts), start or join Ray, deploy, call ``ready(host, port)``, and serve until
    interrupted (Ctrl-C / SIGTERM); then shut Serve down."""
    import signal

    from visagent.server import is_loopback

    application = build_app(config, planner=planner, settings=settings)
    host = config.ray.host or settings.host
    port = config.ray.port if config.ray.port is not None else settings.port
    if not is_loopback(host) and not settings.token:
        raise UsageError(f"refusing to listen on {host} without a token: pass --token (or set VISAGENT_TOKEN), or set ray.host: 127.0.0.1")
    started = start_ray(config)
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        prepare_checkpoints(config)
        deploy(application, config, host, port)
        if ready is not None:
            ready(host, port)
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop(started)
