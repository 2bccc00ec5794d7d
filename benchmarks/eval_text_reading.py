"""Reading rendered words with the real OCR tool, through ``visagent eval run``'s machinery.

A text-reading set is generated in TextVQA's published format (one word or short phrase per
320x96 image, pillow's bundled font at several sizes and ink levels, some blurred), then run with
a planner whose decisions are scripted (``ocr`` on the image, then answer with the text it read)
under two OCR configs, compared paired by item with bootstrap intervals:

- ``default``: RapidOCR's own detector sizing (the image's short side scaled up to 736 px);
- ``max960``: the detector's input limited on its long side to 960 px (small images keep their size).

Prints VQA accuracy per config and per rendering condition, latency p50 / p95, OCR time per
question, the paired differences, and the wall time of ``--workers`` 1 against K for one config
(threads sharing one model pool). All figures come from this one run on this machine.

    python -m benchmarks.eval_text_reading [--words 40] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from visagent.config import load_config
from visagent.eval.runner import RunSpec, run_eval
from visagent.planners import FunctionPlanner
from visagent.pool import ModelPool
from visagent.types import Action, Final

VOCAB = (
    "river garden window yellow market silver planet coffee bridge forest camera rocket island butter doctor "
    "summer travel orange pencil winter castle dragon button candle jacket ladder mirror pocket rabbit saddle "
    "ticket velvet wallet anchor basket cherry dinner engine finger guitar hammer"
).split()
PHRASES = ("bus stop", "exit 12", "open late", "route 66", "no parking", "gate 7", "fresh bread", "room 204")
SIZES = (10, 14, 20, 28, 40, 56)
INKS = (0, 120, 200)  # black, gray, light gray on white


def make_set(folder: Path, n: int, seed: int = 0) -> dict[str, str]:
    """Write ``n`` items in TextVQA 0.5.1 val format under ``folder``; returns item id -> condition."""
    rng = random.Random(seed)
    texts = [*VOCAB, *PHRASES]
    rng.shuffle(texts)
    (folder / "train_images").mkdir(parents=True, exist_ok=True)
    data, conditions = [], {}
    for i in range(n):
        text = texts[i % len(texts)]
        size, ink, blur = SIZES[i % len(SIZES)], INKS[(i // len(SIZES)) % len(INKS)], i % 5 == 4
        img = Image.new("RGB", (320, 96), "white")
        ImageDraw.Draw(img).text((8 + rng.randint(0, 30), 8 + rng.randint(0, 12)), text, fill=(ink, ink, ink),
                                 font=ImageFont.load_default(size=size))  # fmt: skip
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(1.2))
        image_id = f"{i:016x}"
        img.save(folder / "train_images" / f"{image_id}.jpg", quality=92)
        qid = 50000 + i
        data.append({"question_id": qid, "question": "what is written here?", "image_id": image_id, "answers": [text] * 10,
                     "image_classes": [], "set_name": "val"})  # fmt: skip
        conditions[str(qid)] = f"{size}px ink{ink}" + (" blur" if blur else "")
    (folder / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_name": "textvqa", "dataset_version": "0.5.1",
                                                                "dataset_type": "val", "data": data}))  # fmt: skip
    return conditions


def read_then_answer(state: Any) -> Any:
    done = [s for s in state.steps if s.type == "tool" and s.tool == "ocr"]
    if not done:
        return Action(tool="ocr", args={"image": "img_0"})
    lines = done[-1].output.get("lines") or []
    return Final(answer=" ".join(line["text"] for line in lines).strip() or "nothing", evidence=[line["id"] for line in lines[:1]])


def spec(name: str, options: dict[str, Any]) -> RunSpec:
    cfg = load_config(profile="tiny", overrides={"models": {"ocr": {"checkpoint": "builtin", "backend": "rapidocr", "options": options}}})
    return RunSpec(name, cfg, FunctionPlanner(read_then_answer))


def by_condition(records: list[dict[str, Any]], conditions: dict[str, str], key: str) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for r in records:
        c = conditions[r["id"]]
        part = c.split(" ")[0] if key == "size" else ("blur" if "blur" in c else c.split(" ")[1])
        groups.setdefault(part, []).append(r["metrics"]["accuracy"])
    return {k: round(sum(v) / len(v), 3) for k, v in sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="visagent-bench-eval-"))
    conditions = make_set(tmp / "textvqa", args.words)
    pool = ModelPool()
    specs = [spec("default", {}), spec("max960", {"det_limit_type": "max", "det_limit_side_len": 960})]
    t0 = time.perf_counter()
    result = run_eval(tmp / "textvqa", "textvqa", specs, tmp / "out", workers=args.workers, pool=pool)
    compare_s = time.perf_counter() - t0
    records = {n: [json.loads(line) for line in (tmp / "out" / n / "records.jsonl").read_text().splitlines()] for n in result["configs"]}
    walls = {}
    for k in sorted({1, args.workers}):  # the same config, models already loaded: only the workers differ
        t = time.perf_counter()
        run_eval(tmp / "textvqa", "textvqa", [specs[1]], tmp / f"w{k}", workers=k, pool=pool)
        walls[k] = round(time.perf_counter() - t, 3)
    configs = {}
    for name, s in result["configs"].items():
        configs[name] = {
            "accuracy": round(s["metrics"]["accuracy"], 4), "failed": s["failed"], "latency_ms": s["latency_ms"],
            "ocr_ms_per_question": s["tool_ms"].get("ocr"), "by_size": by_condition(records[name], conditions, "size"),
            "by_ink": by_condition(records[name], conditions, "ink"),
        }  # fmt: skip
    diff = next(d for d in result["comparison"]["differences"] if d["quantity"] == "accuracy")
    lat = next(d for d in result["comparison"]["differences"] if d["quantity"] == "latency_ms")
    out = {
        "items": args.words, "configs": configs, "accuracy_diff": diff, "latency_diff": lat, "compare_wall_s": round(compare_s, 3),
        "workers_wall_s": walls, "workers_speedup": round(walls[1] / walls[args.workers], 3) if args.workers != 1 else 1.0,
    }  # fmt: skip
    print(f"text reading with the real OCR tool: {args.words} rendered items (TextVQA format, VQA accuracy)")
    print(f"{'config':8s} {'accuracy':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'ocr ms/q':>9s}  by font size")
    for name, c in configs.items():
        print(f"{name:8s} {c['accuracy']:8.3f} {c['latency_ms']['p50']:8.0f} {c['latency_ms']['p95']:8.0f} {c['ocr_ms_per_question'] or 0:9.0f}  "
              + " ".join(f"{k}:{v:.2f}" for k, v in c["by_size"].items()))  # fmt: skip
        print(f"{'':8s} by ink / blur: " + " ".join(f"{k}:{v:.2f}" for k, v in c["by_ink"].items()))
    print(f"max960 - default: accuracy {diff['diff']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}], "
          f"latency {lat['diff']:+.0f} ms [{lat['ci_low']:+.0f}, {lat['ci_high']:+.0f}] (95% paired bootstrap)")  # fmt: skip
    print(f"max960 wall time: workers 1 {walls[1]:.2f} s, workers {args.workers} {walls[args.workers]:.2f} s "
          f"(x{out['workers_speedup']:.2f}; a shared CPU: the ratio, not the seconds, is the figure)")  # fmt: skip
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
