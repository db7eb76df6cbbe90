"""The released recipe's pure parts: sigma schedule, reference images, prompt template."""

from __future__ import annotations

import pytest
import torch

from hunyuancustom.errors import ValidationError
from hunyuancustom.local import prompt, reference, schedule


@pytest.mark.parametrize("steps,shift", [(30, 13.0), (50, 5.0), (4, 1.0)])
def test_sigmas_follow_the_released_formula(steps, shift):
    sigmas = schedule.flow_sigmas(steps, shift)
    assert sigmas.shape == (steps + 1,)
    for i, s in enumerate(sigmas.tolist()):
        t = 1 - i / steps
        assert s == pytest.approx(shift * t / (1 + (shift - 1) * t), abs=1e-6)
    assert sigmas[0] == 1 and sigmas[-1] == 0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert torch.allclose(schedule.timesteps(sigmas), sigmas[:-1] * 1000)


def test_shift_pushes_sigmas_up():
    assert torch.all(schedule.flow_sigmas(10, 13.0)[1:-1] > schedule.flow_sigmas(10, 1.0)[1:-1])


def test_euler_and_cfg():
    x, v = torch.ones(3), torch.full((3,), 2.0)
    assert torch.allclose(schedule.euler_step(x, v, 0.8, 0.6), torch.full((3,), 0.6))
    pos, neg = torch.full((2,), 3.0), torch.ones(2)
    assert torch.allclose(schedule.cfg(pos, neg, 7.5), torch.full((2,), 16.0))
    assert torch.allclose(schedule.cfg(pos, neg, 1.0), pos)


def test_fit_size_uses_released_rounding():
    assert reference.fit_size(100, 50, 336, 336) == (336, 168)
    assert reference.fit_size(50, 100, 336, 336) == (168, 336)
    assert reference.fit_size(300, 301, 1280, 720) == (int(300 / 301 * 720), 720)


def test_llava_image_is_white_padded_square():
    img = torch.zeros(1, 50, 100, 3)  # black landscape image
    out = reference.llava_image(img)
    assert out.shape == (1, 336, 336, 3)
    assert torch.all(out[0, :84] == 1) and torch.all(out[0, 84 + 168:] == 1)  # white bars
    assert torch.all(out[0, 84:84 + 168] == 0)  # the image, centred


def test_vae_reference_fills_the_video_frame():
    img = torch.rand(1, 64, 64, 4)  # RGBA in, RGB out
    out = reference.vae_reference(img, 128, 64)
    assert out.shape == (1, 64, 128, 3)
    assert torch.all(out[0, :, :32] == 1) and torch.all(out[0, :, 96:] == 1)
    assert torch.allclose(out[0, :, 32:96], img[0, :, :, :3])
    assert torch.all(reference.white_like(out) == 1)


def test_bad_image_shape_names_the_field():
    with pytest.raises(ValidationError, match="image"):
        reference.llava_image(torch.zeros(5, 5))


def test_prompt_template_and_suffix():
    text = prompt.llava_text("A dog runs.", "dog")
    assert text.startswith("<|start_header_id|>system<|end_header_id|>\n\nDescribe the video")
    assert text.endswith("<|start_header_id|>user<|end_header_id|>\n\nA dog runs.<|eot_id|>"
                         "\nThe dog looks like<image>")
    assert text.count("<image>") == 1
    # released defaults: item name "object"; the negative branch tokenizes with "person"
    assert prompt.llava_text("A cup.").endswith("A cup.<|eot_id|>\nThe object looks like<image>")
    negative = prompt.llava_text("", prompt.NEGATIVE_NAME)
    assert negative.endswith("\n\n<|eot_id|>\nThe person looks like<image>")
