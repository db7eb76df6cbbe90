"""Audio-driven mode: whisper-tiny features -> audio projection net -> perceiver cross-attention.

How the released audio checkpoint (`hunyuancustom_audio_720P`) uses sound, restated:

- The audio is resampled to 16 kHz; one video frame at 25 fps covers 640 samples.
- whisper-tiny's encoder runs on each 30 s window; its input embedding and every layer's output
  are kept (5 x 384 channels per 20 ms step, two steps per video frame).
- Video frame f sees the 10 steps starting at 2f of that sequence with 4 zero steps in front
  (so it hears about 80 ms before and 120 ms after its own time).
- `audio_proj` turns each frame's 10 x 5 x 384 window into 4 context tokens of the model width.
- After double blocks 1, 3, 5, 7, 9, 11, the perceiver layer `audio_models[k]` lets each latent
  frame's video tokens attend to the 16 tokens of its 4 video frames (the first latent frame
  holds one video frame, repeated), and the result, times `audio_strength`, is added to the video
  tokens only. The reference-image tokens get nothing.
- The negative (unconditional) branch gets the same layers fed with all-zero audio features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ValidationError

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
WINDOW_STEPS = 10  # encoder steps (20 ms each) per video frame's window
LEAD_STEPS = 4  # zero steps put in front, so a window starts 80 ms before its frame
STEPS_PER_FRAME = 2
CHUNK_SECONDS = 30  # whisper's fixed input length
INSERT_AFTER_DOUBLE_BLOCKS = (1, 3, 5, 7, 9, 11)
DEFAULT_STRENGTH = 0.8
MAX_STRENGTH = 2.0  # the node's range: 0 turns the audio off, above 1 exaggerates it
MAX_FRAMES = 1025  # 41 s at 25 fps; the released clips are 129 frames
KEY_PREFIXES = ("audio_proj.", "audio_models.")
WHISPER_FOLDER = "whisper-tiny"


# --- modules in the released key layout ---------------------------------------------------------


class AudioProjection(nn.Module):
    """`audio_proj`: per video frame, a window of whisper features -> `context_tokens` tokens.

    Keys: proj1, proj2, proj3 (Linear with bias), norm (LayerNorm over the model width).
    Released sizes: 10 x 5 x 384 = 19200 -> 1024 -> 1024 -> 4 x 3072.
    """

    def __init__(self, input_dim: int = 19200, intermediate_dim: int = 1024, output_dim: int = 3072,
                 context_tokens: int = 4):
        super().__init__()
        self.input_dim, self.output_dim, self.context_tokens = input_dim, output_dim, context_tokens
        self.proj1 = nn.Linear(input_dim, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """[B, F, window, blocks, channels] -> [B, F, context_tokens, output_dim]."""
        b, f = windows.shape[:2]
        x = windows.reshape(b * f, -1)
        if x.shape[1] != self.input_dim:
            raise ValidationError("audio", f"the audio features have {x.shape[1]} values per frame "
                                           f"({list(windows.shape[2:])}) but the checkpoint's audio_proj "
                                           f"expects {self.input_dim}: use the whisper model it was "
                                           f"trained with ({WHISPER_FOLDER})")
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        x = self.proj3(x).reshape(b * f, self.context_tokens, self.output_dim)
        return self.norm(x).reshape(b, f, self.context_tokens, self.output_dim)


class AudioCrossAttention(nn.Module):
    """`audio_models[k]`: video tokens (queries) attend to one latent frame's audio tokens.

    Keys: norm1 (audio side), norm2 (video side), to_q, to_kv, to_out (Linear, no bias). The
    released layers use a single head as wide as the hidden projection (1024).
    """

    def __init__(self, dim: int = 3072, dim_hidden: int = 1024, heads: int = 1):
        super().__init__()
        if dim_hidden % heads:
            raise ValueError(f"dim_hidden {dim_hidden} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim_hidden, bias=False)
        self.to_kv = nn.Linear(dim, dim_hidden * 2, bias=False)
        self.to_out = nn.Linear(dim_hidden, dim, bias=False)

    def forward(self, audio_tokens: torch.Tensor, video_tokens: torch.Tensor) -> torch.Tensor:
        """audio [B, T, A, dim], video [B, T, HW, dim] -> the update for the video tokens [B, T, HW, dim]."""
        b, t, hw, dim = video_tokens.shape
        a = self.norm1(audio_tokens.reshape(b * t, -1, dim))
        v = self.norm2(video_tokens.reshape(b * t, hw, dim))
        q = self.to_q(v)
        k, val = self.to_kv(a).chunk(2, dim=-1)

        def heads(x):
            return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

        q, k, val = heads(q), heads(k), heads(val)
        # Scores and softmax in float32: few keys, and half precision would saturate at this width.
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
        out = scores.softmax(dim=-1).to(val.dtype) @ val
        out = out.transpose(1, 2).reshape(b * t, hw, -1)
        return self.to_out(out).reshape(b, t, hw, dim)


class AudioModules(nn.Module):
    """`audio_proj` + `audio_models.{0..5}`, loadable from the released checkpoint's tensors."""

    def __init__(self, projection: AudioProjection, layers: list[AudioCrossAttention],
                 insert_after: tuple[int, ...] = INSERT_AFTER_DOUBLE_BLOCKS):
        super().__init__()
        if len(layers) != len(insert_after):
            raise ValueError(f"{len(layers)} audio layers for {len(insert_after)} insertion points")
        self.audio_proj = projection
        self.audio_models = nn.ModuleList(layers)
        self.insert_after = tuple(insert_after)

    @property
    def width(self) -> int:
        return self.audio_proj.output_dim

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], source: str = "the checkpoint") -> AudioModules:
        """Build from `audio_proj.*` / `audio_models.N.*` tensors (other keys are ignored)."""
        sd = select_keys(sd, KEY_PREFIXES)
        need = ["audio_proj.proj1.weight", "audio_proj.proj3.weight", "audio_proj.norm.weight"]
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValidationError("audio_modules", f"{source} has no audio modules ({missing[0]} is "
                                                   "missing): load the audio checkpoint "
                                                   "(hunyuancustom_audio_720P)")
        n_layers = 1 + max((int(k.split(".")[1]) for k in sd if k.startswith("audio_models.")), default=-1)
        if n_layers != len(INSERT_AFTER_DOUBLE_BLOCKS):
            raise ValidationError("audio_modules", f"{source} has {n_layers} audio_models layers; the "
                                                   f"released layout has {len(INSERT_AFTER_DOUBLE_BLOCKS)}")
        inter, input_dim = sd["audio_proj.proj1.weight"].shape
        width = sd["audio_proj.norm.weight"].shape[0]
        ctx = sd["audio_proj.proj3.weight"].shape[0] // width
        hidden = sd["audio_models.0.to_q.weight"].shape[0]
        with torch.device("meta"):
            mods = cls(AudioProjection(input_dim, inter, width, ctx),
                       [AudioCrossAttention(width, hidden) for _ in range(n_layers)])
        return load_released(mods, sd, "audio_modules", "audio", source)


