"""Tool benchmarks in one run: image tools, segmentation, search/video/OCR media tools.

    python -m benchmarks.tools [--device cpu|cuda] [--only image,segment,media] [--json out.json]

Each part is also runnable alone (``python -m benchmarks._tools_image``, ``._tools_segment``,
``._tools_media``); see their docstrings for what each row measures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import _tools_image, _tools_media, _tools_segment

PARTS = {"image": _tools_image, "segment": _tools_segment, "media": _tools_media}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    for name in args.only.split(","):
        module = PARTS[name.strip()]
        rows = module.run(device)
        results[name] = rows
        print(f"\n## {name} ({device})")
        print(module.format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
