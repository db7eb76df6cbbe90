"""Tiny random text encoders for the text-image fusion tests, and the real Llama-3 tokenizer.

The weights are rebuilt from a seed (pure torch, same numbers on any machine) in the published
checkpoint layouts: the Llama-3 language model of LLaVA (`model.*`, as core's Llama2 and transformers'
LlamaModel name them) and CLIP-L's text model (`text_model.*`). `make_text_golden.py` loads them into
the released encoder (transformers 4.41 LLaVA / CLIPTextModel); the tests load them into core's.

The Llama-3 vocabulary: core's `llama_tokenizer/tokenizer.json` is empty in the trees under
`../shared/comfyui/`, so `llama3_tokenizer_dir()` builds the real one once with
`../shared/comfyui/make_llama3_tokenizer.py` (Meta's file from a PyPI wheel; needs `tiktoken` and
PyPI) into a per-user cache, or skips the test saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# core's Llama2 fixes head_dim at 128: one head of 128
LLAMA = dict(vocab_size=128320, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
             num_attention_heads=1, num_key_value_heads=1, rms_norm_eps=1e-5, rope_theta=500000.0,
             max_position_embeddings=8192)
CLIP_L = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
              layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
LLAMA_SEED, CLIP_SEED = 20, 21


def _fill(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Matrices ~ N(0, 1/fan_in), norm weights ~ 1 + 0.1 N, biases and embeddings ~ 0.1 N / N."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        noise = torch.randn(shapes[key], generator=g)
        if "norm" in key and key.endswith("weight"):
            out[key] = 1 + 0.1 * noise
        elif "embed" in key:
            out[key] = noise * (0.5 if "position" in key else 1.0)
        elif key.endswith("bias"):
            out[key] = 0.1 * noise
        else:
            out[key] = noise * shapes[key][-1] ** -0.5
    return out


def llama_state_dict(seed: int = LLAMA_SEED) -> dict[str, torch.Tensor]:
    """LLaVA's language model without its LM head, keys `model.*`."""
    c = LLAMA
    h, i, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * 128
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], h), "model.norm.weight": (h,)}
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    return _fill(shapes, seed)


def clip_l_state_dict(seed: int = CLIP_SEED) -> dict[str, torch.Tensor]:
    """CLIP-L's text model, keys `text_model.*`."""
    c = CLIP_L
    h, i = c["hidden_size"], c["intermediate_size"]
    t = "text_model."
    shapes = {t + "embeddings.token_embedding.weight": (c["vocab_size"], h),
              t + "embeddings.position_embedding.weight": (c["max_position_embeddings"], h),
              t + "final_layer_norm.weight": (h,), t + "final_layer_norm.bias": (h,)}
    for n in range(c["num_hidden_layers"]):
        p = f"{t}encoder.layers.{n}."
        for proj in ("q", "k", "v", "out"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (h, h)
            shapes[f"{p}self_attn.{proj}_proj.bias"] = (h,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{norm}.weight"] = (h,)
            shapes[f"{p}{norm}.bias"] = (h,)
        shapes.update({p + "mlp.fc1.weight": (i, h), p + "mlp.fc1.bias": (i,),
                       p + "mlp.fc2.weight": (h, i), p + "mlp.fc2.bias": (h,)})
    return _fill(shapes, seed)


def _shared_comfyui() -> Path:
    return ROOT.parent / "shared" / "comfyui"


def llama3_tokenizer_dir() -> Path:
    """A folder with the real Llama-3 `tokenizer.json` + core's `tokenizer_config.json`, built once
    per user (cached under $XDG_CACHE_HOME or ~/.cache); skips the calling test if it cannot be built."""
    import pytest

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hunyuancustom-tests"
    out = cache / "llama3_tokenizer"
    if (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    script = _shared_comfyui() / "make_llama3_tokenizer.py"
    tree = Path(os.environ.get("COMFYUI_PATH") or _shared_comfyui() / "0.33.0")
    if not script.is_file() or not (tree / "comfy" / "text_encoders" / "llama_tokenizer").is_dir():
        pytest.skip(f"the real Llama-3 tokenizer cannot be built: {script} or a ComfyUI tree ({tree}) "
                    "is missing")
    for module in ("tiktoken", "tokenizers", "transformers"):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"the real Llama-3 tokenizer cannot be built: {script.name} needs `{module}` "
                        f"(pip install {module})")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache))
    try:
        run = subprocess.run([sys.executable, str(script), str(tree), str(work / "tok")],
                             capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            pytest.skip("the real Llama-3 tokenizer cannot be built (it downloads the llama-models "
                        f"wheel from PyPI): {script.name} failed: {run.stderr.strip()[-500:]}")
        os.chmod(work / "tok" / "tokenizer_config.json", 0o644)
        try:
            os.replace(work / "tok", out)
        except OSError:  # another process built it meanwhile
            if not (out / "tokenizer.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
