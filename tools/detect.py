"""``detect`` and ``count``: open-vocabulary object detection (Grounding DINO; OWLv2).

Backends (``models.detect.backend``):

- ``transformers``: the architecture comes from the checkpoint's ``config.json`` ``model_type``:
  ``grounding-dino`` -> ``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor``;
  ``owlv2`` -> ``Owlv2ForObjectDetection`` + ``Owlv2Processor``.
- ``official``: groundingdino-py. Checkpoint: a folder holding one ``.pth`` (``{"model":
  state_dict}``, e.g. ``groundingdino_swint_ogc.pth``) and one config ``.py``
  (``GroundingDINO_SwinT_OGC.py``), or a ``.pth`` file (config from ``options.config``, default:
  the SwinT OGC config shipped with groundingdino). Built with groundingdino's own
  ``SLConfig.fromfile`` + ``build_model`` + ``load_state_dict(clean_state_dict(...))``, as
  ``groundingdino.util.inference.load_model`` does. Its BERT text encoder is read from
  ``options.text_encoder`` (a local folder with a ``BertModel`` + tokenizer), else from the
  config's ``text_encoder_type`` (a path relative to the config file, or a Hub id such as
  ``bert-base-uncased`` that must be in the Hugging Face cache offline). transformers 5 needs
  ``tools._gdino_compat``.

Grounding DINO text: labels are cleaned (lowercase, single spaces, no ".") and joined into
phrases ``"a cat. a remote control."``; a label list whose tokens exceed the model's text limit
(``max_text_len``, 256) is split into several captions, all run in one batch on the same image.
Each query is assigned to the label whose phrase tokens hold its highest probability; its score is
that probability. A query is kept when score > ``box_threshold`` and score > ``text_threshold``.
OWLv2 scores each label as a separate query (sigmoid of the class logit; ``text_threshold`` is not
used). Boxes: [x0, y0, x1, y1] pixels of the original image, clipped to it. At most
``options.max_detections`` (100) detections per call, best first.

Options (``models.detect.options``): ``max_detections`` (100), ``max_text_len`` (lower the text
limit per caption), official backend only: ``config`` (config .py), ``text_encoder`` (BERT
folder), ``image_size`` / ``max_size`` (shorter / longer side of the resized image; default the
config's ``image_size`` / ``max_size``, else 800 / 1333), ``weights_only`` (true).

Batching: ``detect_many(requests)`` runs many ``DetectRequest`` s (images and label lists of
concurrent calls) together; ``detect`` is its batch of one. Grounding DINO: every (image, caption)
pair is a row; rows whose images resize to the same pixel size share one forward (captions padded
to the longest), images of other sizes get their own forward — pixels are never padded, so results
equal those of unbatched calls (within float tolerance). OWLv2 resizes every image to one square
size: all requests share one forward, each image's label list padded to the longest (padding
queries are dropped before scoring). Each request is post-processed with its own image size.

``count``: detection of one label, then non-maximum suppression (``torchvision.ops.nms``, IoU
``nms_iou``), then the number of kept boxes.

Tiny random checkpoints (``visagent.tools.tiny.detect``): ``tiny:grounding-dino`` (both backends)
and ``tiny:owlv2``.
"""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import Field, field_validator

from visagent.errors import ToolError
from visagent.tools.base import Prob, Region, Tool, ToolInput, ToolOutput, clip_text
from visagent.tools.models import autocast, batched, checked_config, register_loader, to_device

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

FAMILY = "detect"
DEFAULT_BOX_THRESHOLD = 0.35
DEFAULT_TEXT_THRESHOLD = 0.25
DEFAULT_MAX_DETECTIONS = 100
#: official Grounding DINO preprocessing (groundingdino.util.inference.load_image)
OFFICIAL_SIZE = 800
OFFICIAL_MAX_SIZE = 1333
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# -- labels and phrases ----------------------------------------------------------------------
def clean_label(label: str) -> str:
    """Lowercase, ``.`` removed, whitespace collapsed: ``" Red  Cup."`` -> ``"red cup"``."""
    return " ".join(label.lower().replace(".", " ").split())


