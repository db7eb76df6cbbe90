"""Write frames plus an audio track to one MP4, in sync, and read the streams' durations back.

Test support: the tests make their audio/video inputs with it and check the sync of what the
nodes produce. The nodes themselves return core's VIDEO with the audio attached; both trim or pad
the audio to the video's exact duration first (`modes.audio.fit_waveform`), so the streams end
together.
"""

from __future__ import annotations

import os
import tempfile
import wave as wavefile
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from ..atomic import replacing
from ..modes.audio import Waveform, fit_waveform


def write_wav(path: str | Path, wave: Waveform) -> None:
    """16-bit PCM WAV of [channels, samples] float audio in -1..1."""
    pcm = (wave.samples.clamp(-1, 1) * 32767.0).round().to(torch.int16).T.contiguous().numpy()
    with wavefile.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(wave.sample_rate)
        w.writeframes(pcm.tobytes())


def write_video(path: str | Path, frames: torch.Tensor, fps: float | Fraction,
                audio: Waveform | None = None, quality: float = 8) -> Path:
    """Frames [N, H, W, 3] in 0..1 (+ optional audio, AAC) -> H.264 MP4 at `path`, atomically.

    The audio is fitted to N / fps seconds so both streams have the same duration.
    """
    path = Path(path)
    n, h, w = frames.shape[:3]
    if n == 0:
        raise ValueError("no frames to write")
    wav_tmp = None
    with replacing(path, suffix=".mp4") as tmp:
        try:
            if audio is not None:
                fitted = fit_waveform(audio, n / float(fps))
                wfd, wav_tmp = tempfile.mkstemp(suffix=".wav", prefix=f".{path.stem}-", dir=path.parent)
                os.close(wfd)
                write_wav(wav_tmp, fitted)
            rate = Fraction(fps).limit_denominator(100000)
            gen = imageio_ffmpeg.write_frames(
                str(tmp), (w, h), fps=float(rate), quality=quality, codec="libx264", macro_block_size=1,
                ffmpeg_log_level="error", audio_path=wav_tmp, audio_codec="aac" if wav_tmp else None,
                output_params=["-movflags", "+faststart"])
            gen.send(None)
            for frame in frames:
                gen.send(np.ascontiguousarray((frame.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()))
            gen.close()
            # ffmpeg can fail without the writer raising (e.g. an encoder refusing the size):
            # check what was written before it replaces anything.
            written = _count_frames(str(tmp))
            if written != n:
                raise RuntimeError(f"ffmpeg wrote {written} of {n} frames to {path.name}")
        finally:
            if wav_tmp and os.path.exists(wav_tmp):
                os.unlink(wav_tmp)
    return path


def _count_frames(path: str) -> int:
    try:
        return imageio_ffmpeg.count_frames_and_secs(path)[0]
    except (OSError, RuntimeError):
        return 0


def stream_durations(path: str | Path) -> dict[str, float]:
    """Seconds of each stream of a media file ({"video": ..., "audio": ...}), read back with PyAV
    from the decoded frames themselves (not the container's claims)."""
    import av

    out: dict[str, float] = {}
    with av.open(str(path)) as container:
        for kind in ("video", "audio"):
            streams = getattr(container.streams, kind)
            if not streams:
                continue
            container.seek(0)
            end = 0.0
            for frame in container.decode(streams[0]):
                if frame.pts is None:
                    continue
                start = float(frame.pts * frame.time_base)
                length = (frame.samples / frame.sample_rate if kind == "audio"
                          else float(1 / streams[0].average_rate))
                end = max(end, start + length)
            out[kind] = end
    return out
