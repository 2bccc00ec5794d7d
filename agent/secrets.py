"""Secrets never leave: redaction by key name, and scrubbing of known secret values.

- ``redact(data)``: a copy of a config dump (nested dicts / lists) with the values of secret keys
  (token, secret, password, authorization, credential, api key, access key, private key ...; keys
  ending in ``_env`` name an environment variable and are kept) replaced by ``"***"``, and the
  password of any ``scheme://user:password@host`` URL masked. Every value it hides is registered.
- ``register(value)``: remember a secret (a token from a flag or the environment, an API key read
  from the environment) so that ``scrub`` removes it.
- ``scrub(text)``: ``text`` with every registered secret replaced by ``"***"``. Traces, answers,
  reports, error messages and the ``visagent`` loggers (``ScrubFilter``) pass through it.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
_SECRET_WORDS = {"token", "secret", "password", "passwd", "pwd", "authorization", "credential", "credentials", "cookie", "apikey"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("auth", "token")}
_URL_AUTH_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<password>[^/@\s]+)@", re.I)
_lock = threading.Lock()
_values: set[str] = set()
_pattern: re.Pattern[str] | None = None


def is_secret_key(key: str) -> bool:
    """Whether a config key names a secret: one of its words (``hf_token``, ``apiKey``, ``password``)
    is a secret word, or two are (``api_key``); ``max_new_tokens`` is not, nor ``*_env`` (the name
    of an environment variable)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower().replace("-", "_").split("_")
    if not words or words[-1] == "env":
        return False
    return any(w in _SECRET_WORDS for w in words) or any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


def register(value: Any) -> None:
    """Remember ``value`` as a secret (strings of 4 characters or more; shorter ones would mask
    ordinary text)."""
    global _pattern
    if isinstance(value, str) and len(value.strip()) >= 4:
        with _lock:
            if value not in _values:
                _values.add(value)
                _pattern = None


def scrub(text: str) -> str:
    """``text`` with every registered secret and every URL password replaced by ``***``."""
    global _pattern
    if not isinstance(text, str) or not text:
        return text
    text = _URL_AUTH_RE.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    with _lock:
        if not _values:
            return text
        if _pattern is None:
            _pattern = re.compile("|".join(re.escape(v) for v in sorted(_values, key=len, reverse=True)))
        pattern = _pattern
    return pattern.sub(MASK, text)


def redact(data: Any, key: str = "") -> Any:
    """A copy of ``data`` with secret keys' values masked (see the module docstring)."""
    if isinstance(data, dict):
        return {k: redact(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v, key) for v in data]
    if isinstance(data, str):
        if key and is_secret_key(key) and data:
            register(data)
            return MASK
        for m in _URL_AUTH_RE.finditer(data):
            register(m["password"])
        return scrub(data)
    if key and is_secret_key(key) and data is not None and not isinstance(data, bool):
        return MASK
    return data


class ScrubFilter(logging.Filter):
    """Scrubs secrets from log records (message and arguments, formatted once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logged as it is
            return True
        record.msg, record.args = scrub(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_filter() -> None:
    """Add ``ScrubFilter`` to the handlers of the root and ``visagent`` loggers (idempotent)."""
    for logger in (logging.getLogger(), logging.getLogger("visagent")):
        for handler in logger.handlers:
            if not any(isinstance(f, ScrubFilter) for f in handler.filters):
                handler.addFilter(ScrubFilter())
    root = logging.getLogger("visagent")
    if not any(isinstance(f, ScrubFilter) for f in root.filters):
        root.addFilter(ScrubFilter())
