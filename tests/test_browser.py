"""The pack in the real ComfyUI front end, in headless Chromium (needs COMFYUI_PATH).

tests/browser/check_frontend.cjs (playwright-core driving Debian's /usr/bin/chromium) opens
ComfyUI with the pack, opens every example workflow, sets and removes the API key through
Settings > HunyuanCustom, and runs the cloud example against the loopback API server; these
tests assert on the report it prints. The same front end is also opened once without the pack,
to tell the stock front end's own console errors from any the pack would add.
Chromium (apt) and playwright-core (npm, into a cache folder outside the repository) are
installed on first use; when that is impossible the tests skip and say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from comfyui_harness import (
    PACK_DIR_NAME,
    ComfyServer,
    comfyui_path,
    requires_comfyui,
    skip_reason,
    stand_in_models,
)
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario

pytestmark = requires_comfyui

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "browser" / "check_frontend.cjs"
CHROMIUM = Path("/usr/bin/chromium")
SECRET = "sk-browser-SECRET-91c4"
CLOUD_WORKFLOW = "HunyuanCustom Ref2V (Cloud).json"
FAIL_MARKER = "[the provider fails this one]"
SCREENSHOT_COPY = Path("/tmp/browser-screenshot.png")
PLAYWRIGHT_VERSION = "1.65.1"  # pinned: the script was written against this API
NPM_CACHE = Path(os.environ.get("HUNYUANCUSTOM_BROWSER_CACHE")
                 or Path.home() / ".cache" / "hunyuancustom-browser")


def _ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)")
    r = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if r.returncode != 0 or not CHROMIUM.exists():
        pytest.skip(f"apt-get install chromium failed: {r.stderr[-500:]}")


def _ensure_playwright() -> Path:
    modules = NPM_CACHE / "node_modules"
    installed = modules / "playwright-core" / "package.json"
    if installed.is_file() and json.loads(installed.read_text()).get("version") == PLAYWRIGHT_VERSION:
        return modules
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed: the browser test drives Chromium with playwright-core")
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NPM_CACHE),
                        f"playwright-core@{PLAYWRIGHT_VERSION}"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not (modules / "playwright-core").is_dir():
        pytest.skip(f"npm install playwright-core failed: {r.stderr[-500:]}")
    return modules


def _run_script(cfg: dict, tmp: Path, modules: Path) -> tuple[dict, subprocess.CompletedProcess]:
    cfg_path = tmp / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    r = subprocess.run(["node", str(SCRIPT), str(cfg_path)], capture_output=True, text=True,
                       timeout=540, env={**os.environ, "NODE_PATH": str(modules)})
    try:
        return json.loads(r.stdout), r
    except ValueError:
        pytest.fail(f"browser script printed no report (rc {r.returncode}):\n{r.stderr[-3000:]}")


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    """The stock front end, same ComfyUI, without the pack: the console errors it logs by itself."""
    if comfyui_path() is None:
        pytest.skip(skip_reason)
    _ensure_chromium()
    modules = _ensure_playwright()
    tmp = tmp_path_factory.mktemp("browser-baseline")
    server = ComfyServer(tmp / "comfy")
    (server.custom_nodes_dir / PACK_DIR_NAME).unlink()  # the harness links the pack in; not here
    try:
        server.start()
        report, r = _run_script({"url": server.url + "/", "chromium": str(CHROMIUM), "baseline": True,
                                 "userDataDir": str(tmp / "chromium-profile")}, tmp, modules)
    finally:
        server.stop()
    if report.get("error"):
        pytest.fail(f"baseline browser run failed after {report['steps']}: {report['error']}")
    report["url"] = server.url + "/"
    (tmp / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _normalized(messages: list[str], url: str) -> set[str]:
    # The two servers differ only in their port.
    origin = urlparse(url)
    return {m.replace(f"{origin.scheme}://{origin.netloc}", "ORIGIN") for m in messages}


@contextlib.contextmanager
def _comfy_with_models(tmp: Path, env: dict):
    server = ComfyServer(tmp / "comfy", env, models_config=stand_in_models(tmp))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory):
    """Run the browser script once against a fresh ComfyUI; return (report, tmp dir)."""
    if comfyui_path() is None:
        pytest.skip(skip_reason)
    _ensure_chromium()
    modules = _ensure_playwright()
    tmp = tmp_path_factory.mktemp("browser")
    # task_seconds: the job stays "processing" long enough for the status line to tick.
    # Empty stand-ins for the model files the README names: the local examples then open as on a
    # ComfyUI that has them (no missing-models dialog; tests/test_browser_models.py checks that one).
    with FakeWaveSpeed(Scenario(api_key=SECRET, task_seconds=3.0,
                                fail_if_prompt_contains=FAIL_MARKER)) as api, \
            _comfy_with_models(tmp, {"WAVESPEED_API_BASE": api.base_url}) as comfy:
        workflows = {}
        for path in sorted(p for p in (REPO / "example_workflows").iterdir() if p.is_file()):
            if path.suffix == ".json":
                workflows[path.name] = json.loads(path.read_text())
            else:  # the sample inputs the workflows load, where the README says to put them
                shutil.copy(path, comfy.input_dir / path.name)
        cfg = {
            "url": comfy.url + "/", "chromium": str(CHROMIUM), "secret": SECRET,
            "workflows": workflows, "cloudWorkflow": CLOUD_WORKFLOW,
            "keyFile": str(comfy.data_dir / "api_key"), "apiBase": api.base_url,
            "outputDir": str(comfy.output_dir),
            "failMarker": FAIL_MARKER, "packModule": PACK_DIR_NAME,
            "templateNames": [name.removesuffix(".json") for name in sorted(workflows)],
            "openTemplate": CLOUD_WORKFLOW.removesuffix(".json"),
            "screenshot": str(tmp / "cloud-node.png"), "userDataDir": str(tmp / "chromium-profile"),
        }
        report, r = _run_script(cfg, tmp, modules)
        log = comfy.log_text()
        api_requests = list(getattr(api, "requests", []))
    report["_url"] = cfg["url"]
    report["_api_base"] = cfg["apiBase"]
    report["_stderr"] = r.stderr[-3000:]
    report["_comfy_log"] = log
    report["_api_requests"] = api_requests
    if report.get("error"):
        pytest.fail(f"browser script failed after {report['steps']}: {report['error']}\n"
                    f"console errors: {report['consoleErrors']}")
    report_copy = {k: v for k, v in report.items() if k != "_comfy_log"}
    (tmp / "report.json").write_text(json.dumps(report_copy, indent=1, default=str))
    if (tmp / "cloud-node.png").is_file():
        shutil.copy(tmp / "cloud-node.png", SCREENSHOT_COPY)
    return report, tmp


def _is_packs(url: str) -> bool:
    path = urlparse(url).path
    return path.startswith(("/hunyuancustom", "/extensions/", "/api/view", "/view"))


def _file_of(url: str) -> dict:
    # The front end adds a random cache-buster to each preview URL; the file is the rest.
    return {k: v for k, v in parse_qs(urlparse(url).query).items() if k != "rand"}


def test_extension_loads_without_console_errors(browser_run, baseline_run):
    report, _ = browser_run
    assert report["extensionLoaded"]
    # Loaded once: a second copy would fail to register ("already registered").
    assert report["extensionScriptsOnLoad"] == 1, report["extensionScriptsOnLoad"]
    errors = report["consoleErrors"]
    assert [e for e in errors if "hunyuancustom" in e.lower() or "/extensions/" in e] == []
    # What is left is the bare front end's own noise on a fresh user folder with no internet:
    # 404s for optional user files, the release check to api.comfy.org, and a core settings
    # migration that throws before any extension loads. None of it may concern the pack.
    assert [u for u in report["failedResponses"] + report["failedRequests"] if _is_packs(u)] == []
    # Whatever is left, the same front end logs without the pack too (404s for optional user
    # files on a fresh user folder, the release check to api.comfy.org with no internet, a core
    # settings migration that throws): the pack adds no error of any kind.
    assert not baseline_run["extensionLoaded"]
    base = _normalized(baseline_run["consoleErrors"], baseline_run["url"])
    assert _normalized(errors, report["_url"]) - base == set()
    assert (_normalized(report["failedResponses"], report["_url"])
            - _normalized(baseline_run["failedResponses"], baseline_run["url"])) == set()
    assert "HunyuanCustom" not in "".join(
        line for line in report["_comfy_log"].splitlines() if "IMPORT FAILED" in line)


def test_every_example_workflow_opens_without_missing_nodes(browser_run):
    report, _ = browser_run
    names = sorted(p.name for p in (REPO / "example_workflows").glob("*.json"))
    assert sorted(report["workflows"]) == names
    for name, result in report["workflows"].items():
        assert result["missing"] == [], name
        assert result["errored"] == [], name
        assert result["nodes"] == result["expected"], name
    assert report["missingNodesDialog"] == 0
    # The same check does see the warning for a node type that is not installed.
    assert report["missingNodesControl"] is True
    # The first visit's template browser was there and was closed before anything else.
    assert report["templateDialog"] == "dismissed"


def test_a_new_node_keeps_its_seed_so_a_cancelled_run_can_resume(browser_run):
    # With the front end's default (randomize, as core's KSampler shows) every queue would be a
    # new request: a run stopped by Cancel could not be resumed and would be paid again.
    report, _ = browser_run
    fresh = report["seedControl"]["fresh"]
    assert fresh.pop("KSampler") == "randomize"
    assert fresh == dict.fromkeys(("HunyuanCustomCloudRef2V720p", "HunyuanCustomCloudBatch720p",
                                   "HunyuanCustomLocalRef2V"), "fixed")
    assert report["seedControl"]["loaded"] == "increment"  # a workflow's own setting wins


def test_key_setting_round_trips_without_exposing_the_key(browser_run):
    report, _ = browser_run
    key = report["key"]
    # Through Settings > HunyuanCustom > API key, as a user does (the script falls back to the
    # pack's route only so that the run checks still run; that fallback fails this test).
    assert "error" not in key, key["error"]
    last4 = SECRET[-4:]
    assert key["before"] == "Not set"
    assert key["afterSave"].endswith(f"ends with {last4}")
    assert key["afterReload"] == key["afterSave"]  # the status comes back from the server
    assert key["fileHoldsKey"] is True
    assert key["afterDelete"] == "Not set" and key["fileAfterDelete"] is False
    # The key never stays in the page and never comes back in any answer.
    assert key["inputAfterSave"] == ""
    assert key["domHasSecret"] is False and key["storageHasSecret"] is False
    assert key["settingsHasSecret"] is False and key["workflowHasSecret"] is False
    assert report["run"]["workflowHasSecret"] is False
    assert report["bodiesWithSecret"] == []
    assert SECRET not in report["_comfy_log"]


def test_cloud_node_shows_the_finished_video_with_task_and_inference_time(browser_run):
    report, tmp = browser_run
    run = report["run"]
    # A new task: the line says first that it was billed.
    assert run["info"].startswith("billed · new task ") and " s inference" in run["info"], run["info"]
    task_id = run["info"].split()[4]
    assert run["copied"] == task_id  # the Copy button
    video = run["video"]
    assert video is not None, "no <video> preview on the page"
    assert "/view" in video["src"] and "hunyuancustom" in video["src"]
    assert video["readyState"] >= 2 and video["width"] > 0 and video["duration"] > 0
    # The second run is served from ComfyUI's cache: the preview and the line stay.
    assert len(run["history"]) == 2
    cached = [m[1]["nodes"] for events in run["history"] for m in events if m[0] == "execution_cached"]
    # The node is reused from ComfyUI's cache (the front end's preview widget must not change its
    # inputs; js/hunyuancustom.js keeps it out of the prompt).
    assert any("2" in nodes for nodes in cached), run["history"]
    assert all("video-preview" not in p["2"]["inputs"] for p in run["prompts"])
    # The line says so: no request was made (the video is the same task's).
    cached = f"free · ComfyUI's cached result, no request made · task {task_id}"
    assert run["cachedInfo"].startswith(cached), run["cachedInfo"]
    assert run["cachedVideo"] is not None and _file_of(run["cachedVideo"]["src"]) == _file_of(video["src"])
    assert run["cachedVideo"]["readyState"] >= 2
    assert (tmp / "cloud-node.png").stat().st_size > 10_000
    assert SCREENSHOT_COPY.is_file()


def test_status_line_ticks_while_the_job_waits_and_clears_after(browser_run):
    report, _ = browser_run
    samples = report["run"]["status"]
    texts = [s["text"] for s in samples]
    assert any("processing" in t.lower() or "queued" in t.lower() for t in texts), texts
    assert all("elapsed" in t for t in texts), texts
    # Drawn at least once a second while the job waits.
    gaps = [b["t"] - a["t"] for a, b in zip(samples, samples[1:], strict=False)]
    assert samples and max(gaps, default=0) <= 1100, gaps
    assert report["run"]["statusHiddenAfter"] is True


def test_key_is_on_disk_only_in_the_key_file(browser_run):
    """ComfyUI's settings, user data, workflows and the browser profile never hold the key."""
    report, tmp = browser_run
    assert "error" not in report["key"], report["key"]["error"]  # set in the settings dialog
    key_file = tmp / "comfy" / "hunyuancustom-data" / "api_key"
    leaks = []
    for path in tmp.rglob("*"):
        if not path.is_file() or path in (key_file, tmp / "config.json"):  # config: the script's input
            continue
        try:
            if SECRET.encode() in path.read_bytes():
                leaks.append(str(path.relative_to(tmp)))
        except OSError:
            continue
    assert leaks == []
    # Set again after the delete, for the run, with the root it is for.
    assert json.loads(key_file.read_text()) == {"key": SECRET, "api_base": report["_api_base"]}


