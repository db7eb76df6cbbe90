"""Small, real media files with known content, for tests and benchmarks.

The video is a genuine H.264/yuv420p MP4 written through imageio's ffmpeg backend (the same
encoder family the provider's outputs come from), so decoders are tested on real bitstreams. Each
frame carries a pattern that identifies it: a blue level that rises with the frame index and a
white bar whose position moves with it, so a test can check that frames arrive in order.
"""

from __future__ import annotations

import io
from pathlib import Path

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np


def test_frame(index: int, frames: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of `frames` as uint8 HxWx3: red/green gradients, blue level and bar by index."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = np.broadcast_to(x, (height, width)).astype(np.uint8)
    img[..., 1] = np.broadcast_to(y, (height, width)).astype(np.uint8)
    # Big per-frame steps: lossy coding must not be able to blur one frame into the next.
    img[..., 2] = round(index * 255 / max(1, frames - 1))
    bar_w = max(2, width // max(1, frames))
    x0 = min(width - bar_w, index * (width - bar_w) // max(1, frames - 1))
    img[:, x0 : x0 + bar_w] = 255
    return img


def make_test_video(path, frames: int = 9, width: int = 64, height: int = 48, fps: float = 25,
                    codec: str = "libx264") -> Path:
    """Write a real MP4 of `frames` pattern frames (see `test_frame`) and return its path."""
    if width % 2 or height % 2:
        # yuv420p stores chroma at half resolution; odd sizes would be padded by the encoder.
        raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1 keeps the exact size (imageio would otherwise pad to multiples of 16).
    writer = imageio_v2.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec=codec,
                                   pixelformat="yuv420p", macro_block_size=1,
                                   ffmpeg_log_level="error")
    try:
        for i in range(frames):
            writer.append_data(test_frame(i, frames, width, height))
    finally:
        writer.close()
    return path


def make_test_image(path=None, width: int = 64, height: int = 48) -> np.ndarray:
    """A deterministic uint8 HxWx3 image (gradients and a centred square); also saved as PNG if
    `path` is given."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(1, height - 1)).astype(np.uint8)
    img[..., 2] = ((xx + yy) % 64 * 4).astype(np.uint8)
    h0, w0 = height // 4, width // 4
    img[h0 : height - h0, w0 : width - w0] = (250, 240, 30)  # a "subject" a model could keep
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(img))
    return img


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 HxWx3 (or HxW) array as PNG bytes."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"png_bytes needs uint8 pixels, got {array.dtype}")
    buf = io.BytesIO()
    iio.imwrite(buf, array, extension=".png")
    return buf.getvalue()
