"""Tiny random checkpoints of every architecture visagent loads (``tiny:NAME`` in a config).

Each module registers builders with ``visagent.tools.models.register_tiny``: ``builder(folder)``
writes a checkpoint of the same architecture with random weights (fixed seed) in the format a real
one has (``save_pretrained`` or the official format), so the real loaders read it exactly as they
read a downloaded checkpoint. ``profile: tiny`` serves them (real pipeline, meaningless answers);
tests and the offline demo use them. Importing this package registers every builder.
"""

from visagent.tools.tiny import caption, detect, planner, search, segment, segment_video, video  # noqa: F401
