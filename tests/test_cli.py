"""`python -m hunyuancustom` (ref2v, batch, jobs) as a user runs it: a subprocess against the
loopback API."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hunyuancustom.journal import Journal, default_path
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.testing.media import make_test_image
from hunyuancustom.video import probe

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def api():
    with FakeWaveSpeed(Scenario(processing_polls=0)) as server:
        yield server


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


def test_an_output_folder_that_cannot_be_written_fails_before_any_request(api, ref, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should be")
    proc = cli("ref2v", "--image", ref, "--prompt", "x", "-o", blocker / "out.mp4",
               "--api-base", api.base_url)
    assert proc.returncode == 2, proc.stderr
    assert f"output: cannot write files in {blocker}" in proc.stderr
    assert "Traceback" not in proc.stderr
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


# --- the job journal: resume, cache, batch, ledger ---------------------------------------------------


def posts(api):
    return [r for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path]


def test_rerun_with_a_fixed_seed_is_served_from_disk_and_force_new_pays_again(api, ref, tmp_path):
    args = ["ref2v", "--image", ref, "--prompt", "x", "--seed", 3, "--api-base", api.base_url]
    assert cli(*args, "-o", tmp_path / "a.mp4").returncode == 0
    api.reset()
    proc = cli(*args, "-o", tmp_path / "b.mp4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert api.requests == [] and json.loads(proc.stdout)["source"] == "cache"
    assert (tmp_path / "b.mp4").read_bytes() == (tmp_path / "a.mp4").read_bytes()
    proc = cli(*args, "-o", tmp_path / "c.mp4", "--force-new", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["source"] == "new"
    assert len(posts(api)) == 1


def test_a_cli_killed_mid_poll_resumes_the_same_task_when_run_again(api, ref, tmp_path):
    """SIGKILL while polling, then the same command: one submit in all, the same task id."""
    api.set_scenario(Scenario(task_seconds=3.0))
    out = tmp_path / "o.mp4"
    args = ["ref2v", "--image", ref, "--prompt", "x", "--seed", -1, "-o", out, "--api-base", api.base_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVESPEED_")}
    env.update(PYTHONPATH=str(REPO), WAVESPEED_API_KEY="test-key")
    victim = subprocess.Popen([sys.executable, "-m", "hunyuancustom", *map(str, args)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while api.stats()["result_gets"] < 1:  # it is polling
            assert victim.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()  # reaped: the journal sees a dead owner
    assert not out.exists()
    proc = cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert api.stats()["submits"] == 1 and len(posts(api)) == 1
    assert info["task_id"] == api.task_ids()[0] and info["source"] == "resumed"
    assert "Resuming task" in proc.stderr and out.exists()


def write_jobs(path, lines):
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return path


def test_batch_command_runs_every_line_and_resumes_after_a_failure(api, ref, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        "# a comment, then a blank line",
        "",
        {"image": ref.name, "prompt": "one"},
        {"image": str(ref), "prompt": "two", "seed": 9, "size": "720*1280", "output": "two.mp4"},
        {"image": ref.name, "prompt": "three", "model": "480p", "size": "480*832"},
    ])
    # The first submit is refused: that job fails, the others go on.
    api.set_scenario(Scenario(processing_polls=0, submit_responses=[
        {"status": 400, "body": {"code": 400, "message": "prompt: refused", "data": None}}]))
    proc = cli("batch", jobs, "--concurrency", 1, "--api-base", api.base_url, "--json")
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert [r["status"] for r in summary["results"]] == ["failed", "done", "done"]
    assert summary["results"][0]["job"] == "line 3" and "refused" in summary["results"][0]["error"]
    out_dir = tmp_path / "jobs_videos"
    assert summary["results"][1]["output"] == str(out_dir / "two.mp4")
    assert (out_dir / "two.mp4").exists() and (out_dir / "003.mp4").exists()
    bodies = [r.json for r in posts(api)]
    assert bodies[1]["size"] == "720*1280" and bodies[1]["seed"] == 9
    assert any("/hunyuan-custom-ref2v-480p" in r.path for r in posts(api))

    proc = cli("batch", jobs, "--api-base", api.base_url, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["resumed"] and [r["source"] for r in summary["results"]] == ["new", "cache", "cache"]
    assert api.stats()["submits"] == 3  # two then one: nothing finished was paid for again
    assert (out_dir / "001.mp4").exists()


def test_batch_command_checks_every_line_before_any_request(api, ref, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        {"image": str(ref), "prompt": "fine"}, {"image": str(ref), "prompt": "x", "guidance_scale": 99}])
    proc = cli("batch", jobs, "--api-base", api.base_url)
    assert proc.returncode == 2 and "guidance_scale: 99.0 is out of range" in proc.stderr
    assert "line 2" in proc.stderr
    bad = write_jobs(tmp_path / "bad.jsonl", ['{"image": "a.png", "prompt": ', ])
    proc = cli("batch", bad, "--api-base", api.base_url)
    assert proc.returncode == 2 and "line 1: is not valid JSON" in proc.stderr
    proc = cli("batch", jobs, "--concurrency", 0, "--api-base", api.base_url)
    assert proc.returncode == 2 and "concurrency" in proc.stderr
    assert api.requests == []


def test_jobs_lists_and_shows_the_ledger(api, ref, tmp_path):
    assert cli("ref2v", "--image", ref, "--prompt", "x", "-o", tmp_path / "a.mp4",
               "--api-base", api.base_url).returncode == 0
    api.set_scenario(Scenario(processing_polls=0, fail_error="worker lost"))
    assert cli("ref2v", "--image", ref, "--prompt", "y", "-o", tmp_path / "b.mp4",
               "--api-base", api.base_url).returncode == 1
    done_id, failed_id = api.task_ids()

    proc = cli("jobs")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "status", "created", "inference"]
    assert "failed" in lines[1] and failed_id in lines[1]  # newest first
    assert "downloaded" in lines[2] and done_id in lines[2] and str(tmp_path / "a.mp4") in lines[2]

    rows = json.loads(cli("jobs", "--status", "downloaded", "--json").stdout)
    assert [r["task_id"] for r in rows] == [done_id]
    assert rows[0]["inference_ms"] is not None and rows[0]["output_path"] == str(tmp_path / "a.mp4")
    assert json.loads(cli("jobs", "--since", "1h", "--json").stdout)[0]["task_id"] == failed_id
    newest = json.loads(cli("jobs", "--since", "2000-01-01", "--limit", 1, "--json").stdout)
    assert [r["task_id"] for r in newest] == [failed_id]

    proc = cli("jobs", "show", failed_id)
    assert proc.returncode == 0 and "worker lost" in proc.stdout and "status: failed" in proc.stdout
    shown = json.loads(cli("jobs", "show", str(rows[0]["id"]), "--json").stdout)
    assert shown["task_id"] == done_id and shown["request"]["prompt"] == "x"
    assert "test-key" not in cli("jobs", "--json").stdout
    proc = cli("jobs", "show", "nope")
    assert proc.returncode == 2 and "no job" in proc.stderr


def test_jobs_prune_forgets_old_finished_jobs_only(api, ref, tmp_path):
    for prompt in ("old done", "recent done"):
        assert cli("ref2v", "--image", ref, "--prompt", prompt, "--seed", 7, "-o",
                   tmp_path / f"{prompt}.mp4", "--api-base", api.base_url).returncode == 0
    with Journal.open_default() as j:
        d = j.acquire("f" * 64, model="m", request="{}", image_ref="r", seed=1)
        j.update(d.row.id, status="processing", task_id="still-running", release=True)
        d = j.acquire("e" * 64, model="m", request="{}", image_ref="r", seed=1)
        j.update(d.row.id, status="uncertain", release=True)
        rows = {r.request.get("prompt", r.status): r.id for r in j.list()}
    month_ago = time.time() - 30 * 86400
    with sqlite3.connect(default_path()) as c:  # age every row but the recent one
        c.execute("UPDATE jobs SET updated_at = ? WHERE id != ?", (month_ago, rows["recent done"]))
    c.close()

    proc = cli("jobs", "prune", "--older-than", "7d", "--dry-run")
    assert proc.returncode == 0
    assert "1 finished job last changed before" in proc.stderr and "would be" in proc.stderr
    assert len(json.loads(cli("jobs", "--json").stdout)) == 4
    proc = cli("jobs", "prune", "--older-than", "7d")
    assert proc.returncode == 0 and "forgot 1 finished job last" in proc.stderr
    left = {r["status"] for r in json.loads(cli("jobs", "--json").stdout)}
    assert left == {"downloaded", "processing", "uncertain"}  # recent, and what prevents paying twice
    assert (tmp_path / "old done.mp4").is_file()  # videos are never deleted
    proc = cli("jobs", "prune", "--older-than", "soon")
    assert proc.returncode == 2 and "older_than: 'soon' is neither a date" in proc.stderr


def test_a_damaged_journal_stops_before_any_request(api, ref, tmp_path):
    data = Path(os.environ["HUNYUANCUSTOM_DATA_DIR"])
    data.mkdir(parents=True, exist_ok=True)
    (data / "jobs.sqlite3").write_bytes(b"garbage" * 1000)
    proc = cli("ref2v", "--image", ref, "--prompt", "x", "-o", tmp_path / "a.mp4", "--api-base", api.base_url)
    assert proc.returncode == 2 and "damaged" in proc.stderr and "Move it aside" in proc.stderr
    assert api.requests == []


def test_ctrl_c_stops_a_batch_and_running_it_again_resumes_it(api, ref, tmp_path):
    api.set_scenario(Scenario(task_seconds=2.0))
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"image": str(ref), "prompt": f"p{i}"} for i in range(3)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVESPEED_")}
    env.update(PYTHONPATH=str(REPO), WAVESPEED_API_KEY="test-key")
    args = ["batch", str(jobs), "--concurrency", "2", "--api-base", api.base_url, "--json"]
    # Ctrl-C as a terminal sends it: a test run started in the background (`cmd &`, nohup) ignores
    # SIGINT, and a child inherits that, so Python would never raise KeyboardInterrupt in it
    proc = subprocess.Popen([sys.executable, "-m", "hunyuancustom", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while api.stats()["submits"] < 2 or api.stats()["result_gets"] < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert api.stats()["submits"] == 2

    again = cli(*args)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["resumed"] and sorted(r["source"] for r in summary["results"]) == [
        "new", "resumed", "resumed"]
    assert api.stats()["submits"] == 3


def test_an_uncertain_submit_blocks_reruns_until_abandoned(api, ref, tmp_path):
    api.set_scenario(Scenario(processing_polls=0, submit_responses=[{"drop": True}]))
    args = ["ref2v", "--image", ref, "--prompt", "x", "-o", tmp_path / "a.mp4", "--api-base", api.base_url]
    assert cli(*args).returncode == 1
    proc = cli(*args)
    assert proc.returncode == 1 and "may or may not" in proc.stderr and "--force-new" in proc.stderr
    assert len(posts(api)) == 1
    row = json.loads(cli("jobs", "--status", "uncertain", "--json").stdout)[0]
    assert cli("jobs", "abandon", row["id"]).returncode == 0
    assert cli(*args).returncode == 0 and len(posts(api)) == 2
    proc = cli("jobs", "abandon", row["id"])
    assert proc.returncode == 2 and "only an uncertain job" in proc.stderr


@pytest.mark.parametrize("output", ["../../x.mp4", "/ABS/x.mp4", "sub/../../x.mp4", "link/x.mp4"])
def test_batch_output_outside_the_output_folder_is_refused_before_any_request(api, ref, tmp_path,
                                                                             output):
    victim = tmp_path / "x.mp4"
    victim.write_bytes(b"someone else's file")
    out_dir = tmp_path / "a" / "b"
    out_dir.mkdir(parents=True)
    (out_dir / "link").symlink_to(tmp_path)  # a folder inside that points outside
    output = output.replace("/ABS", str(tmp_path))
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        {"image": str(ref), "prompt": "fine", "output": "ok.mp4"},
        {"image": str(ref), "prompt": "escape", "output": output}])
    proc = cli("batch", jobs, "-o", out_dir, "--api-base", api.base_url)
    assert proc.returncode == 2, proc.stderr
    assert "output: " in proc.stderr and "(line 2)" in proc.stderr, proc.stderr
    assert "leaves the output folder" in proc.stderr or "outside the output folder" in proc.stderr
    assert api.requests == [] and victim.read_bytes() == b"someone else's file"


def test_batch_output_in_a_subfolder_of_the_output_folder_is_allowed(api, ref, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        {"image": str(ref), "prompt": "fine", "output": "sub/deeper/ok.mp4"}])
    proc = cli("batch", jobs, "-o", tmp_path / "out", "--api-base", api.base_url)
    assert proc.returncode == 0, proc.stderr
    assert probe(tmp_path / "out" / "sub" / "deeper" / "ok.mp4").frames > 0


def test_non_utf8_jobs_file_and_lone_surrogate_prompt_are_clear_errors(api, ref, tmp_path):
    bad = tmp_path / "jobs.jsonl"
    bad.write_bytes(b'{"image": "ref.png", "prompt": "caf\xe9"}\n')
    proc = cli("batch", bad, "--api-base", api.base_url)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "jobs_file" in proc.stderr and "not UTF-8" in proc.stderr
    lone = write_jobs(tmp_path / "lone.jsonl", ['{"image": "ref.png", "prompt": "a \\ud800 b"}'])
    proc = cli("batch", lone, "--api-base", api.base_url)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "prompt" in proc.stderr and "unpaired surrogate" in proc.stderr and "line 1" in proc.stderr
    assert api.requests == []