def format_caption(labels: list[str]) -> str:
    """Grounding DINO's text prompt: ``["a cat", "remote"]`` -> ``"a cat. remote."``."""
    return " ".join(f"{clean_label(label)}." for label in labels)


def _check_labels(labels: list[str]) -> list[str]:
    if not labels:
        raise ValueError("labels must not be empty: give at least one object name, e.g. ['cup']")
    cleaned = []
    for i, label in enumerate(labels):
        c = clean_label(label)
        if not c:
            raise ValueError(f"labels[{i}] is empty")
        if c not in cleaned:
            cleaned.append(c)
    return cleaned


# -- input / output -------------------------------------------------------------------------
class DetectInput(ToolInput):
    """``image``: image id. ``labels``: object names to find (cleaned to lowercase; duplicates
    dropped). Thresholds in [0, 1]."""

    image: str = Field(description="image id, e.g. img_0")
    labels: list[str] = Field(description="object names to find, e.g. ['cup', 'spoon']")
    box_threshold: Prob = Field(default=DEFAULT_BOX_THRESHOLD, description="minimum box score")
    text_threshold: Prob = Field(default=DEFAULT_TEXT_THRESHOLD, description="minimum label-token score")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        return _check_labels(value)


class Detection(Region):
    """A detected object: ``label`` (one of the requested labels), ``box`` [x0, y0, x1, y1] pixels
    of the original image, ``score`` in [0, 1]."""

    label: str
    score: float


class DetectOutput(ToolOutput):
    image: str
    width: int
    height: int
    labels: list[str]
    box_threshold: float
    text_threshold: float
    detections: list[Detection]

    def observation(self) -> str:
        n = len(self.detections)
        head = (
            f"{n} detection{'s' if n != 1 else ''} on {self.image} ({self.width}x{self.height}) for "
            f"{', '.join(repr(lb) for lb in self.labels)} (box_threshold {self.box_threshold:g}, "
            f"text_threshold {self.text_threshold:g})"
        )
        return clip_text(head + (": " + "; ".join(d.describe() for d in self.detections) if n else ""))


class CountInput(ToolInput):
    """``image``: image id. ``label``: the object to count. ``nms_iou``: boxes overlapping a
    better one by more than this IoU are dropped before counting."""

    image: str = Field(description="image id, e.g. img_0")
    label: str = Field(description="object name to count, e.g. 'coin'")
    box_threshold: Prob = Field(default=DEFAULT_BOX_THRESHOLD, description="minimum box score")
    text_threshold: Prob = Field(default=DEFAULT_TEXT_THRESHOLD, description="minimum label-token score")
    nms_iou: Prob = Field(default=0.5, description="IoU above which overlapping boxes count once")

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        cleaned = clean_label(value)
        if not cleaned:
            raise ValueError("label must not be empty, e.g. 'cup'")
        return cleaned


class CountOutput(ToolOutput):
    image: str
    label: str
    count: int
    ids: list[str]
    box_threshold: float
    text_threshold: float
    nms_iou: float
    detections: list[Detection]

    def observation(self) -> str:
        head = (
            f"counted {self.count} {self.label!r} on {self.image} (box_threshold {self.box_threshold:g}, "
            f"text_threshold {self.text_threshold:g}, NMS IoU {self.nms_iou:g})"
        )
        return clip_text(head + (": " + ", ".join(self.ids) if self.ids else ""))


# -- shared post-processing ------------------------------------------------------------------
@dataclass
class RawDetection:
    """A detection before ids: ``box`` [x0, y0, x1, y1] original-image pixels."""

    label: str
    box: list[float]
    score: float


