"""Each benchmark format reads a small fixture written in its exact published layout (field names
and answer lists as the datasets distribute them); ``score_predictions`` on a results file with
known right and wrong answers gives the hand-computed figures, per category; bad files give
one-line errors."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from visagent.errors import UsageError
from visagent.eval import available_formats, get_adapter
from visagent.eval.base import EvalItem, Prediction, missing_media
from visagent.eval.score import format_table, score_predictions
from visagent.types import Answer, Evidence

ALL = ["countbenchqa", "gqa", "gta", "pixmo-count", "refcoco", "refcoco+", "refcocog", "tallyqa", "textvqa", "vqav2"]


def image(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def dump(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISAGENT_CACHE_DIR", str(tmp_path / "cache"))


def test_registry_lists_every_format_and_refuses_unknown_ones() -> None:
    assert available_formats() == ALL
    for name in ALL:
        adapter = get_adapter(name)
        assert adapter.name == name and adapter.metrics and adapter.task in ("vqa", "count", "grounding", "tool")
    with pytest.raises(UsageError, match=r"unknown eval format 'coco'; available: countbenchqa, gqa, .*vqav2"):
        get_adapter("coco")


# -- VQAv2 ------------------------------------------------------------------------------------


def vqav2(root: Path) -> Path:
    split = "val2014"
    qs = [(1, 42, "Is it red?"), (2, 42, "How many cats?"), (3, 7, "What animal is it?"), (4, 7, "What is on the table?")]
    answers = {
        1: ["yes"] * 10,
        2: ["2", "2"] + ["3"] * 8,
        3: ["dog"] * 10,
        4: ["cup"] * 6 + ["mug"] * 4,
    }
    types = {1: ("yes/no", "is it"), 2: ("number", "how many"), 3: ("other", "what animal is"), 4: ("other", "what is on the")}
    info = {"info": {"description": "VQA v2"}, "license": {"name": "CC"}, "data_subtype": split}
    dump(root / f"v2_OpenEnded_mscoco_{split}_questions.json", {
        **info, "task_type": "Open-Ended", "data_type": "mscoco",
        "questions": [{"image_id": im, "question": q, "question_id": qid} for qid, im, q in qs],
    })  # fmt: skip
    dump(root / f"v2_mscoco_{split}_annotations.json", {
        **info, "data_type": "mscoco",
        "annotations": [
            {"question_id": qid, "image_id": im, "question_type": types[qid][1], "answer_type": types[qid][0],
             "multiple_choice_answer": answers[qid][-1],
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers[qid])]}
            for qid, im, _ in qs
        ],
    })  # fmt: skip
    for im in (42, 7):
        image(root / split / f"COCO_{split}_{im:012d}.jpg")
    return root


def test_vqav2_loads_questions_annotations_and_coco_image_paths(tmp_path: Path) -> None:
    root = vqav2(tmp_path / "vqav2")
    items = get_adapter("vqav2").load(root)
    assert [i.id for i in items] == ["1", "2", "3", "4"]
    first = items[0]
    assert first.question == "Is it red?" and first.task == "vqa" and first.answers == ["yes"] * 10
    assert first.media == [str(root.resolve() / "val2014" / "COCO_val2014_000000000042.jpg")]
    assert [i.category for i in items] == ["yes/no", "number", "other", "other"]
    assert items[1].extra["groups"]["question_type"] == "how many"
    assert missing_media(items) == []
    (root / "val2014" / "COCO_val2014_000000000007.jpg").unlink()
    assert missing_media(items) == [str(root.resolve() / "val2014" / "COCO_val2014_000000000007.jpg")]
    assert len(get_adapter("vqav2").load(root, limit=2)) == 2


def test_vqav2_score_gives_the_hand_computed_accuracy_per_answer_type(tmp_path: Path) -> None:
    root = vqav2(tmp_path / "vqav2")
    preds = dump(tmp_path / "results.json", [
        {"question_id": 1, "answer": "Yes"},  # 10/10 -> 1.0
        {"question_id": 2, "answer": "two"},  # "2" by 2 of 10 -> 0.6
        {"question_id": 3, "answer": "a cat"},  # 0
        {"question_id": 99, "answer": "extra"},  # not in the dataset
    ])  # question 4 has no prediction -> 0  # fmt: skip
    s = score_predictions(root, "vqav2", preds)
    assert s["format"] == "vqav2" and s["task"] == "vqa" and s["n"] == 4 and s["missing"] == 1 and s["extra_predictions"] == 1
    assert s["metrics"]["accuracy"] == pytest.approx((1 + 0.6 + 0 + 0) / 4)
    assert s["categories"]["yes/no"] == {"n": 1, "accuracy": pytest.approx(1.0)}
    assert s["categories"]["number"]["accuracy"] == pytest.approx(0.6)
    assert s["categories"]["other"] == {"n": 2, "accuracy": 0.0}
    assert s["items"]["2"] == {"accuracy": pytest.approx(0.6), "missing": 0.0}
    assert s["items"]["4"]["missing"] == 1.0
    table = format_table(s)
    assert "vqav2: 4 items, 1 without a prediction" in table and "number" in table and "0.6000" in table


def test_vqav2_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    root = vqav2(tmp_path / "vqav2")
    (root / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(UsageError, match=r"v2_mscoco_val2014_annotations\.json is not in") as e:
        get_adapter("vqav2").load(root)
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="no v2_OpenEnded_mscoco_<split>_questions.json in"):
        get_adapter("vqav2").load(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        get_adapter("vqav2").load(tmp_path / "nowhere")
    root = vqav2(tmp_path / "again")
    adapter = get_adapter("vqav2")
    bad = tmp_path / "bad.json"
    for content, message in [
        ("{not json", r"is not valid JSON \(line 1"),
        ('{"question_id": 1}', "expected a JSON list"),
        ('[{"answer": "yes"}]', r"entry 0: missing field 'question_id'"),
        ('[{"question_id": 1, "answer": {"x": 1}}]', "'answer' must be a string"),
    ]:
        bad.write_text(content)
        with pytest.raises(UsageError, match=message) as e:
            score_predictions(root, "vqav2", bad)
        assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="predictions file .* does not exist"):
        score_predictions(root, "vqav2", tmp_path / "none.json")
    adapter.write_predictions([Prediction(id="1", answer="yes")], tmp_path / "w.json")
    assert json.loads((tmp_path / "w.json").read_text()) == [{"question_id": 1, "answer": "yes"}]


# -- TextVQA ----------------------------------------------------------------------------------


def test_textvqa_loads_and_scores(tmp_path: Path) -> None:
    root = tmp_path / "textvqa"
    data = [
        {"question_id": 34602, "question": "what brand is the phone?", "image_id": "0054c91397f2fe05",
         "answers": ["nokia"] * 10, "image_classes": ["Mobile phone"], "flickr_original_url": "u", "flickr_300k_url": "u",
         "image_width": 16, "image_height": 12, "set_name": "val"},
        {"question_id": 34603, "question": "what does the sign say?", "image_id": "005635e119b9f32f",
         "answers": ["stop"] + ["stop sign"] * 9, "image_classes": ["Street sign"], "set_name": "val"},
        {"question_id": 34604, "question": "what year?", "image_id": "005635e119b9f32f",
         "answers": ["1999"] * 10, "image_classes": [], "set_name": "val"},
    ]  # fmt: skip
    dump(root / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})
    for d in data:
        image(root / "train_images" / f"{d['image_id']}.jpg")
    items = get_adapter("textvqa").load(root)
    assert [i.id for i in items] == ["34602", "34603", "34604"]
    assert items[0].media == [str(root.resolve() / "train_images" / "0054c91397f2fe05.jpg")] and not missing_media(items)
    assert items[0].extra["image_classes"] == ["Mobile phone"] and items[0].category is None
    preds = dump(tmp_path / "r.json", [
        {"question_id": 34602, "answer": "Nokia"},  # 1.0
        {"question_id": 34603, "answer": "stop"},  # 1 of 10 -> 0.3
        {"question_id": 34604, "answer": "2000"},  # 0
    ])  # fmt: skip
    s = score_predictions(root, "textvqa", preds)
    assert s["metrics"]["accuracy"] == pytest.approx(1.3 / 3) and s["categories"] == {}


# -- GQA --------------------------------------------------------------------------------------


def gqa(root: Path) -> Path:
    def q(image_id: str, question: str, answer: str, structural: str, semantic: str) -> dict[str, Any]:
        return {"semantic": [], "entailed": [], "equivalent": [], "question": question, "imageId": image_id,
                "isBalanced": True, "groups": {"global": None, "local": "x"}, "answer": answer,
                "semanticStr": "select: x", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
                "types": {"detailed": "place", "semantic": semantic, "structural": structural},
                "fullAnswer": f"The answer is {answer}."}  # fmt: skip

    dump(root / "testdev_balanced_questions.json", {
        "201": q("n1", "Is the cup red?", "yes", "verify", "attr"),
        "202": q("n1", "What is on the table?", "cup", "query", "rel"),
        "203": q("n2", "Which color is the car?", "blue", "query", "attr"),
        "204": q("n2", "Is it a car or a bus?", "car", "choose", "obj"),
    })  # fmt: skip
    dump(root / "val_balanced_questions.json", {"301": q("n3", "Is there a dog?", "no", "verify", "obj")})
    for n in ("n1", "n2", "n3"):
        image(root / "images" / f"{n}.jpg")
    return root


def test_gqa_prefers_testdev_and_a_file_chooses_the_split(tmp_path: Path) -> None:
    root = gqa(tmp_path / "gqa")
    items = get_adapter("gqa").load(root)
    assert [i.id for i in items] == ["201", "202", "203", "204"]
    assert items[0].media == [str(root.resolve() / "images" / "n1.jpg")] and items[0].answers == ["yes"]
    assert [i.category for i in items] == ["verify", "query", "query", "choose"]
    assert items[1].extra["groups"] == {"semantic": "rel", "answer_type": "open"}
    val = get_adapter("gqa").load(root / "val_balanced_questions.json")
    assert [i.id for i in val] == ["301"]


def test_gqa_score_exact_match_per_structural_and_semantic_type(tmp_path: Path) -> None:
    root = gqa(tmp_path / "gqa")
    preds = dump(tmp_path / "r.json", [
        {"questionId": "201", "prediction": "yes"},  # exact
        {"questionId": "202", "prediction": "Cup."},  # normalized match only
        {"questionId": "203", "prediction": "red"},  # wrong
        {"questionId": "204", "prediction": "car"},  # exact
    ])  # fmt: skip
    s = score_predictions(root, "gqa", preds)
    assert s["metrics"] == {"accuracy": pytest.approx(0.75), "exact": pytest.approx(0.5)}
    assert s["categories"]["query"] == {"n": 2, "accuracy": 0.5, "exact": 0.0}
    assert s["groups"]["semantic"]["attr"]["accuracy"] == pytest.approx(0.5)
    assert s["groups"]["answer_type"]["binary"]["accuracy"] == pytest.approx(1.0)
    get_adapter("gqa").write_predictions([Prediction(id="201", answer="yes")], tmp_path / "w.json")
    assert json.loads((tmp_path / "w.json").read_text()) == [{"questionId": "201", "prediction": "yes"}]


# -- counting ---------------------------------------------------------------------------------


def test_countbenchqa_parquet_keeps_embedded_images_and_scores_counts(tmp_path: Path) -> None:
    root = tmp_path / "CountBenchQA"
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    parquet(root / "data" / "test-00000-of-00001.parquet", [
        {"image": {"bytes": png_bytes(c), "path": None}, "text": f"caption {n}", "question": f"How many items {n}?", "number": n}
        for c, n in zip(colors, (3, 5, 2))
    ])  # fmt: skip
    first = get_adapter("countbenchqa").load(root, limit=1)
    assert len(first) == 1 and len(list((tmp_path / "cache" / "eval-images").rglob("*.png"))) == 1  # only what is loaded
    items = get_adapter("countbenchqa").load(root)
    assert [(i.id, i.count, i.category) for i in items] == [("0", 3, "3"), ("1", 5, "5"), ("2", 2, "2")]
    assert len(list((tmp_path / "cache" / "eval-images").rglob("*.png"))) == 3
    assert items[0].question == "How many items 3?" and items[0].extra["text"] == "caption 3"
    for item, color in zip(items, colors):
        assert str(tmp_path / "cache" / "eval-images") in item.media[0]
        with Image.open(item.media[0]) as im:
            assert im.convert("RGB").getpixel((0, 0)) == color
    preds = dump(tmp_path / "r.json", [
        {"question_id": 0, "answer": 3},  # exact
        {"question_id": 1, "answer": "I see four items"},  # off by one
        {"question_id": 2, "answer": "many"},  # no number: as if 0
    ])  # fmt: skip
    s = score_predictions(root, "countbenchqa", preds)
    assert s["metrics"]["exact"] == pytest.approx(1 / 3)
    assert s["metrics"]["within1"] == pytest.approx(2 / 3)
    assert s["metrics"]["abs_error"] == pytest.approx((0 + 1 + 2) / 3)
    assert s["categories"]["5"] == {"n": 1, "exact": 0.0, "within1": 1.0, "abs_error": 1.0}
    # the Hub's converted layout (default/<split>/0000.parquet) reads the same
    converted = tmp_path / "converted"
    (converted / "default" / "test").mkdir(parents=True)
    (root / "data" / "test-00000-of-00001.parquet").rename(converted / "default" / "test" / "0000.parquet")
    assert [i.count for i in get_adapter("countbenchqa").load(converted)] == [3, 5, 2]
    bad = parquet(tmp_path / "bad" / "test-00000-of-00001.parquet", [{"image": None, "question": "q"}])
    with pytest.raises(UsageError, match="has no column 'number'"):
        get_adapter("countbenchqa").load(bad.parent)


def test_pixmo_count_maps_images_by_sha256_and_prefers_validation(tmp_path: Path) -> None:
    root = tmp_path / "pixmo-count"
    rows = [
        {"image_url": "https://example.org/a/photo1.jpg", "image_sha256": "ab" * 32, "count": 4, "points": None, "label": "cups"},
        {"image_url": "https://example.org/b/photo2.png?x=1", "image_sha256": "cd" * 32, "count": 2, "points": None, "label": "dogs"},
    ]
    parquet(root / "data" / "validation-00000-of-00001.parquet", rows)
    parquet(root / "data" / "test-00000-of-00001.parquet", rows[:1])
    image(root / "images" / f"{'ab' * 32}.jpg")
    image(root / "images" / "photo2.png")  # no sha256 name: found by the URL's file name
    items = get_adapter("pixmo-count").load(root)
    assert [(i.id, i.count, i.question) for i in items] == [
        ("0", 4, "How many cups are in the image?"),
        ("1", 2, "How many dogs are in the image?"),
    ]
    assert items[0].media == [str(root.resolve() / "images" / f"{'ab' * 32}.jpg")]
    assert items[1].media == [str(root.resolve() / "images" / "photo2.png")]
    assert items[0].extra["split"] == "validation"
    assert len(get_adapter("pixmo-count").load(root / "data" / "test-00000-of-00001.parquet")) == 1
    s = score_predictions(root, "pixmo-count", dump(tmp_path / "r.json", [{"question_id": 0, "answer": 4}, {"question_id": 1, "answer": 5}]))
    assert s["metrics"] == {"exact": 0.5, "within1": 0.5, "abs_error": 1.5}


def tallyqa(root: Path) -> Path:
    rows = [
        {"image": "VG_100K_2/1.jpg", "answer": 2, "question": "How many dogs?", "question_id": 30095774,
         "image_id": 92410408, "data_source": "imported_genome", "issimple": True},
        {"image": "VG_100K_2/1.jpg", "answer": 0, "question": "How many cats?", "question_id": 30095775,
         "image_id": 92410408, "data_source": "amt", "issimple": True},
        {"image": "val2014/COCO_val2014_000000000001.jpg", "answer": 4, "question": "How many headlights does the black bus have?",
         "question_id": 30095776, "image_id": 1, "data_source": "amt", "issimple": False},
    ]  # fmt: skip
    dump(root / "test.json", rows)
    dump(root / "train.json", rows[:1])
    image(root / "VG_100K_2" / "1.jpg")
    image(root / "val2014" / "COCO_val2014_000000000001.jpg")
    return root


def test_tallyqa_loads_test_split_with_simple_and_complex(tmp_path: Path) -> None:
    root = tallyqa(tmp_path / "tallyqa")
    items = get_adapter("tallyqa").load(root)
    assert [(i.id, i.count, i.category) for i in items] == [("30095774", 2, "simple"), ("30095775", 0, "simple"), ("30095776", 4, "complex")]
    assert items[2].media == [str(root.resolve() / "val2014" / "COCO_val2014_000000000001.jpg")] and not missing_media(items)
    preds = dump(tmp_path / "r.json", [
        {"question_id": 30095774, "answer": 2},
        {"question_id": 30095775, "answer": "none"},  # the word reads as 0
        {"question_id": 30095776, "answer": 6},
    ])  # fmt: skip
    s = score_predictions(root, "tallyqa", preds)
    assert s["metrics"]["exact"] == pytest.approx(2 / 3) and s["metrics"]["abs_error"] == pytest.approx(2 / 3)
    assert s["categories"]["simple"]["exact"] == 1.0 and s["categories"]["complex"] == {"n": 1, "exact": 0.0, "within1": 0.0, "abs_error": 2.0}
    adapter = get_adapter("tallyqa")
    adapter.write_predictions([Prediction(id="30095774", count=2.0), Prediction(id="30095775", answer="no idea")], tmp_path / "w.json")
    assert json.loads((tmp_path / "w.json").read_text()) == [
        {"question_id": 30095774, "answer": 2},
        {"question_id": 30095775, "answer": "no idea"},
    ]
    dump(root / "test.json", [{"image": "x.jpg", "answer": 1, "question": "q", "question_id": 1}])
    with pytest.raises(UsageError, match=r"test.json entry 0: missing field 'issimple'"):
        adapter.load(root)
    # a dataset file names images inside its folder only
    for outside in ("../../secret.jpg", "/etc/passwd"):
        dump(root / "test.json", [{"image": outside, "answer": 1, "question": "q", "question_id": 1, "issimple": True}])
        with pytest.raises(UsageError, match="the image path .* points outside"):
            adapter.load(root)


# -- RefCOCO ----------------------------------------------------------------------------------


def refcoco(root: Path, refs_name: str = "refs(unc).p") -> Path:
    refs = [
        {"image_id": 9, "split": "val", "sentences": [
            {"tokens": ["man", "on", "left"], "raw": "Man on left", "sent_id": 101, "sent": "man on left"},
            {"tokens": ["left", "guy"], "raw": "left guy", "sent_id": 102, "sent": "left guy"}],
         "file_name": "COCO_train2014_000000000009_1.jpg", "category_id": 1, "ann_id": 1, "sent_ids": [101, 102], "ref_id": 0},
        {"image_id": 9, "split": "testA", "sentences": [
            {"tokens": ["right", "woman"], "raw": "right woman", "sent_id": 103, "sent": "right woman"}],
         "file_name": "COCO_train2014_000000000009_2.jpg", "category_id": 1, "ann_id": 2, "sent_ids": [103], "ref_id": 1},
        {"image_id": 9, "split": "train", "sentences": [{"tokens": ["dog"], "raw": "dog", "sent_id": 104, "sent": "dog"}],
         "file_name": "COCO_train2014_000000000009_3.jpg", "category_id": 18, "ann_id": 3, "sent_ids": [104], "ref_id": 2},
    ]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / refs_name).write_bytes(pickle.dumps(refs, protocol=2))
    dump(root / "instances.json", {
        "info": {}, "licenses": [],
        "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": 120, "width": 160}],
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 1, "bbox": [0, 0, 40, 100], "area": 4000, "iscrowd": 0, "segmentation": []},
            {"id": 2, "image_id": 9, "category_id": 1, "bbox": [100, 10, 50, 100], "area": 5000, "iscrowd": 0, "segmentation": []},
            {"id": 3, "image_id": 9, "category_id": 18, "bbox": [50, 50, 10, 10], "area": 100, "iscrowd": 0, "segmentation": []},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"}],
    })  # fmt: skip
    image(root / "images" / "COCO_train2014_000000000009.jpg", size=(160, 120))
    return root


class _Evil:
    def __reduce__(self) -> Any:
        return (print, ("this must never run",))


def test_refcoco_reads_the_refer_pickle_safely_and_scores_iou(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = refcoco(tmp_path / "refcoco")
    items = get_adapter("refcoco").load(root)
    assert [i.id for i in items] == ["101", "102", "103"]  # train refs left out
    assert items[0].question == 'Locate "man on left". Cite the region.' and items[0].task == "grounding"
    assert items[0].box == [0, 0, 40, 100] and items[2].box == [100, 10, 150, 110]
    assert [i.category for i in items] == ["val", "val", "testA"]
    assert items[0].media == [str(root.resolve() / "images" / "COCO_train2014_000000000009.jpg")]
    assert items[0].extra["groups"] == {"object": "person"}
    preds = dump(tmp_path / "r.json", [
        {"question_id": 101, "box": [0, 0, 40, 100]},  # IoU 1
        {"question_id": 102, "box": [0, 0, 20, 100]},  # IoU 0.5: correct
        {"question_id": 103, "box": [100, 10, 125, 110]},  # half of the 50 x 100 truth: IoU 0.5, correct
    ])  # fmt: skip
    s = score_predictions(root, "refcoco", preds)
    assert s["metrics"]["accuracy"] == pytest.approx(1.0)
    assert s["metrics"]["iou"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    preds = dump(tmp_path / "r2.json", [{"question_id": 101, "box": [0, 0, 19, 100]}, {"question_id": 103, "box": None}])
    s = score_predictions(root, "refcoco", preds)
    assert s["metrics"]["accuracy"] == 0.0 and s["missing"] == 1
    assert s["categories"]["val"]["iou"] == pytest.approx((19 / 40) / 2)
    # a pickle that names a function is refused before anything runs
    (root / "refs(unc).p").write_bytes(pickle.dumps([_Evil()]))
    with pytest.raises(UsageError, match="not a plain-data pickle .*refusing builtins.print"):
        get_adapter("refcoco").load(root)
    assert "must never run" not in capsys.readouterr().out


def test_refcocog_reads_umd_refs(tmp_path: Path) -> None:
    root = refcoco(tmp_path / "refcocog", refs_name="refs(umd).p")
    assert [i.id for i in get_adapter("refcocog").load(root)] == ["101", "102", "103"]
    with pytest.raises(UsageError, match=r"no refs\(unc\)\.p"):
        get_adapter("refcoco+").load(root)


def test_refcoco_lmms_lab_parquet_one_item_per_expression(tmp_path: Path) -> None:
    root = tmp_path / "RefCOCO"
    row = {"question_id": "5", "image": {"bytes": png_bytes((9, 9, 9)), "path": "COCO_train2014_000000000009.jpg"},
           "question": "Please carefully observe the area circled in the image and come up with a caption for the area.",
           "answer": ["man on left", "left guy"], "segmentation": [0.0, 0.0, 1.0], "bbox": [0.0, 0.0, 40.0, 100.0],
           "iscrowd": 0, "file_name": "COCO_train2014_000000000009_1.jpg"}  # fmt: skip
    parquet(root / "data" / "val-00000-of-00001.parquet", [row])
    parquet(root / "data" / "testB-00000-of-00001.parquet", [{**row, "question_id": "6", "answer": ["bus"], "bbox": [10.0, 10.0, 10.0, 10.0]}])
    items = get_adapter("refcoco+").load(root)
    assert sorted((i.id, i.category) for i in items) == [("5#0", "val"), ("5#1", "val"), ("6#0", "testB")]
    by_id = {i.id: i for i in items}
    assert by_id["5#1"].question == 'Locate "left guy". Cite the region.' and by_id["6#0"].box == [10, 10, 20, 20]
    s = score_predictions(root, "refcoco+", dump(tmp_path / "r.json", [{"question_id": "6#0", "box": [10, 10, 20, 20]}]))
    assert s["categories"]["testB"]["accuracy"] == 1.0 and s["categories"]["val"]["accuracy"] == 0.0
    with pytest.raises(UsageError, match=r"entry 0: 'box' must be \[x0, y0, x1, y1\]"):
        score_predictions(root, "refcoco+", dump(tmp_path / "bad.json", [{"question_id": "6#0", "box": [1, 2, 3]}]))


# -- GTA --------------------------------------------------------------------------------------


def test_gta_whitelist_blacklist_and_null_answers(tmp_path: Path) -> None:
    root = tmp_path / "gta"

    def query(question: str, gt: Any, files: list[str]) -> dict[str, Any]:
        return {
            "tools": [{"name": "OCR", "description": "...", "inputs": [], "outputs": []}, {"name": "Calculator"}],
            "files": [{"type": "image", "path": f, "url": "https://example.org/x.jpg"} for f in files],
            "dialogs": [
                {"role": "user", "content": question},
                {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "OCR", "arguments": {"image": files[0]}}}]},
                {"role": "tool", "name": "OCR", "content": {"type": "text", "content": "..."}},
                {"role": "assistant", "content": "final"},
            ],
            "gt_answer": gt,
        }  # fmt: skip

    dump(root / "dataset.json", {
        "0": query("How much do the two drinks cost?", {"whitelist": [["7.5", "7.50"]], "blacklist": None}, ["image/image_1.jpg"]),
        "1": query("Which is taller, the red or the blue one?", {"whitelist": [["red"]], "blacklist": [["blue"]]}, ["image/image_2.jpg"]),
        "2": query("Draw a box around the cat.", None, ["image/image_3.jpg"]),
    })  # fmt: skip
    for n in (1, 2, 3):
        image(root / "image" / f"image_{n}.jpg")
    items = get_adapter("gta").load(root)
    assert [i.id for i in items] == ["0", "1"]  # the image-generation query has no answer to score
    assert items[0].question == "How much do the two drinks cost?" and items[0].task == "tool"
    assert items[0].media == [str(root.resolve() / "image" / "image_1.jpg")]
    assert items[0].extra["gt_tools"] == ["OCR"] and items[1].extra["blacklist"] == [["blue"]]
    preds = dump(tmp_path / "r.json", [
        {"id": "0", "answer": "They cost $7.50 in total."},
        {"id": "1", "answer": "The red one, not the blue one."},  # blacklisted
    ])  # fmt: skip
    s = score_predictions(root, "gta", preds)
    assert s["metrics"]["accuracy"] == pytest.approx(0.5)
    assert s["items"]["0"]["accuracy"] == 1.0 and s["items"]["1"]["accuracy"] == 0.0


# -- predictions from agent answers ----------------------------------------------------------------


def test_prediction_from_an_agent_answer() -> None:
    import visagent.tools.detect  # noqa: F401  (declares the det_ region ids)
    from visagent.eval.base import answer_text

    assert answer_text(Answer(answer="There are 2 cups [det_1_0, det_1_1].")) == "There are 2 cups."
    assert answer_text(Answer(answer="yes (obs_2)")) == "yes"
    region = Evidence(id="det_1_0", kind="region", tool="detect", step=1, call=1, region={"box": [1, 2, 30, 40], "image": "img_0"})
    ocr = Evidence(id="obs_2", kind="observation", tool="ocr", step=2, call=2, observation="text")
    answer = Answer(answer="There are 3 cups [det_1_0].", evidence=[ocr, region])
    item = EvalItem(id="7", media=[], question="q", task="count", count=3)
    assert get_adapter("tallyqa").prediction(item, answer) == Prediction(id="7", answer="There are 3 cups.", count=3.0)
    grounding = get_adapter("refcoco").prediction(item.model_copy(update={"task": "grounding"}), answer)
    assert grounding.box == [1.0, 2.0, 30.0, 40.0]
    assert get_adapter("refcoco").prediction(item, Answer(answer="somewhere")).box is None
    assert get_adapter("vqav2").prediction(item, answer).answer == "There are 3 cups."


def test_every_format_round_trips_its_results_file(tmp_path: Path) -> None:
    for name in ALL:
        adapter = get_adapter(name)
        preds = [Prediction(id="12", answer="3", count=3.0, box=[1.0, 2.0, 3.0, 4.0])]
        adapter.write_predictions(preds, tmp_path / f"{name}.json")
        back = adapter.read_predictions(tmp_path / f"{name}.json")
        assert [p.id for p in back] == ["12"], name
        if adapter.task == "grounding":
            assert back[0].box == [1.0, 2.0, 3.0, 4.0]
        elif adapter.task == "count":
            assert back[0].count == 3.0
        else:
            assert back[0].answer == "3"


def test_eval_score_command_prints_a_table_and_json(tmp_path: Path) -> None:
    root = tallyqa(tmp_path / "tallyqa")
    preds = dump(tmp_path / "r.json", [{"question_id": 30095774, "answer": 2}])
    cmd = [sys.executable, "-m", "visagent.cli", "eval", "score", str(root), "--format", "tallyqa", "--predictions", str(preds)]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "tallyqa: 3 items, 2 without a prediction" in table.stdout and "complex" in table.stdout
    js = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120)
    assert js.returncode == 0, js.stderr
    summary = json.loads(js.stdout)
    assert summary["metrics"]["exact"] == pytest.approx(1 / 3) and summary["items"]["30095774"]["exact"] == 1.0
    bad = subprocess.run([*cmd[:-1], str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_formats_from_the_entry_point_group_are_registered_and_a_broken_one_is_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib.metadata

    from visagent.eval import base

    class Plugin(base.Adapter):
        name, task, metrics = "plugin-qa", "vqa", ("accuracy",)

        def load(self, folder: Path, limit: int | None = None) -> list[EvalItem]:
            return []

        def read_predictions(self, path: Path) -> list[Prediction]:
            return []

        def write_predictions(self, predictions: list[Prediction], path: Path) -> None:
            pass

        def score(self, item: EvalItem, prediction: Prediction | None) -> dict[str, float]:
            return {"accuracy": 0.0}

    class EP:
        def __init__(self, name: str, target: Any) -> None:
            self.name, self._target = name, target

        def load(self) -> Any:
            if isinstance(self._target, Exception):
                raise self._target
            return self._target

    def entry_points(group: str) -> list[EP]:
        assert group == "visagent.eval_formats"
        return [EP("broken", ImportError("no module named nowhere")), EP("plugin", Plugin)]

    monkeypatch.setattr(base, "_FORMATS", dict(base._FORMATS))
    monkeypatch.setattr(base, "_plugins_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    with caplog.at_level("WARNING", logger="visagent.eval"):
        assert "plugin-qa" in available_formats()
    assert isinstance(get_adapter("plugin-qa"), Plugin)
    assert any("eval format plugin 'broken' skipped: ImportError" in r.getMessage() for r in caplog.records)
