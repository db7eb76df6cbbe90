"""Shared fixtures: a clean data folder and key per test, a recording reporter, fast client options."""

from __future__ import annotations

import threading

import pytest

from hunyuancustom.client import ClientOptions, PollSchedule, RetryPolicy
from hunyuancustom.journal import Journal
from hunyuancustom.ref2v import ImageInput
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.testing.media import make_test_image, png_bytes

TEST_KEY = "test-key"


class RecordingReporter:
    """Collects what a user would see; can be told to cancel, like ComfyUI's Cancel button."""

    def __init__(self, cancel_when=None):
        self.statuses: list[str] = []
        self.fractions: list[float] = []
        self.cancel = threading.Event()
        self.cancel_when = cancel_when  # predicate on a status line

    def status(self, text):
        self.statuses.append(text)
        if self.cancel_when is not None and self.cancel_when(text):
            self.cancel.set()

    def progress(self, fraction):
        self.fractions.append(fraction)

    def check_interrupt(self):
        if self.cancel.is_set():
            from hunyuancustom.errors import Interrupted

            raise Interrupted("cancelled by the test")


class SleepRecorder:
    """Stands in for the client's sleeper: records each requested wait instead of waiting."""

    def __init__(self):
        self.waits: list[float] = []

    def __call__(self, seconds, on_tick=None):
        self.waits.append(seconds)
        if on_tick is not None:
            on_tick()


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    """Every test gets its own data folder and no key or API root from the developer's shell."""
    monkeypatch.setenv("HUNYUANCUSTOM_DATA_DIR", str(tmp_path / "data"))
    for var in ("WAVESPEED_API_KEY", "WAVESPEED_API_BASE", "HUNYUANCUSTOM_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "data"


@pytest.fixture
def sleeps():
    return SleepRecorder()


@pytest.fixture
def fast(sleeps):
    """Client options for tests: tiny poll intervals, recorded (not real) back-off sleeps."""
    return ClientOptions(
        retry=RetryPolicy(attempts=4, base_delay_s=0.5, max_delay_s=4.0),
        schedule=PollSchedule(initial_s=0.01, max_interval_s=0.02, fast_period_s=0.0, ramp_s=1.0),
        sleep_fn=sleeps,
    )


@pytest.fixture
def reporter():
    return RecordingReporter()


@pytest.fixture
def api():
    """The loopback API server with the default scenario (a test changes it with set_scenario)."""
    with FakeWaveSpeed(Scenario()) as server:
        yield server


@pytest.fixture
def image():
    """A small reference image, as the node and CLI hand it to the job."""
    return ImageInput(png=png_bytes(make_test_image(None, 64, 48)))


@pytest.fixture
def ref(tmp_path):
    """A small reference PNG on disk, for the CLI."""
    path = tmp_path / "ref.png"
    make_test_image(path, 64, 48)
    return path


@pytest.fixture
def journal(isolated_config):
    """The job journal in the test's own data folder."""
    with Journal.open_default() as j:
        yield j
