"""Video/image I/O on real files made with imageio: probe, decode, batch selection, PNG encode."""

from __future__ import annotations

import io

import av
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from hunyuancustom.errors import DownloadError, ValidationError
from hunyuancustom.testing.media import make_test_video
from hunyuancustom.video import decode_frames, image_to_png, probe, read_image_file, select_image


def pyav_frames(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_probe_reports_exact_frame_count_fps_and_size(tmp_path):
    path = make_test_video(tmp_path / "v.mp4", frames=13, width=64, height=48, fps=25)
    info = probe(path)
    assert (info.frames, info.width, info.height) == (13, 64, 48)
    assert info.fps == pytest.approx(25.0)


def test_decode_matches_pyav_frame_for_frame(tmp_path):
    path = make_test_video(tmp_path / "v.mp4", frames=9, width=96, height=64, fps=24)
    frames, fps = decode_frames(path)
    assert frames.dtype == torch.float32 and frames.shape == (9, 64, 96, 3)
    assert fps == pytest.approx(24.0)
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    ref = torch.from_numpy(pyav_frames(path)).float() / 255.0
    # Same ffmpeg decoder underneath; colour conversion may differ by a rounding step.
    assert (frames - ref).abs().mean() < 2 / 255
    # Frame order is preserved: each frame is closer to its own reference than to the next one.
    for i in range(8):
        assert (frames[i] - ref[i]).abs().mean() < (frames[i] - ref[i + 1]).abs().mean()


def test_a_file_that_is_not_a_video_is_refused_clearly(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"<html>expired</html>")
    with pytest.raises(DownloadError, match="Not a readable video: bad.mp4"):
        probe(bad)


def test_select_image_refuses_an_ambiguous_batch_and_picks_by_index():
    batch = torch.rand(3, 32, 40, 3)
    with pytest.raises(ValidationError, match=r"image: got a batch of 3 images; set image_index to 0\.\.2"):
        select_image(batch, -1)
    assert torch.equal(select_image(batch, 2), batch[2])
    with pytest.raises(ValidationError, match=r"image_index: 3 is out of range .* allowed: 0\.\.2"):
        select_image(batch, 3)


@pytest.mark.parametrize(
    "tensor, message",
    [
        (torch.rand(0, 32, 32, 3), "the image batch is empty"),
        (torch.rand(1, 32, 32), "must be an IMAGE"),
        (torch.rand(1, 8, 8, 3), "at least 16x16"),
        (torch.full((1, 32, 32, 3), float("nan")), "NaN or infinite"),
        ("not a tensor", "must be an IMAGE tensor"),
    ],
)
def test_select_image_rejects_bad_images(tensor, message):
    with pytest.raises(ValidationError, match=message):
        select_image(tensor, -1)


def test_png_round_trip_and_alpha_on_white():
    img = torch.rand(20, 30, 3)
    back = iio.imread(io.BytesIO(image_to_png(img)))
    assert back.shape == (20, 30, 3)
    assert np.abs(back.astype(int) - (img.numpy() * 255).round().astype(int)).max() <= 1
    transparent = torch.zeros(16, 16, 4)  # fully transparent black -> white
    assert iio.imread(io.BytesIO(image_to_png(transparent))).min() == 255


def test_read_image_file_checks_it_decodes(tmp_path):
    good = tmp_path / "a.png"
    iio.imwrite(good, np.zeros((16, 16, 3), np.uint8))
    assert read_image_file(good) == good.read_bytes()
    (tmp_path / "b.png").write_text("nope")
    with pytest.raises(ValidationError, match="image: .*b.png is not a readable image"):
        read_image_file(tmp_path / "b.png")
    with pytest.raises(ValidationError, match="image: file not found"):
        read_image_file(tmp_path / "missing.png")
