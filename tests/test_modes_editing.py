"""Video-driven mode: bg_in / bg_proj in the released key layout, mask dilate/erode, source checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from modes_models import WIDTH, audio_state_dict, editing_state_dict

from hunyuancustom.errors import ValidationError
from hunyuancustom.modes.editing import (
    BackgroundModules,
    background_latent,
    check_mask,
    ellipse_kernel,
    grow_mask,
    prepare_source,
)

RELEASED_EDITING_SHAPES = {"bg_in.proj.weight": (3072, 32, 1, 2, 2), "bg_in.proj.bias": (3072,),
                           "bg_proj.weight": (3072, 3072), "bg_proj.bias": (3072,)}


def test_default_modules_have_the_released_key_layout():
    with torch.device("meta"):
        mods = BackgroundModules()
    assert {k: tuple(v.shape) for k, v in mods.state_dict().items()} == RELEASED_EDITING_SHAPES


def test_modules_load_and_embed_the_latent_like_img_in():
    sd = editing_state_dict(prefix="model.diffusion_model.")
    mods = BackgroundModules.from_state_dict(sd)
    assert mods.in_channels == 32 and mods.patch == (1, 2, 2)
    latent = torch.randn(1, 32, 3, 4, 6)
    tokens = mods(latent)
    assert tokens.shape == (1, 3 * 2 * 3, WIDTH)
    # Token (t, y, x) is the 1x2x2 patch at (t, 2y, 2x), projected by bg_in then bg_proj.
    w = editing_state_dict()
    patch = latent[0, :, 2, 2:4, 4:6].reshape(-1)
    first = w["bg_in.proj.weight"].float().reshape(WIDTH, -1) @ patch + w["bg_in.proj.bias"].float()
    expected = w["bg_proj.weight"].float() @ first + w["bg_proj.bias"].float()
    index = 2 * 6 + 1 * 3 + 2  # t=2, y=1, x=2 in (t, h/2, w/2) order
    assert torch.allclose(tokens[0, index], expected, atol=1e-4)
    with pytest.raises(ValidationError, match="32"):
        mods(torch.randn(1, 16, 3, 4, 6))


def test_checkpoint_without_editing_modules_is_refused_by_name():
    with pytest.raises(ValidationError) as e:
        BackgroundModules.from_state_dict(audio_state_dict(), source="audio.pt")
    assert e.value.field == "editing_modules" and "hunyuancustom_editing_720P" in str(e.value)


def test_dilate_grows_and_erode_shrinks_by_the_recipe():
    mask = torch.zeros(1, 41, 41)
    mask[0, 20, 20] = 1
    grown = grow_mask(mask, 5)  # 5x5 ellipse (reach 2), 3 times -> reach 6 along the axes
    assert grown[0, 20, 14:27].sum() == 13 and grown[0, 20, 13] == 0
    assert grown[0, 14:27, 20].sum() == 13
    assert grown[0, 15, 15] == 0 and grown[0, 16, 16] == 1  # round, not a square
    square = torch.zeros(1, 41, 41)
    square[0, 10:31, 10:31] = 1
    shrunk = grow_mask(square, -3)
    assert shrunk[0, 20, 10:31].sum() == 21 - 6 and shrunk[0, 13, 20] == 1 and shrunk[0, 12, 20] == 0
    assert torch.equal(grow_mask(torch.full((1, 4, 4), 0.6), 0), torch.ones(1, 4, 4))
    assert ellipse_kernel(5).sum(dim=1).tolist() == [1, 5, 5, 5, 1]  # the corners are out
    assert ellipse_kernel(1).tolist() == [[1.0]]


def test_mask_must_match_the_frames():
    with pytest.raises(ValidationError, match="must have the video's size"):
        check_mask(torch.ones(1, 32, 32), 9, 32, 48)
    with pytest.raises(ValidationError, match="has 4 frames but the video has 9"):
        check_mask(torch.ones(4, 32, 48), 9, 32, 48)
    assert check_mask(torch.ones(1, 32, 48), 9, 32, 48).shape == (9, 32, 48)
    with pytest.raises(ValidationError) as e:
        check_mask("mask.png", 9, 32, 48)
    assert e.value.field == "mask"


def test_prepare_source_cuts_to_4k_plus_1_frames_and_16_multiples():
    frames = torch.rand(11, 40, 70, 3)
    mask = torch.zeros(11, 40, 70)
    mask[:, 10:30, 20:50] = 1
    clip = prepare_source(frames, mask, fps=24.0, expand=0)
    assert clip.frames.shape == (9, 32, 64, 3) and clip.dropped_frames == 2
    assert clip.crop == (4, 3, 32, 64) and clip.latent_shape == (3, 4, 8)
    assert torch.equal(clip.frames, frames[:9, 4:36, 3:67])
    assert abs(clip.seconds - 9 / 24) < 1e-9
    # The region is blacked out in the masked frames, the rest kept.
    assert clip.masked[:, 10, 30].abs().max() == 0
    assert torch.equal(clip.masked[:, 1, 1], clip.frames[:, 1, 1])
    assert clip.mask_rgb.shape == (9, 32, 64, 3)
    assert prepare_source(frames, mask, 24.0, expand=0, max_frames=5).frames.shape[0] == 5


@pytest.mark.parametrize(("frames", "mask", "kwargs", "field", "text"), [
    (torch.rand(0, 32, 32, 3), torch.ones(1, 32, 32), {}, "video", "zero-length"),
    (torch.rand(3, 8, 8, 3), torch.ones(1, 8, 8), {}, "video", "at least 16x16"),
    ("clip.mp4", torch.ones(1, 32, 32), {}, "video", "IMAGE"),
    (torch.rand(5, 32, 32, 3), torch.zeros(1, 32, 32), {}, "mask", "selects nothing"),
    (torch.rand(5, 32, 32, 3), torch.ones(1, 32, 32), {"max_frames": 4}, "max_frames", "4k+1"),
    (torch.rand(5, 32, 32, 3), torch.ones(1, 32, 32), {"fps": 0}, "fps", "positive"),
])
def test_bad_source_is_refused_with_the_field_named(frames, mask, kwargs, field, text):
    with pytest.raises(ValidationError) as e:
        prepare_source(frames, mask, **{"fps": 25.0, **kwargs})
    assert e.value.field == field and text in str(e.value)


def test_background_latent_stacks_masked_clip_and_mask_latents():
    clip = prepare_source(torch.rand(9, 32, 32, 3), torch.ones(1, 32, 32), 25.0, expand=0)

    def encode(images):  # a stand-in video encoder with the VAE's compression (4x t, 8x8 space)
        x = images.permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, N, H, W]
        x = torch.cat([x[:, :, :1].expand(-1, -1, 3, -1, -1), x], dim=2)  # causal: frame 0 alone
        x = F.avg_pool3d(x, (4, 8, 8))
        return x.repeat(1, 6, 1, 1, 1)[:, :16]

    latent = background_latent(clip, encode, lambda z: z * 0.5)
    assert latent.shape == (1, 32, 3, 4, 4)
    assert latent[:, :16].abs().max() == 0  # everything masked -> black -> zeros
    assert torch.allclose(latent[:, 16:], torch.full_like(latent[:, 16:], 0.5))
