"""The cloud node inside a real ComfyUI (COMFYUI_PATH), talking to the loopback API server.

LoadImage -> Ref2V (Cloud 720p) -> SaveVideo runs through /prompt; the saved MP4
shows up in /history; widgets come from the parameter table; ComfyUI's cache and Cancel behave;
the key appears nowhere a user could share.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import time
from pathlib import Path

import pytest

from comfyui_harness import comfyui_path, execution_error, requires_comfyui, running_comfyui, skip_reason
from hunyuancustom.params import REF2V_480P, REF2V_720P
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.video import decode_frames
from workflow_check import check_ui_workflow

pytestmark = requires_comfyui

SECRET = "sk-e2e-SECRET-7f3a"
REPO = Path(__file__).resolve().parent.parent
REF_IMAGE = "hunyuancustom_reference.png"


@pytest.fixture(scope="module")
def api():
    with FakeWaveSpeed(Scenario(api_key=SECRET)) as server:
        yield server


@pytest.fixture(scope="module")
def comfy(api, tmp_path_factory):
    if comfyui_path() is None:
        pytest.skip(skip_reason)
    base = tmp_path_factory.mktemp("comfy-cloud")
    with running_comfyui(base, {"WAVESPEED_API_BASE": api.base_url}) as server:
        # The key reaches ComfyUI only through the pack's key file, as the Settings dialog stores it.
        (server.data_dir / "api_key").write_text(SECRET)
        # As the README tells users: the sample inputs go into ComfyUI/input.
        for asset in (p for p in (REPO / "example_workflows").iterdir() if p.is_file()):
            if asset.suffix != ".json":
                shutil.copy(asset, server.input_dir / asset.name)
        yield server


@pytest.fixture(autouse=True)
def fresh_api(api):
    api.set_scenario(Scenario(api_key=SECRET, processing_polls=2))
    api.reset()


def graph(seed=77, prompt="The person waves hello.", **widgets):
    node = {"image": ["1", 0], "prompt": prompt, "negative_prompt": "", "size": "720*1280",
            "guidance_scale": 6.0, "flow_shift": 9.5, "seed": seed, "enable_safety_checker": True}
    node.update(widgets)
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": REF_IMAGE}},
        "2": {"class_type": "HunyuanCustomCloudRef2V720p", "inputs": node},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "video/e2e",
                                                   "format": "auto", "codec": "auto"}},
    }


def test_widgets_come_from_the_parameter_table(comfy):
    info = comfy.object_info()
    for model in (REF2V_720P, REF2V_480P):
        node = info[f"HunyuanCustomCloudRef2V{model.label}"]
        req = node["input"]["required"]
        assert node["output"] == ["VIDEO", "IMAGE", "FLOAT", "STRING", "STRING"]
        for name in ("guidance_scale", "flow_shift", "seed"):
            p, opts = model.param(name), req[name][1]
            assert (opts["min"], opts["max"], opts["default"]) == (p.minimum, p.maximum, p.default)
        assert req["seed"][1]["control_after_generate"] is True
        sizes = req["size"][1].get("options") or req["size"][0]
        assert list(sizes) == list(model.sizes)
        assert req["enable_safety_checker"][1]["default"] is True
        assert "image_index" in node["input"]["optional"]
        # No widget can hold a key.
        assert not any("key" in name for section in node["input"].values() for name in section)


def test_example_workflows_load_without_missing_nodes_or_widgets(comfy):
    info = comfy.object_info()
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        wf = json.loads(path.read_text())
        # Workflows with model loaders name model files this server does not have; the local and
        # mode tests check them on servers that do.
        if any("Loader" in n["type"] or n["type"].endswith("LoadModeModules") for n in wf["nodes"]):
            continue
        problems = check_ui_workflow(wf, info)
        assert not problems, f"{path.name}: {problems}"


def test_graph_runs_and_saves_the_video(comfy, api):
    entry = comfy.wait(comfy.queue(graph()), timeout=120)
    outputs = entry["outputs"]
    saved = outputs["3"]["images"][0]
    assert saved["filename"].endswith(".mp4") and saved["type"] == "output"
    video = comfy.output_dir / saved["subfolder"] / saved["filename"]
    frames, fps = decode_frames(video)
    assert frames.shape[0] > 1 and fps > 0
    # The node previews its own copy of the result and reports the task.
    own = outputs["2"]["images"][0]
    assert own["subfolder"].startswith("hunyuancustom")
    assert (comfy.output_dir / own["subfolder"] / own["filename"]).exists()
    info = outputs["2"]["hunyuancustom"][0]
    assert info["status"] == "completed" and info["task_id"] in api.task_ids()
    # What reached the API is exactly what the widgets said.
    body = next(r.json for r in api.requests if r.method == "POST" and "/wavespeed-ai/" in r.path)
    sent = (body["size"], body["guidance_scale"], body["flow_shift"], body["seed"])
    assert sent == ("720*1280", 6.0, 9.5, 77)
    assert api.stats()["submits"] == 1 and api.stats()["uploads"] == 1

    # The key is nowhere a user could share or read.
    assert SECRET not in json.dumps(entry)
    assert SECRET not in json.dumps(comfy.object_info())
    assert SECRET.encode() not in video.read_bytes()
    assert SECRET not in comfy.log_text()


def test_unchanged_graph_with_fixed_seed_is_not_billed_again(comfy, api):
    comfy.wait(comfy.queue(graph(seed=501)))
    comfy.wait(comfy.queue(graph(seed=501)))
    assert api.stats()["submits"] == 1  # ComfyUI reused the node's result
    comfy.wait(comfy.queue(graph(seed=-1)))
    comfy.wait(comfy.queue(graph(seed=-1)))
    assert api.stats()["submits"] == 3  # seed -1: a new video every run


def test_bad_input_fails_before_any_request_with_the_field_named(comfy, api):
    entry = comfy.wait(comfy.queue(graph(prompt="   ")), raise_on_error=False)
    err = execution_error(entry)
    assert err and err["exception_message"].startswith("prompt: must not be empty")
    assert api.requests == []


def test_provider_failure_is_shown_with_the_task_id(comfy, api):
    api.set_scenario(Scenario(api_key=SECRET, processing_polls=1, fail_error="worker lost"))
    entry = comfy.wait(comfy.queue(graph(seed=9)), raise_on_error=False)
    err = execution_error(entry)
    assert "worker lost" in err["exception_message"]
    assert api.task_ids()[0] in err["exception_message"]


def test_cancel_stops_the_wait_within_about_a_second(comfy, api):
    api.set_scenario(Scenario(api_key=SECRET, processing_polls=100_000))
    prompt_id = comfy.queue(graph(seed=10))
    deadline = time.monotonic() + 60
    while api.stats()["result_gets"] < 2:  # the node is polling
        assert time.monotonic() < deadline, comfy.log_tail()
        time.sleep(0.05)
    pressed = time.monotonic()
    comfy.interrupt()
    entry = comfy.wait(prompt_id, timeout=30, raise_on_error=False)
    assert time.monotonic() - pressed < 3.0  # includes the harness's 0.2 s history polling
    assert any(event == "execution_interrupted" for event, _ in entry["status"]["messages"])
    assert api.stats()["submits"] == 1


# --- the job journal inside ComfyUI -------------------------------------------------------------------


def wait_until_polling(comfy, api):
    deadline = time.monotonic() + 60
    while api.stats()["result_gets"] < 1:
        assert time.monotonic() < deadline, comfy.log_tail()
        time.sleep(0.05)


def test_requeue_after_cancel_resumes_the_same_task(comfy, api):
    api.set_scenario(Scenario(api_key=SECRET, task_seconds=4.0))
    first = comfy.queue(graph(seed=11))
    wait_until_polling(comfy, api)
    comfy.interrupt()
    entry = comfy.wait(first, timeout=30, raise_on_error=False)
    assert any(event == "execution_interrupted" for event, _ in entry["status"]["messages"])
    (task_id,) = api.task_ids()

    entry = comfy.wait(comfy.queue(graph(seed=11)), timeout=120)
    info = entry["outputs"]["2"]["hunyuancustom"][0]
    assert info["task_id"] == task_id and info["source"] == "resumed"
    assert info["billed"] is False  # paid for when the cancelled run submitted it
    assert api.stats()["submits"] == 1 and api.stats()["uploads"] <= 1  # earlier uploads reused
    assert "3" in entry["outputs"]  # Save Video got the resumed result


def test_force_new_pays_again_on_purpose(comfy, api):
    first = comfy.wait(comfy.queue(graph(seed=12)))["outputs"]["2"]["hunyuancustom"][0]
    assert "billed_again" not in first  # the first payment for this request
    entry = comfy.wait(comfy.queue(graph(seed=12, force_new=True)))
    assert entry["outputs"]["2"]["hunyuancustom"][0]["source"] == "new"
    assert entry["outputs"]["2"]["hunyuancustom"][0]["billed"] is True
    # The node's line says "billed again": this request already had a paid, saved result.
    assert entry["outputs"]["2"]["hunyuancustom"][0]["billed_again"] is True
    assert api.stats()["submits"] == 2
    comfy.wait(comfy.queue(graph(seed=12, force_new=True)))  # ComfyUI's cache does not hold it back
    assert api.stats()["submits"] == 3
    comfy.wait(comfy.queue(graph(seed=12)))  # switched off again: the journal's saved video
    assert api.stats()["submits"] == 3


def test_batch_node_runs_every_pair_and_shares_the_widgets(comfy, api):
    node = comfy.object_info("HunyuanCustomCloudBatch720p")["HunyuanCustomCloudBatch720p"]
    req = node["input"]["required"]
    assert node["output"] == ["VIDEO", "STRING"] and node["output_is_list"] == [True, False]
    for name in ("guidance_scale", "flow_shift", "seed"):
        p, opts = REF2V_720P.param(name), req[name][1]
        assert (opts["min"], opts["max"], opts["default"]) == (p.minimum, p.maximum, p.default)
    assert req["prompts"][1]["multiline"] is True and "prompt" not in req

    widgets = {"prompts": "The person waves.\n\nThe person dances.", "combine": "every image x every prompt",
               "negative_prompt": "", "size": "1280*720", "guidance_scale": 7.5, "flow_shift": 13.0,
               "seed": 21, "enable_safety_checker": True, "concurrency": 2}
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": REF_IMAGE}},
        "2": {"class_type": "HunyuanCustomCloudBatch720p", "inputs": {"images": ["1", 0], **widgets}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "video/batch",
                                                   "format": "auto", "codec": "auto"}},
    }
    entry = comfy.wait(comfy.queue(g), timeout=180)
    assert len(entry["outputs"]["3"]["images"]) == 2  # Save Video ran once per video
    summary = entry["outputs"]["2"]["hunyuancustom_batch"][0]
    assert [r["prompt"] for r in summary["results"]] == ["The person waves.", "The person dances."]
    assert [r["status"] for r in summary["results"]] == ["done", "done"]
    assert api.stats()["submits"] == 2 and api.stats()["uploads"] <= 1
    # Paths inside ComfyUI's output folder, as the previews name them: no server path.
    assert [r["output"] for r in summary["results"]] == [
        f"{v['subfolder']}/{v['filename']}" for v in entry["outputs"]["2"]["images"]]
    assert all((comfy.output_dir / r["output"]).is_file() for r in summary["results"])
    assert str(comfy.base_dir) not in json.dumps(summary)
    assert (summary["billed"], summary["free"]) == (2, 0)
    assert [r["billed"] for r in summary["results"]] == [True, True]
    # Unchanged graph, fixed seed: ComfyUI's cache answers, no request at all.
    api.reset()
    comfy.wait(comfy.queue(g))
    assert api.requests == []
    # Changed only in how it runs: the node runs again and the journal serves both videos, free.
    g["2"]["inputs"]["concurrency"] = 1
    entry = comfy.wait(comfy.queue(g))
    summary = entry["outputs"]["2"]["hunyuancustom_batch"][0]
    assert api.requests == [] and (summary["billed"], summary["free"]) == (0, 2)


def test_batch_summary_names_no_server_path_even_in_errors(comfy, api):
    """A job whose submit answer was lost fails on the rerun with a message naming the journal
    file: the summary, which a user may share, names it by its folder's role, not its path."""
    api.set_scenario(Scenario(api_key=SECRET, submit_responses=[{"status": 500, "body": {
        "code": 500, "message": "upstream hiccup", "data": None}}]))
    widgets = {"prompts": "The person waves.\nThe person dances.", "combine": "every image x every prompt",
               "negative_prompt": "", "size": "1280*720", "guidance_scale": 7.5, "flow_shift": 13.0,
               "seed": 24, "enable_safety_checker": True, "concurrency": 1}
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": REF_IMAGE}},
        "2": {"class_type": "HunyuanCustomCloudBatch720p", "inputs": {"images": ["1", 0], **widgets}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},  # the summary STRING
    }
    comfy.wait(comfy.queue(g), timeout=120)
    g["2"]["inputs"]["concurrency"] = 2  # run again (the batch resumes): the lost submit is refused
    entry = comfy.wait(comfy.queue(g), timeout=120)
    summary = entry["outputs"]["2"]["hunyuancustom_batch"][0]
    assert json.loads(entry["outputs"]["3"]["text"][0]) == summary
    failed = [r for r in summary["results"] if r["status"] == "failed"]
    assert len(failed) == 1 and "[HunyuanCustom data folder]/jobs.sqlite3" in failed[0]["error"]
    assert str(comfy.base_dir) not in json.dumps(summary), summary