def test_cancel_clears_the_status_line(browser_run):
    report, _ = browser_run
    cancel = report["cancel"]
    assert "Processing" in cancel["statusBefore"] or "Queued" in cancel["statusBefore"]
    assert "execution_interrupted" in cancel["events"][-1], cancel["events"]
    assert cancel["statusHidden"] is True


def test_failure_clears_the_status_line(browser_run):
    report, _ = browser_run
    failure = report["failure"]
    assert "Processing" in failure["statusBefore"] or "Queued" in failure["statusBefore"]
    assert "execution_error" in failure["events"][-1], failure["events"]
    assert failure["statusHidden"] is True


def test_inside_a_subgraph_the_status_and_result_reach_the_inner_node(browser_run):
    report, _ = browser_run
    sub = report["subgraph"]
    assert sub["outerId"] is not None and sub["hasPanel"], sub
    assert "execution_success" in sub["events"][-1], sub["events"]
    assert any("Processing" in s or "Queued" in s for s in sub["statusSeen"]), sub
    assert sub["statusHiddenAfter"] is True
    # force_new over the request the first run paid for: billed again.
    assert sub["info"] and sub["info"].startswith("billed again · new task "), sub



def test_one_status_text_on_the_node_during_and_after_a_run(browser_run):
    # Either the pack's status line or core's progress text under the node, never both: the
    # pack sends no progress text (nodes/progress.py).
    report, _ = browser_run
    during, after = report["run"]["during"]["texts"], report["run"]["after"]["texts"]
    assert len(during) == 1 and "Processing" in during[0]["text"], during
    assert during[0]["cls"] == "hunyuancustom-status-text", during
    assert len(after) == 1 and after[0]["text"].startswith("billed · new task "), after
    assert report["run"]["before"]["texts"] == []


