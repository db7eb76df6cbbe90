"""The released text-image fusion, run on the LLaVA-Llama-3 that ComfyUI has loaded.

What the released text encoder (transformers 4.41 LLaVA) hands the transformer, step by step:

1. The text: the video template around the prompt, then "\\nThe {name} looks like<image>" after the
   template's `<|eot_id|>`; tokenized with the start token, cut to 351 (= 95 + 256) tokens and padded
   on the right to 351.
2. LLaVA puts the 576 image features in place of `<image>`: 926 positions. The input embeddings of
   `<pad>` tokens are zero (not the `<pad>` row of the embedding table). Its attention mask is the
   tokenizer's (padding masked) with ones for the features; positions count the unmasked tokens
   (`cumsum - 1`), and padding positions are 1.
3. The hidden states two layers before the last, without the final norm; the first 95 (template)
   positions are dropped: 831 states.
4. The mask handed on is the tokenizer's 351 with 575 ones appended at the end (not where the
   features went), also without its first 95: 831 entries. `released.py` reads it the released way.

Core's own HunyuanVideo encode keeps only the user turn, so the suffix after `<|eot_id|>` and the
padding states are lost there: this module builds the token sequence itself and runs core's Llama
(`clip.cond_stage_model.llama.transformer`, loaded by core's model management, on core's load
device). The pooled vector is CLIP-L's on the prompt read literally, as the release tokenizes it
(77 tokens, truncated; no ComfyUI `(word:1.2)` weights). Before encoding, the Llama-3 tokenizer is
checked against known ids (a wrong tokenizer would shift the 95-token crop silently). Steps 1, 2
and 4 and the check are pure functions, tested without ComfyUI.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch

from ..errors import ValidationError
from . import prompt as prompt_template

MAX_LENGTH = prompt_template.CROP_START + prompt_template.TEXT_LEN  # 351 tokens before the features
EXTRA = prompt_template.IMAGE_FEATURES - 1  # 575
CLIP_MAX_LENGTH = 77  # the released CLIP-L tokenizer's max_length (truncated, padded)

# The tokenizer check: the released template's prefix (before the prompt) is CROP_START tokens with
# the start token, and this sentence after it has these Llama-3 ids (tokenizers library, the real
# vocabulary). A tokenizer that drops spaces gives 96 and other ids.
TEMPLATE_PREFIX = prompt_template.VIDEO_TEMPLATE.split("{}")[0]
KNOWN_SENTENCE = "A woman is drinking coffee at a cafe. The woman smiles."
KNOWN_IDS = (32, 5333, 374, 16558, 11033, 520, 264, 42030, 13, 578, 5333, 43632, 13)
_checked_tokenizers: "weakref.WeakSet" = weakref.WeakSet()


class TokenizerError(ValidationError):
    """ComfyUI's Llama-3 tokenizer does not tokenize as the released encoder's."""


def _tokenizer_cause(tokenizer) -> str:
    module = type(tokenizer).__module__ or ""
    if module.startswith("transformers"):
        import transformers

        version = getattr(transformers, "__version__", "0")
        if version.split(".")[0].isdigit() and int(version.split(".")[0]) >= 5:
            return (f"ComfyUI tokenizes with transformers' {type(tokenizer).__name__}, and transformers "
                    f"{version} (5.x) rebuilds that tokenizer without its spaces (as with ComfyUI "
                    "0.3.64 and transformers 5.x). Fix: install transformers below 5 in ComfyUI's Python "
                    "(python -m pip install \"transformers<5\"), or update ComfyUI (newer cores, "
                    "e.g. 0.33.0, tokenize with their own reader)")
    return ("the tokenizer files in ComfyUI's comfy/text_encoders/llama_tokenizer/ may be damaged or "
            "replaced. Fix: restore them (reinstall or update ComfyUI)")


def check_tokenizer(tokenize: Callable[[str], list[int]], tokenizer=None) -> None:
    """Stop with TokenizerError unless `tokenize` gives the released template prefix as 95 tokens
    and KNOWN_SENTENCE as KNOWN_IDS. Checked once per `tokenizer` object (when weak-referenceable)."""
    key = tokenizer
    try:
        if key is not None and key in _checked_tokenizers:
            return
    except TypeError:  # not weak-referenceable: checked every time
        key = None
    prefix = list(tokenize(TEMPLATE_PREFIX))
    ids = list(tokenize(TEMPLATE_PREFIX + KNOWN_SENTENCE))
    if len(prefix) != prompt_template.CROP_START or tuple(ids[len(prefix):]) != KNOWN_IDS:
        raise TokenizerError(
            "clip", f"its Llama-3 tokenizer does not tokenize as the released text encoder (the "
                    f"template before the prompt is {len(prefix)} tokens instead of "
                    f"{prompt_template.CROP_START}, or {KNOWN_SENTENCE!r} gives other ids), so the "
                    f"prompt would be encoded wrongly. Cause: {_tokenizer_cause(tokenizer)}.")
    if key is not None:
        _checked_tokenizers.add(key)


def token_ids(tokenize: Callable[[str], list[int]], text: str, pad_id: int, image_id: int,
              field: str = "prompt") -> tuple[list[int], int, int]:
    """(351 token ids, number of real tokens, index of `<image>`) for one branch's full text."""
    ids = list(tokenize(text))[:MAX_LENGTH]
    if ids.count(image_id) != 1:
        raise ValidationError(field, f"is too long: the released encoder keeps {MAX_LENGTH} tokens in all "
                                     f"({prompt_template.TEXT_LEN} after its template), and the reference "
                                     "image's place at the end was cut off; shorten the prompt")
    n = len(ids)
    return ids + [pad_id] * (MAX_LENGTH - n), n, ids.index(image_id)