def test_batch_node_checks_each_image_before_any_request(comfy, api):
    api.reset()
    widgets = {"prompts": "The person waves.", "combine": "every image x every prompt",
               "negative_prompt": "", "size": "1280*720", "guidance_scale": 7.5, "flow_shift": 13.0,
               "seed": 22, "enable_safety_checker": True, "concurrency": 2}
    g = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2,
                                                     "color": 0}},
        "2": {"class_type": "HunyuanCustomCloudBatch720p", "inputs": {"images": ["1", 0], **widgets}},
    }
    entry = comfy.wait(comfy.queue(g), timeout=120, raise_on_error=False)
    err = json.dumps(execution_error(entry))
    assert "images: is 8x8 pixels; at least 16x16 is needed" in err, err
    assert api.requests == []


def test_cache_hit_after_a_comfyui_restart_makes_no_request(comfy, api):
    """Restart the server (ComfyUI's own cache is gone): the journal still has the video."""
    first = comfy.wait(comfy.queue(graph(seed=31)))
    task_id = first["outputs"]["2"]["hunyuancustom"][0]["task_id"]
    comfy.stop()
    api.set_scenario(Scenario(api_key=SECRET, output_status=404))  # the output URL has expired too
    api.reset()
    comfy.start()
    entry = comfy.wait(comfy.queue(graph(seed=31)), timeout=120)
    assert api.requests == []
    info = entry["outputs"]["2"]["hunyuancustom"][0]
    assert info["source"] == "cache" and info["task_id"] == task_id
    saved = entry["outputs"]["3"]["images"][0]
    assert decode_frames(comfy.output_dir / saved["subfolder"] / saved["filename"])[0].shape[0] > 1