def cxcywh_to_xyxy_pixels(boxes: "torch.Tensor", width: int, height: int, scale: tuple[float, float] | None = None) -> "torch.Tensor":
    """Normalized (cx, cy, w, h) boxes (N, 4) -> [x0, y0, x1, y1] pixels clipped to the image.
    ``scale``: (sx, sy) pixels per normalized unit (default: the image's width and height)."""
    import torch

    sx, sy = scale if scale is not None else (float(width), float(height))
    cx, cy, w, h = boxes.float().unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    xyxy = xyxy * torch.tensor([sx, sy, sx, sy], dtype=xyxy.dtype)
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    return xyxy


def assign_labels(
    probs: "torch.Tensor",
    spans: list[tuple[int, int]],
    labels: list[str],
    box_threshold: float,
    text_threshold: float,
) -> tuple["torch.Tensor", list[str], "torch.Tensor"]:
    """Per query, the label whose token span [start, end) holds its highest probability.
    ``probs``: (Q, T) token probabilities. Returns (kept query indices, labels, scores)."""
    import torch

    per_label = torch.stack([probs[:, s:e].max(dim=1).values for s, e in spans], dim=1)  # (Q, L)
    scores, best = per_label.max(dim=1)
    keep = torch.nonzero((scores > box_threshold) & (scores > text_threshold)).flatten()
    return keep, [labels[int(best[i])] for i in keep], scores[keep]


@dataclass
class Chunk:
    """One caption of a (possibly split) label list; ``spans``: token [start, end) per label."""

    labels: list[str]
    caption: str
    spans: list[tuple[int, int]]
    input_ids: list[int]


def plan_chunks(tokenizer: Any, labels: list[str], max_len: int) -> list[Chunk]:
    """Split ``labels`` into captions whose token count ([CLS] ... [SEP]) fits ``max_len``."""
    dot = tokenizer.convert_tokens_to_ids(".")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    chunks: list[Chunk] = []
    current: list[str] = []
    ids: list[int] = [cls_id]
    spans: list[tuple[int, int]] = []

    def close() -> None:
        if current:
            chunks.append(Chunk(list(current), format_caption(current), list(spans), ids + [sep_id]))

    for label in labels:
        toks = tokenizer(label, add_special_tokens=False)["input_ids"]
        need = len(toks) + 1
        if need + 2 > max_len:
            raise ToolError(f"label {label!r} is {len(toks)} tokens long; the detector reads at most {max_len - 3}")
        if len(ids) + need + 1 > max_len:
            close()
            current, ids, spans = [], [cls_id], []
        spans.append((len(ids), len(ids) + len(toks)))
        ids = ids + toks + [dot]
        current.append(label)
    close()
    return chunks


@dataclass
class DetectRequest:
    """One detection: ``image`` (PIL, any mode; converted to RGB), ``labels`` (cleaned, as
    ``DetectInput`` leaves them), thresholds in [0, 1]."""

    image: "Image.Image"
    labels: list[str]
    box_threshold: float = DEFAULT_BOX_THRESHOLD
    text_threshold: float = DEFAULT_TEXT_THRESHOLD


class Detector(Protocol):
    """What the detect tools need of a loaded open-vocabulary detector (one class per backend).
    ``detect_many(requests)`` -> one detection list per request (same order); ``detect`` is its
    batch of one."""

    backend: str  # "transformers" or "official"
    kind: str  # "grounding-dino" or "owlv2"
    checkpoint: str
    forwards: int  # model forward passes (batches) so far

    def detect(self, image: "Image.Image", labels: list[str], box_threshold: float, text_threshold: float) -> list[RawDetection]:
        """Detections of ``labels`` in ``image``, best first, at most ``options.max_detections``."""
        ...

    def detect_many(self, requests: list[DetectRequest]) -> list[list[RawDetection]]: ...


