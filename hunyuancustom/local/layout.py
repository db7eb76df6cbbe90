"""How an engine that splits the token sequence across processes lays it out, as block patches see it.

On one device `img` in a double block is the whole image sequence (reference tokens, then video).
Under sequence parallelism (Raylight's USP on xFuser) each rank holds a chunk. Raylight (with
contrib/raylight/07) describes the layout in `transformer_options["usp"]`:

- `rank`, `world`: this rank and the sequence-parallel degree;
- `img_len`, `txt_len`: the whole image and text sequence lengths;
- `img_start`: where this rank's image chunk starts in the whole image sequence;
- double blocks: `img` is this rank's image chunk, `txt` the whole text;
  single blocks: `img` is [the whole text, this rank's image chunk];
- `gather_img(t)` / `shard_img(t)`: this rank's image tokens -> the whole image sequence and back
  (collectives: every rank calls them, as every rank runs the same patches).

A per-token patch written for the whole sequence runs on `gather_img`'s result and hands back
`shard_img` of it (the release's own audio does the same gather-add-rechunk). Without the entry the
patch runs as on one device.
"""

from __future__ import annotations

import math
import sys
from typing import Callable

import torch

from ..errors import ValidationError

USP = "usp"  # the transformer_options key


def on_whole_image(img: torch.Tensor, options: dict,
                   fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`fn` applied to the whole image sequence of a double block's `img`, returned in this rank's
    layout; `fn(img)` where the sequence is not split."""
    layout = (options or {}).get(USP)
    if not layout or layout.get("world", 1) == 1:
        return fn(img)
    for name in ("gather_img", "shard_img"):
        if not callable(layout.get(name)):
            raise RuntimeError(f"transformer_options['{USP}'] has no {name}: an engine whose sequence layout "
                               "the pack does not know")
    return layout["shard_img"](fn(layout["gather_img"](img)))


def sequence_parallel_degree(net) -> int:
    """The degree an engine splits this model's sequence by (1 when none): an engine replaced
    core's `forward_orig` on this model and xFuser's sequence-parallel group is up."""
    fwd = getattr(net, "forward_orig", None)
    own = getattr(type(net), "forward_orig", None)
    if fwd is None or getattr(fwd, "__func__", None) is own:
        return 1
    dist = sys.modules.get("xfuser.core.distributed")
    ready = getattr(dist, "model_parallel_is_initialized", None)
    if not callable(ready) or not ready():
        return 1
    return int(dist.get_sequence_parallel_world_size())


PATCH = (1, 2, 2)  # core's HunyuanVideo patchify of a latent's (t, h, w)


def image_tokens(*shapes, patch=PATCH) -> list[int]:
    """The image tokens of each latent (t, h, w) in `shapes` (None: absent), in order: core puts the
    reference latent's tokens (one frame, the clip's size) in front of the video's."""
    return [math.prod(s // p for s, p in zip(shape, patch, strict=True)) for shape in shapes
            if shape is not None]


def clip_image_tokens(latent_shape: tuple[int, int, int]) -> list[int]:
    """[video, reference] image tokens of a clip whose video latent is (t, h, w)."""
    t, h, w = latent_shape
    return image_tokens(latent_shape, (1, h, w))


def split_refusal(counts: list[int], degree: int) -> str:
    """Why `counts` (video, then the reference if any) cannot be split `degree` ways, and what is
    allowed: the one wording of the refusal, at node time and at forward time."""
    parts = f"{counts[0]} video" + "".join(f" + {c} reference" for c in counts[1:])
    return (f"{sum(counts)} image tokens ({parts}) do not divide by the sequence-parallel degree {degree} "
            "(Ulysses x ring): the engine would pad them with tokens the attention sees; allowed: a size and "
            f"length whose token count, (latent frames + 1 for the reference) x (height/16) x (width/16), is "
            f"a multiple of {degree} (1280x720 and 832x480 at 129 frames divide by 2, 4 and 8), or a lower "
            "sequence-parallel degree")


def check_split(field: str, counts: list[int], degree: int) -> None:
    """Refuse `counts` image tokens that `degree` does not divide (a ValidationError on `field`)."""
    if degree > 1 and sum(counts) % degree:
        raise ValidationError(field, split_refusal(counts, degree))


def check_clip_split(field: str, latent_shape: tuple[int, int, int], degree: int) -> None:
    """Node time: refuse a clip (video latent (t, h, w), plus its reference) `degree` does not split."""
    check_split(field, clip_image_tokens(latent_shape), degree)


def check_image_split(net, x: torch.Tensor, ref_latent) -> None:
    """Refuse, before any work, an image token count the sequence-parallel degree does not divide:
    the engine pads the sequence with tokens the attention would see."""
    world = sequence_parallel_degree(net)
    if world == 1:
        return
    patch = tuple(getattr(net, "patch_size", PATCH))
    shapes = [tuple(t.shape[2:]) if isinstance(t, torch.Tensor) else None for t in (x, ref_latent)]
    check_split("latent", image_tokens(*shapes, patch=patch), world)