def clear_output_folder(comfy):
    for child in comfy.output_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def test_a_cleared_output_folder_never_makes_the_node_show_another_videos_as_cached(comfy, api):
    """ComfyUI's numbering restarts in a cleared output folder, so a later job saves under an
    earlier job's old name. Running the earlier job again must show its own video (fetched again
    from its task, not billed again), never the later job's file as its "saved result"."""
    api.set_scenario(Scenario(api_key=SECRET, processing_polls=0, distinct_videos=True))
    clear_output_folder(comfy)
    a = comfy.wait(comfy.queue(graph(seed=61, prompt="Person A waves.")))["outputs"]["2"]
    clear_output_folder(comfy)
    b = comfy.wait(comfy.queue(graph(seed=61, prompt="Person B dances.")))["outputs"]["2"]
    assert b["images"][0]["filename"] == a["images"][0]["filename"]  # B got A's old name
    again = comfy.wait(comfy.queue(graph(seed=61, prompt="Person A waves.")))["outputs"]["2"]
    info = again["hunyuancustom"][0]
    a_task, b_task = a["hunyuancustom"][0]["task_id"], b["hunyuancustom"][0]["task_id"]
    assert info["task_id"] == a_task and info["source"] == "resumed"  # fetched, not "cache"
    assert api.stats()["submits"] == 2
    shown = again["images"][0]
    shown_path = comfy.output_dir / shown["subfolder"] / shown["filename"]
    assert shown_path.read_bytes() == api.task_video(a_task).read_bytes()
    b_path = comfy.output_dir / b["images"][0]["subfolder"] / b["images"][0]["filename"]
    assert b_path.read_bytes() == api.task_video(b_task).read_bytes()  # B's video untouched


