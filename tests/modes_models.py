"""Small random-weight audio / editing modules in the released checkpoints' key layout, and a
tiny random whisper model folder, for the mode tests.

Key names and shape rules are those of `hunyuancustom_audio_720P` / `hunyuancustom_editing_720P`
(`audio_proj.proj1..3`, `audio_proj.norm`, `audio_models.{0..5}.norm1/norm2/to_q/to_kv/to_out`,
`bg_in.proj`, `bg_proj`), only the widths are small.
"""

from __future__ import annotations

from pathlib import Path

import torch

from comfyui_harness import core_hunyuan_video

# Tiny sizes: model width 64, whisper width 16 with 2 layers (3 feature blocks), window 10.
WIDTH, WHISPER_WIDTH, WHISPER_LAYERS, WINDOW = 64, 16, 2, 10
INTERMEDIATE, CONTEXT_TOKENS, AUDIO_HIDDEN = 32, 4, 32
LATENT_CHANNELS = 16


def _rand(g, *shape, scale=0.2):
    return torch.randn(*shape, generator=g) * scale


def audio_state_dict(prefix: str = "", seed: int = 0, width: int = WIDTH, blocks: int = WHISPER_LAYERS + 1,
                     channels: int = WHISPER_WIDTH, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_dim = WINDOW * blocks * channels
    sd = {
        "audio_proj.proj1.weight": _rand(g, INTERMEDIATE, input_dim, scale=input_dim ** -0.5),
        "audio_proj.proj1.bias": _rand(g, INTERMEDIATE),
        "audio_proj.proj2.weight": _rand(g, INTERMEDIATE, INTERMEDIATE, scale=INTERMEDIATE ** -0.5),
        "audio_proj.proj2.bias": _rand(g, INTERMEDIATE),
        "audio_proj.proj3.weight": _rand(g, CONTEXT_TOKENS * width, INTERMEDIATE, scale=INTERMEDIATE ** -0.5),
        "audio_proj.proj3.bias": _rand(g, CONTEXT_TOKENS * width),
        "audio_proj.norm.weight": 1 + _rand(g, width, scale=0.05),
        "audio_proj.norm.bias": _rand(g, width, scale=0.05),
    }
    for i in range(6):
        p = f"audio_models.{i}."
        sd.update({
            p + "norm1.weight": 1 + _rand(g, width, scale=0.05),
            p + "norm1.bias": _rand(g, width, scale=0.05),
            p + "norm2.weight": 1 + _rand(g, width, scale=0.05),
            p + "norm2.bias": _rand(g, width, scale=0.05),
            p + "to_q.weight": _rand(g, AUDIO_HIDDEN, width, scale=width ** -0.5),
            p + "to_kv.weight": _rand(g, 2 * AUDIO_HIDDEN, width, scale=width ** -0.5),
            # Released init is zeros (a no-op until trained); random here so the effect is visible.
            p + "to_out.weight": _rand(g, width, AUDIO_HIDDEN, scale=AUDIO_HIDDEN ** -0.5),
        })
    return {prefix + k: v.to(dtype) for k, v in sd.items()}


def editing_state_dict(prefix: str = "", seed: int = 0, width: int = WIDTH,
                       dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    fan_in = 2 * LATENT_CHANNELS * 4
    sd = {
        "bg_in.proj.weight": _rand(g, width, 2 * LATENT_CHANNELS, 1, 2, 2, scale=fan_in ** -0.5),
        "bg_in.proj.bias": _rand(g, width),
        "bg_proj.weight": _rand(g, width, width, scale=width ** -0.5),
        "bg_proj.bias": _rand(g, width),
    }
    return {prefix + k: v.to(dtype) for k, v in sd.items()}


def whisper_folder(root: Path) -> Path:
    """A random-weight WhisperModel (width 16, 2 encoder layers, the real 80-bin / 1500-step
    input) saved with save_pretrained where ComfyUI keeps audio encoders."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    folder = Path(root) / "models" / "audio_encoders" / "whisper-tiny"
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=WHISPER_WIDTH,
                        encoder_layers=WHISPER_LAYERS, encoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
                        max_source_positions=1500, max_target_positions=16, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    WhisperModel(cfg).eval().save_pretrained(str(folder))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(folder))
    return folder


# --- whole tiny models for end-to-end runs in a real ComfyUI (need COMFYUI_PATH) --------------


def _randomize(sd: dict[str, torch.Tensor], seed: int, scale: float = 0.05, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if v.dim() == 1 and "norm" in k and k.endswith(("weight", "scale")):
            out[k] = torch.ones(v.shape, dtype=dtype)  # norms: identity, keeps activations sane
        else:
            out[k] = (torch.randn(v.shape, generator=g) * scale).to(dtype)
    return out


def backbone_state_dict(comfy, width: int = 128, context: int = 64, depth: int = 12, seed: int = 0):
    """A random HunyuanVideo transformer (one head of 128, `depth` double blocks, 1 single block) in
    core's key layout, as core's diffusion-model loader reads it."""
    net = core_hunyuan_video(comfy, width=width, context=context, depth=depth)
    return _randomize(net.state_dict(), seed)


def hunyuan_vae_state_dict(comfy, seed: int = 0):
    """Core's HunyuanVideo VAE (fixed size, ~246 M parameters) with random weights, fp16."""
    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                "dropout": 0.0, "conv3d": True, "time_compress": 4}
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=16)
    return _randomize(vae.state_dict(), seed, scale=0.02, dtype=torch.float16)


def clip_l_state_dict(seed: int = 0):
    """A random CLIP-L text model (core's SD1 text encoder shape: 768 wide, 12 layers), fp16: a real
    text encoder whose CONDITIONING (77 x 768, pooled 768) a 768-context tiny transformer takes."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         projection_dim=768)
    return {k: v.half() for k, v in CLIPTextModel(cfg).state_dict().items()}
