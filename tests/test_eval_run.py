"""``visagent eval run`` / ``eval score``: records, results files, summaries, paired comparison, resume,
workers, failing items, and a generated text-reading set read by the REAL OCR tool (RapidOCR's
PP-OCRv4 weights ship in its wheel), scored with TextVQA's official VQA accuracy.

The datasets are written here in their published formats (TallyQA ``test.json``, TextVQA
``TextVQA_0.5.1_val.json`` + ``train_images/``); planner decisions are scripted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from visagent.cli import main

# TallyQA items: (count, simple); item 4's image is missing and item 5's is not an image
TALLY = [(2, True), (1, True), (2, False), (3, False), (2, True), (0, False), (1, True), (2, False)]
MISSING, CORRUPT = "1004", "1005"


def write_tallyqa(folder: Path) -> Path:
    """A TallyQA folder: ``test.json`` as published and its images under ``images/``."""
    (folder / "images" / "VG_100K").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (count, simple) in enumerate(TALLY):
        qid = 1000 + i
        name = f"VG_100K/{qid}.jpg"
        if str(qid) == CORRUPT:
            (folder / "images" / name).write_bytes(b"this is not a jpeg")
        elif str(qid) != MISSING:
            Image.new("RGB", (40, 30), (30 * i, 200, 90)).save(folder / "images" / name)
        rows.append({"image": name, "answer": count, "question": f"How many dots are there? ({i})", "question_id": qid,
                     "image_id": qid, "data_source": "imported_genome", "issimple": simple})  # fmt: skip
    (folder / "test.json").write_text(json.dumps(rows))
    return folder


def write_configs(tmp: Path, answers: dict[str, str]) -> list[Path]:
    """One config file per name, each with a scripted plan answering ``answers[name]``."""
    paths = []
    for name, text in answers.items():
        plan = tmp / f"plan-{name}.yaml"
        plan.write_text(yaml.safe_dump([{"final": text}]))
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({"planner": {"kind": f"script:{plan}"}}))
        paths.append(cfg)
    return paths


def eval_cli(capsys: Any, *args: Any) -> tuple[int, dict[str, Any] | None, str]:
    """``visagent eval ARGS --json`` in this process -> (exit code, the JSON printed or None, stderr)."""
    capsys.readouterr()
    code = main(["eval", *[str(a) for a in args]])
    captured = capsys.readouterr()
    data = json.loads(captured.out) if captured.out.strip().startswith("{") else None
    return code, data, captured.err


def records(out: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / name / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tally(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tallyqa(tmp_path_factory.mktemp("tallyqa"))


@pytest.fixture(scope="module")
def two_configs(tmp_path_factory: pytest.TempPathFactory, tally: Path) -> dict[str, Any]:
    """Configs ``two`` (answers 2) and ``one`` (answers 1) run on the TallyQA set."""
    tmp = tmp_path_factory.mktemp("two-configs")
    out = tmp / "out"
    configs = write_configs(tmp, {"two": "There are 2 dots.", "one": "I count one dot."})
    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = main(["eval", "run", str(tally), "--format", "tallyqa", "-c", str(configs[0]), "-c", str(configs[1]),
                     "--profile", "tiny", "--out", str(out), "--json"])  # fmt: skip
    return {"code": code, "json": json.loads(buf_out.getvalue()), "err": buf_err.getvalue(), "out": out, "tmp": tmp}


def test_records_results_and_summaries(two_configs: dict[str, Any], tally: Path) -> None:
    assert two_configs["code"] == 0, two_configs["err"]
    result, out = two_configs["json"], two_configs["out"]
    assert list(result["configs"]) == ["two", "one"] and result["format"] == "tallyqa" and result["items"] == len(TALLY)
    for name, said in (("two", 2), ("one", 1)):
        recs = records(out, name)
        assert sorted(r["id"] for r in recs) == sorted(str(1000 + i) for i in range(len(TALLY)))
        by_id = {r["id"]: r for r in recs}
        for i, (count, simple) in enumerate(TALLY):
            r = by_id[str(1000 + i)]
            assert r["config"] == name and r["truth"]["count"] == count
            assert r["category"] == ("simple" if simple else "complex")
            if r["id"] in (MISSING, CORRUPT):  # recorded as failed, scored as missing, the run went on
                assert r["status"] == "failed" and r["prediction"] is None
                assert r["error"] and "\n" not in r["error"] and "MediaError" in r["error"]
                assert r["metrics"]["exact"] == 0.0
            else:
                assert r["status"] == "ok" and r["error"] is None
                assert r["prediction"]["count"] == said
                assert r["metrics"]["exact"] == float(count == said)
                assert r["steps"] >= 1 and r["tool_calls"] == 0 and r["ms"] > 0
        ok = [i for i in range(len(TALLY)) if str(1000 + i) not in (MISSING, CORRUPT)]
        summary = result["configs"][name]
        assert summary["n"] == len(TALLY) and summary["failed"] == 2
        assert summary["metrics"]["exact"] == pytest.approx(sum(TALLY[i][0] == said for i in ok) / len(TALLY))
        simple = [i for i in range(len(TALLY)) if TALLY[i][1]]
        assert summary["categories"]["simple"]["exact"] == pytest.approx(sum(TALLY[i][0] == said for i in simple if i in ok) / len(simple))
        assert summary["categories"]["simple"]["n"] == len(simple) and "latency_ms" in summary["categories"]["simple"]
        lat = summary["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"]
        assert json.loads((out / name / "summary.json").read_text())["metrics"] == summary["metrics"]
        # the benchmark's own results format, read back by the format itself
        from visagent.eval import get_adapter

        preds = get_adapter("tallyqa").read_predictions(Path(summary["results"]))
        assert sorted(p.id for p in preds) == sorted(str(1000 + i) for i in ok)
        assert all(p.count == said for p in preds)


def test_two_configs_compared_paired(two_configs: dict[str, Any]) -> None:
    cmp, out = two_configs["json"]["comparison"], two_configs["out"]
    assert cmp["baseline"] == "two" and cmp["n"] == len(TALLY) and cmp["resamples"] == 1000
    diffs = {d["quantity"]: d for d in cmp["differences"]}
    assert set(diffs) == {"exact", "within1", "abs_error", "latency_ms", "steps", "tool_calls"}
    d = diffs["exact"]
    assert d["config"] == "one" and d["baseline"] == "two"
    assert d["diff"] == pytest.approx(cmp["configs"]["one"]["metrics"]["exact"] - cmp["configs"]["two"]["metrics"]["exact"], abs=1e-4)
    assert d["ci_low"] <= d["diff"] <= d["ci_high"] and d["ci_low"] < d["ci_high"]  # the answers differ on some items
    assert diffs["steps"]["ci_low"] == diffs["steps"]["ci_high"] == 0.0  # same plan length: no difference at all
    assert json.loads((out / "comparison.json").read_text()) == cmp
    rows = list(csv.reader(io.StringIO((out / "comparison.csv").read_text())))
    assert rows[0] == ["config", "baseline", "quantity", "mean", "baseline_mean", "diff", "ci_low", "ci_high", "n"]
    exact = next(r for r in rows if r[0] == "one" and r[2] == "exact")
    assert float(exact[5]) == pytest.approx(d["diff"]) and exact[1] == "two"
    html = (out / "report.html").read_text()
    assert 'id="plot-categories"' in html and 'id="plot-latency"' in html and html.count('class="plot plot-confusion"') == 2


def test_table_on_the_terminal(capsys: Any, tally: Path, tmp_path: Path) -> None:
    configs = write_configs(tmp_path, {"a": "2", "a2": "two"})
    configs.append(configs[0])  # the same file twice: two runs, named a and a-2
    code = main(["eval", "run", str(tally), "-f", "tallyqa", *sum((["-c", str(c)] for c in configs), []), "-p", "tiny",
                 "-o", str(tmp_path / "out"), "--limit", "3"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "paired bootstrap" in captured.out and "a-2" in captured.out and "simple" in captured.out
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["a", "a-2", "a2"]


def test_resume_skips_recorded_items(capsys: Any, tally: Path, tmp_path: Path) -> None:
    [cfg] = write_configs(tmp_path, {"c": "There are 2."})
    out = tmp_path / "out"
    args = ["run", tally, "-f", "tallyqa", "-c", cfg, "-p", "tiny", "-o", out, "--json"]
    code, first, _ = eval_cli(capsys, *args, "--limit", 3)
    assert code == 0 and first["configs"]["c"]["n"] == 3
    before = (out / "c" / "records.jsonl").read_text()
    with (out / "c" / "records.jsonl").open("a") as fh:  # a line cut off by a kill
        fh.write('{"id": "10')
    code, again, _ = eval_cli(capsys, *args, "--resume")
    assert code == 0
    text = (out / "c" / "records.jsonl").read_text()
    assert text.startswith(before)  # the recorded items were not run again
    new = text[len(before):].splitlines()
    assert len(new) == len(TALLY) - 3
    assert sorted(json.loads(line)["id"] for line in text.splitlines()) == sorted(str(1000 + i) for i in range(len(TALLY)))
    assert again["configs"]["c"]["n"] == len(TALLY)
    code, fresh, _ = eval_cli(capsys, *args, "--limit", 2)  # without --resume: replaced
    assert code == 0 and len((out / "c" / "records.jsonl").read_text().splitlines()) == 2


def test_workers_give_the_same_records(capsys: Any, tally: Path, tmp_path: Path) -> None:
    [cfg] = write_configs(tmp_path, {"w": "3 dots"})

    def stable(out: Path) -> list[dict[str, Any]]:
        keep = ("id", "status", "error", "prediction", "metrics", "category", "truth", "answer", "steps", "tool_calls")
        return sorted(({k: r[k] for k in keep} for r in records(out, "w")), key=lambda r: r["id"])

    for k in (1, 3):
        code, _, err = eval_cli(capsys, "run", tally, "-f", "tallyqa", "-c", cfg, "-p", "tiny", "-o", tmp_path / f"w{k}", "--workers", k, "--json")
        assert code == 0, err
    assert stable(tmp_path / "w1") == stable(tmp_path / "w3")
    assert len(stable(tmp_path / "w1")) == len(TALLY)
    r1 = json.loads((tmp_path / "w1" / "w" / "results.json").read_text())
    r3 = json.loads((tmp_path / "w3" / "w" / "results.json").read_text())
    assert r1 == r3  # written in the dataset's order, whatever order the workers finished in


def test_every_item_failing_exits_1_and_server_is_ignored(capsys: Any, tmp_path: Path, monkeypatch: Any) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    (folder / "test.json").write_text(json.dumps([{"image": "nope.jpg", "answer": 1, "question": "How many?", "question_id": 7,
                                                   "image_id": 7, "data_source": "x", "issimple": True}]))  # fmt: skip
    monkeypatch.setenv("VISAGENT_SERVER", "http://127.0.0.1:9")  # a closed port: eval run never asks a server
    [cfg] = write_configs(tmp_path, {"x": "1"})
    code, data, err = eval_cli(capsys, "run", folder, "-f", "tallyqa", "-c", cfg, "-p", "tiny", "-o", tmp_path / "out", "--json")
    assert code == 1 and data is not None and data["configs"]["x"]["failed"] == 1
    assert err.strip().splitlines()[-1].startswith("error: every item failed; first error: MediaError")


def test_traces_and_an_unwritable_out(capsys: Any, tally: Path, tmp_path: Path) -> None:
    [cfg] = write_configs(tmp_path, {"t": "2"})
    code, _, err = eval_cli(capsys, "run", tally, "-f", "tallyqa", "-c", cfg, "-p", "tiny", "-o", tmp_path / "out", "--limit", 2, "--traces", "--json")
    assert code == 0, err
    traces = sorted((tmp_path / "out" / "t" / "traces").glob("*.jsonl"))
    assert [p.stem for p in traces] == ["1000", "1001"]
    lines = [json.loads(line) for line in traces[0].read_text().splitlines()]
    assert lines[0]["type"] == "meta" and lines[0]["question"].startswith("How many dots") and lines[-1]["type"] == "answer"
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = eval_cli(capsys, "run", tally, "-f", "tallyqa", "-c", cfg, "-p", "tiny", "-o", blocker, "--json")
    assert code == 3 and err.strip().splitlines()[-1].startswith("error: cannot write"), err


@pytest.mark.parametrize("args, words", [
    (["run", "{tally}", "-f", "nope"], "unknown eval format 'nope'"),
    (["run", "{tmp}/absent", "-f", "tallyqa"], "does not exist"),
    (["run", "{tally}", "-f", "tallyqa", "-c", "{tmp}/none.yaml"], "config file not found"),
    (["run", "{tally}", "-f", "tallyqa", "--baseline", "zzz"], "unknown --baseline 'zzz'"),
    (["run", "{tally}", "-f", "tallyqa", "--workers", "0"], "--workers"),
    (["score", "{tally}", "-f", "tallyqa", "--predictions", "{tmp}/none.json"], "does not exist"),
], ids=["format", "dataset", "config", "baseline", "workers", "predictions"])  # fmt: skip
def test_usage_errors_exit_2_with_one_line(capsys: Any, tally: Path, tmp_path: Path, args: list[str], words: str) -> None:
    args = [a.format(tally=tally, tmp=tmp_path) for a in args]
    code, _, err = eval_cli(capsys, *args, "-p", "tiny") if args[0] == "run" else eval_cli(capsys, *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], err


def test_score_cli_json_and_table(capsys: Any, tally: Path, tmp_path: Path) -> None:
    preds = [{"question_id": 1000 + i, "answer": c if i % 2 == 0 else c + 1} for i, (c, _) in enumerate(TALLY)][:6]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(preds))
    code, data, err = eval_cli(capsys, "score", tally, "--format", "tallyqa", "--predictions", path, "--json")
    assert code == 0, err
    assert data["n"] == len(TALLY) and data["missing"] == 2
    assert data["metrics"]["exact"] == pytest.approx(3 / len(TALLY))  # items 0, 2, 4 right; 1, 3, 5 off by one; 6, 7 missing
    assert data["metrics"]["within1"] == pytest.approx(6 / len(TALLY))
    assert data["items"]["1001"]["abs_error"] == 1.0
    capsys.readouterr()
    assert main(["eval", "score", str(tally), "--format", "tallyqa", "--predictions", str(path)]) == 0
    table = capsys.readouterr().out
    assert "tallyqa: 8 items, 2 without a prediction" in table and "simple" in table


def test_eval_appears_in_the_cli_help(capsys: Any) -> None:
    assert main(["--help"]) == 0
    assert "eval" in capsys.readouterr().out
    assert main(["eval", "--help"]) == 0
    text = capsys.readouterr().out
    assert "run" in text and "score" in text


# -- a generated text-reading set, read by the real OCR tool --------------------------------------

#: RapidOCR's default detector input scales an image's SHORT side up to 736 px (a 320x96 word image
#: becomes 2453x736, ~1.5 s a word here); limiting the LONG side to 960 px keeps it at its own size
OCR_CONFIG = {"models": {"ocr": {"checkpoint": "builtin", "backend": "rapidocr",
                                 "options": {"det_limit_type": "max", "det_limit_side_len": 960}}}}  # fmt: skip
N_WORDS = 20


def test_text_reading_set_with_the_real_ocr_tool(capsys: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Words and phrases rendered at 10 to 56 px in black, gray and light-gray ink, every fifth one
    blurred (``benchmarks.eval_text_reading.make_set``), in TextVQA's published format; the planner's
    decisions are scripted: ``ocr`` on img_0, then the text it read as the answer."""
    import visagent.planners as planners
    from benchmarks.eval_text_reading import make_set, read_then_answer
    from visagent.eval.metrics import vqa_normalize
    from visagent.planners import FunctionPlanner

    monkeypatch.setitem(planners._FACTORIES, "read-then-answer", lambda config, **kw: FunctionPlanner(read_then_answer))
    folder = tmp_path / "textvqa"
    make_set(folder, N_WORDS)
    out = tmp_path / "out"
    cfg = tmp_path / "ocr.yaml"
    cfg.write_text(yaml.safe_dump(OCR_CONFIG))
    code, data, err = eval_cli(capsys, "run", folder, "--format", "textvqa", "--planner", "read-then-answer", "--profile", "tiny",
                               "--config", cfg, "--workers", 2, "--out", out, "--json")  # fmt: skip
    assert code == 0, err
    summary = data["configs"]["ocr"]
    accuracy = summary["metrics"]["accuracy"]
    with capsys.disabled():
        print(f"\ntext-reading set: VQA accuracy {accuracy:.3f} over {summary['n']} rendered words (real PP-OCRv4)")
    assert summary["n"] == N_WORDS and summary["failed"] == 0
    assert accuracy > 0.5  # real weights read most rendered words (VQA accuracy: 1.0 when it matches 3+ annotators)
    assert summary["tool_calls"] == 1.0 and summary["tool_ms"]["ocr"] > 0
    recs = records(out, "ocr")
    right = [r for r in recs if r["metrics"]["accuracy"] == 1.0]
    assert right and all(vqa_normalize(r["answer"]) == r["truth"]["answers"][0] for r in right)
    results = json.loads((out / "ocr" / "results.json").read_text())
    assert sorted(r["question_id"] for r in results) == [50000 + i for i in range(N_WORDS)]  # TextVQA's results format
    code, scored, _ = eval_cli(capsys, "score", folder, "--format", "textvqa", "--predictions", out / "ocr" / "results.json", "--json")
    assert code == 0 and scored["metrics"]["accuracy"] == pytest.approx(accuracy)  # the results file scores the same
