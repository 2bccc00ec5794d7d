"""The tool contract.

A tool is a class with ``name``, ``description``, ``Input`` and ``Output`` (pydantic models) and
``run(input, ctx) -> Output``; ``Input`` / ``Output`` left out are read from ``run``'s annotations. ``Output.observation()`` is the short text the planner sees; the
typed output is the artifact callers get. A wrongly declared tool fails when its class is defined
(at import).

Region ids: every localized result carries an id unique within a session, ``<prefix>_<n>_<i>``
where n is the 1-based number of the tool call and i the 0-based index in its output (``det_2_0``,
``mask_3_1``, ``ocr_1_4``). A tool declares the prefixes it makes in ``region_prefixes``;
``ctx.region_id(prefix, i)`` makes them (``visagent.ids`` owns the format).
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from visagent import ids

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

OBSERVATION_LIMIT = 500
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

Box = list[float]  # [x0, y0, x1, y1] in original-image pixels
#: a probability / threshold in [0, 1]; NaN and infinities are rejected
Prob = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


def _stripped(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise ValueError(f"{info.field_name} must not be empty")
    return value.strip()


#: text with surrounding white space removed; empty (or only white space) is an error naming the field
NonEmptyStr = Annotated[str, AfterValidator(_stripped)]


def path_field(description: str, **kwargs: Any) -> Any:
    """A ``Field`` for an argument naming a file or folder: the tool runner checks it against the
    allowed roots (symlinks resolved) before the tool runs."""
    return Field(description=description, json_schema_extra={"x-visagent-path": True}, **kwargs)


class ToolInput(BaseModel):
    """Base of every tool's Input: unknown arguments are an error the planner is told about."""

    model_config = ConfigDict(extra="forbid")

    def paths(self) -> list[str]:
        """The values of the arguments declared with ``path_field`` (files and folders named)."""
        out: list[str] = []
        for name, field in type(self).model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and extra.get("x-visagent-path"):
                value = getattr(self, name)
                out += [str(v) for v in (value if isinstance(value, list) else [value]) if v is not None]
        return out

    def call_key(self, tool: str) -> str:
        """The identity of a call of ``tool`` with this input: two calls are the same when their
        validated inputs are (defaults left out or spelled out, key order). Used to detect
        repeated actions and to match recorded calls on replay."""
        return tool + self.model_dump_json()


class ToolOutput(BaseModel):
    """Base of every tool's Output."""

    def observation(self) -> str:  # pragma: no cover - every tool overrides it
        raise NotImplementedError

    def regions(self) -> list["Region"]:
        """Every localized result in this output (anything with an ``id`` and a ``box``)."""
        found: list[Region] = []
        for value in self.__dict__.values():
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, Region):
                    found.append(item)
        return found


class Region(BaseModel):
    """A localized result. ``box``: [x0, y0, x1, y1] in pixels of the original image."""

    id: str
    image: str
    box: Box
    score: float | None = None
    label: str | None = None

    def describe(self) -> str:
        box = ", ".join(f"{v:.0f}" for v in self.box)
        parts = [self.id]
        if self.label:
            parts.append(repr(self.label))
        if self.score is not None:
            parts.append(f"score {self.score:.2f}")
        parts.append(f"box [{box}]")
        return " ".join(parts)


