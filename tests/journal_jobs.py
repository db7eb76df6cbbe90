"""One cloud job through `run_ref2v` with a journal, against the loopback API server (shared by the
journal, provider-answer and saved-video tests)."""

from __future__ import annotations

from conftest import TEST_KEY
from hunyuancustom.client import ClientOptions, PollSchedule
from hunyuancustom.config import ApiKey, Settings
from hunyuancustom.journal import file_identity
from hunyuancustom.params import REF2V_720P
from hunyuancustom.ref2v import run_ref2v

PARAMS = {"prompt": "A man is writing a letter at his desk.", "seed": 1234}
FAST_POLLS = ClientOptions(schedule=PollSchedule(initial_s=0.01, max_interval_s=0.01))


def run_job(api, image, dest, journal, params=PARAMS, reporter=None, options=FAST_POLLS, **kw):
    return run_ref2v(REF2V_720P, image, params, dest, reporter=reporter,
                     settings=Settings(api_base=api.base_url, timeout_s=60.0),
                     api_key=ApiKey(TEST_KEY, "test"), options=options, journal=journal, decode=False,
                     **kw)


def is_video_of(api, path, task_id) -> bool:
    """Whether the file at `path` is the video the server made for `task_id`."""
    return file_identity(path)[1] == file_identity(api.task_video(task_id))[1]
