"""Makes tests/data/released_text_golden.safetensors: the released text encoders' output (HunyuanCustom's
`hymm_sp.text_encoder.TextEncoder` on transformers 4.41.2's LLaVA and CLIP-L) for the tiny random
weights of `text_models.py` and the real Llama-3 tokenizer. See released_text_golden.md.

No released code is in this repository: it is imported from HYMM_ROOT (a checkout of
Tencent-Hunyuan/HunyuanCustom, the folder holding `hymm_sp/`).

Usage (a Python with transformers==4.41.2, accelerate, torch, safetensors):
  python tests/make_text_golden.py HYMM_ROOT LLAMA3_TOKENIZER_DIR CLIP_TOKENIZER_DIR OUT.safetensors
LLAMA3_TOKENIZER_DIR: built by ../shared/comfyui/make_llama3_tokenizer.py; CLIP_TOKENIZER_DIR: a
ComfyUI tree's comfy/sd1_tokenizer (openai/clip-vit-large-patch14's tokenizer files).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import text_models  # noqa: E402

# The case: prompts with parentheses (ComfyUI would read them as weights; the release does not).
PROMPT = "A (woman:1.3) is drinking coffee at a cafe (with a cat), smiling."
NAME = "woman"
NEGATIVE = "blurry, (low quality:1.4), text (subtitles), static"
PIXEL_SEED = 11
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
              projection_dim=32)
VISION_SEED = 22
PROJECTOR_SCALE = 8.0
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pixels():
    """(reference, all-white) LLaVA pixel values [1, 3, 336, 336]: a seeded random image in [0, 1]
    and the white image, each normalized with CLIP's mean and std."""
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    image = torch.rand(1, 3, 336, 336, generator=torch.Generator().manual_seed(PIXEL_SEED))
    return (image - mean) / std, (torch.ones_like(image) - mean) / std


def save_models(work: Path) -> tuple[Path, Path]:
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    text = LlamaConfig(**text_models.LLAMA, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**VISION).to_dict(), text_config=text.to_dict(),
                         image_token_index=128257, pad_token_id=128258, projector_hidden_act="gelu",
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(VISION_SEED)  # vision tower, projector and LM head: transformers' own init
    llava = LlavaForConditionalGeneration(config).float()
    with torch.no_grad():  # image features of the size of the token embeddings (init std 0.02 is tiny)
        for p in llava.multi_modal_projector.parameters():
            p.mul_(PROJECTOR_SCALE)
    lm = {"language_model." + k: v for k, v in text_models.llama_state_dict().items()}
    missing, unexpected = llava.load_state_dict(lm, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(("vision_tower.", "multi_modal_projector.", "language_model.lm_head."))
               for k in missing), missing
    llava.save_pretrained(work / "llava", safe_serialization=True)

    clip = CLIPTextModel(CLIPTextConfig(**text_models.CLIP_L)).float()
    clip.load_state_dict(text_models.clip_l_state_dict(), strict=True)
    clip.save_pretrained(work / "clip", safe_serialization=True)
    return work / "llava", work / "clip"


def main(hymm_root: str, llama_tok: str, clip_tok: str, out: str) -> None:
    import transformers
    from safetensors.torch import save_file

    sys.path.insert(0, hymm_root)
    from hymm_sp.constants import PROMPT_TEMPLATE
    from hymm_sp.text_encoder import TextEncoder

    from hunyuancustom.local import text_encoder as pack_te

    assert transformers.__version__ == "4.41.2", transformers.__version__
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        llava_dir, clip_dir = save_models(Path(tmp))
        # as hymm_sp/inference.py builds them (args defaults: text_len 256 + crop 95, skip 2, fp32 here)
        llava = TextEncoder(text_encoder_type="llava-llama-3-8b", max_length=256 + 95,
                            text_encoder_precision="fp32", text_encoder_path=str(llava_dir),
                            tokenizer_type="llava-llama-3-8b", tokenizer_path=llama_tok,
                            use_attention_mask=True,
                            prompt_template_video=PROMPT_TEMPLATE["li-dit-encode-video"],
                            hidden_state_skip_layer=2, apply_final_norm=False, reproduce=True, device="cpu")
        clip = TextEncoder(text_encoder_type="clipL", max_length=77, text_encoder_precision="fp32",
                           text_encoder_path=str(clip_dir), tokenizer_type="clipL", tokenizer_path=clip_tok,
                           use_attention_mask=True, reproduce=True, device="cpu")

        # the pack's tokenizer check passes on the released tokenizer (transformers 4.41.2)
        hf = llava.tokenizer
        pack_te.check_tokenizer(lambda t: hf(t)["input_ids"], hf)

        features = []
        llava.model.multi_modal_projector.register_forward_hook(lambda m, i, o: features.append(o.clone()))
        ref, white = pixels()
        tensors = {}
        # the pipeline's encode_prompt: text2tokens (name for the prompt, the default for the negative),
        # 575 ones appended to the mask per image, encode with data_type "video"; CLIP without name
        for branch, text, name, image in (("pos", PROMPT, NAME, ref), ("neg", NEGATIVE, None, white)):
            inputs = llava.text2tokens(text, data_type="video", **({"name": name} if name else {}))
            tensors[f"{branch}.input_ids"] = inputs["input_ids"].clone()
            inputs["pixel_value_llava"] = image
            mask = inputs["attention_mask"]
            inputs["attention_mask"] = torch.cat([mask, torch.ones((1, 575 * len(image))).to(mask)], dim=1)
            features.clear()
            result = llava.encode(inputs, data_type="video")
            tensors[f"{branch}.states"] = result.hidden_state.float().contiguous()
            tensors[f"{branch}.mask"] = result.attention_mask.long().contiguous()
            tensors[f"{branch}.image_features"] = features[0][0].float().contiguous()
            clip_inputs = clip.text2tokens(text, data_type="image")
            tensors[f"{branch}.clip_ids"] = clip_inputs["input_ids"].clone()
            tensors[f"{branch}.pooled"] = clip.encode(clip_inputs).hidden_state.float().contiguous()

    meta = {"prompt": PROMPT, "name": NAME, "negative_prompt": NEGATIVE, "negative_name": "person",
            "transformers": transformers.__version__, "torch": torch.__version__,
            "pack_tokenizer_check": "passed (transformers 4.41.2 LlamaTokenizerFast)"}
    save_file(tensors, out, metadata={"json": json.dumps(meta)})
    for k, v in sorted(tensors.items()):
        print(k, tuple(v.shape), v.dtype, float(v.float().abs().max()))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
