"""What every run's stream does (``RunStream`` in this process, ``RemoteRun`` on a server):
iterate it for the steps as they happen; ``result()`` runs it to its end and returns the Answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from visagent.types import Answer, Step


class StepStream:
    """A run's steps, produced once by ``_run()``; ``answer`` is set when it ends."""

    answer: "Answer | None"
    _iter: "Iterator[Step] | None"

    def _run(self) -> "Iterator[Step]":  # pragma: no cover - each run defines it
        raise NotImplementedError

    def __iter__(self) -> "Iterator[Step]":
        if self._iter is None:
            self._iter = self._run()
        return self._iter

    def result(self) -> "Answer":
        """Run to the end (if not yet) and return the Answer."""
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer
