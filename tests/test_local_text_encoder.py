"""The released text-image fusion's layout (pure parts of hunyuancustom/local/text_encoder.py): the
token sequence, LLaVA's merge of the image features, the mask the released pipeline passes on, and
the tokenizer check, on the real Llama-3 vocabulary (`text_models.llama3_tokenizer_dir`)."""

from __future__ import annotations

import re

import pytest
import text_models
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
    tokens = 1 + torch.arange(351, dtype=torch.float32)[None, :, None].expand(1, 351, width)
    feats = -torch.ones(576, width)
    pad = torch.arange(351) >= n
    embeds, mask, positions = text_encoder.merge_image(tokens, feats, n, at, pad)
    assert embeds.shape == (1, 926, width) and mask.shape == positions.shape == (1, 926)
    assert torch.equal(embeds[0, :at], tokens[0, :at])
    assert torch.all(embeds[0, at:at + 576] == -1)
    # transformers 4.41's LLaVA zeroes the <pad> tokens' input embeddings (not the <pad> row's values)
    assert torch.all(embeds[0, at + 576:] == 0) and embeds.shape[1] - (at + 576) == 351 - n
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


def test_llava_merge_zeroes_every_pad_token_and_only_those():
    """As the release: by token id, so a literal `<pad>` in the prompt is zeroed too."""
    tokens = torch.randn(1, 351, 4) + 10
    pad = torch.zeros(351, dtype=torch.bool)
    pad[[5, 200, 300]] = True
    embeds, _, _ = text_encoder.merge_image(tokens, torch.zeros(576, 4), 250, 249, pad)
    feature_at = torch.arange(926)
    token_at = torch.cat([torch.arange(249), torch.arange(250, 351) + 575])  # where each token went
    zero = (embeds[0] == 0).all(-1)
    assert zero[token_at].tolist() == pad[torch.cat([torch.arange(249), torch.arange(250, 351)])].tolist()
    assert zero[feature_at[249:249 + 576]].all()  # the (zero) features themselves


@pytest.fixture(scope="module")
def llama3():
    """The real Llama-3 vocabulary through the `tokenizers` library (what transformers 4.x's
    LlamaTokenizerFast runs, and what core 0.33.0's own reader matches)."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(text_models.llama3_tokenizer_dir() / "tokenizer.json"))
    return lambda text: tok.encode(text).ids


def test_the_released_text_on_the_real_vocabulary(llama3):
    text = prompt.llava_text(text_encoder.KNOWN_SENTENCE, "woman")
    ids, n, at = text_encoder.token_ids(llama3, text, PAD, IMAGE)
    assert len(llama3(text_encoder.TEMPLATE_PREFIX)) == prompt.CROP_START == 95
    assert ids[0] == 128000 and ids[at] == IMAGE and at == n - 1
    assert tuple(ids[95:95 + len(text_encoder.KNOWN_IDS)]) == text_encoder.KNOWN_IDS
    assert ids[95 + len(text_encoder.KNOWN_IDS)] == 128009  # <|eot_id|> ends the user turn


def test_the_check_passes_a_right_tokenizer_once_per_tokenizer_object(llama3):
    calls = []

    class Tok:
        def __call__(self, text):
            calls.append(text)
            return llama3(text)

    tok = Tok()
    text_encoder.check_tokenizer(tok, tok)
    assert len(calls) == 2
    text_encoder.check_tokenizer(tok, tok)
    assert len(calls) == 2  # checked once
    other = Tok()
    text_encoder.check_tokenizer(other, other)
    assert len(calls) == 4


def test_the_check_refuses_other_ids_even_with_95_prefix_tokens(llama3):
    cut = len(text_encoder.TEMPLATE_PREFIX)

    def lower(text):  # same number of template tokens, other ids for the sentence
        return llama3(text[:cut] + text[cut:].lower())

    assert len(lower(text_encoder.TEMPLATE_PREFIX)) == 95
    with pytest.raises(text_encoder.TokenizerError, match=r"^clip: .*gives other ids.*damaged or replaced"):
        text_encoder.check_tokenizer(lower)


def test_the_check_refuses_transformers_5_llama_tokenizer_naming_cause_and_fix(llama3):
    """Core 0.3.64 tokenizes with transformers' LlamaTokenizerFast; transformers 5.x rebuilds it
    without spaces (96 template tokens). Under 4.x the same class is right (the golden's maker ran
    the check on transformers 4.41.2: tests/data/released_text_golden.md)."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaTokenizerFast.from_pretrained(str(text_models.llama3_tokenizer_dir()))
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        text_encoder.check_tokenizer(lambda t: hf(t)["input_ids"], hf)
        return
    assert len(hf(text_encoder.TEMPLATE_PREFIX)["input_ids"]) == 96
    with pytest.raises(text_encoder.TokenizerError) as e:
        text_encoder.check_tokenizer(lambda t: hf(t)["input_ids"], hf)
    message = str(e.value)
    assert message.startswith("clip: ") and "96 tokens instead of 95" in message
    assert f"transformers {transformers.__version__}" in message and "0.3.64" in message
    assert 'pip install "transformers<5"' in message and "update ComfyUI" in message
    # refused every time: a failed check is not remembered as passed
    with pytest.raises(text_encoder.TokenizerError):
        text_encoder.check_tokenizer(lambda t: hf(t)["input_ids"], hf)
