"""Reference-image preparation of the released recipe (pure torch, IMAGE layout [H, W, C] in 0..1).

- LLaVA input: the image fitted inside a 336x336 square, padded with white.
- VAE reference: the image fitted inside the video frame (width x height), padded with white,
  encoded as one latent frame.
- Negative branch: an all-white LLaVA image and the latent of an all-white frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ValidationError

LLAVA_SIZE = 336
WHITE = 1.0


def _as_hwc(image: torch.Tensor) -> torch.Tensor:
    if image.ndim == 4:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValidationError("image", f"must be an IMAGE [B, H, W, C], got shape {tuple(image.shape)}")
    if image.shape[-1] == 4:
        image = image[..., :3]
    elif image.shape[-1] == 1:
        image = image.expand(-1, -1, 3)
    return image.float()


def fit_size(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int]:
    """Largest size with the source's aspect inside width x height (released int() rounding)."""
    if width / src_w > height / src_h:
        h = height
        w = int(src_w / src_h * h)
    else:
        w = width
        h = int(src_h / src_w * w)
    return w, h


def pad_to(image: torch.Tensor, width: int, height: int, color: float = WHITE) -> torch.Tensor:
    """Fit `image` [H, W, C] inside width x height (bilinear without antialias, like cv2.resize)
    and centre it on `color`."""
    image = _as_hwc(image)
    src_h, src_w = image.shape[:2]
    w, h = fit_size(src_w, src_h, width, height)
    resized = F.interpolate(image.permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                            align_corners=False, antialias=False)[0].permute(1, 2, 0).clamp(0, 1)
    out = torch.full((height, width, 3), color, dtype=resized.dtype)
    top, left = (height - h) // 2, (width - w) // 2
    out[top:top + h, left:left + w] = resized
    return out


def llava_image(image: torch.Tensor) -> torch.Tensor:
    """[1, 336, 336, 3]: the reference on a white square (for the text-image fusion)."""
    return pad_to(image, LLAVA_SIZE, LLAVA_SIZE)[None]


def vae_reference(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[1, height, width, 3]: the reference on a white frame of the video's size."""
    return pad_to(image, width, height)[None]


def white_like(image: torch.Tensor) -> torch.Tensor:
    """The negative branch's image: all white, same shape."""
    return torch.full_like(image, WHITE)
