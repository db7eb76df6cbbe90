"""Temporary files left by a killed download are removed by the next download into that folder;
a live writer's temporary file never is.

The writer is a real CLI subprocess downloading from the loopback API while the output stalls
half-way (Scenario.output_stall_s), killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import REPO, cli

from hunyuancustom import atomic
from hunyuancustom.atomic import remove_stale_temps, replacing
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.video import probe

DAY = 86400


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=0, output_stall_s=120)) as server:
        yield server


def start_cli(*args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVESPEED_")}
    env.update(PYTHONPATH=str(REPO), WAVESPEED_API_KEY="test-key")
    return subprocess.Popen([sys.executable, "-m", "hunyuancustom", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def temps_of(folder: Path, stem: str) -> list[Path]:
    return sorted(p for p in folder.glob(f".{stem}.*") if p.name.endswith(".part"))


def stalled_temp(api, proc, folder: Path, stem: str) -> Path:
    """The temp file of `proc`'s download, once the server holds that download half-way."""
    assert api.stalled.wait(60), proc.stderr.read() if proc.poll() is not None else "no stall"
    deadline = time.monotonic() + 30  # the temp is made once the answer's headers are in
    while not temps_of(folder, stem):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    [tmp] = temps_of(folder, stem)
    return tmp


def test_a_killed_downloads_temp_is_removed_by_the_next_download_a_live_ones_is_not(api, ref,
                                                                                    tmp_path):
    out = tmp_path / "out"
    common = ["--image", ref, "--api-base", api.base_url]
    killed = start_cli("ref2v", *common, "--prompt", "killed", "-o", out / "a.mp4")
    try:
        stale = stalled_temp(api, killed, out, "a")
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert stale.exists()  # nothing in the killed process could clean up

    api.set_scenario(output_stall_s=120)  # a fresh stall (and stall event) for the next writer
    live = start_cli("ref2v", *common, "--prompt", "live", "-o", out / "b.mp4")
    try:
        live_tmp = stalled_temp(api, live, out, "b")
        assert not stale.exists()  # the live writer's download swept the dead one's temp

        api.set_scenario(output_stall_s=0.0)  # the held download stays held
        third = cli("ref2v", *common, "--prompt", "third", "-o", out / "c.mp4")
        assert third.returncode == 0, third.stderr
        assert live_tmp.exists() and live.poll() is None  # a live download's temp is untouched

        api.release_stalls()
        _, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
    finally:
        if live.poll() is None:
            live.kill()
    assert probe(out / "b.mp4").frames > 1 and probe(out / "c.mp4").frames > 1
    assert sorted(p.name for p in out.iterdir()) == ["b.mp4", "c.mp4"]  # no temp of anyone's left


def aged(path: Path, seconds: float) -> Path:
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def test_which_temp_files_count_as_stale(tmp_path, monkeypatch):
    # This process's own temp (a live writer) is kept, whatever its age.
    with replacing(tmp_path / "mine.mp4") as mine:
        mine.write_bytes(b"half")
        aged(mine, 3 * DAY)
        remove_stale_temps(tmp_path)
        assert mine.exists()
    # The same pid with another start token, and no writer holding the file's lock: the pid was
    # reused, the writer is gone. (Made by hand: a `replacing` block of this process would hold
    # the lock, and a held lock always means a live writer.)
    monkeypatch.setattr(atomic, "_start_token", lambda pid: "1")
    reused = tmp_path / f".reused.{atomic._writer_tag()}.abcd1234.part"
    reused.write_bytes(b"half")
    monkeypatch.setattr(atomic, "_start_token", lambda pid: "2")
    assert remove_stale_temps(tmp_path) == [reused] and not reused.exists()
    monkeypatch.undo()
    # Another host's temp (a shared folder): the pid means nothing here, so only age counts.
    other = atomic._writer_tag().rsplit("-", 1)[0] + "-000000"
    fresh_other = tmp_path / f".x.{other}.abcd1234.part"
    old_other = tmp_path / f".y.{other}.abcd1234.part"
    # A temp from before writers were named (no pid): only age counts.
    fresh_legacy = tmp_path / ".z.abcd_123.part"
    old_legacy = tmp_path / ".w.abcd_123.part"
    # Not this pack's: kept whatever their age.
    foreign = [tmp_path / ".w.mp4.swp", tmp_path / ".notes.part", tmp_path / "v.abcd_123.part",
               tmp_path / "keep.mp4"]
    for p in (fresh_other, old_other, fresh_legacy, old_legacy, *foreign):
        p.write_bytes(b"x")
    for p in (old_other, old_legacy, *foreign):
        aged(p, 2 * DAY)
    assert sorted(remove_stale_temps(tmp_path)) == sorted([old_other, old_legacy])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"mine.mp4", fresh_other.name, fresh_legacy.name, *(p.name for p in foreign)}


def test_a_dead_writers_temp_on_this_host_is_stale_at_once(tmp_path):
    # A real process makes a temp and dies without cleaning up (os._exit skips every finally).
    code = ("import os, sys; from hunyuancustom.atomic import replacing\n"
            "cm = replacing(sys.argv[1]); tmp = cm.__enter__(); tmp.write_bytes(b'half')\n"
            "print(tmp, flush=True); os._exit(0)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d.mp4")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    tmp = Path(proc.stdout.strip())
    assert proc.returncode == 0 and tmp.exists(), proc.stderr
    assert remove_stale_temps(tmp_path) == [tmp] and not tmp.exists()
