"""Video-driven mode (insert / replace a subject): the source clip and its mask steer the video.

How the released editing checkpoint (`hunyuancustom_editing_720P`) uses the source, restated:

- The mask (white = region to replace) is grown (dilated) or shrunk (eroded) with an elliptical
  kernel of `expand` pixels, three times, then thresholded; the recipe uses expand 5.
- The region is blacked out in the source frames; the masked frames and the mask (as a grey
  RGB video) are each VAE-encoded, scaled like any latent, and stacked: 16 + 16 = 32 channels.
- `bg_in` (a patch embedding like `img_in`, 32 channels in) and `bg_proj` (Linear) turn that into
  one token per video token, added to the patch-embedded noisy video before the first block, in
  both the positive and the negative branch. The reference-image tokens get nothing.
- Size and frame count come from the source (sides multiples of 16, 4k+1 frames); 50 steps,
  flow shift 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ValidationError
from .audio import load_released, select_keys

KEY_PREFIXES = ("bg_in.", "bg_proj.")
DEFAULT_EXPAND = 5
EXPAND_ITERATIONS = 3
DEFAULT_STEPS = 50
DEFAULT_FLOW_SHIFT = 5.0
SIDE_MULTIPLE = 16


class PatchEmbed3d(nn.Module):
    """`bg_in`: Conv3d with kernel = stride = patch, tokens in (t, h, w) order, like `img_in`."""

    def __init__(self, in_channels: int, hidden: int, patch: tuple[int, int, int] = (1, 2, 2)):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=self.patch, stride=self.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class BackgroundModules(nn.Module):
    """`bg_in` + `bg_proj`, loadable from the released editing checkpoint's tensors."""

    def __init__(self, in_channels: int = 32, hidden: int = 3072, patch: tuple[int, int, int] = (1, 2, 2)):
        super().__init__()
        self.bg_in = PatchEmbed3d(in_channels, hidden, patch)
        self.bg_proj = nn.Linear(hidden, hidden)

    @property
    def in_channels(self) -> int:
        return self.bg_in.proj.in_channels

    @property
    def patch(self) -> tuple[int, int, int]:
        return self.bg_in.patch

    def forward(self, bg_latent: torch.Tensor) -> torch.Tensor:
        """[B, 32, T, H, W] -> [B, T*(H/2)*(W/2), hidden] tokens to add to the video tokens."""
        if bg_latent.dim() != 5 or bg_latent.shape[1] != self.in_channels:
            raise ValidationError("video", "the background latent must be [batch, "
                                           f"{self.in_channels}, t, h, w], got {list(bg_latent.shape)}")
        return self.bg_proj(self.bg_in(bg_latent))

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor],
                        source: str = "the checkpoint") -> BackgroundModules:
        sd = select_keys(sd, KEY_PREFIXES)
        need = ("bg_in.proj.weight", "bg_in.proj.bias", "bg_proj.weight", "bg_proj.bias")
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValidationError("editing_modules", f"{source} has no video-editing modules ({missing[0]} "
                                                     "is missing): load the editing checkpoint "
                                                     "(hunyuancustom_editing_720P)")
        hidden, in_ch, *patch = sd["bg_in.proj.weight"].shape
        with torch.device("meta"):
            mods = cls(in_ch, hidden, tuple(patch))
        return load_released(mods, sd, "editing_modules", "editing", source)


# --- source clip and mask -----------------------------------------------------------------------