def load_released(mods: nn.Module, sd: dict[str, torch.Tensor], field: str, what: str,
                  source: str) -> nn.Module:
    """Fill modules built on the meta device with a checkpoint's tensors (every key, exact shapes);
    ready for inference in float32."""
    try:
        mods.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise ValidationError(field, f"{source}: {what} module tensors do not match the released "
                                     f"layout: {str(e)[:300]}") from None
    return mods.float().eval().requires_grad_(False)


def select_keys(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors under `prefixes`, with any leading wrapper prefix (`module.`,
    `model.diffusion_model.`) removed."""
    out = {}
    for key, value in sd.items():
        for p in prefixes:
            i = key.find(p)
            if i == 0 or (i > 0 and key[i - 1] == "."):
                out[key[i:]] = value
                break
    return out


def latent_frame_tokens(features: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """[B, F, m, C] per video frame -> [B, latent_frames, 4*m, C] per latent frame.

    The causal VAE's first latent frame holds one video frame, the others four each: the first
    frame's tokens are repeated three more times in front, so F must be 4*latent_frames - 3.
    """
    b, f, m, c = features.shape
    if f != 4 * latent_frames - 3:
        raise ValidationError("audio", f"{f} frames of audio features for {latent_frames} latent frames; "
                                       f"{4 * latent_frames - 3} are needed")
    padded = torch.cat([features[:, :1].expand(b, 3, m, c), features], dim=1)
    return padded.reshape(b, latent_frames, 4 * m, c)


# --- waveform handling --------------------------------------------------------------------------


@dataclass(frozen=True)
class Waveform:
    """A validated mono-or-multichannel waveform [channels, samples] at `sample_rate`."""

    samples: torch.Tensor
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


def waveform_from_audio(audio, field: str = "audio") -> Waveform:
    """ComfyUI's AUDIO ({"waveform": [B, C, T], "sample_rate": int}) -> Waveform (first item)."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValidationError(field, "must be an AUDIO value ({'waveform': [batch, channels, samples], "
                                     "'sample_rate': int})")
    wave, rate = audio["waveform"], audio["sample_rate"]
    if not isinstance(wave, torch.Tensor):
        raise ValidationError(field, f"waveform must be a tensor, got {type(wave).__name__}")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise ValidationError(field, f"sample_rate must be a positive integer, got {rate!r}")
    if wave.dim() == 3:
        if wave.shape[0] < 1:
            raise ValidationError(field, "the audio batch is empty")
        wave = wave[0]
    elif wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2 or wave.shape[0] < 1:
        raise ValidationError(field, "waveform must be [batch, channels, samples], got "
                                     f"{list(audio['waveform'].shape)}")
    if wave.shape[-1] == 0:
        raise ValidationError(field, "has no samples (zero-length audio)")
    if not torch.isfinite(wave).all():
        raise ValidationError(field, "contains NaN or infinite samples")
    return Waveform(wave.detach().to("cpu", torch.float32), rate)


