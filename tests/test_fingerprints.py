"""What a job is fingerprinted by (issue 17, "decide and document"): a node's image by its pixels
(not the PNG bytes the pack encodes, which a Pillow or zlib upgrade may change), a file by its
bytes, a URL by the URL; rows recorded before pixel identities still resume and serve.

Real loopback API server, real SQLite journal, real PNG encodings.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEST_KEY
from hunyuancustom.config import ApiKey, Settings
from hunyuancustom.errors import TaskTimeoutError
from hunyuancustom.params import REF2V_720P
from hunyuancustom.ref2v import ImageInput, run_ref2v
from hunyuancustom.testing.fake_api import Scenario
from hunyuancustom.video import image_upload, pixels_ref

FIXED = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}


@pytest.fixture
def tensor():
    g = torch.Generator().manual_seed(7)
    return torch.rand(48, 64, 3, generator=g)


def run(api, image, dest, fast, journal, timeout_s=60.0):
    return run_ref2v(REF2V_720P, image, FIXED, dest, settings=Settings(api_base=api.base_url,
                     timeout_s=timeout_s), api_key=ApiKey(TEST_KEY, "test"), options=fast,
                     journal=journal, decode=False)


def reencoded(png: bytes, level: int) -> bytes:
    """The same pixels as another encoder (another Pillow or zlib) might write them."""
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).save(out, "PNG", compress_level=level)
    return out.getvalue()


def test_the_pixel_identity_is_the_pixels_not_the_encoding(tensor):
    png, ref = image_upload(tensor)
    other = reencoded(png, 1)
    assert other != png
    decoded = np.asarray(Image.open(io.BytesIO(other)))
    assert pixels_ref(decoded) == ref  # the same pixels, whatever the PNG bytes
    assert image_upload(tensor.clone())[1] == ref
    changed = tensor.clone()
    changed[0, 0, 0] = 1.0 - changed[0, 0, 0]
    assert image_upload(changed)[1] != ref
    assert image_upload(tensor[:, :, :2].repeat(1, 1, 2)[:, :, :3])[1] != ref


def test_a_node_image_re_encoded_by_another_pillow_is_the_same_job(api, tensor, tmp_path, fast,
                                                                   journal):
    png, ref = image_upload(tensor)
    first = run(api, ImageInput(png=png, pixels=ref), tmp_path / "a.mp4", fast, journal)
    # After an upgrade the node encodes the same pixels to other bytes: still the same request.
    again = run(api, ImageInput(png=reencoded(png, 1), pixels=ref), tmp_path / "b.mp4", fast, journal)
    assert api.stats()["submits"] == 1 and again.extra["source"] == "cache"
    assert again.prediction.id == first.prediction.id


def test_a_task_pending_from_before_pixel_identities_is_resumed(api, tensor, tmp_path, fast, journal):
    # A run of the earlier version: the node's image was known by its PNG bytes. It timed out
    # with its task still processing.
    png, ref = image_upload(tensor)
    api.set_scenario(Scenario(task_seconds=2.0))  # fixed at the submit: done 2 s after it
    with pytest.raises(TaskTimeoutError):
        run(api, ImageInput(png=png), tmp_path / "a.mp4", fast, journal, timeout_s=1.0)
    assert journal.list()[0].image_ref.startswith("sha256:")
    # Now the node gives the pixel identity: the recorded task is found, polled, not resubmitted.
    result = run(api, ImageInput(png=png, pixels=ref), tmp_path / "a.mp4", fast, journal)
    assert api.stats()["submits"] == 1 and result.extra["source"] == "resumed"
    row = journal.list()[0]
    assert row.image_ref == ref and len(journal.list()) == 1


def test_a_video_saved_before_pixel_identities_is_served(api, tensor, tmp_path, fast, journal):
    png, ref = image_upload(tensor)
    run(api, ImageInput(png=png), tmp_path / "a.mp4", fast, journal)
    requests_before = len(api.requests)
    result = run(api, ImageInput(png=png, pixels=ref), tmp_path / "b.mp4", fast, journal)
    assert result.extra["source"] == "cache" and len(api.requests) == requests_before


def test_a_file_is_known_by_its_bytes_and_a_url_by_the_url(api, tensor, tmp_path, fast, journal):
    png, _ = image_upload(tensor)
    run(api, ImageInput(png=png, filename="a.png"), tmp_path / "a.mp4", fast, journal)
    assert run(api, ImageInput(png=png, filename="b.png"), tmp_path / "b.mp4", fast,
               journal).extra["source"] == "cache"  # same bytes under another name: the same job
    run(api, ImageInput(png=reencoded(png, 1)), tmp_path / "c.mp4", fast, journal)
    assert api.stats()["submits"] == 2  # other bytes (even of the same pixels): another job
    url = ImageInput(url="https://cdn.example.test/ref.png")
    run(api, url, tmp_path / "d.mp4", fast, journal)
    assert run(api, url, tmp_path / "e.mp4", fast, journal).extra["source"] == "cache"
    run(api, ImageInput(url="https://cdn.example.test/ref.png?v=2"), tmp_path / "f.mp4", fast, journal)
    assert api.stats()["submits"] == 4  # the URL is the identity: its content is never read here
