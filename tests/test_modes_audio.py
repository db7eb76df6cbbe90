"""Audio-driven mode: modules in the released key layout, whisper features, frames, resampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from modes_models import (
    AUDIO_HIDDEN,
    CONTEXT_TOKENS,
    WIDTH,
    audio_state_dict,
    editing_state_dict,
    whisper_folder,
)

from hunyuancustom.errors import ValidationError
from hunyuancustom.modes.audio import (
    DEFAULT_STRENGTH,
    AudioCrossAttention,
    AudioModules,
    AudioProjection,
    Waveform,
    WhisperFeatures,
    audio_windows,
    check_strength,
    fit_waveform,
    frame_windows,
    latent_frame_tokens,
    resample,
    to_mono_16k,
    video_frame_count,
    waveform_from_audio,
)

RELEASED_AUDIO_SHAPES = {
    "audio_proj.proj1.weight": (1024, 19200), "audio_proj.proj1.bias": (1024,),
    "audio_proj.proj2.weight": (1024, 1024), "audio_proj.proj2.bias": (1024,),
    "audio_proj.proj3.weight": (12288, 1024), "audio_proj.proj3.bias": (12288,),
    "audio_proj.norm.weight": (3072,), "audio_proj.norm.bias": (3072,),
    **{f"audio_models.{i}.{name}": shape for i in range(6) for name, shape in (
        ("norm1.weight", (3072,)), ("norm1.bias", (3072,)), ("norm2.weight", (3072,)),
        ("norm2.bias", (3072,)), ("to_q.weight", (1024, 3072)), ("to_kv.weight", (2048, 3072)),
        ("to_out.weight", (3072, 1024)))},
}


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    pytest.importorskip("transformers")
    return WhisperFeatures(whisper_folder(tmp_path_factory.mktemp("whisper")))


def tone(seconds, rate=44100, channels=2, freq=440.0):
    t = torch.arange(round(seconds * rate)) / rate
    return Waveform((0.3 * torch.sin(2 * math.pi * freq * t)).repeat(channels, 1), rate)


def test_default_modules_have_the_released_key_layout():
    with torch.device("meta"):
        mods = AudioModules(AudioProjection(), [AudioCrossAttention() for _ in range(6)])
    shapes = {k: tuple(v.shape) for k, v in mods.state_dict().items()}
    assert shapes == RELEASED_AUDIO_SHAPES  # 50 tensors: 902 - 852 in the released file
    assert mods.insert_after == (1, 3, 5, 7, 9, 11)


def test_modules_load_from_a_checkpoint_state_dict_with_wrapper_prefix():
    sd = audio_state_dict(prefix="module.")
    sd["module.double_blocks.0.img_mod.lin.weight"] = torch.zeros(3, 3)  # the backbone is ignored
    mods = AudioModules.from_state_dict(sd)
    assert mods.width == WIDTH and mods.audio_proj.context_tokens == CONTEXT_TOKENS
    assert mods.audio_models[5].to_q.weight.shape == (AUDIO_HIDDEN, WIDTH)
    loaded = mods.state_dict()
    for k, v in audio_state_dict().items():
        assert torch.equal(loaded[k], v.float()), k


def test_checkpoint_without_audio_modules_is_refused_by_name():
    with pytest.raises(ValidationError) as e:
        AudioModules.from_state_dict(editing_state_dict(), source="editing.safetensors")
    assert e.value.field == "audio_modules" and "hunyuancustom_audio_720P" in str(e.value)
    assert "editing.safetensors" in str(e.value)
    broken = audio_state_dict()
    broken["audio_models.2.to_q.weight"] = torch.zeros(5, 5)
    with pytest.raises(ValidationError, match="do not match the released layout"):
        AudioModules.from_state_dict(broken)


def test_projection_maps_each_frame_window_to_context_tokens():
    mods = AudioModules.from_state_dict(audio_state_dict())
    windows = torch.randn(2, 9, 10, 3, 16)
    out = mods.audio_proj(windows)
    assert out.shape == (2, 9, CONTEXT_TOKENS, WIDTH)
    # Frames are independent: frame 4 alone gives the same tokens.
    assert torch.allclose(mods.audio_proj(windows[:, 4:5]), out[:, 4:5], atol=1e-5)
    with pytest.raises(ValidationError, match="expects 480"):
        mods.audio_proj(torch.randn(1, 9, 10, 5, 16))


def test_cross_attention_is_single_head_attention_of_video_on_audio_tokens():
    mods = AudioModules.from_state_dict(audio_state_dict())
    layer = mods.audio_models[0]
    audio, video = torch.randn(2, 3, 16, WIDTH), torch.randn(2, 3, 20, WIDTH)
    out = layer(audio, video)
    a = F.layer_norm(audio, (WIDTH,), layer.norm1.weight, layer.norm1.bias)
    v = F.layer_norm(video, (WIDTH,), layer.norm2.weight, layer.norm2.bias)
    q = v @ layer.to_q.weight.T
    k, val = (a @ layer.to_kv.weight.T).chunk(2, dim=-1)
    expected = F.scaled_dot_product_attention(q, k, val) @ layer.to_out.weight.T
    assert out.shape == video.shape and torch.allclose(out, expected, atol=1e-5)


def test_latent_frame_tokens_repeat_the_first_frame_for_the_first_latent_frame():
    feats = torch.arange(9, dtype=torch.float32).view(1, 9, 1, 1).expand(1, 9, 4, 2)
    tokens = latent_frame_tokens(feats, 3)
    assert tokens.shape == (1, 3, 16, 2)
    assert tokens[0, 0, :, 0].tolist() == [0.0] * 16  # frame 0, four times
    assert tokens[0, 1, ::4, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert tokens[0, 2, ::4, 0].tolist() == [5.0, 6.0, 7.0, 8.0]
    with pytest.raises(ValidationError, match="9 are needed"):
        latent_frame_tokens(feats[:, :8], 3)


def test_frame_windows_start_80ms_before_their_frame():
    steps = torch.arange(1, 101, dtype=torch.float32).view(100, 1, 1)  # step i holds i + 1
    w = frame_windows(steps, 5)[0, :, :, 0, 0]
    assert w.shape == (5, 10)
    assert w[0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]  # 4 zero steps in front
    assert w[3].tolist() == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # frame 3 = steps 6..15 shifted by 4


def test_frame_count_follows_the_audio_at_25_fps_unless_set():
    assert video_frame_count(tone(2.0)) == 49  # 50 frames covered -> longest 4k+1
    assert video_frame_count(tone(5.16)) == 129
    assert video_frame_count(tone(0.04)) == 1
    assert video_frame_count(tone(2.0), frames=9) == 9
    with pytest.raises(ValidationError) as e:
        video_frame_count(tone(2.0), frames=50)
    assert e.value.field == "frames" and "4k+1" in str(e.value)
    with pytest.raises(ValidationError, match="at least one video frame"):
        video_frame_count(tone(0.02))
    long = Waveform(torch.zeros(1, 16000 * 42), 16000)
    with pytest.raises(ValidationError, match="at most 1025 frames"):
        video_frame_count(long)
    assert video_frame_count(long, frames=129) == 129


@pytest.mark.parametrize(("audio", "text"), [
    ({"waveform": torch.zeros(1, 2, 0), "sample_rate": 44100}, "has no samples"),
    ({"waveform": torch.zeros(1, 2, 10)}, "AUDIO value"),
    ({"waveform": torch.zeros(1, 2, 10), "sample_rate": 0}, "positive integer"),
    ({"waveform": torch.full((1, 1, 10), float("nan")), "sample_rate": 16000}, "NaN"),
    ("song.wav", "AUDIO value"),
])
def test_bad_audio_is_refused_with_the_field_named(audio, text):
    with pytest.raises(ValidationError) as e:
        waveform_from_audio(audio)
    assert e.value.field == "audio" and text in str(e.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1, 2.5, "0.8", True])
def test_audio_strength_outside_its_range_is_refused_by_name(value):
    with pytest.raises(ValidationError, match="audio_strength: must be a finite number from 0 to 2"):
        check_strength(value)
    assert check_strength(0) == 0.0 and check_strength(DEFAULT_STRENGTH) == 0.8


def test_resampling_keeps_a_tone_and_the_duration():
    src = tone(1.0, rate=44100, channels=1, freq=440.0)
    out = resample(src.samples, 44100, 16000)
    assert out.shape == (1, 16000)
    t = torch.arange(16000) / 16000
    expected = 0.3 * torch.sin(2 * math.pi * 440.0 * t)
    inner = slice(200, -200)  # away from the zero-padded ends
    assert (out[0, inner] - expected[inner]).abs().max() < 0.01
    # A tone above the new Nyquist frequency is removed, not folded back.
    high = resample(tone(1.0, 44100, 1, freq=10000.0).samples, 44100, 16000)
    assert high[0, inner].abs().max() < 0.02
    up = resample(tone(0.5, 8000, 1, 300.0).samples, 8000, 16000)
    assert up.shape == (1, 8000)
    assert to_mono_16k(tone(0.25, 16000, 2)).shape == (4000,)


def test_fit_waveform_trims_or_pads_to_the_exact_duration():
    w = tone(1.0, 48000, 2)
    assert fit_waveform(w, 0.5).samples.shape == (2, 24000)
    padded = fit_waveform(w, 1.5).samples
    assert padded.shape == (2, 72000) and padded[:, 48000:].abs().max() == 0


def test_whisper_windows_match_the_released_recipe(whisper):
    """The windows equal what the released code computes: mel of the 16 kHz audio, encoder
    hidden states stacked, 4 zero steps in front, 10 steps from 2*frame."""
    wave = tone(1.0, 16000, 1, 220.0)
    windows = audio_windows(wave, whisper, 25)
    assert windows.shape == (1, 25, 10, 3, 16)
    mel = whisper.extractor(wave.samples[0].numpy(), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        hidden = whisper.encoder(mel, output_hidden_states=True).hidden_states
    feats = torch.cat([torch.zeros(4, 3, 16), torch.stack(hidden, dim=2)[0]])
    for f in (0, 7, 24):
        assert torch.allclose(windows[0, f], feats[2 * f:2 * f + 10], atol=1e-5), f


def test_frames_past_the_audio_get_zero_windows(whisper):
    windows = audio_windows(tone(0.4, 16000, 1), whisper, 17)  # 10 frames of audio, 17 asked
    assert windows[0, :10].abs().sum() > 0
    assert windows[0, 10:].abs().max() == 0


def test_stereo_44k_audio_is_resampled_for_whisper(whisper):
    a = audio_windows(tone(0.6, 44100, 2, 330.0), whisper, 13)
    b = audio_windows(tone(0.6, 16000, 1, 330.0), whisper, 13)
    assert a.shape == b.shape
    # Same sound at another rate -> nearly the same features.
    assert float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0)) > 0.99


def test_missing_whisper_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(ValidationError) as e:
        WhisperFeatures(tmp_path / "models" / "audio_encoders" / "whisper-tiny")
    assert e.value.field == "whisper_model" and "preprocessor_config.json" in str(e.value)


def test_modules_run_in_half_precision():
    mods = AudioModules.from_state_dict(audio_state_dict()).to(torch.bfloat16)
    out = mods.audio_models[1](torch.randn(1, 2, 16, WIDTH, dtype=torch.bfloat16),
                               torch.randn(1, 2, 6, WIDTH, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())
    assert not out.requires_grad  # loaded for inference
