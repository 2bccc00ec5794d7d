"""The benchmark metrics against hand-computed values and the official normalization examples."""

from __future__ import annotations

import math

import pytest

from visagent.eval.base import EvalItem, get_adapter, summarize
from visagent.eval.metrics import (
    box_iou,
    count_scores,
    gqa_exact,
    gqa_match,
    gta_correct,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
    vqa_normalize,
    xywh_to_xyxy,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),  # number words to digits
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only up to ten
        ("a dog.", "dog"),  # articles dropped, a period not before a digit removed
        ("The Red Car", "red car"),  # lowercased
        ("3.5", "3.5"),  # a decimal point stays
        ("100,978", "100978"),  # digit-comma-digit: punctuation deleted, not spaced
        ("hot dog, ketchup", "hot dog ketchup"),  # a comma touching a space is deleted
        ("red-car", "red car"),  # a mark not touching a space becomes a space
        ("Yes!", "yes"),
        ("dont", "don't"),  # contractions restored
        ("isnt", "isn't"),
        ("it's", "it's"),  # the apostrophe is not punctuation here
        ("  two\tdogs\n", "2 dogs"),
    ],
)
def test_vqa_normalization_follows_the_official_examples(raw: str, normalized: str) -> None:
    assert vqa_normalize(raw) == normalized


def test_punctuation_and_digit_article_steps_separately() -> None:
    assert process_punctuation("what?") == "what "
    assert process_punctuation("what ?") == "what "
    assert process_digit_article("An Apple a day") == "apple day"


@pytest.mark.parametrize(
    ("agree", "expected"),
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_is_the_mean_over_the_ten_leave_one_out_subsets(agree: int, expected: float) -> None:
    # k of 10 annotators say "dog": leaving out one of them leaves k-1 matches, any other leaves k
    answers = ["dog"] * agree + ["cat"] * (10 - agree)
    by_hand = (agree * min(1, (agree - 1) / 3) + (10 - agree) * min(1, agree / 3)) / 10 if agree else 0.0
    assert vqa_accuracy("dog", answers) == pytest.approx(expected)
    assert by_hand == pytest.approx(expected)


def test_vqa_accuracy_normalizes_the_prediction_and_ground_truth_as_the_official_code() -> None:
    assert vqa_accuracy("Two.", ["2"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("A dog", ["dog"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy(None, ["dog"] * 10) == 0.0
    assert vqa_accuracy("dog", []) == 0.0
    # differing answers get the punctuation step: "hot-dog" -> "hot dog"
    assert vqa_accuracy("hot dog", ["hot-dog"] * 3 + ["burger"] * 7) == pytest.approx(0.9)
    # ... identical answers are compared as distributed (the official code skips the step then)
    assert vqa_accuracy("hot dog", ["hot-dog"] * 10) == 0.0


def test_gqa_exact_match() -> None:
    assert gqa_exact("yes", "yes") == 1.0
    assert gqa_exact("Yes.", "yes") == 0.0  # the official script compares raw strings
    assert gqa_match("Yes.", "yes") == 1.0
    assert gqa_match(" the table ", "table") == 0.0  # no article dropping
    assert gqa_match(None, "yes") == 0.0


def test_count_scores() -> None:
    assert count_scores(3, 3) == {"exact": 1.0, "within1": 1.0, "abs_error": 0.0}
    assert count_scores(4.0, 3) == {"exact": 0.0, "within1": 1.0, "abs_error": 1.0}
    assert count_scores(1, 3) == {"exact": 0.0, "within1": 0.0, "abs_error": 2.0}
    assert count_scores(2.5, 3)["within1"] == 1.0 and count_scores(2.5, 3)["exact"] == 0.0
    assert count_scores(None, 5) == {"exact": 0.0, "within1": 0.0, "abs_error": 5.0}
    assert count_scores(math.nan, 5)["abs_error"] == 5.0


def test_box_iou_by_hand() -> None:
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [0, 0, 5, 10]) == pytest.approx(0.5)
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert box_iou([0, 0, 10, 10], None) == 0.0
    assert box_iou([5, 5, 5, 9], [0, 0, 10, 10]) == 0.0  # empty box
    assert xywh_to_xyxy([10, 20, 30, 40]) == [10, 20, 40, 60]


def test_gta_whitelist_and_blacklist() -> None:
    wl = [["5", "five"], ["apples", "apple"]]
    assert gta_correct("There are FIVE apples.", wl, None) == 1.0
    assert gta_correct("There are 5 pears.", wl, None) == 0.0  # the second group is missing
    assert gta_correct("There are 15 apples.", wl, None) == 0.0  # whole words: 15 is not 5
    assert gta_correct("5 apples, not 6", wl, [["6", "six"]]) == 0.0  # a blacklisted phrase
    assert gta_correct("5 apples", wl, [["6", "six"]]) == 1.0
    assert gta_correct("", wl, []) == 0.0
    assert gta_correct(None, wl, []) == 0.0


def test_summarize_means_categories_groups_and_missing() -> None:
    adapter = get_adapter("tallyqa")
    items = [
        EvalItem(id=str(i), media=[], question="q", task="count", count=c, category=cat, extra={"groups": {"src": src}})
        for i, (c, cat, src) in enumerate([(3, "simple", "a"), (2, "simple", "b"), (5, "complex", "a"), (4, "complex", "b")])
    ]
    scores = {"0": count_scores(3, 3), "1": count_scores(4, 2), "2": count_scores(4, 5)}  # item 3: missing
    s = summarize(adapter, items, scores)
    assert s["n"] == 4 and s["missing"] == 1
    assert s["metrics"]["exact"] == pytest.approx(1 / 4)
    assert s["metrics"]["within1"] == pytest.approx(2 / 4)
    assert s["metrics"]["abs_error"] == pytest.approx((0 + 2 + 1 + 4) / 4)  # missing counts as answering 0
    assert s["categories"]["simple"] == {"n": 2, "exact": 0.5, "within1": 0.5, "abs_error": 1.0}
    assert s["categories"]["complex"]["abs_error"] == pytest.approx(2.5)
    assert s["groups"]["src"]["a"]["exact"] == pytest.approx(0.5)


def test_summarize_orders_numeric_categories_by_value() -> None:
    adapter = get_adapter("countbenchqa")
    items = [EvalItem(id=str(n), media=[], question="q", task="count", count=n, category=str(n)) for n in (10, 9, 2)]
    s = summarize(adapter, items, {str(n): count_scores(n, n) for n in (10, 9, 2)})
    assert list(s["categories"]) == ["2", "9", "10"] and s["missing"] == 0 and s["metrics"]["exact"] == 1.0
