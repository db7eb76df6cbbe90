"""Writing the result with its audio track: the file read back has both streams, in sync."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
import torch

from hunyuancustom.modes.audio import Waveform
from hunyuancustom.testing.mux import stream_durations, write_video
from hunyuancustom.video import decode_frames


def tone(seconds, rate, channels=2, freq=440.0):
    t = torch.arange(round(seconds * rate)) / rate
    return Waveform((0.3 * torch.sin(2 * math.pi * freq * t)).repeat(channels, 1), rate)


def frames(n, h=48, w=64):
    return torch.linspace(0, 1, n).view(n, 1, 1, 1).expand(n, h, w, 3).contiguous()


@pytest.mark.parametrize(("fps", "audio_seconds"), [(25, 3.0), (25, 0.5), (30000 / 1001, 1.0)])
def test_audio_track_is_fitted_to_the_video_and_in_sync(tmp_path, fps, audio_seconds):
    n = 49
    path = write_video(tmp_path / "out.mp4", frames(n), fps, tone(audio_seconds, 44100))
    d = stream_durations(path)
    assert abs(d["video"] - n / fps) < 1e-3
    assert abs(d["audio"] - d["video"]) < 1 / fps  # within one frame (AAC codes 1024-sample blocks)
    decoded, got_fps = decode_frames(path)
    assert decoded.shape[0] == n and abs(got_fps - fps) < 0.01
    # Frame order survived: brightness rises frame by frame.
    means = decoded.mean(dim=(1, 2, 3))
    assert bool((means[1:] >= means[:-1] - 0.02).all())


def test_the_audio_is_the_input_sound(tmp_path):
    path = write_video(tmp_path / "out.mp4", frames(25), 25, tone(1.0, 48000, 1, freq=1000.0))
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        assert stream.rate == 48000
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(stream)])
    spectrum = np.abs(np.fft.rfft(pcm[4800:43200]))
    peak_hz = np.argmax(spectrum) * 48000 / len(pcm[4800:43200])
    assert abs(peak_hz - 1000) < 5


def test_without_audio_there_is_no_audio_stream(tmp_path):
    path = write_video(tmp_path / "out.mp4", frames(9), 25)
    assert set(stream_durations(path)) == {"video"}


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - ffmpeg reports odd sizes in several ways
        write_video(tmp_path / "out.mp4", frames(5, h=47, w=63), 25, tone(0.5, 16000))
    assert list(tmp_path.iterdir()) == []


def test_example_mode_inputs_are_small_and_fit_together():
    """The sample inputs of the mode example workflows (written by tests/make_mode_samples.py)."""
    import wave
    from pathlib import Path

    from PIL import Image

    examples = Path(__file__).resolve().parent.parent / "example_workflows"
    names = ("hunyuancustom_singing.wav", "hunyuancustom_source.mp4", "hunyuancustom_source_mask.png",
             "hunyuancustom_tryon_person.png", "hunyuancustom_tryon_garment.png")
    for name in names:
        assert (examples / name).stat().st_size < 200_000, name
    with wave.open(str(examples / "hunyuancustom_singing.wav")) as w:
        assert w.getnframes() / w.getframerate() == 2.0
    frames, fps = decode_frames(examples / "hunyuancustom_source.mp4")
    # 4k+1 frames with sides that are multiples of 16: used as they are by the editing mode.
    assert frames.shape[0] % 4 == 1 and frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0
    mask = Image.open(examples / "hunyuancustom_source_mask.png")
    assert mask.size == (frames.shape[2], frames.shape[1]) and fps == 25