def test_live_status_reaches_the_front_end_and_ends_with_the_result(comfy, api):
    """What js/hunyuancustom.js draws, as the browser receives it over the websocket: a status
    event at every poll with the phase and a rising progress, then the node's result. Not also
    core's progress text, which the front end would draw as a second status under the node."""
    import asyncio

    import aiohttp

    api.set_scenario(Scenario(api_key=SECRET, processing_polls=3))
    progress_texts = []

    async def run():
        events, executed = [], None
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfy.url}/ws?clientId={comfy.client_id}") as ws:
                prompt_id = await asyncio.to_thread(comfy.queue, graph(seed=-1))
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY and struct.unpack(">I", msg.data[:4])[0] == 3:
                        progress_texts.append(msg.data)  # core's progress text (BinaryEventTypes.TEXT)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    m = json.loads(msg.data)
                    data = m.get("data") or {}
                    if m["type"] == "hunyuancustom.status":
                        events.append(data)
                    elif m["type"] == "executed" and data.get("prompt_id") == prompt_id \
                            and data.get("node") == "2":
                        executed = data["output"]
                    elif m["type"] in ("execution_success", "execution_error") \
                            and data.get("prompt_id") == prompt_id:
                        return m["type"], events, executed

    kind, events, executed = asyncio.run(asyncio.wait_for(run(), 120))
    assert kind == "execution_success"
    assert {e["node"] for e in events} == {"2"}
    # Each event names the task once one is known (what the front end's Cancel line names).
    task_id = executed["hunyuancustom"][0]["task_id"]
    named = [e["task_id"] for e in events]
    assert named[0] is None and set(named[named.index(task_id):]) == {task_id}, events
    assert progress_texts == []
    texts = [e["text"] for e in events]
    assert texts[0].startswith("Uploading") and texts[-1].startswith("Done")
    # One event per poll while the task is queued/processing (3 processing polls + the completed one).
    polls = [t for t in texts if t.startswith(("Queued", "Processing", "Completed"))]
    assert len(polls) >= 4, texts
    assert all(f"task {executed['hunyuancustom'][0]['task_id']}" in t for t in polls)
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    # The result the front end shows under the node: the video preview and the task line.
    assert executed["images"][0]["filename"].endswith(".mp4") and executed["animated"] == [True]
    assert SECRET not in json.dumps(events)