def test_no_empty_copy_button_before_a_run(browser_run):
    report, _ = browser_run
    before = report["run"]["before"]["panel"]
    assert before["copyShown"] is False and before["infoDisplay"] == "none", before
    assert before["statusDisplay"] == "none" and before["lines"] == [], before
    after = report["run"]["after"]["panel"]
    assert after["copyShown"] is True and after["statusDisplay"] == "none", after


def test_status_and_result_lines_fit_the_node_at_its_default_width(browser_run):
    report, _ = browser_run
    for moment in ("during", "after"):
        lines = report["run"][moment]["panel"]["lines"]
        assert len(lines) == 1 and lines[0]["text"], (moment, lines)
        line = lines[0]
        # Wrapped, not cut: nothing overflows the line's box, and the box is inside the panel.
        assert line["scrollWidth"] <= line["clientWidth"], (moment, line)
        assert line["scrollHeight"] <= line["clientHeight"], (moment, line)
        assert line["insidePanel"] is True, (moment, line)
    assert report["run"]["after"]["panel"]["lines"][0]["text"] == report["run"]["info"]


def test_nothing_moves_when_the_status_or_the_video_arrives(browser_run):
    report, tmp = browser_run
    samples = report["run"]["layout"]
    assert any(s["video"] for s in samples) and not samples[0]["video"], samples
    assert all(s["outside"] == [] for s in samples), samples  # nothing sticks out of the node
    keys = ("size", "prompt", "negative")
    assert len({json.dumps([s[k] for k in keys]) for s in samples}) == 1, samples
    for k in ("promptPx", "negativePx"):  # on screen, give or take a pixel of rounding
        assert max(s[k] for s in samples) - min(s[k] for s in samples) <= 1, samples
    # At a new node's width (its height settles at its first draw, before any of these samples).
    assert samples[0]["size"][0] == round(report["run"]["defaultSize"][0])
    for moment in ("before", "during", "after"):
        assert (tmp / f"cloud-node-{moment}.png").stat().st_size > 10_000, moment