def resample(wave: torch.Tensor, orig: int, new: int, zero_crossings: int = 16,
             rolloff: float = 0.945) -> torch.Tensor:
    """Band-limited resampling of [channels, samples] (Hann-windowed sinc, polyphase conv).

    Output sample j sits at input position j * orig / new; it is the input convolved with a
    low-pass sinc at `rolloff` x the lower Nyquist frequency, truncated at `zero_crossings`.
    """
    if orig == new:
        return wave
    g = math.gcd(orig, new)
    up, down = new // g, orig // g  # output phases per block / input samples per block
    n_in = wave.shape[-1]
    n_out = math.ceil(n_in * up / down)
    cutoff = rolloff * min(up, down) / down  # in cycles per input sample, x2
    half = math.ceil(zero_crossings / cutoff)  # kernel half-width, in input samples
    # weight[p, m]: contribution of input sample (block start + m - half) to output phase p.
    offsets = torch.arange(-half, half + down, dtype=torch.float64)
    phase_pos = torch.arange(up, dtype=torch.float64)[:, None] * down / up
    d = offsets[None, :] - phase_pos
    window = torch.where(d.abs() <= half, torch.cos(d * math.pi / (2 * half)) ** 2, torch.zeros_like(d))
    kernel = (cutoff * torch.sinc(cutoff * d) * window).to(wave.dtype)
    x = F.pad(wave.unsqueeze(1), (half, half + down))
    y = F.conv1d(x, kernel.unsqueeze(1), stride=down)  # [C, up, blocks]
    y = y.transpose(1, 2).reshape(wave.shape[0], -1)
    return y[:, :n_out]


def to_mono_16k(wave: Waveform) -> torch.Tensor:
    """[samples] mono at 16 kHz, as whisper expects."""
    mono = wave.samples.mean(dim=0, keepdim=True)
    return resample(mono, wave.sample_rate, SAMPLE_RATE)[0]


def audio_frames(samples_16k: int) -> int:
    """Video frames at 25 fps that the audio covers (whole frames only)."""
    return samples_16k // SAMPLES_PER_FRAME


def video_frame_count(wave: Waveform, frames: int = 0) -> int:
    """The clip's frame count: `frames` if set (must be 4k+1), else the longest 4k+1 count the
    audio fully covers at 25 fps."""
    if frames:
        if frames < 1 or (frames - 1) % 4 or frames > MAX_FRAMES:
            raise ValidationError("frames", f"{frames} is not allowed; allowed: 0 (follow the audio) or "
                                            f"4k+1 up to {MAX_FRAMES} (1, 5, 9, ..., 129, ...)")
        return frames
    covered = int(wave.seconds * FPS + 1e-6)
    if covered < 1:
        raise ValidationError("audio", f"is {wave.seconds * 1000:.0f} ms long; at least one video frame "
                                       f"(40 ms) of audio is needed")
    n = (covered - 1) // 4 * 4 + 1
    if n > MAX_FRAMES:
        raise ValidationError("audio", f"is {wave.seconds:.1f} s long ({n} frames at {FPS} fps); one clip "
                                       f"holds at most {MAX_FRAMES} frames: trim the audio or set frames")
    return n


def fit_waveform(wave: Waveform, seconds: float) -> Waveform:
    """The waveform trimmed, or padded with silence, to exactly `seconds` (for muxing in sync)."""
    n = round(seconds * wave.sample_rate)
    s = wave.samples[:, :n]
    if s.shape[-1] < n:
        s = F.pad(s, (0, n - s.shape[-1]))
    return Waveform(s, wave.sample_rate)


