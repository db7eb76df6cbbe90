"""The image-token count a sequence-parallel run splits, and the refusal when it does not divide.

Core's HunyuanVideo patchifies the latent by (1, 2, 2) and puts the reference image's latent (one
frame, the clip's size) in front of the video tokens: (t + 1) * (h / 2) * (w / 2) image tokens for
a latent of t frames of h x w. Raylight's Ulysses forward zero-pads a count its degree does not
divide and never masks the padding (a silently different video), so such sizes are refused.
"""

from __future__ import annotations

from ..errors import ValidationError

PATCH = (1, 2, 2)


def image_tokens(latent_shape: tuple[int, int, int], reference: bool = True) -> int:
    t, h, w = latent_shape
    return (t // PATCH[0] + (1 if reference else 0)) * (h // PATCH[1]) * (w // PATCH[2])


def check_divisible(latent_shape: tuple[int, int, int], degree: int, field: str = "latent") -> None:
    """Refuse a clip whose image tokens the sequence-parallel degree does not divide."""
    if degree <= 1:
        return
    t, h, w = latent_shape
    n = image_tokens(latent_shape)
    if n % degree:
        raise ValidationError(field, f"{4 * t - 3} frames of {w * 8}x{h * 8} make {n} image tokens ({t} "
                                     f"latent frames + the reference, {(h // 2) * (w // 2)} tokens each), "
                                     f"which the workers' sequence-parallel degree {degree} (Ulysses x "
                                     f"ring) does not divide; allowed: a size and length whose token count "
                                     f"is a multiple of {degree} (1280x720 and 832x480 at 129 frames work "
                                     "for 2, 4 and 8), or a lower ulysses_degree")
