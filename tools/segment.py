"""``segment``: SAM masks for boxes (region ids or pixel boxes) and/or points.

One class per backend behind the ``Segmenter`` protocol:

- ``transformers``: ``SamTransformers`` (``SamModel`` + ``SamProcessor``) or ``Sam2Transformers``
  (``Sam2Model`` + ``Sam2Processor``), picked from the checkpoint's ``config.json`` ``model_type``.
  ``get_image_embeddings`` once per image, then ``model(image_embeddings=..., input_boxes=...)``
  and ``image_processor.post_process_masks``.
- ``official``: ``SamOfficial``, segment-anything's ``SamPredictor``: ``set_image`` once per image, then
  ``predict_torch`` with ``transform.apply_boxes_torch`` for all boxes in one batch. Checkpoint:
  a ``.pth`` state dict (``sam_vit_b_01ec64.pth`` ...) or a folder holding one; the architecture
  comes from ``options.model_type`` (vit_h / vit_l / vit_b), else from a ``sam_arch.json`` next to
  the weights, else from the state dict's encoder width.

The image embedding is computed once per (image, model) and kept in the run's media cache; every
call records ``ctx.cache["sam_image_embedding"] = "hit" | "miss"``. All prompts of one call are
decoded in one batch (one mask-decoder call).

Batching across runs: ``embed_many(images)`` runs the image encoder once over the images of
concurrent calls (the processors resize and pad every image to the same square input, so images of
any size share one forward; each keeps its own original / input size for post-processing), and
``decode_many(requests)`` runs the mask decoder over the prompts of concurrent calls: transformers
backends flatten every prompt into a row with its image's embedding and decode rows of the same
prompt structure (box or not, number of points, multimask) in one call; the official backend decodes
request by request (its ``SamPredictor`` holds one image at a time). ``embed`` / ``decode`` are the
batch of one.

Masks: one per box (or one for the point set when no boxes are given), at the original image size,
as COCO RLE (``{"size": [h, w], "counts": str}``, pycocotools, column-major) with area (pixels),
box (tight [x0, y0, x1, y1] pixels of the mask, x1/y1 exclusive; the prompt box when the mask is
empty) and score (the model's predicted IoU, clipped to [0, 1]).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import Field, model_validator

from visagent.errors import ToolError
from visagent.tools.base import Region, Tool, ToolInput, ToolOutput, clip_text
from visagent.tools.models import autocast, batched, checked_config, register_loader

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

FAMILY = "segment"
CACHE_EVENT = "sam_image_embedding"
#: tolerance (pixels) for explicit boxes / points that reach slightly past the image border
EDGE_TOLERANCE = 1.0
ARCH_FILE = "sam_arch.json"
_OFFICIAL_WIDTHS = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}


def check_prompts(boxes: list[str | list[float]] | None, points: list[list[float]] | None, point_labels: list[int] | None) -> None:
    """Shared checks of SAM prompts: pixel boxes [x0, y0, x1, y1] finite and non-empty (region ids
    pass), points [x, y] finite, ``point_labels`` one 0/1 per point. Raises ValueError."""
    for i, box in enumerate(boxes or []):
        if isinstance(box, str):
            continue
        if len(box) != 4:
            raise ValueError(f"boxes[{i}] must be [x0, y0, x1, y1], got {len(box)} numbers")
        if not all(math.isfinite(v) for v in box):
            raise ValueError(f"boxes[{i}] has a non-finite coordinate: {box}")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"boxes[{i}] {box} is empty: need x0 < x1 and y0 < y1")
    for i, point in enumerate(points or []):
        if len(point) != 2:
            raise ValueError(f"points[{i}] must be [x, y], got {len(point)} numbers")
        if not all(math.isfinite(v) for v in point):
            raise ValueError(f"points[{i}] has a non-finite coordinate: {point}")
    if point_labels is not None:
        if points is None:
            raise ValueError("point_labels given without points")
        if len(point_labels) != len(points):
            raise ValueError(f"point_labels has {len(point_labels)} entries but points has {len(points)}")
        bad = [v for v in point_labels if v not in (0, 1)]
        if bad:
            raise ValueError(f"point_labels must be 1 (foreground) or 0 (background), got {bad[0]}")


# -- input / output -------------------------------------------------------------------------
class SegmentInput(ToolInput):
    """``image``: image id. ``boxes``: region ids (``det_1_0``) or [x0, y0, x1, y1] pixels of the
    original image; one mask per box. ``points``: [[x, y]] pixels with ``point_labels`` (1 =
    foreground, 0 = background; default all 1): without boxes they prompt one mask together, with
    boxes they are added to every box's prompt."""

    image: str = Field(description="image id, e.g. img_0")
    boxes: list[str | list[float]] | None = Field(
        default=None, description="region ids (det_1_0) or [x0, y0, x1, y1] pixel boxes; one mask per box"
    )
    points: list[list[float]] | None = Field(default=None, description="[[x, y]] pixel points")
    point_labels: list[int] | None = Field(default=None, description="1 foreground / 0 background per point")

    @model_validator(mode="after")
    def _check(self) -> "SegmentInput":
        if not self.boxes and not self.points:
            raise ValueError("give boxes (region ids or [x0, y0, x1, y1]) or points to segment")
        check_prompts(self.boxes, self.points, self.point_labels)
        return self