def merge_image(token_embeds: torch.Tensor, image_embeds: torch.Tensor, n_real: int, image_at: int,
                pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaVA's merge: (embeddings [1, 926, C], attention mask [1, 926], position ids [1, 926]).
    `pad` [351] marks the `<pad>` tokens, whose input embeddings transformers 4.41's LLaVA sets to
    zero (the released token refiner reads the padding states)."""
    token_embeds = token_embeds.masked_fill(pad.to(token_embeds.device).reshape(1, -1, 1), 0)
    feats = image_embeds.reshape(1, -1, token_embeds.shape[-1]).to(token_embeds)
    embeds = torch.cat([token_embeds[:, :image_at], feats, token_embeds[:, image_at + 1:]], dim=1)
    tok_mask = (torch.arange(token_embeds.shape[1]) < n_real).long()
    mask = torch.cat([tok_mask[:image_at], torch.ones(feats.shape[1], dtype=torch.long),
                      tok_mask[image_at + 1:]])[None]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return embeds, mask, positions


def released_mask(n_real: int) -> torch.Tensor:
    """The mask the released pipeline passes on [1, 831]: the tokenizer's, 575 ones appended, the
    template cropped."""
    tok = (torch.arange(MAX_LENGTH) < n_real).long()
    return torch.cat([tok, torch.ones(EXTRA, dtype=torch.long)])[None, prompt_template.CROP_START:]


def _token_id(tokenizer, token: str) -> int:
    """transformers' tokenizers convert a token; core's own BPE reader (0.33.0) has only get_vocab."""
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    return int(convert(token)) if convert is not None else int(tokenizer.get_vocab()[token])


def clip_l_tokens(tokenizer, text: str) -> list[list[tuple[int, float]]]:
    """Core's token/weight list for CLIP-L as the release tokenizes: the raw text (parentheses are
    text, not ComfyUI weights) through the HF tokenizer, cut to 77 with the end token kept, padded
    with core's pad token, every weight 1.0. `tokenizer` is core's SD1 tokenizer (`clip_l`)."""
    ids = list(tokenizer.tokenizer(text, truncation=True, max_length=CLIP_MAX_LENGTH)["input_ids"])
    ids += [tokenizer.pad_token] * (CLIP_MAX_LENGTH - len(ids))
    return [[(i, 1.0) for i in ids]]


def encode(clip, image_embeds: torch.Tensor, prompt: str, name: str, field: str = "prompt"):
    """CONDITIONING `[[states [1, 831, 4096], {"pooled_output", "attention_mask"}]]` as the released
    text encoder makes it, on ComfyUI's loaded HunyuanVideo text encoders (`clip`)."""
    import comfy.model_management as mm

    te = clip.cond_stage_model
    llama, tok = getattr(te, "llama", None), getattr(clip.tokenizer, "llama", None)
    if llama is None or tok is None or getattr(te, "clip_l", None) is None:
        raise ValidationError("clip", "must be the HunyuanVideo text encoders (DualCLIPLoader, type "
                                      "hunyuan_video: clip_l + llava_llama3)")
    hf = tok.tokenizer

    def tokenize(t):
        return hf(t)["input_ids"]

    check_tokenizer(tokenize, hf)
    text = prompt_template.llava_text(prompt, name)
    pad_id = llama.special_tokens["pad"]
    ids, n, image_at = token_ids(tokenize, text, pad_id, _token_id(hf, prompt_template.IMAGE_TOKEN), field)
    clip_tokens = clip_l_tokens(clip.tokenizer.clip_l, prompt)
    mm.load_model_gpu(clip.patcher)
    net = llama.transformer
    # core's execution device; a weight's device is the CPU when core streams weights (dynamic VRAM)
    device = clip.patcher.load_device
    with torch.no_grad():
        embeds = net.get_input_embeddings()(torch.tensor([ids], device=device), out_dtype=torch.float32)
        embeds, mask, positions = merge_image(embeds, image_embeds.to(device), n, image_at,
                                              torch.tensor(ids) == pad_id)
        _, hidden = net(None, mask.to(device), embeds=embeds, intermediate_output=llama.layer_idx,
                        final_layer_norm_intermediate=False, dtype=torch.float32,
                        position_ids=positions.to(device))
        states = hidden.float()[:, prompt_template.CROP_START:]
        _, pooled = te.clip_l.encode_token_weights(clip_tokens)
    return [[states.cpu(), {"pooled_output": pooled.float().cpu(), "attention_mask": released_mask(n)}]]
