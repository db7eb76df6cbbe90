"""What the result cache serves: only the very video a job saved, checked by size and sha256; a
saved video that is gone is fetched again from its task, not paid for again; a paid result is
never overwritten by another job's video.

The loopback API gives every task its own real MP4 (Scenario.distinct_videos), so each test can
tell whose video a file is.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEST_KEY, RecordingReporter
from hunyuancustom import journal as journal_module
from hunyuancustom.client import ClientOptions, PollSchedule
from hunyuancustom.journal import Journal, file_identity
from hunyuancustom.params import REF2V_720P
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from journal_jobs import run_job

REPO = Path(__file__).resolve().parent.parent

A = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}
B = {"prompt": "A woman is reading a book in the garden.", "seed": 1234}
FAST = ClientOptions(schedule=PollSchedule(initial_s=0.01, max_interval_s=0.01))


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=0, distinct_videos=True)) as server:
        yield server


def run(api, image, dest, journal, params=A, reporter=None, **kw):
    return run_job(api, image, dest, journal, params, reporter, options=FAST, **kw)


def sha(path) -> str:
    return file_identity(path)[1]


def is_video_of(api, path, task_id) -> bool:
    return sha(path) == sha(api.task_video(task_id))


# --- the saved video is checked before it is served ------------------------------------------------


def test_a_saved_video_replaced_by_another_file_is_not_served_but_fetched_again(api, image, tmp_path,
                                                                              journal):
    a = run(api, image, tmp_path / "a.mp4", journal)
    b = run(api, image, tmp_path / "b.mp4", journal, params=B)
    # Another program (or a user) puts B's video where A's was saved: same name, other content.
    (tmp_path / "a.mp4").write_bytes((tmp_path / "b.mp4").read_bytes())
    reporter = RecordingReporter()
    again = run(api, image, tmp_path / "c.mp4", journal, reporter=reporter)
    assert again.extra["source"] == "resumed" and again.extra["refetched"]
    assert again.prediction.id == a.prediction.id and api.stats()["submits"] == 2
    assert is_video_of(api, again.video_path, a.prediction.id)
    assert any(s.startswith(f"Fetching the video of task {a.prediction.id} again") for s in
               reporter.statuses)
    # The fetched copy is now the recorded result: the next run is served from it, no request.
    api.reset()
    third = run(api, image, tmp_path / "d.mp4", journal)
    assert third.extra["source"] == "cache" and api.requests == []
    assert Path(third.video_path).read_bytes() == Path(again.video_path).read_bytes()
    assert b.prediction.id != a.prediction.id


def test_a_file_of_the_same_size_but_other_content_is_not_served(api, image, tmp_path, journal):
    a = run(api, image, tmp_path / "a.mp4", journal)
    data = bytearray((tmp_path / "a.mp4").read_bytes())
    data[-1] ^= 0xFF  # one byte changed: size equal, content not
    (tmp_path / "a.mp4").write_bytes(bytes(data))
    reporter = RecordingReporter()
    again = run(api, image, tmp_path / "b.mp4", journal, reporter=reporter)
    assert again.extra["source"] == "resumed" and api.stats()["submits"] == 1
    assert is_video_of(api, tmp_path / "b.mp4", a.prediction.id)
    assert any("was replaced by another file; fetching it again" in s for s in reporter.statuses)


# --- a deleted saved video is fetched again, not paid again (item 3) ----------------------------------


def test_a_deleted_saved_video_is_fetched_again_from_its_task_without_a_submit(api, image, tmp_path,
                                                                             journal):
    first = run(api, image, tmp_path / "a.mp4", journal)
    (tmp_path / "a.mp4").unlink()
    reporter = RecordingReporter()
    again = run(api, image, tmp_path / "a.mp4", journal, reporter=reporter)
    assert api.stats()["submits"] == 1 and api.stats()["downloads"] == 2
    assert again.prediction.id == first.prediction.id and again.extra["source"] == "resumed"
    assert again.extra["refetched"] is True and "billed_again" not in again.extra
    assert is_video_of(api, tmp_path / "a.mp4", first.prediction.id)
    assert any(s.startswith(f"Fetching the video of task {first.prediction.id} again")
               and "not billed again" in s for s in reporter.statuses)
    row = journal.get(first.prediction.id)
    assert row.status == "downloaded" and row.output_path == str((tmp_path / "a.mp4").resolve())
    assert (row.output_size, row.output_sha256) == file_identity(tmp_path / "a.mp4")


def test_when_the_api_no_longer_knows_the_task_the_run_says_so_and_only_a_rerun_pays_again(
        api, image, tmp_path, journal):
    # Only the API's own answer counts; an output URL answering 404 does not (test_provider_word).
    from hunyuancustom.errors import TaskNotFoundError

    first = run(api, image, tmp_path / "a.mp4", journal)
    (tmp_path / "a.mp4").unlink()
    api.reset()  # the provider has forgotten the task
    with pytest.raises(TaskNotFoundError) as err:
        run(api, image, tmp_path / "a.mp4", journal)
    assert first.prediction.id in str(err.value) and "Run the job again" in str(err.value)
    assert api.stats()["submits"] == 0
    assert journal.get(first.prediction.id).status == "expired"
    again = run(api, image, tmp_path / "a.mp4", journal)  # the user asks again: a new, billed task
    assert again.extra["source"] == "new" and again.prediction.id != first.prediction.id
    assert again.extra["billed_again"] is True  # what the node's line says
    assert "billed_again" not in first.extra
    assert is_video_of(api, tmp_path / "a.mp4", again.prediction.id)
    assert api.stats()["submits"] == 1


# --- never overwrite another job's saved result -------------------------------------------------------


def test_a_new_job_never_overwrites_another_jobs_saved_video(api, image, tmp_path, journal):
    a = run(api, image, tmp_path / "out.mp4", journal)
    reporter = RecordingReporter()
    b = run(api, image, tmp_path / "out.mp4", journal, params=B, reporter=reporter)
    assert b.video_path == tmp_path / "out-2.mp4"
    assert is_video_of(api, tmp_path / "out.mp4", a.prediction.id)
    assert is_video_of(api, tmp_path / "out-2.mp4", b.prediction.id)
    assert any("out.mp4 holds the saved video of journal job" in s and "goes to out-2.mp4" in s
               for s in reporter.statuses)
    # A file that is no job's saved video is the user's to overwrite, as before.
    (tmp_path / "mine.mp4").write_bytes(b"scratch")
    c = run(api, image, tmp_path / "mine.mp4", journal, params={**B, "seed": 9})
    assert c.video_path == tmp_path / "mine.mp4"
    assert is_video_of(api, tmp_path / "mine.mp4", c.prediction.id)


# --- journals written before the identity was recorded ----------------------------------------------


def make_v2_journal(path: Path, rows: list[tuple]) -> None:
    v2 = journal_module._SCHEMA.replace(",\n    output_size INTEGER,\n    output_sha256 TEXT\n", "\n")
    v2 = v2.replace("CREATE INDEX IF NOT EXISTS jobs_output ON jobs (output_path);\n", "")
    assert "output_sha256" not in v2
    with sqlite3.connect(path) as c:
        c.executescript(v2)
        for row in rows:
            c.execute("INSERT INTO jobs (fingerprint, model, request, image_ref, seed, status, "
                      "task_id, created_at, updated_at, output_path, output_url, api_base) "
                      "VALUES (?,?,?,?,?,?,?,1,1,?,?,?)", row)
        c.execute("PRAGMA user_version = 2")
    c.close()


def test_a_version_2_journal_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    make_v2_journal(path, [("f", "m", "{}", "r", 5, "downloaded", "t-old", "/v/old.mp4",
                            "https://x.test/o.mp4", "https://api.example.test/api/v2")])
    with Journal(path) as j:
        row = j.get("t-old")
        assert (row.status, row.output_path, row.api_base) == \
            ("downloaded", "/v/old.mp4", "https://api.example.test/api/v2")
        assert row.output_size is None and row.output_sha256 is None
        assert j._conn.execute("PRAGMA user_version").fetchone()[0] == journal_module.SCHEMA_VERSION == 3


def test_an_old_row_is_trusted_only_while_no_newer_job_saved_under_its_name(api, image, tmp_path,
                                                                            isolated_config):
    """Rows written by the previous version (no identity recorded): the newest job that saved under
    a name owns the file there; an older row naming it is fetched again instead of served."""
    a = run(api, image, tmp_path / "a.mp4", None)
    b = run(api, image, tmp_path / "b.mp4", None, params=B)
    out = tmp_path / "same.mp4"
    out.write_bytes((tmp_path / "b.mp4").read_bytes())  # the old version let B overwrite A here
    from hunyuancustom.journal import fingerprint
    from hunyuancustom.params import validate_request

    def fp(params):
        body = validate_request(REF2V_720P, {**params, "image": "https://placeholder.invalid/"})
        return fingerprint(REF2V_720P.model_id, body, journal_module.content_ref(image.png))

    (fa, ra), (fb, rb) = fp(A), fp(B)
    isolated_config.mkdir(parents=True, exist_ok=True)
    make_v2_journal(isolated_config / "jobs.sqlite3", [
        (fa, REF2V_720P.model_id, ra, journal_module.content_ref(image.png), 1234, "downloaded",
         a.prediction.id, str(out.resolve()), a.url, api.base_url),
        (fb, REF2V_720P.model_id, rb, journal_module.content_ref(image.png), 1234, "downloaded",
         b.prediction.id, str(out.resolve()), b.url, api.base_url),
    ])
    with Journal.open_default() as j:
        got_b = run(api, image, tmp_path / "b2.mp4", j, params=B)
        assert got_b.extra["source"] == "cache" and is_video_of(api, got_b.video_path, b.prediction.id)
        assert j.get(b.prediction.id).output_sha256 == sha(out)  # adopted: recorded from now on
        got_a = run(api, image, tmp_path / "a2.mp4", j)
        assert got_a.extra["source"] == "resumed" and got_a.prediction.id == a.prediction.id
        assert is_video_of(api, got_a.video_path, a.prediction.id)
        assert is_video_of(api, out, b.prediction.id)  # B's file was not touched
    assert api.stats()["submits"] == 2


# --- through the command line -------------------------------------------------------------------------


def cli(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVESPEED_")}
    env.update(PYTHONPATH=str(REPO), WAVESPEED_API_KEY=TEST_KEY)
    return subprocess.run([sys.executable, "-m", "hunyuancustom", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def ref2v(api, ref, out, prompt):
    proc = cli("ref2v", "--image", ref, "--prompt", prompt, "--seed", 5, "-o", out,
               "--api-base", api.base_url, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_cli_same_output_name_for_a_then_b_then_a_never_serves_b_as_a(api, ref, tmp_path):
    out = tmp_path / "out.mp4"
    a, _ = ref2v(api, ref, out, "prompt A")
    b, err_b = ref2v(api, ref, out, "prompt B")
    assert b["video_path"] == str(tmp_path / "out-2.mp4") and "not overwritten" in err_b
    again, _ = ref2v(api, ref, out, "prompt A")
    assert again["task_id"] == a["task_id"] and again["source"] == "cache"
    assert is_video_of(api, again["video_path"], a["task_id"])
    assert is_video_of(api, b["video_path"], b["task_id"])
    assert api.stats()["submits"] == 2


def test_cli_rerun_after_the_saved_video_was_deleted_downloads_it_again(api, ref, tmp_path):
    out = tmp_path / "out.mp4"
    a, _ = ref2v(api, ref, out, "prompt A")
    out.unlink()
    again, err = ref2v(api, ref, out, "prompt A")
    assert again["task_id"] == a["task_id"] and again["source"] == "resumed"
    assert "not billed again" in err and api.stats()["submits"] == 1
    assert is_video_of(api, out, a["task_id"])


def test_batch_with_a_line_inserted_at_the_top_overwrites_and_misserves_nothing(api, ref, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    x = {"image": "ref.png", "prompt": "X waves", "seed": 1}
    y = {"image": "ref.png", "prompt": "Y dances", "seed": 2}
    z = {"image": "ref.png", "prompt": "Z sings", "seed": 3}
    videos = tmp_path / "videos"

    def batch(lines):
        jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
        proc = cli("batch", jobs, "-o", videos, "--api-base", api.base_url, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["results"]

    first = batch([x, y])
    paid = {r["task_id"]: Path(r["output"]) for r in first}
    assert sorted(p.name for p in paid.values()) == ["001.mp4", "002.mp4"]
    second = batch([z, x, y])
    assert api.stats()["submits"] == 3  # only Z is new
    # No earlier paid video was overwritten ...
    for task_id, path in paid.items():
        assert is_video_of(api, path, task_id)
    # ... and every line got its own video, wherever it went.
    assert [r["job"] for r in second] == ["line 1", "line 2", "line 3"]
    assert [r["source"] for r in second] == ["new", "cache", "cache"]
    for r in second:
        assert is_video_of(api, r["output"], r["task_id"])
    assert second[1]["task_id"] == first[0]["task_id"] and second[2]["task_id"] == first[1]["task_id"]
    assert Path(second[0]["output"]).name == "001-2.mp4"