class Mask(Region):
    """A segmentation mask. ``box``: tight [x0, y0, x1, y1] pixels of the mask (x1, y1 exclusive;
    the prompt box when the mask is empty). ``area``: mask pixels. ``rle``: COCO RLE of the
    mask at the original image size, ``{"size": [h, w], "counts": str}`` (column-major, as
    ``pycocotools.mask.decode`` expects once ``counts`` is encoded back to bytes). ``source``:
    the region id the box came from, if any."""

    area: int
    rle: dict[str, Any]
    source: str | None = None


class SegmentOutput(ToolOutput):
    image: str
    width: int
    height: int
    masks: list[Mask]

    def observation(self) -> str:
        total = max(1, self.width * self.height)
        parts = []
        for m in self.masks:
            label = f" {m.label!r}" if m.label else ""
            src = f" from {m.source}" if m.source else ""
            box = ", ".join(f"{v:.0f}" for v in m.box)
            parts.append(
                f"{m.id}{label}{src}: area {m.area} px ({100 * m.area / total:.1f}%), "
                f"score {m.score or 0:.2f}, box [{box}]"
            )
        head = f"{len(self.masks)} mask{'s' if len(self.masks) != 1 else ''} on {self.image} ({self.width}x{self.height})"
        return clip_text(head + (": " + "; ".join(parts) if parts else ""))


# -- backends --------------------------------------------------------------------------------
@dataclass
class Prompts:
    """Prompts in original-image pixels. ``boxes``: (B, 4) or None; ``points``: (N, 2) or None;
    ``labels``: (N,) ints. With boxes, the points are added to each box's prompt."""

    boxes: list[list[float]] | None
    points: list[list[float]] | None
    labels: list[int] | None

    @property
    def batch(self) -> int:
        return len(self.boxes) if self.boxes else 1

    @property
    def multimask(self) -> bool:
        """One point alone is ambiguous: decode 3 candidates and keep the best (SAM's advice)."""
        return not self.boxes and self.points is not None and len(self.points) == 1


class Segmenter(Protocol):
    """What the segment tool needs of a loaded SAM (one class per backend). ``embed(image)`` ->
    embedding state (the expensive step, cached per image); ``decode(state, prompts)`` -> (masks:
    bool tensor (B, H, W) at the original size, scores (B,)) in one mask-decoder call.
    ``image_encoder`` / ``mask_decoder``: the torch modules (for hooks)."""

    backend: str  # "transformers" or "official"
    kind: str  # "sam", "sam2", "official"
    checkpoint: str

    @property
    def image_encoder(self) -> Any: ...

    @property
    def mask_decoder(self) -> Any: ...

    def embed(self, image: "Image.Image") -> dict[str, Any]: ...

    def decode(self, state: dict[str, Any], prompts: Prompts) -> tuple["torch.Tensor", "torch.Tensor"]: ...

    def embed_many(self, images: list["Image.Image"]) -> list[dict[str, Any]]: ...

    def decode_many(self, requests: list["DecodeRequest"]) -> list[tuple["torch.Tensor", "torch.Tensor"]]: ...