def clip_text(text: str, limit: int = OBSERVATION_LIMIT) -> str:
    """Shorten ``text`` to at most ``limit`` characters, marking the cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 15].rstrip() + " … (truncated)"


def finite(value: float | None, name: str) -> float | None:
    """Reject NaN / infinite numbers with a message naming the argument."""
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


@runtime_checkable
class ToolContext(Protocol):
    """What a tool may use while it runs (implemented by the agent's run context)."""

    call: int  # 1-based number of this tool call in the run
    cache: dict[str, str]  # cache events of this call, e.g. {"sam_image_embedding": "hit"}
    models: list[str]  # model ids this call used

    def image(self, media_id: str) -> "Image.Image": ...

    def image_ids(self) -> list[str]: ...

    def media_cache(self, media_id: str) -> dict[str, Any]: ...

    def region(self, region_id: str) -> Region: ...

    def region_id(self, prefix: str, index: int) -> str: ...

    def model(self, family: str, tool: str | None = None) -> Any: ...

    def tool_config(self, tool: str) -> Any: ...

    def add_image(self, image: "Image.Image", source: str, **info: Any) -> str: ...

    def video_path(self, media_id: str) -> str: ...

    def progress(self, message: str, done: int, total: int) -> None: ...


class Tool:
    """Base class of every tool. Subclasses declare the class attributes below."""

    name: ClassVar[str]
    description: ClassVar[str]
    Input: ClassVar[type[ToolInput]]
    Output: ClassVar[type[ToolOutput]]
    #: model families this tool uses (keys of the config's ``models`` section)
    families: ClassVar[tuple[str, ...]] = ()
    #: region-id prefixes this tool's outputs use (``det`` -> ``det_2_0``); registered in ``visagent.ids``
    region_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        problems = []
        name = cls.__dict__.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            problems.append("`name` must be a lowercase identifier string")
        desc = getattr(cls, "description", None)
        if not isinstance(desc, str) or len(desc.strip()) < 10:
            problems.append("`description` must be a sentence (at least 10 characters)")
        cls._infer_models()
        inp = getattr(cls, "Input", None)
        if not (isinstance(inp, type) and issubclass(inp, BaseModel)):
            problems.append("`Input` must be a pydantic BaseModel subclass")
        out = getattr(cls, "Output", None)
        if not (isinstance(out, type) and issubclass(out, ToolOutput)):
            problems.append("`Output` must subclass tools.base.ToolOutput")
        elif out.observation is ToolOutput.observation:
            problems.append("`Output.observation()` must be implemented")
        if "run" not in cls.__dict__ and getattr(cls, "run", None) is Tool.run:
            problems.append("`run(input, ctx)` must be implemented")
        prefixes = cls.__dict__.get("region_prefixes", ())
        if not isinstance(prefixes, tuple):
            problems.append("`region_prefixes` must be a tuple of strings")
        else:
            for prefix in prefixes:
                try:
                    ids.register_prefix(prefix, cls.__qualname__)
                except ValueError as exc:
                    problems.append(str(exc))
        if not problems and isinstance(inp, type):
            try:
                inp.model_json_schema()
            except Exception as exc:  # noqa: BLE001 - reported as a declaration error
                problems.append(f"Input schema cannot be rendered: {exc}")
        if problems:
            raise TypeError(f"tool {cls.__qualname__} is wrongly declared: " + "; ".join(problems))

    @classmethod
    def _infer_models(cls) -> None:
        """``Input`` / ``Output`` not declared: taken from ``run``'s annotations (``def run(self,
        input: MyInput, ctx) -> MyOutput``), as pydantic-ai reads a tool's schema from its signature."""
        run = cls.__dict__.get("run")
        if run is None or ("Input" in cls.__dict__ and "Output" in cls.__dict__):
            return
        import typing

        try:
            hints = typing.get_type_hints(run)
        except Exception:  # noqa: BLE001 - unresolvable annotations: the checks below name what is missing
            return
        params = [p for p in run.__code__.co_varnames[1 : run.__code__.co_argcount]]
        first = hints.get(params[0]) if params else None
        for attr, value in (("Input", first), ("Output", hints.get("return"))):
            if attr not in cls.__dict__ and isinstance(value, type) and issubclass(value, BaseModel):
                setattr(cls, attr, value)

    def run(self, input: ToolInput, ctx: ToolContext) -> ToolOutput:  # noqa: A002
        raise NotImplementedError

    @classmethod
    def replay_effects(cls, input: ToolInput, output: ToolOutput, ctx: ToolContext) -> ToolOutput:  # noqa: A002
        """Redo what a call did besides its output (e.g. frames it registered as images) when replay
        serves the call from a recording; returns the output to use. Most tools have nothing to redo."""
        return output

    # -- specs -------------------------------------------------------------------------------
    @classmethod
    def input_schema(cls) -> dict[str, Any]:
        return cls.Input.model_json_schema()

    @classmethod
    def spec(cls) -> dict[str, Any]:
        """``{name, description, input_schema}`` — what `visagent tools --json` prints."""
        return {"name": cls.name, "description": cls.description, "input_schema": cls.input_schema()}

    @classmethod
    def signature(cls) -> str:
        """One-line spec rendered from the Input schema, e.g. ``detect(image: str, labels: list[str], ...)``."""
        schema = cls.input_schema()
        required = set(schema.get("required", []))
        parts = []
        for pname, prop in schema.get("properties", {}).items():
            typ = _schema_type(prop, schema)
            if pname in required:
                parts.append(f"{pname}: {typ}")
            else:
                default = prop.get("default")
                parts.append(f"{pname}?: {typ}" + (f" = {json.dumps(default)}" if default is not None else ""))
        return f"{cls.name}({', '.join(parts)})"


def _schema_type(prop: dict[str, Any], root: dict[str, Any]) -> str:
    if "$ref" in prop:
        ref = prop["$ref"].rsplit("/", 1)[-1]
        return ref
    if "anyOf" in prop:
        types = [_schema_type(p, root) for p in prop["anyOf"] if p.get("type") != "null"]
        return " | ".join(types) if types else "null"
    typ = prop.get("type", "any")
    if typ == "array":
        return f"list[{_schema_type(prop.get('items', {}), root)}]"
    if "enum" in prop:
        return "|".join(json.dumps(v) for v in prop["enum"])
    return {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "object": "dict"}.get(
        typ, typ
    )

