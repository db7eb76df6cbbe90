"""Hostile outputs: cut downloads with no Content-Length, decode bombs, odd output URLs.

Real loopback server, real MP4 files made with imageio/ffmpeg, real SQLite journal.
"""

from __future__ import annotations

import subprocess

import imageio_ffmpeg
import pytest

from conftest import TEST_KEY
from hunyuancustom.config import ApiKey, Settings
from hunyuancustom.params import REF2V_720P
from hunyuancustom.ref2v import run_ref2v
from hunyuancustom.testing.fake_api import Scenario
from hunyuancustom.testing.media import make_test_video
from hunyuancustom.video import VideoInfo, available_memory, decode_frames, probe

FIXED = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}


def run(api, image, dest, opts, journal, params=FIXED, settings=None, decode=False):
    settings = settings or Settings(api_base=api.base_url, timeout_s=60.0)
    return run_ref2v(REF2V_720P, image, params, dest, settings=settings,
                     api_key=ApiKey(TEST_KEY, "test"), options=opts, journal=journal,
                     decode=decode)


def faststart_video(tmp_path, frames=120):
    """A real MP4 with its index in front: cut in its media data, it still probes and decodes."""
    plain = make_test_video(tmp_path / "plain.mp4", frames=frames, width=320, height=240)
    out = tmp_path / "faststart.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(plain),
                    "-c", "copy", "-movflags", "+faststart", str(out)], check=True)
    return out


# --- item 7: a download cut with no Content-Length is not the paid result ----------------------


def test_half_of_a_faststart_mp4_would_decode(tmp_path):
    # The premise: byte counts and probing alone cannot tell this truncation.
    video = faststart_video(tmp_path)
    half = tmp_path / "half.mp4"
    half.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    assert 0 < probe(half).frames < probe(video).frames


def test_cut_download_without_length_is_refetched_not_kept(api, image, tmp_path, fast, journal):
    video = faststart_video(tmp_path)
    api.set_scenario(Scenario(video_path=video, output_cut_no_length_first_n=10))
    dest = tmp_path / "out" / "a.mp4"
    with pytest.raises(Exception, match="cut short"):
        run(api, image, dest, fast, journal)
    assert not dest.exists() and not list(dest.parent.glob("*.part"))
    row = journal.get(api.task_ids()[0])
    assert row.status == "completed"  # paid, not saved: the next run fetches it again
    api.set_scenario(Scenario(video_path=video))
    result = run(api, image, dest, fast, journal)
    assert api.stats()["submits"] == 1 and result.extra["source"] == "resumed"
    assert probe(dest).frames == probe(video).frames


def test_one_cut_download_is_retried_within_the_run(api, image, tmp_path, fast, journal):
    video = faststart_video(tmp_path)
    api.set_scenario(Scenario(video_path=video, output_cut_no_length_first_n=1))
    dest = tmp_path / "a.mp4"
    run(api, image, dest, fast, journal)
    assert api.stats()["downloads"] == 2 and probe(dest).frames == probe(video).frames


# --- item 6: a decode bomb is refused before allocating, and the refusal is not paid twice ------


def test_decode_bomb_is_refused_before_allocating_and_replayed_clearly(api, image, tmp_path, fast,
                                                                       journal):
    video = make_test_video(tmp_path / "long.mp4", frames=40, width=320, height=240)
    claimed = 40 * 240 * 320 * 3 * 4
    settings = Settings(api_base=api.base_url, timeout_s=60.0, max_decoded_bytes=claimed // 2)
    api.set_scenario(Scenario(video_path=video))
    dest = tmp_path / "out" / "a.mp4"
    with pytest.raises(Exception) as first:
        run(api, image, dest, fast, journal, settings=settings, decode=True)
    msg = str(first.value)
    assert "40 frames of 320x240" in msg and "max_decoded_bytes" in msg
    assert api.origin in msg and str(dest) in msg  # names the URL and the saved file
    # The paid video is kept and recorded; a rerun gives the same message with no request at all.
    assert dest.exists() and journal.get(api.task_ids()[0]).status == "downloaded"
    before = dict(api.stats())
    with pytest.raises(Exception, match="40 frames of 320x240"):
        run(api, image, dest, fast, journal, settings=settings, decode=True)
    assert api.stats()["submits"] == before["submits"] == 1
    assert api.stats()["downloads"] == before["downloads"]
    # With room for it, the same cached video decodes.
    ok = run(api, image, dest, fast, journal, decode=True)
    assert tuple(ok.frames.shape) == (40, 240, 320, 3) and ok.extra["source"] == "cache"


def test_decoded_size_is_checked_against_free_memory(tmp_path):
    free = available_memory()
    assert free and free > 0
    video = make_test_video(tmp_path / "v.mp4", frames=3)
    bomb = probe(video)
    # The same real file, described as it would be by a container claiming more than the memory
    # (twice it: other processes may free some between this measure and the node's own).
    claim = VideoInfo(frames=2 * free // (bomb.width * bomb.height * 12) + 1, fps=bomb.fps,
                      width=bomb.width, height=bomb.height)
    with pytest.raises(Exception, match="memory available now"):
        decode_frames(video, claim, source="https://cdn.example.test/x.mp4", max_bytes=1 << 62)


# --- item 10: hostile answers give messages, never tracebacks or a poisoned journal -------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -5])
def test_non_finite_inference_time_is_dropped_not_a_traceback(api, image, tmp_path, fast, journal,
                                                              value):
    api.set_scenario(Scenario(inference_value=value))
    result = run(api, image, tmp_path / "a.mp4", fast, journal)
    assert result.prediction.inference_ms is None and probe(result.video_path).frames > 0
    assert journal.get(api.task_ids()[0]).status == "downloaded"


@pytest.mark.parametrize("url, why", [("file:///etc/passwd", "scheme 'file'"),
                                      ("ftp://cdn.example.test/a.mp4", "scheme 'ftp'"),
                                      ("http://host:99999999/a.mp4", "malformed"),
                                      ("https:///a.mp4", "no host")])
def test_unusable_output_url_fails_the_job_clearly_once(api, image, tmp_path, fast, journal, url,
                                                        why):
    api.set_scenario(Scenario(output_url=url))
    with pytest.raises(Exception, match=why) as e:
        run(api, image, tmp_path / "a.mp4", fast, journal)
    assert "allowed: an http(s) URL" in str(e.value) and type(e.value).__name__ == "ApiError"
    assert journal.get(api.task_ids()[0]).status == "failed"  # not polled again on every rerun
    assert api.stats()["downloads"] == 0 and not (tmp_path / "a.mp4").exists()


# --- issue 10 item 14b: an output that is not a video is named by its URL, not the temp file -----


def test_an_output_that_is_not_a_video_names_the_url_and_the_file_not_the_temp(api, image, tmp_path, fast,
                                                                                journal):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"<html>Service Unavailable</html>" * 200)
    api.set_scenario(Scenario(video_path=garbage))
    dest = tmp_path / "out" / "clip.mp4"
    with pytest.raises(Exception) as info:
        run(api, image, dest, fast, journal)
    message = str(info.value)
    url = journal.get(api.task_ids()[0]).output_url
    assert "Not a readable video" in message, message
    assert url and url in message and str(dest) in message
    assert ".part" not in message and ".clip." not in message
    assert not dest.exists() and list(dest.parent.iterdir()) == []