# --- frames only when used; billed or free --------------------------------------------------------


def run_watching(comfy, g, node="2"):
    """Queue `g` and read the websocket as the front end does: (the status lines node `node`
    showed, from the pack's own event or core's progress text, in order; the history entry)."""
    import aiohttp

    async def run():
        texts = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfy.url}/ws?clientId={comfy.client_id}") as ws:
                prompt_id = await asyncio.to_thread(comfy.queue, g)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:  # core's progress text: type 3
                        (kind, n), rest = struct.unpack(">II", msg.data[:8]), msg.data[8:]
                        if kind == 3 and rest[:n].decode() == node:
                            texts.append(rest[n:].decode())
                        continue
                    m = json.loads(msg.data)
                    data = m.get("data") or {}
                    if m["type"] == "hunyuancustom.status" and data.get("node") == node:
                        texts.append(data["text"])
                    elif m["type"] in ("execution_success", "execution_error") \
                            and data.get("prompt_id") == prompt_id:
                        return prompt_id, texts

    prompt_id, texts = asyncio.run(asyncio.wait_for(run(), 120))
    return texts, comfy.wait(prompt_id)


def frames_graph(seed, frames):
    """The cloud node with Save Video and a preview of its `info`; `frames` also sends its frames
    into core's Get Image Size, whose batch size is previewed."""
    g = graph(seed=seed)
    g["4"] = {"class_type": "PreviewAny", "inputs": {"source": ["2", 4]}}
    if frames:
        g["5"] = {"class_type": "GetImageSize", "inputs": {"image": ["2", 1]}}
        g["6"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}}
    return g