@dataclass
class DecodeRequest:
    """One mask-decoder call: an embedding ``state`` (from ``embed``) and its ``prompts``."""

    state: dict[str, Any]
    prompts: Prompts


def _split_embeddings(embeddings: Any, i: int) -> Any:
    """Image ``i`` of batched embeddings: a (B, ...) tensor, or a list of them (SAM 2 levels)."""
    if isinstance(embeddings, (list, tuple)):
        return [e[i : i + 1] for e in embeddings]
    return embeddings[i : i + 1]


def _cat_embeddings(parts: list[Any]) -> Any:
    import torch

    if isinstance(parts[0], (list, tuple)):
        return [torch.cat([p[level] for p in parts]) for level in range(len(parts[0]))]
    return torch.cat(parts)


@dataclass
class _SamBase:
    model: Any
    processor: Any = None  # transformers processor or SamPredictor
    device: str = "cpu"
    dtype: Any = None
    checkpoint: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    backend: ClassVar[str] = "transformers"
    kind: ClassVar[str] = ""

    @property
    def mask_decoder(self) -> Any:
        return self.model.mask_decoder

    def _autocast(self) -> Any:
        return autocast(self.device, self.dtype, enabled=self.backend == "official")

    def embed(self, image: "Image.Image") -> dict[str, Any]:
        return self.embed_many([image])[0]

    def embed_many(self, images: list["Image.Image"]) -> list[dict[str, Any]]:
        """The embedding state of each image (one image-encoder forward for all)."""
        import torch

        if not images:
            return []
        with torch.inference_mode(), self._autocast():
            return self._embed_many([im.convert("RGB") for im in images])

    def decode(self, state: dict[str, Any], prompts: Prompts) -> tuple["torch.Tensor", "torch.Tensor"]:
        return self.decode_many([DecodeRequest(state, prompts)])[0]

    def decode_many(self, requests: list[DecodeRequest]) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
        """Per request: (masks bool (B, H, W) at its image's original size, scores float (B,))."""
        import torch

        if not requests:
            return []
        with torch.inference_mode(), self._autocast():
            outs = self._decode_many(requests)
        return [(masks, scores.float()) for masks, scores in outs]

    def _embed_many(self, images: list["Image.Image"]) -> list[dict[str, Any]]:
        return [self._embed(im) for im in images]

    def _decode_many(self, requests: list[DecodeRequest]) -> list[tuple[Any, Any]]:
        return [self._decode(r.state, r.prompts) for r in requests]

    def _embed(self, image: "Image.Image") -> dict[str, Any]:
        raise NotImplementedError

    def _decode(self, state: dict[str, Any], prompts: Prompts) -> tuple[Any, Any]:
        raise NotImplementedError


