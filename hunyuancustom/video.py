"""Video and image I/O on imageio's ffmpeg backend: probe, decode to an IMAGE tensor, PNG encode.

Decoding fills one preallocated float32 [N, H, W, 3] tensor frame by frame, so the peak memory
is the result plus one raw frame (core's PyAV path keeps every frame twice on the way).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import torch

from .errors import DownloadError, ValidationError
from .readfile import read_capped


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int


def probe(path: str | Path, name: str | None = None) -> VideoInfo:
    """Frame count (exact: counted by stream copy, no decode), fps and size of a video file.
    `name` is how errors call the file (a download's temporary name means nothing to a user)."""
    path = str(path)
    name = name or Path(path).name
    try:
        gen = imageio_ffmpeg.read_frames(path)
        meta = next(gen)
        gen.close()
        frames, _secs = imageio_ffmpeg.count_frames_and_secs(path)
    except (OSError, RuntimeError, StopIteration) as e:
        first_line = (str(e).splitlines() or [""])[0]
        first_line = first_line.replace(path, name).replace(Path(path).name, name)[:200]
        raise DownloadError(f"Not a readable video: {name} ({first_line})") from None
    width, height = meta["size"]
    if frames <= 0:
        raise DownloadError(f"The video {name} has no frames.")
    return VideoInfo(frames=int(frames), fps=float(meta.get("fps") or 0.0), width=int(width),
                     height=int(height))


DEFAULT_MAX_DECODED_BYTES = 4 * 129 * 1280 * 720 * 3 * 4  # the Settings default (see there)


def available_memory() -> int | None:
    """Bytes of memory the system can still hand out (psutil, else /proc/meminfo; None if unknown)."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:  # not installed, or no answer on this platform
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_decoded_size(info: VideoInfo, source: str, max_bytes: int) -> int:
    """Refuse, before allocating, a frames tensor over the cap or over the free memory."""
    need = info.frames * info.height * info.width * 3 * 4
    free = available_memory()
    limit, why = max_bytes, "setting max_decoded_bytes"
    if free is not None and free < limit:
        limit, why = free, "memory available now"
    if need > limit:
        raise DownloadError(
            f"The video {source} claims {info.frames} frames of {info.width}x{info.height}: "
            f"{need / 2**30:.1f} GiB as IMAGE frames, over the limit of {limit / 2**30:.1f} GiB "
            f"({why}). The video file itself is kept; its frames were not decoded.")
    return limit


def decode_frames(path: str | Path, info: VideoInfo | None = None, *, source: str | None = None,
                  max_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> tuple[torch.Tensor, float]:
    """Decode all frames into one float32 [N, H, W, 3] tensor in 0..1; return it and the fps.

    The size is checked before anything is allocated: a tiny file can claim thousands of 720p
    frames. `source` (the URL or task) names the video in that error."""
    info = info or probe(path)
    source = source or str(path)
    limit = check_decoded_size(info, source, max_bytes)
    out = torch.empty((info.frames, info.height, info.width, 3), dtype=torch.float32)
    frame_bytes = info.width * info.height * 3
    n = 0
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        # The raw frames are read-only bytes; torch warns about wrapping them, but we only read.
        warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)
        next(gen)  # metadata
        for raw in gen:
            if len(raw) != frame_bytes:
                raise DownloadError(f"Frame {n} of {Path(path).name} has the wrong size.")
            if n == out.shape[0]:  # the container under-reported its length: grow (rare)
                extra = max(1, n // 4)
                check_decoded_size(VideoInfo(n + extra, info.fps, info.width, info.height),
                                   source, limit)
                out = torch.cat([out, torch.empty_like(out[:extra])])
            frame = torch.frombuffer(raw, dtype=torch.uint8).view(info.height, info.width, 3)
            out[n].copy_(frame).mul_(1.0 / 255.0)
            n += 1
    finally:
        gen.close()
    if n == 0:
        raise DownloadError(f"The video {Path(path).name} decoded to no frames.")
    return out[:n], info.fps


def select_image(image: torch.Tensor, index: int, field: str = "image") -> torch.Tensor:
    """Pick one [H, W, C] image from a ComfyUI IMAGE batch, refusing ambiguous batches."""
    if not isinstance(image, torch.Tensor):
        raise ValidationError(field, f"must be an IMAGE tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[-1] not in (3, 4):
        raise ValidationError(field, f"must be an IMAGE [batch, height, width, 3], got shape "
                                     f"{list(image.shape)}")
    batch = image.shape[0]
    if batch == 0:
        raise ValidationError(field, "the image batch is empty")
    if index < 0:
        if batch > 1:
            raise ValidationError(field, f"got a batch of {batch} images; set image_index to "
                                         f"0..{batch - 1} to choose one, or pass a single image")
        index = 0
    if index >= batch:
        raise ValidationError("image_index", f"{index} is out of range for a batch of {batch} "
                                             f"images; allowed: 0..{batch - 1} (or -1 for a single image)")
    h, w = image.shape[1], image.shape[2]
    if h < 16 or w < 16:
        raise ValidationError(field, f"is {w}x{h} pixels; at least 16x16 is needed")
    picked = image[index]
    if not torch.isfinite(picked).all():
        raise ValidationError(field, "contains NaN or infinite values")
    return picked


def image_to_png(image_hwc: torch.Tensor) -> bytes:
    """[H, W, 3|4] float 0..1 -> PNG bytes (alpha is composited on white, as the model pads)."""
    return image_upload(image_hwc)[0]


def image_upload(image_hwc: torch.Tensor) -> tuple[bytes, str]:
    """(PNG bytes, pixel identity) of a node's image. The identity is the sha256 of the 8-bit
    pixels the PNG holds (with their dtype and shape): what the job journal knows the image by.
    The PNG bytes themselves may differ after a Pillow or zlib upgrade; the pixels do not."""
    x = image_hwc.detach().to("cpu", torch.float32).clamp(0, 1)
    if x.shape[-1] == 4:
        rgb, a = x[..., :3], x[..., 3:]
        x = rgb * a + (1 - a)
    arr = np.ascontiguousarray((x * 255.0 + 0.5).to(torch.uint8).numpy())
    return iio.imwrite("<bytes>", arr, extension=".png"), pixels_ref(arr)


def pixels_ref(arr: np.ndarray) -> str:
    """What the journal knows an image given as pixels by: dtype, shape and bytes, hashed."""
    digest = hashlib.sha256(f"{arr.dtype.str}{list(arr.shape)}".encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
    return "pixels:sha256:" + digest.hexdigest()


# The largest reference image file read from disk. The provider takes uploads up to ~300 MB, but
# the model works at 720p, so a bigger image only costs memory (held until its jobs end) and upload
# time; a file this size is a mistake, or a device such as /dev/zero that never ends.
MAX_IMAGE_FILE_BYTES = 30 << 20


# Magic bytes of the image formats a reference may come in, for the upload's Content-Type.
_IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                     (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


# Sent as they are; any other format a file comes in is converted to PNG first.
WEB_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")


def image_content_type(data: bytes) -> str:
    """The MIME type of image file bytes, told by their content (a JPEG named .png is a JPEG)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _IMAGE_SIGNATURES:
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


def read_image_file(path: str | Path, field: str = "image", max_bytes: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """Bytes of an image file after checking that it decodes (a clear error naming `field` if not).

    The read is bounded (at most `max_bytes` + 1 bytes: a device that never ends fails as fast as
    a file that is simply too big) and never waits on a FIFO nobody writes to (readfile.py)."""
    p = Path(path)
    data = read_capped(p, field, max_bytes, "an image file",
                       "an image file up to that size (scale it down, or pass an http(s) URL instead)")
    try:  # decoded once to prove it is an image; the pixels are kept only to convert a TIFF and the like
        pixels = iio.imread(io.BytesIO(data), plugin="pillow")
    except Exception as e:  # imageio raises several types for undecodable input
        raise ValidationError(field, f"{p} is not a readable image ({type(e).__name__})") from None
    if image_content_type(data) not in WEB_IMAGE_TYPES:  # e.g. TIFF: sent as PNG, which any API reads
        return iio.imwrite("<bytes>", pixels, extension=".png")
    return data
