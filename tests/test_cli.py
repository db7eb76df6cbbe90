"""`python -m hunyuancustom ref2v` as a user runs it: a subprocess against the loopback API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.testing.media import make_test_image
from hunyuancustom.video import probe

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=0)) as server:
        yield server


@pytest.fixture
def ref(tmp_path):
    path = tmp_path / "ref.png"
    make_test_image(path, 64, 48)
    return path


def cli(*args, env_extra=None, key="test-key"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVESPEED_")}
    env["PYTHONPATH"] = str(REPO)
    if key:
        env["WAVESPEED_API_KEY"] = key
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "hunyuancustom", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_ref2v_writes_the_video_and_reports_progress(api, ref, tmp_path):
    out = tmp_path / "out.mp4"
    proc = cli("ref2v", "--image", ref, "--prompt", "A cat dances", "--seed", 5, "--size", "720*1280",
               "--guidance-scale", 3, "--flow-shift", 2.5, "--negative-prompt", "blur",
               "--no-enable-safety-checker", "-o", out, "--api-base", api.base_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert probe(out).frames > 1
    assert "Submitting task" in proc.stderr and "Done" in proc.stderr
    body = next(r.json for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path)
    assert body["prompt"] == "A cat dances" and body["seed"] == 5 and body["size"] == "720*1280"
    assert body["guidance_scale"] == 3.0 and body["flow_shift"] == 2.5
    assert body["negative_prompt"] == "blur" and body["enable_safety_checker"] is False
    assert api.stats()["uploads"] == 1


def test_json_info_on_stdout_and_api_root_from_the_environment(api, ref, tmp_path):
    proc = cli("ref2v", "--image", ref, "--prompt", "x", "--model", "480p", "--size", "832*480",
               "-o", tmp_path / "o.mp4", "--json", env_extra={"WAVESPEED_API_BASE": api.base_url_v3})
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["model"] == "wavespeed-ai/hunyuan-custom-ref2v-480p" and info["status"] == "completed"
    assert info["task_id"] in api.task_ids()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--guidance-scale", "12"], "guidance_scale: 12.0 is out of range; allowed: float from 1 to 10"),
        (["--size", "832*480"], "size: '832*480' is not allowed; allowed: one of 1280*720, 720*1280"),
        (["--seed", "-5"], "seed: -5 is out of range"),
        (["--prompt", ""], "prompt: must not be empty"),
    ],
)
def test_bad_flags_exit_2_naming_the_field_before_any_request(api, ref, tmp_path, args, message):
    base = ["ref2v", "--image", ref, "--prompt", "x", "-o", tmp_path / "o.mp4", "--api-base", api.base_url]
    proc = cli(*base, *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert api.requests == []


def test_unreadable_image_and_missing_key(api, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    proc = cli("ref2v", "--image", bad, "--prompt", "x", "-o", tmp_path / "o.mp4", "--api-base", api.base_url)
    assert proc.returncode == 2 and "image:" in proc.stderr and "not a readable image" in proc.stderr
    ok = tmp_path / "ok.png"
    make_test_image(ok, 32, 32)
    proc = cli("ref2v", "--image", ok, "--prompt", "x", "-o", tmp_path / "o.mp4", "--api-base", api.base_url,
               key=None, env_extra={"HUNYUANCUSTOM_DATA_DIR": str(tmp_path / "empty")})
    assert proc.returncode == 2 and "No WaveSpeedAI API key is set" in proc.stderr
    assert api.requests == []


def test_failed_task_exits_1_with_the_reason(api, ref, tmp_path):
    api.set_scenario(Scenario(processing_polls=0, fail_error="content policy"))
    out = tmp_path / "o.mp4"
    proc = cli("ref2v", "--image", ref, "--prompt", "x", "-o", out, "--api-base", api.base_url)
    assert proc.returncode == 1
    assert "content policy" in proc.stderr and api.task_ids()[0] in proc.stderr
    assert not out.exists()