def test_template_browser_shows_each_example_with_its_picture_and_title(browser_run):
    report, tmp = browser_run
    templates = report["templates"]
    assert "error" not in templates, templates["error"]
    names = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    assert sorted(templates["cards"]) == names
    for name, card in templates["cards"].items():
        # The picture beside the workflow (example_workflows/<name>.jpg), loaded and shown.
        assert card["naturalWidth"] > 0 and card["naturalHeight"] > 0 and card["shown"], (name, card)
        assert card["title"] == name and name.startswith("HunyuanCustom ") and "_" not in name, card
    # Each from the pack's folder, as the front end asks for it.
    for name in names:
        assert any(r.startswith("200 ") and r.endswith(f"/workflow_templates/{PACK_DIR_NAME}/{name}.jpg")
                   for r in templates["responses"]), (name, templates["responses"])
    # Opening the browser and the pack's category logs nothing and misses nothing.
    assert templates["consoleErrors"] == [], templates
    assert templates["failedResponses"] == [] and templates["failedRequests"] == [], templates
    # A card opens its workflow, named after the title.
    assert "HunyuanCustomCloudRef2V720p" in templates["opened"]["types"], templates["opened"]
    assert templates["opened"]["workflow"] == CLOUD_WORKFLOW.removesuffix(".json"), templates["opened"]
    assert (tmp / "cloud-node-templates.png").stat().st_size > 10_000


