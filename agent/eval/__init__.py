"""Benchmark evaluation: dataset adapters reading the published formats, the official metrics, and
scoring a predictions file (``score_predictions``). See docs/eval.md."""

from visagent.eval.base import Adapter, EvalItem, Prediction, available_formats, get_adapter, register_format, summarize
from visagent.eval.score import format_table, score_predictions

__all__ = [
    "Adapter",
    "EvalItem",
    "Prediction",
    "available_formats",
    "get_adapter",
    "format_table",
    "register_format",
    "score_predictions",
    "summarize",
]