def check_frames(frames, field: str = "video") -> torch.Tensor:
    """An IMAGE batch [N, H, W, 3] of at least one frame, finite, 0..1."""
    if not isinstance(frames, torch.Tensor):
        raise ValidationError(field, f"must be video frames (IMAGE), got {type(frames).__name__}")
    if frames.dim() == 3:
        frames = frames.unsqueeze(0)
    if frames.dim() != 4 or frames.shape[-1] not in (3, 4):
        raise ValidationError(field, f"frames must be [frames, height, width, 3], got {list(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValidationError(field, "has no frames (zero-length video)")
    h, w = frames.shape[1:3]
    if h < SIDE_MULTIPLE or w < SIDE_MULTIPLE:
        raise ValidationError(field, f"is {w}x{h}; at least {SIDE_MULTIPLE}x{SIDE_MULTIPLE} is needed")
    if not torch.isfinite(frames).all():
        raise ValidationError(field, "contains NaN or infinite values")
    return frames[..., :3].detach().to("cpu", torch.float32).clamp(0, 1)


def check_mask(mask, frames: int, height: int, width: int, field: str = "mask") -> torch.Tensor:
    """A MASK [1 or N, H, W] matching the frames -> float [N, H, W] in 0..1."""
    if not isinstance(mask, torch.Tensor):
        raise ValidationError(field, f"must be a MASK, got {type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        raise ValidationError(field, f"must be [frames, height, width], got {list(mask.shape)}")
    if tuple(mask.shape[1:]) != (height, width):
        raise ValidationError(field, f"is {mask.shape[2]}x{mask.shape[1]} but the video is {width}x{height}; "
                                     "the mask must have the video's size")
    if mask.shape[0] not in (1, frames):
        raise ValidationError(field, f"has {mask.shape[0]} frames but the video has {frames}; give one mask "
                                     "for all frames or one per frame")
    if not torch.isfinite(mask).all():
        raise ValidationError(field, "contains NaN or infinite values")
    mask = mask.detach().to("cpu", torch.float32).clamp(0, 1)
    return mask.expand(frames, height, width) if mask.shape[0] == 1 else mask


def ellipse_kernel(size: int) -> torch.Tensor:
    """The size x size elliptical structuring element of the recipe (OpenCV's MORPH_ELLIPSE
    shape): row dy from the centre spans round(r * sqrt(1 - (dy / r)^2)) pixels each side."""
    k = torch.zeros(size, size)
    c = size // 2
    if c == 0:
        return torch.ones(size, size)
    for y in range(size):
        dy = y - c
        if abs(dy) > c:
            continue
        half = round(c * (1 - (dy / c) ** 2) ** 0.5)
        k[y, max(0, c - half):min(size, c + half + 1)] = 1
    return k


def grow_mask(mask: torch.Tensor, expand: int, iterations: int = EXPAND_ITERATIONS) -> torch.Tensor:
    """Binary [N, H, W] mask, dilated (expand > 0) or eroded (expand < 0) with an |expand|-pixel
    elliptical kernel `iterations` times, then thresholded at one half."""
    binary = (mask > 0.5).float()
    if expand == 0:
        return binary
    k = ellipse_kernel(abs(expand))
    n = k.shape[0]
    pad = (n // 2, n - 1 - n // 2, n // 2, n - 1 - n // 2)  # anchor at the centre
    x = binary.unsqueeze(1)
    for _ in range(iterations):
        if expand > 0:  # dilation: any kernel pixel set
            x = (F.conv2d(F.pad(x, pad), k[None, None]) > 0.5).float()
        else:  # erosion: every kernel pixel set (outside the frame counts as set)
            hits = F.conv2d(F.pad(x, pad, value=1.0), k[None, None])
            x = (hits > k.sum() - 0.5).float()
    return x[:, 0]


@dataclass(frozen=True)
class SourceClip:
    """The source prepared for the editing model."""

    frames: torch.Tensor  # [N, H, W, 3] (N = 4k+1, sides multiples of 16)
    mask: torch.Tensor  # [N, H, W] binary, 1 = region to replace
    fps: float
    dropped_frames: int  # trailing frames dropped to reach 4k+1
    crop: tuple[int, int, int, int]  # (top, left, height, width) kept of the original frames

    @property
    def masked(self) -> torch.Tensor:
        """Source frames with the region blacked out, as the recipe feeds the VAE."""
        return self.frames * (1.0 - self.mask).unsqueeze(-1)

    @property
    def mask_rgb(self) -> torch.Tensor:
        return self.mask.unsqueeze(-1).expand(*self.mask.shape, 3).contiguous()

    @property
    def seconds(self) -> float:
        return self.frames.shape[0] / self.fps

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(t, h, w) of its latent (4x temporal, 8x spatial compression)."""
        n, h, w = self.frames.shape[:3]
        return (n - 1) // 4 + 1, h // 8, w // 8


def prepare_source(frames, mask, fps: float, expand: int = DEFAULT_EXPAND, max_frames: int = 0) -> SourceClip:
    """Validate and shape the source clip and mask the way the recipe needs them.

    Frames are cut to 4k+1 (trailing frames dropped, or to `max_frames` when set) and centre-
    cropped to sides that are multiples of 16; the mask must match the frames as given.
    """
    frames = check_frames(frames)
    n, h, w = frames.shape[:3]
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValidationError("fps", f"must be a positive number, got {fps!r}")
    mask = check_mask(mask, n, h, w)
    if max_frames:
        if max_frames < 1 or (max_frames - 1) % 4:
            raise ValidationError("max_frames", f"{max_frames} is not allowed; allowed: 0 (all) or 4k+1")
        n_use = min(n, max_frames)
    else:
        n_use = n
    n_use = (n_use - 1) // 4 * 4 + 1
    ch, cw = h // SIDE_MULTIPLE * SIDE_MULTIPLE, w // SIDE_MULTIPLE * SIDE_MULTIPLE
    top, left = (h - ch) // 2, (w - cw) // 2
    grown = grow_mask(mask[:n_use, top:top + ch, left:left + cw], expand)
    if float(grown.max()) == 0.0:
        raise ValidationError("mask", "selects nothing (all black after dilate/erode): white marks the "
                                      "region to replace")
    return SourceClip(frames=frames[:n_use, top:top + ch, left:left + cw].contiguous(), mask=grown,
                      fps=float(fps), dropped_frames=n - n_use, crop=(top, left, ch, cw))


def background_latent(clip: SourceClip, encode: Callable[[torch.Tensor], torch.Tensor],
                      scale: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The 32-channel conditioning latent [1, 32, t, h, w]: scaled latents of the masked frames
    and of the mask video. `encode` maps IMAGE frames [N, H, W, 3] in 0..1 to a raw VAE latent
    [1, 16, t, h, w]; `scale` applies the model's latent scaling (0.476986 for HunyuanVideo)."""
    bg = scale(encode(clip.masked))
    m = scale(encode(clip.mask_rgb))
    if bg.shape != m.shape or bg.dim() != 5:
        raise ValidationError("vae", f"encoded the clip to {list(bg.shape)} and the mask to {list(m.shape)}; "
                                     "a video VAE giving [1, 16, t, h, w] is needed")
    return torch.cat([bg, m], dim=1)
