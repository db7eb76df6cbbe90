"""The released text-image fusion on a real (tiny, random) core Llama, in-process (COMFYUI_PATH).

The 8 B LLaVA weights and the Llama-3 tokenizer file are not available to these tests, so the clip
is core's own Llama class at a tiny size behind a stand-in tokenizer. What is checked is the
wiring: the padded 351-token sequence with the 576 image features merged in, the layer two before
the last, the template cropped, the mask with 575 ones appended; and, since LLaVA is causal, the
states of the real tokens and the features are those of the same model on the unpadded sequence.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from comfyui_harness import import_comfy, requires_comfyui
from hunyuancustom.local import prompt, text_encoder

pytestmark = requires_comfyui

HIDDEN, PAD, IMAGE = 128, 128258, 128257


class Tokenizer:
    """Start token, then one id per special token, word or space run (ids below the specials)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text):
        pieces = re.findall(r"<\|[^|]+\|>|<image>|\s+|[^\s<]+", text)
        ids = [IMAGE if p == "<image>" else self.vocab.setdefault(p, 10 + len(self.vocab)) for p in pieces]
        return {"input_ids": [128000] + ids}

    def convert_tokens_to_ids(self, token):
        return IMAGE if token == prompt.IMAGE_TOKEN else None


@pytest.fixture(scope="module")
def clip():
    import_comfy()
    import comfy.model_patcher
    import comfy.ops
    from comfy.text_encoders.llama import Llama2

    config = {"hidden_size": HIDDEN, "intermediate_size": 256, "num_hidden_layers": 4,
              "num_attention_heads": 1, "num_key_value_heads": 1}
    net = Llama2(config, dtype=torch.float32, device="cpu", operations=comfy.ops.manual_cast)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(noise * p.shape[-1] ** -0.5 if p.dim() > 1 else 1 + 0.1 * noise)
    llama = SimpleNamespace(transformer=net, special_tokens={"start": 128000, "pad": PAD}, layer_idx=-3)
    pooled = torch.randn(1, 768, generator=g)
    clip_l = SimpleNamespace(encode_token_weights=lambda tokens: (None, pooled))
    holder = torch.nn.Module()
    holder.llama = net
    return SimpleNamespace(
        cond_stage_model=SimpleNamespace(llama=llama, clip_l=clip_l),
        tokenizer=SimpleNamespace(llama=SimpleNamespace(tokenizer=Tokenizer()),
                                  clip_l=SimpleNamespace(tokenize_with_weights=lambda text: [[(1, 1.0)]])),
        patcher=comfy.model_patcher.ModelPatcher(holder, load_device=torch.device("cpu"),
                                                 offload_device=torch.device("cpu")),
        pooled=pooled)


def test_the_released_layout_on_core_llama(clip):
    image = torch.randn(576, HIDDEN, generator=torch.Generator().manual_seed(1))
    out = text_encoder.encode(clip, image, "A red cup on a table.", "cup")
    states, extra = out[0]
    tok = clip.tokenizer.llama.tokenizer
    ids, n, at = text_encoder.token_ids(lambda t: tok(t)["input_ids"],
                                        prompt.llava_text("A red cup on a table.", "cup"), PAD, IMAGE)
    assert states.shape == (1, 831, HIDDEN)
    assert torch.equal(extra["attention_mask"], text_encoder.released_mask(n))
    assert torch.equal(extra["pooled_output"], clip.pooled)

    # the same model on the unpadded sequence (arange positions, no mask), layer -3, no final norm
    net = clip.cond_stage_model.llama.transformer
    with torch.no_grad():
        tokens = net.get_input_embeddings()(torch.tensor([ids[:n]]), out_dtype=torch.float32)
        embeds = torch.cat([tokens[:, :at], image[None], tokens[:, at + 1:]], dim=1)
        _, ref = net(None, None, embeds=embeds, intermediate_output=-3, final_layer_norm_intermediate=False,
                     dtype=torch.float32)
    real = n - 1 + 576 - prompt.CROP_START
    assert torch.allclose(states[0, :real], ref[0, prompt.CROP_START:], atol=1e-5, rtol=1e-5)
    # the image features end the real part; padding states follow
    assert real == (n - prompt.CROP_START) + 575
    assert torch.isfinite(states).all()