@dataclass
class _DetectorBase:
    model: Any
    tokenizer: Any = None
    device: str = "cpu"
    dtype: Any = None
    checkpoint: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    forwards: int = 0
    backend: ClassVar[str] = "transformers"
    kind: ClassVar[str] = ""

    @property
    def max_detections(self) -> int:
        return int(self.options.get("max_detections", DEFAULT_MAX_DETECTIONS))

    def detect(self, image: "Image.Image", labels: list[str], box_threshold: float, text_threshold: float) -> list[RawDetection]:
        return self.detect_many([DetectRequest(image, list(labels), box_threshold, text_threshold)])[0]

    def detect_many(self, requests: list[DetectRequest]) -> list[list[RawDetection]]:
        """Detections per request, best first, at most ``options.max_detections`` each."""
        import torch

        if not requests:
            return []
        requests = [DetectRequest(r.image.convert("RGB"), list(r.labels), r.box_threshold, r.text_threshold) for r in requests]
        with torch.inference_mode(), autocast(self.device, self.dtype, enabled=self.backend == "official"):
            found_all = self._find_many(requests)
        out = []
        for found in found_all:
            found.sort(key=lambda d: -d.score)
            out.append(found[: self.max_detections])
        return out

    def _find_many(self, requests: list[DetectRequest]) -> list[list[RawDetection]]:
        raise NotImplementedError


@dataclass
class _GroundingDino(_DetectorBase):
    """Grounding DINO: labels joined into captions (``plan_chunks``), one batched forward per image;
    ``max_text_len``: text tokens per caption."""

    max_text_len: int = 256
    kind: ClassVar[str] = "grounding-dino"

    def pixels(self, image: "Image.Image") -> "torch.Tensor":
        """The model's input pixels of ``image``: (3, h, w) float32 (resized, normalized)."""
        raise NotImplementedError

    def forward_rows(self, pixels: "torch.Tensor", captions: list[str]) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """One forward of ``pixels`` (B, 3, h, w) with ``captions`` (B), row by row. Returns (probs
        (B, Q, T) float32, boxes (B, Q, 4) normalized cxcywh float32, input_ids (B, T') as the
        model tokenized them)."""
        raise NotImplementedError

    def grounding_forward(self, image: "Image.Image", captions: list[str]) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """One batched forward of ``image`` with each caption (see ``forward_rows``)."""
        return self.forward_rows(self.pixels(image)[None].expand(len(captions), -1, -1, -1), captions)

    def _find_many(self, requests: list[DetectRequest]) -> list[list[RawDetection]]:
        import torch

        pixels = [self.pixels(r.image) for r in requests]
        rows = [(i, c) for i, r in enumerate(requests) for c in plan_chunks(self.tokenizer, r.labels, self.max_text_len)]
        groups: dict[tuple[int, ...], list[int]] = {}  # rows by input pixel size: one forward each
        for n, (i, _) in enumerate(rows):
            groups.setdefault(tuple(pixels[i].shape), []).append(n)
        found: list[list[RawDetection]] = [[] for _ in requests]
        for members in groups.values():
            batch = torch.stack([pixels[rows[n][0]] for n in members])
            probs, boxes, input_ids = self.forward_rows(batch, [rows[n][1].caption for n in members])
            for b, n in enumerate(members):
                i, chunk = rows[n]
                r = requests[i]
                got = input_ids[b, : len(chunk.input_ids)].tolist()
                if got != chunk.input_ids:
                    raise ToolError(
                        f"detect: the tokenizer of {self.checkpoint} split {chunk.caption!r} unexpectedly; "
                        "it needs a BERT-style tokenizer"
                    )
                keep, names, scores = assign_labels(probs[b], chunk.spans, chunk.labels, r.box_threshold, r.text_threshold)
                width, height = r.image.size
                xyxy = cxcywh_to_xyxy_pixels(boxes[b][keep], width, height)
                for name, score, box in zip(names, scores.tolist(), xyxy.tolist()):
                    found[i].append(RawDetection(name, [round(v, 2) for v in box], float(score)))
        return found