def test_frames_are_decoded_only_when_used_and_the_line_says_billed_or_free(comfy, api):
    # Only Save Video takes the result: no frames decoded. A new task: billed.
    texts, entry = run_watching(comfy, frames_graph(61, frames=False))
    info = json.loads(entry["outputs"]["4"]["text"][0])  # the info output
    assert info == entry["outputs"]["2"]["hunyuancustom"][0]  # and the node's own ui message
    assert info["source"] == "new" and info["billed"] is True
    assert texts[-1].startswith(f"Done · billed: new task {info['task_id']}"), texts
    assert "Decoding frames" not in texts, texts
    own = entry["outputs"]["2"]["images"][0]
    n_frames = decode_frames(comfy.output_dir / own["subfolder"] / own["filename"])[0].shape[0]

    # Frames connected, the node unchanged: ComfyUI must not serve its cached result (which has
    # no frames). The node runs again, gets the saved video from the journal (free) and decodes.
    api.reset()
    texts, entry = run_watching(comfy, frames_graph(61, frames=True))
    assert entry["outputs"]["6"]["text"] == [str(n_frames)]  # the frames reached Get Image Size
    assert "Decoding frames" in texts
    info = json.loads(entry["outputs"]["4"]["text"][0])
    assert info["source"] == "cache" and info["billed"] is False
    assert texts[-1] == f"Cached · free: saved result of task {info['task_id']} (nothing submitted)"
    assert api.requests == []

    # Unchanged again: ComfyUI's cache, with the frames.
    texts, entry = run_watching(comfy, frames_graph(61, frames=True))
    assert texts == [] and entry["outputs"]["6"]["text"] == [str(n_frames)]

    # Frames disconnected again: nothing is decoded.
    texts, entry = run_watching(comfy, frames_graph(61, frames=False))
    assert "Decoding frames" not in texts and api.requests == []


# --- one saved video per run ----------------------------------------------------------------------


def saved_mp4s(comfy) -> list[Path]:
    return sorted(p.relative_to(comfy.output_dir) for p in comfy.output_dir.rglob("*.mp4"))


def previews(entry) -> list[dict]:
    """Every video preview the run shows: each output node's saved/preview files."""
    return [f for out in entry["outputs"].values() for f in out.get("images", [])
            if f["filename"].endswith(".mp4")]


@pytest.mark.parametrize(("name", "videos"), [("HunyuanCustom Ref2V (Cloud).json", 1),
                                              ("HunyuanCustom Ref2V Batch (Cloud).json", 3),
                                              ("HunyuanCustom Virtual Try-On (Cloud).json", 1)])
def test_a_run_of_the_example_workflow_saves_each_video_once_and_shows_it_once(comfy, api, name,
                                                                               videos):
    """The node's own copy is the output (README "Where the videos go"): no Save Video in the
    examples, so one MP4 per video in the output folder and one preview of it."""
    from workflow_check import graph_to_prompt

    api.set_scenario(Scenario(api_key=SECRET, processing_polls=0, distinct_videos=True))
    clear_output_folder(comfy)
    wf = json.loads((REPO / "example_workflows" / name).read_text())
    prompt = graph_to_prompt(wf, comfy.object_info())
    # The examples share a prompt and a seed: a seed of its own per case keeps each run's jobs new
    # (not the journal's result of an earlier case, whose task this server no longer has)
    for node in prompt.values():
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] = 5000 + videos * 10 + len(name)
    entry = comfy.wait(comfy.queue(prompt), timeout=180)
    files = saved_mp4s(comfy)
    assert len(files) == videos and all(f.parts[0] == "hunyuancustom" for f in files), files
    shown = previews(entry)
    assert sorted(Path(f["subfolder"], f["filename"]) for f in shown) == files
    assert all(f["type"] == "output" for f in shown)
    assert api.stats()["submits"] == videos