@dataclass
class SamTransformers(_SamBase):
    """transformers' ``SamModel`` + ``SamProcessor`` (longest side resized, then padded)."""

    kind: ClassVar[str] = "sam"

    @property
    def image_encoder(self) -> Any:
        return self.model.vision_encoder

    def _input_size(self, inputs: Any) -> tuple[int, int] | None:
        """The model's input size when it is the same for every image (None: per image)."""
        return None

    def _post_process(self, low_res: Any, state: dict[str, Any]) -> Any:
        return self.processor.image_processor.post_process_masks([low_res], [state["original_size"]], [state["input_size"]])[0][:, 0]

    def _embed(self, image: "Image.Image") -> dict[str, Any]:
        return self._embed_many([image])[0]

    def _embed_many(self, images: list["Image.Image"]) -> list[dict[str, Any]]:
        inputs = self.processor(images=images, return_tensors="pt")
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device, self.dtype))
        input_size = self._input_size(inputs)
        return [
            {
                "embeddings": _split_embeddings(embeddings, i),
                "original_size": tuple(int(v) for v in inputs["original_sizes"][i]),
                "input_size": input_size if input_size is not None else tuple(int(v) for v in inputs["reshaped_input_sizes"][i]),
            }
            for i in range(len(images))
        ]

    def _prompt_tensors(self, prompts: Prompts, scale_x: float, scale_y: float) -> dict[str, Any]:
        """Prompts scaled to the model's resized frame: boxes (B, 4), points (B, N, 2), labels (B, N)."""
        import torch

        out: dict[str, Any] = {"boxes": None, "points": None, "labels": None}
        scale = torch.tensor([scale_x, scale_y], dtype=torch.float32)
        if prompts.boxes:
            out["boxes"] = torch.tensor(prompts.boxes, dtype=torch.float32).view(-1, 2, 2).mul(scale).view(-1, 4)
        if prompts.points:
            pts = torch.tensor(prompts.points, dtype=torch.float32) * scale
            labels = torch.tensor(prompts.labels or [1] * len(prompts.points), dtype=torch.int64)
            b = prompts.batch
            out["points"] = pts.unsqueeze(0).expand(b, -1, -1).contiguous()
            out["labels"] = labels.unsqueeze(0).expand(b, -1).contiguous()
        return out

    def _decode(self, state: dict[str, Any], prompts: Prompts) -> tuple[Any, Any]:
        import torch

        oh, ow = state["original_size"]
        ih, iw = state["input_size"]
        t = self._prompt_tensors(prompts, iw / ow, ih / oh)
        kwargs: dict[str, Any] = {}
        if t["boxes"] is not None:
            kwargs["input_boxes"] = t["boxes"].unsqueeze(0).to(self.device, self.dtype)  # (1, B, 4)
        if t["points"] is not None:
            kwargs["input_points"] = t["points"].unsqueeze(0).to(self.device, self.dtype)  # (1, B, N, 2)
            kwargs["input_labels"] = t["labels"].unsqueeze(0).to(self.device)  # (1, B, N)
        out = self.model(image_embeddings=state["embeddings"], multimask_output=prompts.multimask, **kwargs)
        low_res = out.pred_masks[0]  # (B, M, h, w)
        iou = out.iou_scores[0]  # (B, M)
        best = iou.argmax(dim=1)
        rows = torch.arange(low_res.shape[0], device=low_res.device)
        low_res = low_res[rows, best].unsqueeze(1).float()  # (B, 1, h, w): upsample only the kept masks
        return self._post_process(low_res, state), iou[rows, best]

    def _decode_many(self, requests: list[DecodeRequest]) -> list[tuple[Any, Any]]:
        import torch

        # every prompt row of every request, grouped by structure: one decoder call per group
        rows: list[tuple[int, int]] = []
        tensors = []
        groups: dict[tuple[bool, int, bool], list[int]] = {}
        for r, req in enumerate(requests):
            oh, ow = req.state["original_size"]
            ih, iw = req.state["input_size"]
            t = self._prompt_tensors(req.prompts, iw / ow, ih / oh)
            tensors.append(t)
            n_points = 0 if t["points"] is None else int(t["points"].shape[1])
            key = (t["boxes"] is not None, n_points, req.prompts.multimask)
            for b in range(req.prompts.batch):
                groups.setdefault(key, []).append(len(rows))
                rows.append((r, b))
        low_rows: list[Any] = [None] * len(rows)
        iou_rows: list[Any] = [None] * len(rows)
        for (has_boxes, n_points, multimask), members in groups.items():
            kwargs: dict[str, Any] = {}
            if has_boxes:
                kwargs["input_boxes"] = torch.stack([tensors[rows[n][0]]["boxes"][rows[n][1]] for n in members])[:, None].to(
                    self.device, self.dtype
                )  # (R, 1, 4)
            if n_points:
                kwargs["input_points"] = torch.stack([tensors[rows[n][0]]["points"][rows[n][1]] for n in members])[:, None].to(
                    self.device, self.dtype
                )  # (R, 1, N, 2)
                kwargs["input_labels"] = torch.stack([tensors[rows[n][0]]["labels"][rows[n][1]] for n in members])[:, None].to(
                    self.device
                )  # (R, 1, N)
            embeddings = _cat_embeddings([requests[rows[n][0]].state["embeddings"] for n in members])
            out = self.model(image_embeddings=embeddings, multimask_output=multimask, **kwargs)
            low_res = out.pred_masks[:, 0]  # (R, M, h, w)
            iou = out.iou_scores[:, 0]  # (R, M)
            best = iou.argmax(dim=1)
            idx = torch.arange(low_res.shape[0], device=low_res.device)
            for j, n in enumerate(members):
                low_rows[n] = low_res[idx[j], best[j]]
                iou_rows[n] = iou[idx[j], best[j]]
        results = []
        for r, req in enumerate(requests):
            mine = [n for n, (rr, _) in enumerate(rows) if rr == r]
            low = torch.stack([low_rows[n] for n in mine]).unsqueeze(1).float()  # (B, 1, h, w)
            results.append((self._post_process(low, req.state), torch.stack([iou_rows[n] for n in mine])))
        return results