@dataclass
class GroundingDinoTransformers(_GroundingDino):
    """transformers' ``GroundingDinoForObjectDetection`` with its processor."""

    processor: Any = None

    def pixels(self, image: "Image.Image") -> "torch.Tensor":
        return self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def forward_rows(self, pixels: "torch.Tensor", captions: list[str]) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        import torch

        self.forwards += 1
        inputs = dict(self.processor.tokenizer(captions, padding="longest", return_tensors="pt"))
        inputs["pixel_values"] = pixels
        inputs["pixel_mask"] = torch.ones((pixels.shape[0], *pixels.shape[2:]), dtype=torch.long)
        out = self.model(**to_device(inputs, self.device, self.dtype))
        return out.logits.float().sigmoid().cpu(), out.pred_boxes.float().cpu(), inputs["input_ids"].cpu()


@dataclass
class GroundingDinoOfficial(_GroundingDino):
    """The official groundingdino model (its own transforms; float32 weights under autocast)."""

    image_size: int = OFFICIAL_SIZE
    max_size: int = OFFICIAL_MAX_SIZE
    backend: ClassVar[str] = "official"

    def forward_rows(self, pixels: "torch.Tensor", captions: list[str]) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        self.forwards += 1
        out = self.model(pixels.to(self.device), captions=captions)
        input_ids = self.tokenizer(captions, padding="longest", return_tensors="pt")["input_ids"]
        return out["pred_logits"].float().sigmoid().cpu(), out["pred_boxes"].float().cpu(), input_ids.cpu()

    def pixels(self, image: "Image.Image") -> "torch.Tensor":
        import groundingdino.datasets.transforms as T

        transform = T.Compose(
            [T.RandomResize([self.image_size], max_size=self.max_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )
        pixels, _ = transform(image, None)
        return pixels

    _official_pixels = pixels  # groundingdino's own preprocessing (``load_image``)


@dataclass
class Owlv2Detector(_DetectorBase):
    """transformers' ``Owlv2ForObjectDetection``: every label scored per image patch."""

    processor: Any = None
    kind: ClassVar[str] = "owlv2"

    def _find_many(self, requests: list[DetectRequest]) -> list[list[RawDetection]]:
        self.forwards += 1
        max_len = int(self.model.config.text_config.max_position_embeddings)
        width_q = max(len(r.labels) for r in requests)
        # every image gets the same number of queries; the padding queries are cut off below
        text = [list(r.labels) + [" "] * (width_q - len(r.labels)) for r in requests]
        inputs = self.processor(
            text=text, images=[r.image for r in requests], return_tensors="pt", padding="max_length", truncation=True,
            max_length=max_len,
        )  # fmt: skip
        out = self.model(**to_device(inputs, self.device, self.dtype))
        found = []
        for b, r in enumerate(requests):
            probs = out.logits[b, :, : len(r.labels)].float().sigmoid().cpu()  # (patches, labels)
            scores, best = probs.max(dim=1)
            keep = (scores > r.box_threshold).nonzero().flatten()
            width, height = r.image.size
            side = float(max(width, height))  # OWLv2 pads the image to a square (bottom / right)
            xyxy = cxcywh_to_xyxy_pixels(out.pred_boxes[b].float().cpu()[keep], width, height, scale=(side, side))
            found.append([
                RawDetection(r.labels[int(best[i])], [round(v, 2) for v in box], float(scores[i]))
                for i, box in zip(keep.tolist(), xyxy.tolist())
            ])  # fmt: skip
        return found


# -- loaders ---------------------------------------------------------------------------------
@register_loader(FAMILY, "transformers")
def load_transformers(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> Detector:
    """Load a transformers Grounding DINO / OWLv2 checkpoint (Hub id or folder); the architecture
    comes from the checkpoint's ``config.json`` ``model_type``."""
    import transformers
    from transformers import AutoProcessor

    classes = {"grounding-dino": "GroundingDinoForObjectDetection", "owlv2": "Owlv2ForObjectDetection"}
    config = checked_config(checkpoint, "detect", classes)
    kind = config.model_type
    model_cls = getattr(transformers, classes[kind])
    model = model_cls.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    common = dict(model=model, tokenizer=processor.tokenizer, device=device, dtype=dtype, checkpoint=checkpoint, options=dict(options))
    if kind == "owlv2":
        return Owlv2Detector(**common, processor=processor)
    max_text_len = _text_limit(int(getattr(config, "max_text_len", 256)), options)
    return GroundingDinoTransformers(**common, max_text_len=max_text_len, processor=processor)


def _text_limit(model_limit: int, options: dict[str, Any]) -> int:
    """Text tokens per caption: the model's limit, or ``options.max_text_len`` if lower."""
    chosen = int(options.get("max_text_len", model_limit))
    if chosen < 4:
        raise ToolError(f"models.detect.options.max_text_len must be at least 4, got {chosen}")
    return min(model_limit, chosen)


def _official_files(checkpoint: str, options: dict[str, Any]) -> tuple[Path, Path]:
    path = Path(checkpoint)
    config = Path(options["config"]).expanduser() if options.get("config") else None
    if path.is_dir():
        weights = sorted(path.glob("*.pth"))
        if len(weights) != 1:
            raise ToolError(f"detect checkpoint folder {path} must hold exactly one .pth file, found {len(weights)}")
        if config is None:
            configs = sorted(path.glob("*.py"))
            if len(configs) != 1:
                raise ToolError(
                    f"detect checkpoint folder {path} must hold exactly one config .py file "
                    f"(found {len(configs)}), or set models.detect.options.config"
                )
            config = configs[0]
        path = weights[0]
    elif not path.is_file():
        raise ToolError(f"detect checkpoint {checkpoint} is not a .pth file or a folder holding one")
    if config is None:
        import groundingdino

        config = Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"
    if not config.is_file():
        raise ToolError(f"Grounding DINO config not found: {config}")
    return path, config


def _text_encoder(args: Any, config_file: Path, options: dict[str, Any]) -> str:
    chosen = options.get("text_encoder")
    if chosen:
        folder = Path(chosen).expanduser()
        if not folder.is_dir():
            raise ToolError(f"models.detect.options.text_encoder: no such folder {folder}")
        return str(folder.resolve())
    name = str(args.text_encoder_type)
    relative = config_file.parent / name
    if not Path(name).is_absolute() and relative.is_dir():
        return str(relative.resolve())
    if Path(name).is_dir():
        return name
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the local cache
        raise ToolError(
            f"Grounding DINO text encoder '{name}' is not available offline: set "
            "models.detect.options.text_encoder to a local BERT folder (model + tokenizer)"
        ) from None


@contextmanager
def _quiet() -> Iterator[None]:
    """groundingdino prints while it builds; send that to the log so stdout stays clean (the
    CLI's ``--json`` prints exactly one JSON object there)."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        log.debug("groundingdino: %s", line)


@register_loader(FAMILY, "official")
def load_official(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> Detector:
    """Load an official Grounding DINO checkpoint with groundingdino's own builder."""
    import torch
    from groundingdino.models import build_model
    from groundingdino.util.misc import clean_state_dict
    from groundingdino.util.slconfig import SLConfig

    from visagent.tools._gdino_compat import install

    install()
    weights, config_file = _official_files(checkpoint, options)
    args = SLConfig.fromfile(str(config_file))
    args.device = device
    args.text_encoder_type = _text_encoder(args, config_file, options)
    with _quiet():
        model = build_model(args)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=bool(options.get("weights_only", True)))
    except pickle.UnpicklingError as exc:
        raise ToolError(
            f"{weights} holds more than tensors ({str(exc).splitlines()[0]}); if you trust the file, set "
            "models.detect.options.weights_only: false"
        ) from None
    state = state.get("model", state)
    result = model.load_state_dict(clean_state_dict(state), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("bert.")]
    if missing:
        log.warning("%s: %d weights missing from the checkpoint (e.g. %s)", weights, len(missing), missing[0])
    if result.unexpected_keys:
        log.warning("%s: %d unexpected weights (e.g. %s)", weights, len(result.unexpected_keys), result.unexpected_keys[0])
    model = model.to(device).eval()
    get = args._cfg_dict.get if hasattr(args, "_cfg_dict") else (lambda k, d=None: getattr(args, k, d))
    image_size = int(options.get("image_size", get("image_size", OFFICIAL_SIZE)))
    max_size = int(options.get("max_size", get("max_size", OFFICIAL_MAX_SIZE)))
    return GroundingDinoOfficial(
        model=model, tokenizer=model.tokenizer, device=device, dtype=dtype, checkpoint=str(weights), options=dict(options),
        max_text_len=_text_limit(int(args.max_text_len), options), image_size=image_size, max_size=max_size,
    )  # fmt: skip


# -- tools -----------------------------------------------------------------------------------
def _regions(ctx: Any, image: str, found: list[RawDetection]) -> list[Detection]:
    return [
        Detection(id=ctx.region_id("det", i), image=image, box=d.box, score=round(d.score, 4), label=d.label)
        for i, d in enumerate(found)
    ]


class Detect(Tool):
    name = "detect"
    description = (
        "Find objects named by text labels in an image; returns boxes with ids (det_N_i), labels and scores. "
        "Lower box_threshold to find more, raise it to keep only confident boxes."
    )
    families = (FAMILY,)
    region_prefixes = ("det",)

    def run(self, inp: DetectInput, ctx: Any) -> DetectOutput:  # noqa: D102
        image = ctx.image(inp.image)
        with batched(ctx, FAMILY) as m:
            found = m.submit("detect_many", DetectRequest(image, inp.labels, inp.box_threshold, inp.text_threshold))
        return DetectOutput(
            image=inp.image,
            width=image.width,
            height=image.height,
            labels=inp.labels,
            box_threshold=inp.box_threshold,
            text_threshold=inp.text_threshold,
            detections=_regions(ctx, inp.image, found),
        )


def nms_keep(found: list[RawDetection], iou: float) -> list[RawDetection]:
    """Non-maximum suppression (torchvision.ops.nms): the kept detections, best first."""
    import torch
    from torchvision.ops import nms

    if not found:
        return []
    boxes = torch.tensor([d.box for d in found], dtype=torch.float32)
    scores = torch.tensor([d.score for d in found], dtype=torch.float32)
    keep = nms(boxes, scores, float(iou))
    return [found[int(i)] for i in keep]


class Count(Detect):
    """``detect`` of one label, then non-maximum suppression, then the count (same model, same ids)."""

    name = "count"
    description = "Count the objects of one label in an image (detection, non-maximum suppression, count); returns the count and the ids of the counted boxes."  # noqa: E501

    def run(self, inp: CountInput, ctx: Any) -> CountOutput:  # noqa: D102
        image = ctx.image(inp.image)
        with batched(ctx, FAMILY) as m:
            found = m.submit("detect_many", DetectRequest(image, [inp.label], inp.box_threshold, inp.text_threshold))
        kept = nms_keep(found, inp.nms_iou)
        detections = _regions(ctx, inp.image, kept)
        return CountOutput(
            image=inp.image,
            label=inp.label,
            count=len(detections),
            ids=[d.id for d in detections],
            box_threshold=inp.box_threshold,
            text_threshold=inp.text_threshold,
            nms_iou=inp.nms_iou,
            detections=detections,
        )