def test_the_saved_video_is_served_again_only_while_its_size_and_sha256_match(comfy, api):
    """The one saved MP4 is also the journal's: unchanged it is served free after a ComfyUI
    restart; replaced by other bytes it is fetched again from its task (no new submit), and
    written beside it, never over the file now there."""
    api.set_scenario(Scenario(api_key=SECRET, processing_polls=0, distinct_videos=True))
    clear_output_folder(comfy)
    g = graph(seed=71)
    del g["3"]  # the example workflow's shape: the node alone saves
    first = comfy.wait(comfy.queue(g))["outputs"]["2"]
    task_id = first["hunyuancustom"][0]["task_id"]
    (saved,) = saved_mp4s(comfy)
    comfy.stop()
    comfy.start()  # ComfyUI's own cache is gone: only the journal can serve it
    before = len(api.requests)
    again = comfy.wait(comfy.queue(g))["outputs"]["2"]
    assert api.requests[before:] == [] and again["hunyuancustom"][0]["source"] == "cache"
    assert saved_mp4s(comfy) == [saved]  # served where it is: no copy

    other = b"not this task's video" * 100
    (comfy.output_dir / saved).write_bytes(other)
    comfy.stop()
    comfy.start()
    again = comfy.wait(comfy.queue(g))["outputs"]["2"]
    info = again["hunyuancustom"][0]
    assert info["source"] == "resumed" and info.get("refetched") is True
    assert info["task_id"] == task_id and api.stats()["submits"] == 1  # the first run's only
    assert (comfy.output_dir / saved).read_bytes() == other  # the file put there is kept
    (shown,) = previews({"outputs": {"2": again}})
    fetched = comfy.output_dir / shown["subfolder"] / shown["filename"]
    assert fetched.read_bytes() == api.task_video(task_id).read_bytes()


def test_a_key_echoed_by_the_provider_reaches_neither_history_nor_logs(comfy, api):
    # Issue 17, item 5: a 403 that quotes the Bearer header back is redacted where it enters.
    api.set_scenario(Scenario(api_key=SECRET, submit_responses=[{"status": 403, "body": {
        "code": 403, "message": f"Forbidden for Bearer {SECRET}", "data": None}}]))
    entry = comfy.wait(comfy.queue(graph(seed=4711)), raise_on_error=False)
    err = execution_error(entry)
    assert "Forbidden for Bearer ***" in err["exception_message"]
    assert SECRET not in json.dumps(entry)
    assert SECRET not in comfy.log_text()
    assert SECRET not in json.dumps(comfy._request("GET", "/internal/logs"))


def test_frames_used_takes_cores_own_answer_where_core_gives_one(monkeypatch):
    """Newer cores tell a node which outputs are used (`ExecutionContext.expected_outputs`, read by
    `comfy_execution.utils.is_output_needed`); 0.3.64 and 0.33.0 do not, and there the graph is read.
    In-process: the context is core's own class where it has the field, else one with its fields."""
    import importlib
    from typing import NamedTuple

    from comfyui_harness import import_pack

    cloud = importlib.import_module(import_pack().__name__ + ".nodes.cloud")
    from comfy_execution import utils as core_utils  # importable once the pack's core is
    if "expected_outputs" in core_utils.ExecutionContext._fields:
        context_class = core_utils.ExecutionContext
    else:  # the newer core's fields, as comfy_execution/utils.py declares them there
        class context_class(NamedTuple):  # noqa: N801
            prompt_id: str
            node_id: str
            list_index: int | None
            expected_outputs: frozenset | None = None

    # The graph links `frames` (output 1) of node 2 to node 5: reading it says "used".
    linked = {"2": {"class_type": "HunyuanCustomCloudRef2V720p", "inputs": {}},
              "5": {"class_type": "GetImageSize", "inputs": {"image": ["2", cloud.FRAMES_OUTPUT]}}}
    monkeypatch.setattr(cloud, "running_prompt", lambda prompt_id: linked)

    def context(expected):
        monkeypatch.setattr(cloud, "get_executing_context",
                            lambda: context_class("p1", "2", None, expected))

    context(frozenset({0, 2}))  # core: only the video and info outputs may be used
    assert cloud.frames_used() is False
    context(frozenset({cloud.FRAMES_OUTPUT}))
    assert cloud.frames_used() is True
    context(None)  # core does not know: the graph decides
    assert cloud.frames_used() is True
    monkeypatch.setattr(cloud, "running_prompt", lambda prompt_id: {"2": linked["2"]})
    assert cloud.frames_used() is False
