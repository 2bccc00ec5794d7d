"""Ids: the one place that formats, parses and renumbers them.

- Region ids: ``<prefix>_<n>_<i>`` — n is the 1-based number of the tool call in the session, i
  the 0-based index in that call's output (``det_2_0``, ``mask_3_1``, ``ocr_1_4``). A tool declares
  its prefixes (``Tool.region_prefixes``); they are registered here when its class is defined, so
  a tool with a new prefix gets renumbering, prompt shortening and citation checks for free.
- Observation ids: ``obs_<n>``, the whole observation of call n.
- Media ids: ``img_<k>``, ``vid_<k>``.

Patterns are rebuilt when a prefix is registered; nothing else spells the prefixes out.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]*$")
_lock = threading.Lock()
_prefixes: dict[str, str] = {}  # prefix -> the tool (qualified name) that declared it first
_patterns: dict[str, re.Pattern[str]] = {}

OBS_RE = re.compile(r"^obs_(\d+)$")
MEDIA_RE = re.compile(r"^(img|vid)_\d+$")
#: what any region id looks like, whatever its prefix (for hints in error messages)
REGION_SHAPE_RE = re.compile(r"^[a-z][a-z0-9]*_\d+_\d+$")


@dataclass(frozen=True)
class RegionId:
    prefix: str
    call: int
    index: int

    def __str__(self) -> str:
        return format_region_id(self.prefix, self.call, self.index)


def register_prefix(prefix: str, owner: str = "") -> None:
    """Make ``prefix`` a region-id prefix (called for each prefix a tool class declares)."""
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix) or prefix in ("obs", "img", "vid"):
        raise ValueError(f"bad region-id prefix {prefix!r}: a short lowercase word other than obs, img, vid")
    with _lock:
        if prefix not in _prefixes:
            _prefixes[prefix] = owner
            _patterns.clear()


def prefixes() -> list[str]:
    """Every registered region-id prefix."""
    with _lock:
        return sorted(_prefixes)


def _pattern(kind: str, build: Callable[[str], str]) -> re.Pattern[str]:
    pat = _patterns.get(kind)
    if pat is None:
        with _lock:
            alternatives = "|".join(sorted(_prefixes, key=lambda p: (-len(p), p))) or "(?!)"
            pat = _patterns[kind] = re.compile(build(alternatives))
    return pat


def region_re() -> re.Pattern[str]:
    """A whole-string match of a region id; groups: prefix, call, index."""
    return _pattern("full", lambda alt: rf"^({alt})_(\d+)_(\d+)$")


def region_in_text_re() -> re.Pattern[str]:
    """Region ids inside text (word-bounded)."""
    return _pattern("text", lambda alt: rf"\b(?:{alt})_\d+_\d+\b")


def citable_in_text_re() -> re.Pattern[str]:
    """Region and observation ids inside text."""
    return _pattern("cite", lambda alt: rf"\b(?:(?:{alt})_\d+_\d+|obs_\d+)\b")


def any_id_in_text_re() -> re.Pattern[str]:
    """Region, observation and media ids inside text."""
    return _pattern("any", lambda alt: rf"\b(?:(?:{alt})_\d+_\d+|obs_\d+|img_\d+|vid_\d+)\b")


def citable_json_pattern(max_call_digits: int = 4, max_index_digits: int = 5) -> str:
    """A JSON-schema ``pattern`` for a cited id (bounded lengths, for constrained decoding)."""
    alt = "|".join(prefixes()) or "(?!)"
    return rf"^(?:(?:{alt})_[0-9]{{1,{max_call_digits}}}_[0-9]{{1,{max_index_digits}}}|obs_[0-9]{{1,{max_call_digits}}})$"


def format_region_id(prefix: str, call: int, index: int) -> str:
    if prefix not in _prefixes:
        known = ", ".join(prefixes()) or "none"
        raise ValueError(f"region-id prefix '{prefix}' is not declared by any tool (Tool.region_prefixes); declared: {known}")
    return f"{prefix}_{call}_{index}"


def parse_region_id(text: str) -> RegionId | None:
    """``det_2_0`` -> RegionId("det", 2, 0); None for anything else."""
    m = region_re().match(text) if isinstance(text, str) else None
    return RegionId(m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def obs_id(call: int) -> str:
    return f"obs_{call}"


def parse_obs_id(text: str) -> int | None:
    """``obs_3`` -> 3; None for anything else."""
    m = OBS_RE.match(text) if isinstance(text, str) else None
    return int(m.group(1)) if m else None


def renumber(value: Any, old_call: int, new_call: int, mapping: dict[str, str] | None = None) -> Any:
    """``value`` (nested lists / dicts / strings) with call ``old_call``'s region ids moved to
    ``new_call``; ``mapping`` collects new id -> old id."""
    if isinstance(value, str):
        rid = parse_region_id(value)
        if rid is None or rid.call != old_call:
            return value
        new = format_region_id(rid.prefix, new_call, rid.index)
        if mapping is not None:
            mapping[new] = value
        return new
    if isinstance(value, list):
        return [renumber(v, old_call, new_call, mapping) for v in value]
    if isinstance(value, dict):
        return {k: renumber(v, old_call, new_call, mapping) for k, v in value.items()}
    return value


def map_ids(value: Any, mapping: dict[str, str]) -> Any:
    """``value`` with every string found in ``mapping`` replaced (nested lists / dicts)."""
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, list):
        return [map_ids(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: map_ids(v, mapping) for k, v in value.items()}
    return value
