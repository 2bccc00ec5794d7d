"""Bounded parsing of untrusted text: what a planner returns and the files users hand in (plans,
scenarios, configs). Linear time, bounded size and depth; over a bound it is a ``BoundsError``
naming the bound (the loop turns it into an error observation, the CLI into a one-line exit-2
error).

- ``load_json(text)``: ``json.loads`` within ``MAX_TEXT_CHARS`` characters and ``MAX_DEPTH``
  levels; integers of more than ``MAX_INT_DIGITS`` digits, lone surrogates and other values JSON
  cannot carry back out are refused or replaced.
- ``find_json_object(text)``: the first JSON object in prose, trying at most ``MAX_STARTS``
  opening braces (each try is linear: no quadratic search).
- ``load_yaml(text)``: ``yaml.safe_load`` that refuses more than ``MAX_ALIASES`` aliases, deeper
  nesting than ``MAX_DEPTH`` and a document that expands (aliases followed) past ``MAX_NODES``.
- ``clean(value)``: strings with lone surrogates replaced, so anything can be written as JSON.
- ``strip_controls(text)``: model text without terminal escape sequences and C0 / C1 control
  characters (tab and newline kept), so it can be shown on a terminal; ``strip_controls_in`` does
  it to every string of a pydantic model, list or dict.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from pydantic import BaseModel

MAX_TEXT_CHARS = 200_000
MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_ALIASES = 100
MAX_INT_DIGITS = 64
MAX_STARTS = 32


class BoundsError(ValueError):
    """Untrusted text over a parsing bound (size, depth, aliases, number length)."""


def clean(value: Any) -> Any:
    """``value`` with lone surrogates in strings replaced by U+FFFD (JSON can carry them in, not out)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
        return value
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    return value


#: ANSI escape sequences: CSI (``ESC [`` or the one-byte C1 CSI, parameters, final byte), OSC
#: (``ESC ]`` up to BEL or ``ESC \\``) and two-byte ``ESC X``
_ESCAPE_RE = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -~]?")
#: C0 controls but tab and newline, DEL, C1 controls
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_controls(text: str) -> str:
    """``text`` without escape sequences and control characters but tab and newline (``\\r\\n``
    becomes ``\\n``): what a model generated, safe to print on a terminal."""
    if not isinstance(text, str) or _CONTROL_RE.search(text) is None:
        return text
    return _CONTROL_RE.sub("", _ESCAPE_RE.sub("", text.replace("\r\n", "\n")))


def strip_controls_in(value: Any) -> Any:
    """``strip_controls`` on every string in ``value``: a pydantic model (changed in place, extra
    fields included, without validation), a list or dict (changed in place), a tuple (copied) or a
    string. Returns ``value`` (the new string or tuple for those)."""
    if isinstance(value, str):
        return strip_controls(value)
    if isinstance(value, BaseModel):
        for store in (value.__dict__, value.__pydantic_extra__ or {}):
            for key, item in store.items():
                new = strip_controls_in(item)
                if new is not item:
                    store[key] = new
    elif isinstance(value, list):
        for i, item in enumerate(value):
            new = strip_controls_in(item)
            if new is not item:
                value[i] = new
    elif isinstance(value, dict):
        for key, item in value.items():
            new = strip_controls_in(item)
            if new is not item:
                value[key] = new
    elif type(value) is tuple:
        return tuple(strip_controls_in(v) for v in value)
    return value


def check_shape(value: Any, what: str = "value", max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Refuse nesting deeper than ``max_depth``, more than ``max_nodes`` items (shared ones counted
    each time they occur) and integers of more than ``MAX_INT_DIGITS`` digits. Iterative, linear in
    the distinct objects."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, int, bool]] = [(value, 1, False)]
    total = 0
    while stack:
        node, depth, done = stack.pop()
        if isinstance(node, int) and not isinstance(node, bool) and abs(node).bit_length() > MAX_INT_DIGITS * 3.33:
            raise BoundsError(f"{what} holds an integer of more than {MAX_INT_DIGITS} digits")
        if not isinstance(node, (list, dict)):
            continue
        if depth > max_depth:
            raise BoundsError(f"{what} is nested deeper than {max_depth} levels")
        key = id(node)
        if done:
            children = node.values() if isinstance(node, dict) else node
            sizes[key] = 1 + sum(sizes.get(id(c), 1) for c in children)
            continue
        if key in sizes:
            total += sizes[key]
        else:
            stack.append((node, depth, True))
            stack.extend((c, depth + 1, False) for c in (node.values() if isinstance(node, dict) else node))
        total += 1
        if total > max_nodes:
            raise BoundsError(f"{what} has more than {max_nodes} items")


def load_json(text: str, what: str = "JSON", max_chars: int = MAX_TEXT_CHARS) -> Any:
    """``json.loads`` within the bounds (see the module docstring); ``BoundsError`` / ``ValueError``."""
    if len(text) > max_chars:
        raise BoundsError(f"{what} is longer than {max_chars} characters")
    try:
        value = json.loads(text)
    except RecursionError:
        raise BoundsError(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise BoundsError(f"{what}: {str(exc).splitlines()[0]}") from None
    check_shape(value, what)
    return clean(value)


def find_json_object(text: str, what: str = "planner output", max_chars: int = MAX_TEXT_CHARS) -> tuple[dict[str, Any] | None, str]:
    """The first JSON object in ``text`` -> (object or None, the last decoding error)."""
    if len(text) > max_chars:
        raise BoundsError(f"{what} is longer than {max_chars} characters")
    decoder = json.JSONDecoder()
    start, tries, last_error = text.find("{"), 0, "no JSON object found"
    while start != -1 and tries < MAX_STARTS:
        tries += 1
        try:
            value, _ = decoder.raw_decode(text, start)
        except RecursionError:
            raise BoundsError(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
        except json.JSONDecodeError as exc:
            last_error = f"invalid JSON ({exc.msg} at character {exc.pos})"
        except ValueError as exc:
            raise BoundsError(f"{what}: {str(exc).splitlines()[0]}") from None
        else:
            if isinstance(value, dict):
                check_shape(value, what)
                return clean(value), ""
        start = text.find("{", start + 1)
    return None, last_error


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` counting aliases and nesting while it composes."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise BoundsError(f"more than {MAX_ALIASES} YAML aliases")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise BoundsError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, what: str = "YAML") -> Any:
    """``yaml.safe_load`` within the bounds; ``BoundsError`` names the bound, ``yaml.YAMLError`` the
    syntax error."""
    if len(text) > MAX_FILE_BYTES:
        raise BoundsError(f"{what} is larger than {MAX_FILE_BYTES // 1000} KB")
    loader = _BoundedLoader(text)
    try:
        value = loader.get_single_data()
    except BoundsError as exc:
        raise BoundsError(f"{what}: {exc}") from None
    except RecursionError:
        raise BoundsError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    check_shape(value, what)
    return value


def read_text(path: Any, what: str, max_bytes: int = MAX_FILE_BYTES) -> str:
    """A user's text file, refused past ``max_bytes`` before it is read."""
    from pathlib import Path

    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise BoundsError(f"{what} {p} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB limit")
    return p.read_text(encoding="utf-8")


def load_yaml_file(path: Any, what: str) -> Any:
    """A user's YAML file (``what``: "config file", "scenario file" ...) within the bounds; every
    problem is a ``ValueError`` with a one-line message naming the file (and line)."""
    from pathlib import Path

    p = Path(path)
    try:
        return load_yaml(read_text(p, what), f"{what} {p}")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ValueError(f"{what} {p} is not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {p} is not a UTF-8 text file") from None
