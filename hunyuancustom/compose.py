"""Compose several subject images into one reference image on white (multi-subject, try-on).

The released HunyuanCustom weights take ONE reference image. The honest way to show the model
several subjects (a person and a garment, two people, a person and an object) is one picture
that holds them all, side by side on white, the background the model's own preprocessing pads
with. This module builds that picture: each subject (optionally cut out by its mask) is cropped
to its content, scaled to fit its cell of a row, column or grid, and centred on a white canvas
whose sides are multiples of 16 (the VAE and patch grid need multiples of 16).

Pure torch; images are ComfyUI-style float tensors [H, W, C] in 0..1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ValidationError

LAYOUTS = ("row", "column", "grid")
MAX_SUBJECTS = 4
MIN_SIDE, MAX_SIDE = 64, 4096
MULTIPLE = 16


@dataclass(frozen=True)
class Subject:
    """One subject: an image [H, W, 3|4] and an optional mask [H, W] (1 = subject)."""

    image: torch.Tensor
    mask: torch.Tensor | None = None
    name: str = "image"


def as_single_image(image, field: str) -> torch.Tensor:
    """[H, W, C] from an IMAGE input that must hold exactly one image."""
    if not isinstance(image, torch.Tensor):
        raise ValidationError(field, f"must be an IMAGE tensor, got {type(image).__name__}")
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValidationError(field, f"got a batch of {image.shape[0]} images; connect one image "
                                         "per input (image_1 .. image_4)")
        image = image[0]
    if image.dim() != 3 or image.shape[-1] not in (3, 4):
        raise ValidationError(field, f"must be an IMAGE [1, height, width, 3], got shape {list(image.shape)}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValidationError(field, f"is {image.shape[1]}x{image.shape[0]} pixels; at least 2x2 is needed")
    if not torch.isfinite(image).all():
        raise ValidationError(field, "contains NaN or infinite values")
    return image.detach().to("cpu", torch.float32).clamp(0, 1)


def as_single_mask(mask, field: str, height: int, width: int, invert: bool) -> torch.Tensor:
    """[H, W] mask in 0..1 (1 = subject) matching its image's size."""
    if not isinstance(mask, torch.Tensor):
        raise ValidationError(field, f"must be a MASK tensor, got {type(mask).__name__}")
    if mask.dim() == 3:
        if mask.shape[0] != 1:
            raise ValidationError(field, f"got a batch of {mask.shape[0]} masks; connect one mask")
        mask = mask[0]
    if mask.dim() != 2:
        raise ValidationError(field, f"must be a MASK [1, height, width], got shape {list(mask.shape)}")
    if tuple(mask.shape) != (height, width):
        raise ValidationError(field, f"is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}; "
                                     "the mask must have the image's size (LoadImage gives a 64x64 "
                                     "empty mask for images without transparency)")
    mask = mask.detach().to("cpu", torch.float32).clamp(0, 1)
    if invert:
        mask = 1.0 - mask
    if float(mask.max()) < 0.5:
        hint = "" if invert else " (LoadImage's MASK is 1 where the PNG is transparent: turn on invert_masks)"
        raise ValidationError(field, f"selects no subject pixels{hint}")
    return mask