# --- whisper ------------------------------------------------------------------------------------


class WhisperFeatures:
    """whisper-tiny's encoder as HunyuanCustom uses it (transformers is imported only here).

    `folder` is a Hugging Face model folder (config.json, preprocessor_config.json and the
    weights), e.g. ComfyUI/models/audio_encoders/whisper-tiny.
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValidationError("whisper_model", f"{folder} is not a whisper model folder (no "
                                                   "config.json); put openai/whisper-tiny's config.json, "
                                                   "preprocessor_config.json and model.safetensors there")
        try:
            from transformers import WhisperFeatureExtractor, WhisperModel
        except ImportError:
            raise ValidationError("whisper_model", "the audio mode needs the 'transformers' package: "
                                                   "pip install transformers") from None
        self.folder = folder
        if (folder / "preprocessor_config.json").is_file():
            self.extractor = WhisperFeatureExtractor.from_pretrained(str(folder))
        else:  # whisper-tiny's extractor is the default one (80 mel bins, 16 kHz, 30 s)
            self.extractor = WhisperFeatureExtractor()
        model = WhisperModel.from_pretrained(str(folder))  # no dtype kwarg: its name changed in 4.56
        self.encoder = model.get_encoder().to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype

    @property
    def layout(self) -> tuple[int, int]:
        """(blocks, channels) of each encoder step: embedding + every layer, model width."""
        cfg = self.encoder.config
        return cfg.encoder_layers + 1, cfg.d_model

    @torch.no_grad()
    def encode(self, mono_16k: torch.Tensor) -> torch.Tensor:
        """[samples] at 16 kHz -> [steps, blocks, channels] (50 steps a second), 30 s at a time."""
        chunk = CHUNK_SECONDS * SAMPLE_RATE
        steps_per_chunk = CHUNK_SECONDS * FPS * STEPS_PER_FRAME
        outs = []
        audio = mono_16k.numpy()
        for start in range(0, max(1, len(audio)), chunk):
            mel = self.extractor(audio[start:start + chunk], sampling_rate=SAMPLE_RATE,
                                 return_tensors="pt").input_features
            hidden = self.encoder(mel.to(self.device, self.dtype), output_hidden_states=True).hidden_states
            outs.append(torch.stack(hidden, dim=2)[0, :steps_per_chunk].float().cpu())
        return torch.cat(outs, dim=0)


def frame_windows(steps: torch.Tensor, frames: int) -> torch.Tensor:
    """[steps, blocks, channels] -> [1, frames, 10, blocks, channels]: each frame's window.

    Frames beyond the audio get all-zero windows (silence in the model's terms).
    """
    blocks, channels = steps.shape[1:]
    padded = torch.cat([steps.new_zeros(LEAD_STEPS, blocks, channels), steps,
                        steps.new_zeros(WINDOW_STEPS, blocks, channels)])
    have = min(frames, audio_frames_from_steps(steps.shape[0]))
    idx = (torch.arange(have)[:, None] * STEPS_PER_FRAME + torch.arange(WINDOW_STEPS)[None, :])
    out = steps.new_zeros(frames, WINDOW_STEPS, blocks, channels)
    out[:have] = padded[idx]
    return out.unsqueeze(0)


def audio_frames_from_steps(steps: int) -> int:
    return steps // STEPS_PER_FRAME


def audio_windows(wave: Waveform, whisper: WhisperFeatures, frames: int) -> torch.Tensor:
    """The model's audio input for a clip of `frames` frames: [1, frames, 10, blocks, channels].

    Only the part of the audio the clip covers counts; frames past the audio's end get zeros.
    """
    mono = to_mono_16k(wave)
    covered = audio_frames(mono.shape[0])
    # Whole 30 s chunks, as the released code encodes them (the encoder sees the whole chunk).
    chunk = CHUNK_SECONDS * SAMPLE_RATE
    steps = whisper.encode(mono[: math.ceil(frames * SAMPLES_PER_FRAME / chunk) * chunk])
    windows = frame_windows(steps, frames)
    if covered < frames:
        windows[:, covered:] = 0
    return windows


def check_strength(value: float) -> float:
    """`audio_strength` as a float in [0, MAX_STRENGTH]; NaN and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= MAX_STRENGTH:
        raise ValidationError("audio_strength", f"must be a finite number from 0 to {MAX_STRENGTH:g}, "
                                                f"got {value!r}")
    return float(value)
