"""The built-in benchmark formats; importing this package registers them (one module per family:
``vqa`` (vqav2, textvqa), ``gqa``, ``counting`` (countbenchqa, pixmo-count, tallyqa), ``refcoco``
(refcoco, refcoco+, refcocog), ``gta``)."""

from visagent.eval.formats import counting, gqa, gta, refcoco, vqa  # noqa: F401
