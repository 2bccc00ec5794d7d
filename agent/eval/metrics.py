"""The metrics each benchmark defines, as pure functions of a prediction and the ground truth.

- VQA accuracy (VQAv2, TextVQA), as the official VQA evaluation computes it: the prediction is
  cleaned (newlines / tabs to spaces, stripped), then ``process_punctuation`` and
  ``process_digit_article``; the ground-truth answers get ``process_punctuation`` only, and only
  when they are not all the same. The accuracy is the mean, over the 10 subsets of 9 annotators
  (each leaving one out), of ``min(1, #matches / 3)``: 3 or more of 9 agreeing is 1.0; 2 of the 10
  agreeing is 0.6.
- GQA: exact match. ``gqa_exact`` is the official script's raw string equality; ``gqa_match``
  first applies ``gqa_normalize`` (lowercase, outer whitespace and a trailing period removed), so
  that ``"Yes."`` matches ``yes``.
- Counting: exact, within one, absolute error (``count_scores``).
- Referring expressions: IoU of two ``[x0, y0, x1, y1]`` boxes (``box_iou``); correct at IoU >= 0.5.
- GTA: ``gta_correct``: every whitelist group has one of its phrases in the answer and no
  blacklist phrase is in it (whole words, case-insensitive), as GTA's own evaluator decides.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

# -- VQA (official VQA evaluation's answer processing) --------------------------------------------

# The contraction table of the official evaluation (keys without apostrophes -> the contracted form).
# Entries with a capital "I" never match: the text is lowercased first (as in the official code).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBER_WORDS["none"] = "0"
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official pattern: a period not followed by a digit (its "(?!<=\d)" is a look-ahead, kept as is).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official code passes re.UNICODE (32) where ``sub`` takes its count: at most 32 periods go.
_PERIOD_COUNT = 32


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: each punctuation mark is deleted where it touches a
    space somewhere in the text (or the text has a digit-comma-digit), else replaced by a space;
    then periods not followed by a digit are removed (``"a dog." -> "a dog"``, ``"3.5"`` kept)."""
    out = text
    has_comma_number = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or has_comma_number:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lowercase, split on whitespace, number words up to ten
    to digits (``"Two" -> "2"``, ``"none" -> "0"``), articles dropped, contractions restored
    (``"dont" -> "don't"``), words joined by one space."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_normalize(answer: str) -> str:
    """A predicted answer as the official evaluation compares it (``"Two dogs." -> "2 dogs"``)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str | None, answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1] of ``prediction`` against the annotators' ``answers`` (10 for VQAv2 /
    TextVQA): the mean over the leave-one-out subsets of ``min(1, matches / 3)``. ``None`` or no
    answers -> 0."""
    if prediction is None or not answers:
        return 0.0
    pred = vqa_normalize(prediction)
    gts = list(answers)
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    total = 0.0
    for i in range(len(gts)):
        matches = sum(1 for j, a in enumerate(gts) if j != i and a == pred)
        total += min(1.0, matches / 3.0)
    return total / len(gts)


# -- GQA ------------------------------------------------------------------------------------------


def gqa_normalize(answer: str) -> str:
    """Lowercase, outer whitespace and trailing periods removed (``" Yes. " -> "yes"``)."""
    return answer.strip().rstrip(".").strip().lower()


def gqa_exact(prediction: str | None, answer: str) -> float:
    """The official GQA accuracy of one question: 1.0 when the strings are equal, else 0.0."""
    return 1.0 if prediction is not None and prediction == answer else 0.0


def gqa_match(prediction: str | None, answer: str) -> float:
    """Exact match after ``gqa_normalize`` on both sides."""
    return 1.0 if prediction is not None and gqa_normalize(prediction) == gqa_normalize(answer) else 0.0


# -- counting -------------------------------------------------------------------------------------


def count_scores(prediction: float | None, truth: int) -> dict[str, float]:
    """``{"exact", "within1", "abs_error"}`` of a predicted count: exact 1/0 (equal to the truth),
    within1 1/0 (off by at most one), abs_error ``|prediction - truth|``. No prediction (None, NaN)
    scores exact 0, within1 0 and the error of answering 0 (``abs_error = truth``)."""
    if prediction is None or not math.isfinite(float(prediction)):
        return {"exact": 0.0, "within1": 0.0, "abs_error": float(abs(truth))}
    err = abs(float(prediction) - float(truth))
    return {"exact": 1.0 if err < 1e-9 else 0.0, "within1": 1.0 if err <= 1.0 + 1e-9 else 0.0, "abs_error": err}


# -- boxes ----------------------------------------------------------------------------------------


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    """COCO ``[x, y, width, height]`` -> ``[x0, y0, x1, y1]``."""
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def box_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (continuous pixel coordinates, as
    the RefCOCO evaluations compute it); 0 when either is missing or empty."""
    if a is None or b is None or len(a) != 4 or len(b) != 4:
        return 0.0
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw = min(ax1, bx1) - max(ax0, bx0)
    ih = min(ay1, by1) - max(ay0, by0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0) + max(0.0, bx1 - bx0) * max(0.0, by1 - by0) - inter
    if not math.isfinite(union) or union <= 0:
        return 0.0
    return inter / union


# -- GTA ------------------------------------------------------------------------------------------


def _phrase_re(phrases: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(re.escape(str(p)) for p in phrases) + r")\b", re.IGNORECASE)


def gta_correct(prediction: str | None, whitelist: Sequence[Sequence[str]], blacklist: Sequence[Sequence[str]] | None) -> float:
    """GTA answer accuracy of one query: 1.0 when, for every whitelist group, one of its phrases
    occurs in the answer as whole words (case-insensitive), and no phrase of any blacklist group
    does; else 0.0."""
    if not prediction:
        return 0.0
    for group in whitelist:
        if not group or not _phrase_re(group).search(prediction):
            return 0.0
    banned = [p for group in (blacklist or []) for p in group]
    if banned and _phrase_re(banned).search(prediction):
        return 0.0
    return 1.0
