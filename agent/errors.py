"""Error kinds.

- ``UsageError``: the developer or user asked for something invalid (bad flag, bad media, unknown
  name). The CLI prints its message on one line and exits 2.
- ``MediaError``: a media input cannot be used (a ``UsageError``).
- ``ModelUnavailableError``: a checkpoint is not available offline (a ``UsageError``).
- ``ToolError``: a tool could not do what the planner asked; becomes an error observation.
- ``PlannerOutputError``: the planner's text is not a valid action; sent back to the planner.
- ``RunError``: the run cannot go on (e.g. retries exhausted); ends the run.

Errors never log themselves; whoever catches them decides.
"""

from __future__ import annotations


class VisagentError(Exception):
    """Base class of every visagent error."""


class UsageError(VisagentError):
    """Invalid usage: bad input, unknown name, bad configuration."""


class MediaError(UsageError):
    """A media input is missing, corrupt or unsupported."""


class ForbiddenPathError(MediaError):
    """A path from outside lies outside the allowed roots."""


class ModelUnavailableError(UsageError):
    """A checkpoint cannot be found offline."""


class ToolError(VisagentError):
    """A tool failed in a way the planner should be told about."""


class PlannerOutputError(VisagentError):
    """The planner produced text that is not a valid action."""

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


class RunError(VisagentError):
    """The run cannot continue."""
