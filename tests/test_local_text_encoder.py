"""The released text-image fusion's layout (pure parts of hunyuancustom/local/text_encoder.py): the
token sequence, LLaVA's merge of the image features, and the mask the released pipeline passes on."""

from __future__ import annotations

import re

import pytest
import torch

from hunyuancustom.errors import ValidationError
from hunyuancustom.local import prompt, text_encoder

PAD, IMAGE = 128258, 128257


VOCAB: dict[str, int] = {prompt.IMAGE_TOKEN: IMAGE}


def _tokenize(text: str) -> list[int]:
    """A stand-in tokenizer: the start token, then one id per special token, word or space run."""
    pieces = re.findall(r"<\|[^|]+\|>|<image>|\s+|[^\s<]+", text)
    return [128000] + [VOCAB.setdefault(p, 1000 + len(VOCAB)) for p in pieces]


def _text(ids: list[int]) -> str:
    words = {v: k for k, v in VOCAB.items()}
    return "".join(words[i] for i in ids)


def test_token_ids_are_cut_and_padded_to_351_with_the_image_last():
    ids, n, at = text_encoder.token_ids(lambda t: list(range(1, 120)) + [IMAGE], "x", PAD, IMAGE)
    assert len(ids) == 351 == text_encoder.MAX_LENGTH
    assert n == 120 and at == 119 and ids[at] == IMAGE
    assert ids[n:] == [PAD] * (351 - n)


def test_the_released_text_puts_the_suffix_after_the_end_of_the_user_turn():
    ids, n, at = text_encoder.token_ids(_tokenize, prompt.llava_text("A dog.", "dog"), PAD, IMAGE)
    assert at == n - 1  # <image> closes the text
    assert n < 351  # the template + prompt + suffix fit
    assert _text(ids[1:n]).endswith("A dog.<|eot_id|>\nThe dog looks like<image>")


def test_a_prompt_that_pushes_the_image_out_is_refused_naming_the_field():
    with pytest.raises(ValidationError, match="negative_prompt.*too long"):
        text_encoder.token_ids(lambda t: list(range(1, 400)) + [IMAGE], "x", PAD, IMAGE, "negative_prompt")


def test_llava_merge_puts_576_features_in_place_and_counts_positions_over_unmasked_tokens():
    n, at, width = 130, 129, 4
    tokens = torch.arange(351, dtype=torch.float32)[None, :, None].expand(1, 351, width)
    feats = -torch.ones(576, width)
    embeds, mask, positions = text_encoder.merge_image(tokens, feats, n, at)
    assert embeds.shape == (1, 926, width) and mask.shape == positions.shape == (1, 926)
    assert torch.equal(embeds[0, :at], tokens[0, :at])
    assert torch.all(embeds[0, at:at + 576] == -1)
    assert torch.equal(embeds[0, at + 576:], tokens[0, at + 1:])  # padding after the features
    assert mask.sum() == n - 1 + 576 and torch.all(mask[0, at + 576:] == 0)
    real = at + 576
    assert torch.equal(positions[0, :real], torch.arange(real))
    assert torch.all(positions[0, real:] == 1)  # transformers 4.41's padding positions


@pytest.mark.parametrize("after_crop", [40, 30, 256])
def test_the_mask_passed_on_has_575_ones_at_its_end(after_crop):
    mask = text_encoder.released_mask(prompt.CROP_START + after_crop)
    assert mask.shape == (1, 831)
    assert torch.all(mask[0, :after_crop] == 1)
    assert torch.all(mask[0, after_crop:256] == 0)
    assert torch.all(mask[0, 256:] == 1)
    assert int(mask.sum()) == after_crop + 575
