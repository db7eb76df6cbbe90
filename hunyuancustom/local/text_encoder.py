"""The released text-image fusion, run on the LLaVA-Llama-3 that ComfyUI has loaded.

What the released text encoder (transformers 4.41 LLaVA) hands the transformer, step by step:

1. The text: the video template around the prompt, then "\\nThe {name} looks like<image>" after the
   template's `<|eot_id|>`; tokenized with the start token, cut to 351 (= 95 + 256) tokens and padded
   on the right to 351.
2. LLaVA puts the 576 image features in place of `<image>`: 926 positions. Its attention mask is the
   tokenizer's (padding masked) with ones for the features; positions count the unmasked tokens
   (`cumsum - 1`), and padding positions are 1.
3. The hidden states two layers before the last, without the final norm; the first 95 (template)
   positions are dropped: 831 states.
4. The mask handed on is the tokenizer's 351 with 575 ones appended at the end (not where the
   features went), also without its first 95: 831 entries. `released.py` reads it the released way.

Core's own HunyuanVideo encode keeps only the user turn, so the suffix after `<|eot_id|>` and the
padding states are lost there: this module builds the token sequence itself and runs core's Llama
(`clip.cond_stage_model.llama.transformer`, loaded by core's model management). The pooled vector
is CLIP-L's on the prompt, as core gives it. Steps 1, 2 and 4 are pure functions, tested without
ComfyUI.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import ValidationError
from . import prompt as prompt_template

MAX_LENGTH = prompt_template.CROP_START + prompt_template.TEXT_LEN  # 351 tokens before the features
EXTRA = prompt_template.IMAGE_FEATURES - 1  # 575


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


def merge_image(token_embeds: torch.Tensor, image_embeds: torch.Tensor, n_real: int,
                image_at: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaVA's merge: (embeddings [1, 926, C], attention mask [1, 926], position ids [1, 926])."""
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
    text = prompt_template.llava_text(prompt, name)
    ids, n, image_at = token_ids(lambda t: hf(t)["input_ids"], text, llama.special_tokens["pad"],
                                 hf.convert_tokens_to_ids(prompt_template.IMAGE_TOKEN), field)
    mm.load_model_gpu(clip.patcher)
    net = llama.transformer
    device = net.get_input_embeddings().weight.device
    with torch.no_grad():
        embeds = net.get_input_embeddings()(torch.tensor([ids], device=device), out_dtype=torch.float32)
        embeds, mask, positions = merge_image(embeds, image_embeds.to(device), n, image_at)
        _, hidden = net(None, mask.to(device), embeds=embeds, intermediate_output=llama.layer_idx,
                        final_layer_norm_intermediate=False, dtype=torch.float32,
                        position_ids=positions.to(device))
        states = hidden.float()[:, prompt_template.CROP_START:]
        _, pooled = te.clip_l.encode_token_weights(clip.tokenizer.clip_l.tokenize_with_weights(prompt))
    return [[states.cpu(), {"pooled_output": pooled.float().cpu(), "attention_mask": released_mask(n)}]]
