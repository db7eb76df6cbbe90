"""A legal long output name works (issue 17, item 9): the hidden temporary name beside it never
exceeds the file system's name limit, a name over the limit is refused before any request, and a
name-too-long error is never answered with "Make room".

Real files in the test's folder (the file system's own limit, from pathconf), the real CLI and
loopback API.
"""

from __future__ import annotations

import os

import pytest
from test_cli import cli

from conftest import TEST_KEY
from hunyuancustom.atomic import name_max, replacing
from hunyuancustom.client import WaveSpeedClient
from hunyuancustom.config import ApiKey
from hunyuancustom.errors import DownloadError
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.video import probe


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=0)) as server:
        yield server


@pytest.mark.parametrize("extra", [0, 25])  # 230 bytes, and the very limit
def test_a_name_up_to_the_limit_is_written_through_a_temp_that_fits(tmp_path, extra):
    limit = name_max(tmp_path)
    name = "v" * (limit - 25 + extra - 4) + ".mp4"
    seen = []
    with replacing(tmp_path / name) as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"whole")
    assert len(os.fsencode(seen[0])) <= limit and seen[0].startswith(".vvv")
    assert (tmp_path / name).read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_cli_saves_a_230_character_output_name(api, ref, tmp_path):
    out = tmp_path / ("long-" + "n" * 221 + ".mp4")
    assert len(out.name) == 230
    proc = cli("ref2v", "--image", ref, "--prompt", "x", "-o", out, "--api-base", api.base_url)
    assert proc.returncode == 0, proc.stderr
    assert probe(out).frames > 1 and "Make room" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mp4") == [out.name]


def test_a_name_over_the_limit_is_refused_before_any_request(api, ref, tmp_path):
    out = tmp_path / ("n" * name_max(tmp_path) + ".mp4")
    proc = cli("ref2v", "--image", ref, "--prompt", "x", "-o", out, "--api-base", api.base_url)
    assert proc.returncode == 2, proc.stderr
    assert "output: the file name" in proc.stderr and "shorter" in proc.stderr
    assert api.requests == []


def test_a_name_too_long_error_never_says_make_room(api, tmp_path):
    """download_video on its own (no up-front check): the error says what to change."""
    with WaveSpeedClient(ApiKey(TEST_KEY, "t"), api.base_url) as client:
        api.set_scenario(processing_polls=0)
        task = client.submit("wavespeed-ai/hunyuan-custom-ref2v-720p",
                             {"image": "https://x.test/a.png", "prompt": "x"}).id
        url = client.result(task).outputs[0]
        with pytest.raises(DownloadError) as err:
            client.download(url, tmp_path / ("n" * 300 + ".mp4"), max_bytes=1 << 30)
    assert "shorter file name" in str(err.value) and "Make room" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_another_jobs_video_at_a_name_at_the_limit_diverts_to_a_name_that_fits(tmp_path,
                                                                               isolated_config):
    from hunyuancustom.client import ClientOptions, PollSchedule
    from hunyuancustom.config import Settings
    from hunyuancustom.journal import Journal
    from hunyuancustom.params import REF2V_720P
    from hunyuancustom.ref2v import ImageInput, run_ref2v
    from hunyuancustom.testing.media import make_test_image, png_bytes

    image = ImageInput(png=png_bytes(make_test_image(None, 32, 32)))
    out = tmp_path / ("n" * (name_max(tmp_path) - 4) + ".mp4")  # at the very limit
    opts = ClientOptions(schedule=PollSchedule(initial_s=0.01, max_interval_s=0.01))
    with FakeWaveSpeed(Scenario(processing_polls=0, distinct_videos=True)) as server, \
            Journal.open_default() as journal:
        def run(prompt):
            return run_ref2v(REF2V_720P, image, {"prompt": prompt, "seed": 1}, out,
                             settings=Settings(api_base=server.base_url, timeout_s=60.0),
                             api_key=ApiKey(TEST_KEY, "t"), options=opts, journal=journal,
                             decode=False)
        a, b = run("first"), run("second")
    assert a.video_path == out and b.video_path != out
    assert b.video_path.name.endswith("-2.mp4") and len(os.fsencode(b.video_path.name)) <= name_max(tmp_path)
    assert probe(out).frames != probe(b.video_path).frames  # each its own task's video