def check_canvas(width: int, height: int, padding: int) -> None:
    for field, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValidationError(field, f"must be an integer, got {v!r}")
        if not MIN_SIDE <= v <= MAX_SIDE or v % MULTIPLE:
            raise ValidationError(field, f"{v} is not allowed; allowed: multiples of {MULTIPLE} from "
                                         f"{MIN_SIDE} to {MAX_SIDE}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValidationError("padding", f"must be an integer >= 0, got {padding!r}")


def grid_shape(count: int, layout: str) -> tuple[int, int]:
    """(rows, columns) of the cells for `count` subjects."""
    if layout == "row":
        return 1, count
    if layout == "column":
        return count, 1
    if layout == "grid":
        cols = math.ceil(math.sqrt(count))
        return math.ceil(count / cols), cols
    raise ValidationError("layout", f"{layout!r} is not allowed; allowed: {', '.join(LAYOUTS)}")


def cut_out(image: torch.Tensor, mask: torch.Tensor | None,
            field: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
    """(RGB on white, alpha) cropped to the subject's bounding box.

    The mask (or the image's own alpha channel) says where the subject is; everything else
    becomes white, as the model's reference preprocessing pads with white.
    """
    rgb = image[..., :3]
    alpha = image[..., 3] if image.shape[-1] == 4 else torch.ones(image.shape[:2])
    if mask is not None:
        alpha = alpha * mask
    if mask is not None or image.shape[-1] == 4:
        ys, xs = torch.nonzero(alpha > 0.5 / 255, as_tuple=True)
        if ys.numel() == 0:
            raise ValidationError(field, "the subject is fully transparent")
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        rgb, alpha = rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1]
    a = alpha.unsqueeze(-1)
    return rgb * a + (1.0 - a), alpha


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[H, W, C] -> [height, width, C], antialiased when shrinking."""
    t = x.permute(2, 0, 1).unsqueeze(0)
    shrink = height < x.shape[0] or width < x.shape[1]
    t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    return t[0].permute(1, 2, 0).clamp(0, 1)


def compose_subjects(subjects: list[Subject], *, width: int = 1280, height: int = 720,
                     layout: str = "row", padding: int = 16) -> torch.Tensor:
    """One white [height, width, 3] canvas holding every subject, each fitted into its own cell.

    Cells split the canvas evenly (row: side by side, column: stacked, grid: near-square);
    `padding` pixels of white surround every cell's content. Aspect ratios are kept.
    """
    check_canvas(width, height, padding)
    if not subjects:
        raise ValidationError("image_1", "at least one subject image is needed")
    if len(subjects) > MAX_SUBJECTS:
        raise ValidationError("images", f"{len(subjects)} subjects given; at most {MAX_SUBJECTS}")
    rows, cols = grid_shape(len(subjects), layout)
    canvas = torch.ones((height, width, 3), dtype=torch.float32)
    for k, subject in enumerate(subjects):
        r, c = divmod(k, cols)
        # Integer cell edges that tile the canvas exactly.
        cy0, cy1 = r * height // rows, (r + 1) * height // rows
        cx0, cx1 = c * width // cols, (c + 1) * width // cols
        box_h, box_w = cy1 - cy0 - 2 * padding, cx1 - cx0 - 2 * padding
        if box_h < 8 or box_w < 8:
            raise ValidationError("padding", f"{padding} px leaves no room in a {cx1 - cx0}x{cy1 - cy0} "
                                             f"cell; lower it or enlarge the canvas")
        rgb, _alpha = cut_out(subject.image, subject.mask, subject.name)
        h, w = rgb.shape[:2]
        scale = min(box_h / h, box_w / w)
        nh, nw = max(1, min(box_h, round(h * scale))), max(1, min(box_w, round(w * scale)))
        fitted = _resize(rgb, nh, nw)
        y0 = cy0 + padding + (box_h - nh) // 2
        x0 = cx0 + padding + (box_w - nw) // 2
        canvas[y0:y0 + nh, x0:x0 + nw] = fitted
    return canvas


def compose_from_inputs(images: list, masks: list, *, invert_masks: bool = False, **canvas) -> torch.Tensor:
    """Validate ComfyUI-style inputs (IMAGE/MASK or None per slot) and compose; returns [1, H, W, 3].

    Slots are numbered from 1 in error messages (image_1, mask_1, ...); empty slots are skipped.
    """
    subjects = []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True), start=1):
        if image is None:
            if mask is not None:
                raise ValidationError(f"mask_{i}", f"is connected but image_{i} is not")
            continue
        img = as_single_image(image, f"image_{i}")
        m = None if mask is None else as_single_mask(mask, f"mask_{i}", img.shape[0], img.shape[1],
                                                     invert_masks)
        subjects.append(Subject(img, m, f"image_{i}"))
    return compose_subjects(subjects, **canvas).unsqueeze(0)
