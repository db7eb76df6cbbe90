"""The journal records what a paid task needs, whatever goes wrong around it (issue 17, items 2
and 7): the submit's task id reaches the journal even while its write lock is held by another
program or its disk is full for a moment, and any text from the provider can be stored.

Real loopback API server (each task its own real MP4), real SQLite journal; the lock is held by a
real second connection, the full disk is SQLite refusing every write.
"""

from __future__ import annotations

import pytest

from conftest import TEST_KEY
from hunyuancustom.client import ClientOptions, PollSchedule
from hunyuancustom.config import ApiKey, Settings
from hunyuancustom.errors import TaskFailedError
from hunyuancustom.journal import Journal, file_identity
from hunyuancustom.params import REF2V_720P
from hunyuancustom.ref2v import run_ref2v
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario

A = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}
FAST = ClientOptions(schedule=PollSchedule(initial_s=0.01, max_interval_s=0.01))
SURROGATE = "\ud800"  # sent by the server as the JSON escape "\\ud800"


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=1, distinct_videos=True)) as server:
        yield server


@pytest.fixture
def journal(isolated_config):
    with Journal.open_default() as j:
        yield j


def run(api, image, dest, journal, params=A, reporter=None, **kw):
    return run_ref2v(REF2V_720P, image, params, dest, reporter=reporter,
                     settings=Settings(api_base=api.base_url, timeout_s=60.0),
                     api_key=ApiKey(TEST_KEY, "test"), options=FAST, journal=journal, decode=False,
                     **kw)


def is_video_of(api, path, task_id) -> bool:
    return file_identity(path)[1] == file_identity(api.task_video(task_id))[1]


# --- item 7: any text from the provider can be stored ----------------------------------------------


def test_lone_surrogates_in_every_answer_are_stored_and_the_video_delivered(api, image, tmp_path,
                                                                            journal):
    # In the submit's answer and in every poll, the completed one included.
    api.set_scenario(task_fields={"created_at": "2026" + SURROGATE, "model": SURROGATE + "m",
                                  "note": {"x": [SURROGATE]}})
    result = run(api, image, tmp_path / "a.mp4", journal)
    task = result.prediction.id
    assert is_video_of(api, tmp_path / "a.mp4", task)
    row = journal.get(task)
    assert row.status == "downloaded" and row.output_path == str((tmp_path / "a.mp4").resolve())
    assert row.info["created_at"] == "2026\\ud800"  # kept, as its escape text
    assert not result.extra.get("journal_warning")
    api.reset()
    assert run(api, image, tmp_path / "b.mp4", journal).extra["source"] == "cache"


def test_a_failure_reason_with_a_lone_surrogate_is_recorded(api, image, tmp_path, journal):
    api.set_scenario(fail_error="GPU fault " + SURROGATE)
    with pytest.raises(TaskFailedError, match="GPU fault"):
        run(api, image, tmp_path / "a.mp4", journal)
    row = journal.get(api.task_ids()[0])
    assert row.status == "failed" and "GPU fault \\ud800" in row.error