# --- the price before, the truth after ---------------------------------------------------------------


def test_before_a_run_the_cloud_nodes_say_who_bills_each_run(browser_run):
    # No per-run price for these models is published by WaveSpeedAI (README "Cost"): the node says
    # who bills, in its panel and, like core's API nodes' price, as a badge in its title bar.
    report, _ = browser_run
    single, batch = report["cost"]["single"], report["cost"]["batch"]
    assert single["line"] == "Each new task is billed by WaveSpeedAI to your account", single
    assert single["shown"] is True  # on screen, where the video will appear
    assert batch["line"] == "Each new task (one per video) is billed by WaveSpeedAI to your account", batch
    for node in (single, batch):
        assert "Billed by WaveSpeedAI per run" in node["badges"], node
    assert not any("$" in b or "credits" in b for b in single["badges"] + batch["badges"])


def _task_of(line: str, before: str) -> str:
    return line.split(before, 1)[1].split()[0]


def test_after_cancel_the_line_says_the_task_goes_on_and_was_billed_at_submit(browser_run):
    report, _ = browser_run
    cancel, resumed = report["cancel"], report["resumed"]
    assert "execution_interrupted" in cancel["events"][-1], cancel["events"]
    task_id = _task_of(resumed["info"], "resumed task ")
    assert cancel["info"] == (f"cancelled · task {task_id} keeps running at WaveSpeedAI, billed at "
                              "submit · queue again to resume it free · the video shown is from an "
                              "earlier run"), cancel


def test_a_resumed_task_is_said_to_be_billed_once_at_submit(browser_run):
    report, _ = browser_run
    info = report["resumed"]["info"]
    assert info.startswith("billed once at submit, not again · resumed task "), info
    assert " s inference" in info


def test_a_video_fetched_again_says_it_is_not_billed_again(browser_run):
    report, _ = browser_run
    task_id = _task_of(report["resumed"]["info"], "resumed task ")
    info = report["refetched"]["info"]
    assert info.startswith(f"not billed again · video of task {task_id} fetched again"), info


def test_force_new_over_a_paid_request_says_billed_again(browser_run):
    report, _ = browser_run
    earlier = _task_of(report["resumed"]["info"], "resumed task ")
    info = report["billedAgain"]["info"]
    assert info.startswith("billed again · new task "), info
    assert _task_of(info, "new task ") != earlier