@dataclass
class Sam2Transformers(SamTransformers):
    """transformers' ``Sam2Model`` + ``Sam2Processor`` (resized to a square, no padding)."""

    kind: ClassVar[str] = "sam2"

    def _input_size(self, inputs: Any) -> tuple[int, int] | None:
        side = int(self.processor.target_size)
        return side, side

    def _post_process(self, low_res: Any, state: dict[str, Any]) -> Any:
        return self.processor.image_processor.post_process_masks([low_res], [state["original_size"]])[0][:, 0]


@dataclass
class SamOfficial(_SamBase):
    """segment-anything's ``Sam`` driven through its ``SamPredictor`` (``processor``)."""

    backend: ClassVar[str] = "official"
    kind: ClassVar[str] = "official"

    @property
    def image_encoder(self) -> Any:
        return self.model.image_encoder

    def _embed_many(self, images: list["Image.Image"]) -> list[dict[str, Any]]:
        """``SamPredictor.set_image``'s steps (resize the longest side, ``Sam.preprocess``: normalize
        and pad to the square input) for each image, then one image-encoder forward for all."""
        import numpy as np
        import torch

        predictor = self.processor
        inputs, sizes = [], []
        for image in images:
            arr = np.asarray(image)
            resized = predictor.transform.apply_image(arr)
            t = torch.as_tensor(resized, device=predictor.device).permute(2, 0, 1).contiguous()[None]
            sizes.append((tuple(arr.shape[:2]), tuple(t.shape[-2:])))
            inputs.append(self.model.preprocess(t))
        features = self.model.image_encoder(torch.cat(inputs))
        return [
            {"features": features[i : i + 1], "original_size": original, "input_size": input_size}
            for i, (original, input_size) in enumerate(sizes)
        ]

    def _embed(self, image: "Image.Image") -> dict[str, Any]:
        import numpy as np

        predictor = self.processor
        predictor.set_image(np.asarray(image), image_format="RGB")
        state = {
            "features": predictor.features,
            "original_size": tuple(predictor.original_size),
            "input_size": tuple(predictor.input_size),
        }
        predictor.reset_image()
        return state

    def _decode(self, state: dict[str, Any], prompts: Prompts) -> tuple[Any, Any]:
        import torch

        predictor = self.processor
        # restore the cached embedding into the predictor (the model lock is held by the caller)
        predictor.features = state["features"]
        predictor.original_size = state["original_size"]
        predictor.input_size = state["input_size"]
        predictor.is_image_set = True
        try:
            size = state["original_size"]
            dev = predictor.device
            boxes = points = labels = None
            if prompts.boxes:
                boxes = predictor.transform.apply_boxes_torch(torch.tensor(prompts.boxes, dtype=torch.float32, device=dev), size)
            if prompts.points:
                pts = torch.tensor(prompts.points, dtype=torch.float32, device=dev)
                points = predictor.transform.apply_coords_torch(pts, size).unsqueeze(0).expand(prompts.batch, -1, -1)
                labels = torch.tensor(prompts.labels or [1] * len(prompts.points), device=dev)
                labels = labels.unsqueeze(0).expand(prompts.batch, -1)
            masks, iou, _ = predictor.predict_torch(points, labels, boxes=boxes, multimask_output=prompts.multimask)
        finally:
            predictor.reset_image()
        best = iou.argmax(dim=1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        return masks[rows, best], iou[rows, best]


# -- loaders ---------------------------------------------------------------------------------
@register_loader(FAMILY, "transformers")
def load_transformers(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> Segmenter:
    """Load a transformers SAM / SAM 2 checkpoint (Hub id or folder); the architecture comes from
    the checkpoint's ``config.json`` ``model_type``."""
    import transformers

    classes = {"sam": ("SamModel", "SamProcessor", SamTransformers), "sam2": ("Sam2Model", "Sam2Processor", Sam2Transformers)}
    kind = checked_config(checkpoint, "segment", classes).model_type
    model_name, proc_name, segmenter = classes[kind]
    model = getattr(transformers, model_name).from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = getattr(transformers, proc_name).from_pretrained(checkpoint)
    return segmenter(model, processor, device, dtype, checkpoint)


def _official_files(checkpoint: str) -> tuple[Path, Path | None]:
    path = Path(checkpoint)
    if path.is_file():
        arch = path.with_name(ARCH_FILE)
        return path, arch if arch.is_file() else None
    if path.is_dir():
        weights = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
        if len(weights) != 1:
            raise ToolError(f"segment checkpoint folder {path} must hold exactly one .pth file, found {len(weights)}")
        arch = path / ARCH_FILE
        return weights[0], arch if arch.is_file() else None
    raise ToolError(f"segment checkpoint {checkpoint} is not a .pth file or a folder holding one")


def build_sam_from_arch(arch: dict[str, Any]) -> Any:
    """Build an (untrained) segment-anything ``Sam`` from an architecture description (the
    parameters of ``segment_anything.build_sam._build_sam`` plus the sizes it hardcodes)."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    size = int(arch["image_size"])
    patch = int(arch["vit_patch_size"])
    dim = int(arch["prompt_embed_dim"])
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch["encoder_depth"],
            embed_dim=arch["encoder_embed_dim"],
            img_size=size,
            mlp_ratio=arch.get("mlp_ratio", 4),
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch["encoder_num_heads"],
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch["encoder_global_attn_indexes"],
            window_size=arch["window_size"],
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(size // patch, size // patch),
            input_image_size=(size, size),
            mask_in_chans=arch.get("mask_in_chans", 16),
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.get("decoder_depth", 2),
                embedding_dim=dim,
                mlp_dim=arch.get("decoder_mlp_dim", 2048),
                num_heads=arch.get("decoder_num_heads", 8),
            ),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.get("iou_head_hidden_dim", 256),
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


@register_loader(FAMILY, "official")
def load_official(checkpoint: str, device: str, dtype: Any, options: dict[str, Any]) -> Segmenter:
    """Load a segment-anything checkpoint: build the architecture (``sam_model_registry`` for
    vit_h / vit_l / vit_b, or ``sam_arch.json``), then ``torch.load`` + ``load_state_dict``."""
    import torch
    from segment_anything import SamPredictor, sam_model_registry

    weights, arch_file = _official_files(checkpoint)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model_type = options.get("model_type")
    if model_type is None and arch_file is None:
        width = state.get("image_encoder.patch_embed.proj.weight")
        model_type = _OFFICIAL_WIDTHS.get(int(width.shape[0])) if width is not None else None
        if model_type is None:
            raise ToolError(f"cannot tell the SAM variant of {weights}: set models.segment.options.model_type")
    if model_type is not None:
        if model_type not in sam_model_registry:
            raise ToolError(f"unknown SAM model_type '{model_type}'; available: {', '.join(sam_model_registry)}")
        sam = sam_model_registry[model_type](checkpoint=None)
    else:
        assert arch_file is not None
        sam = build_sam_from_arch(json.loads(arch_file.read_text()))
    sam.load_state_dict(state)
    sam = sam.to(device=device, dtype=dtype).eval()
    return SamOfficial(sam, SamPredictor(sam), device, dtype, checkpoint, {"model_type": model_type})


# -- helpers ---------------------------------------------------------------------------------
def mask_to_rle(masks: "np.ndarray") -> list[dict[str, Any]]:
    """COCO RLEs of boolean masks (B, H, W); ``counts`` decoded to str so the RLE is JSON."""
    import numpy as np
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def rle_to_mask(rle: dict[str, Any]) -> "np.ndarray":
    """Inverse of ``mask_to_rle`` for one mask: bool (H, W)."""
    import warnings

    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    encoded = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(encoded).astype(bool)


def mask_box(mask: "np.ndarray") -> list[float] | None:
    """Tight [x0, y0, x1, y1] pixels of a boolean (H, W) mask (x1, y1 exclusive); None when empty."""
    import numpy as np

    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def fmt_box(box: list[float]) -> str:
    """``[x0, y0, x1, y1]`` with compact numbers, for messages."""
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


# -- the tool --------------------------------------------------------------------------------
class Segment(Tool):
    name: ClassVar[str] = "segment"
    description: ClassVar[str] = (
        "Segment objects with SAM: one mask per box (region ids from detect, e.g. det_1_0, or "
        "[x0, y0, x1, y1] pixels), or one mask from points ([[x, y]], labels 1 = object, 0 = "
        "background). Returns mask ids with area, box and score."
    )
    families: ClassVar[tuple[str, ...]] = (FAMILY,)
    region_prefixes: ClassVar[tuple[str, ...]] = ("mask",)

    def _prompts(self, inp: SegmentInput, ctx: Any, width: int, height: int) -> tuple[Prompts, list[Any]]:
        """Resolve region ids, check everything lies on the image; -> prompts and per-box (source, label)."""
        boxes: list[list[float]] = []
        sources: list[tuple[str | None, str | None]] = []
        tol = EDGE_TOLERANCE
        for i, item in enumerate(inp.boxes or []):
            if isinstance(item, str):
                region = ctx.region(item)
                if region.image != inp.image:
                    raise ToolError(f"region {item} is on {region.image}, not on {inp.image}")
                box = [float(v) for v in region.box]
                source, label = item, region.label
            else:
                box, source, label = [float(v) for v in item], None, None
                name = f"boxes[{i}] {fmt_box(box)}"
                if box[0] < -tol or box[1] < -tol or box[2] > width + tol or box[3] > height + tol:
                    raise ToolError(f"{name} is outside {inp.image} ({width}x{height} px)")
            clipped = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                       min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]  # fmt: skip
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise ToolError(f"box {source or i} {fmt_box(box)} does not overlap {inp.image} ({width}x{height} px)")
            boxes.append(clipped)
            sources.append((source, label))
        for i, (x, y) in enumerate(inp.points or []):
            if not (-tol <= x <= width + tol and -tol <= y <= height + tol):
                raise ToolError(f"points[{i}] [{x:g}, {y:g}] is outside {inp.image} ({width}x{height} px)")
        points = [[min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)] for x, y in inp.points or []]
        labels = list(inp.point_labels) if inp.point_labels is not None else ([1] * len(points) if points else None)
        if not boxes:
            sources = [(None, None)]
        return Prompts(boxes or None, points or None, labels), sources

    def run(self, input: SegmentInput, ctx: Any) -> SegmentOutput:  # noqa: A002

        image = ctx.image(input.image)
        width, height = image.size
        prompts, sources = self._prompts(input, ctx, width, height)
        key = ctx.model_key(FAMILY)
        with batched(ctx, FAMILY) as m:
            cache = ctx.media_cache(input.image)
            cache_key = f"{CACHE_EVENT}:{m.model.backend}:{key}"
            state = cache.get(cache_key)
            if state is None:
                ctx.cache[CACHE_EVENT] = "miss"
                state = m.submit("embed_many", image)
                cache[cache_key] = state
            else:
                ctx.cache[CACHE_EVENT] = "hit"
            masks_t, scores_t = m.submit("decode_many", DecodeRequest(state, prompts))
            masks = masks_t.cpu().numpy().astype(bool)
            scores = scores_t.cpu().tolist()
        if masks.shape[1:] != (height, width):  # pragma: no cover - a backend bug, not user input
            raise ToolError(f"mask size {masks.shape[1:]} differs from image size {(height, width)}")
        rles = mask_to_rle(masks)
        out = []
        for i, (mask, rle, score, (source, label)) in enumerate(zip(masks, rles, scores, sources, strict=True)):
            box = mask_box(mask)
            if box is None:
                box = list(prompts.boxes[i]) if prompts.boxes else _points_box(prompts.points or [])
            out.append(
                Mask(
                    id=ctx.region_id("mask", i),
                    image=input.image,
                    box=box,
                    score=min(1.0, max(0.0, float(score))) if math.isfinite(score) else 0.0,
                    label=label,
                    area=int(mask.sum()),
                    rle=rle,
                    source=source,
                )
            )
        return SegmentOutput(image=input.image, width=width, height=height, masks=out)


def _points_box(points: list[list[float]]) -> list[float]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return [min(xs), min(ys), max(xs) + 1, max(ys) + 1]
