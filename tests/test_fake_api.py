"""The loopback fake of the hosted API follows the documented contract, over real HTTP.

Other tests trust this server to behave like the provider; these tests are what that trust rests
on. Everything goes through `requests` and real sockets; no test waits on a clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import requests

from hunyuancustom.params import REF2V_480P, REF2V_720P
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario
from hunyuancustom.testing.media import make_test_image, make_test_video, png_bytes

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"image": "https://cdn.example.test/ref.png", "prompt": "A man is writing a letter at his desk."}
REPO = Path(__file__).resolve().parent.parent


def submit(api, body=BODY, model=REF2V_720P, base=None, headers=AUTH):
    return requests.post(f"{base or api.base_url}/{model.model_id}", json=body, headers=headers, timeout=10)


def check_envelope(payload, status):
    assert payload["code"] == 200 and payload["message"] == "success"
    data = payload["data"]
    assert set(data) == {"id", "model", "outputs", "urls", "has_nsfw_contents", "status",
                         "created_at", "error", "timings"}
    assert data["status"] == status and isinstance(data["timings"]["inference"], int)
    assert data["created_at"].endswith("Z") and "T" in data["created_at"]
    return data


def test_submit_poll_complete_and_download_a_real_mp4(api, tmp_path):
    api.set_scenario(Scenario(created_polls=1, processing_polls=2))
    resp = submit(api, {**BODY, "size": "720*1280", "seed": 42})
    assert resp.status_code == 200
    created = check_envelope(resp.json(), "created")
    assert created["model"] == REF2V_720P.model_id and created["outputs"] == []
    assert created["urls"]["get"] == f"{api.base_url}/predictions/{created['id']}/result"

    seen = []
    for _ in range(4):
        r = requests.get(created["urls"]["get"], headers=AUTH, timeout=10)
        assert r.status_code == 200
        seen.append(check_envelope(r.json(), r.json()["data"]["status"]))
    assert [d["status"] for d in seen] == ["created", "processing", "processing", "completed"]
    done = seen[-1]
    assert done["has_nsfw_contents"] == [False] and done["error"] == ""
    assert done["timings"]["inference"] >= 1 and len(done["outputs"]) == 1

    video = requests.get(done["outputs"][0], timeout=10)
    assert video.status_code == 200 and video.headers["Content-Type"] == "video/mp4"
    assert int(video.headers["Content-Length"]) == len(video.content)
    path = tmp_path / "out.mp4"
    path.write_bytes(video.content)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(video=0)) == 9

    assert api.stats() == {"submits": 1, "result_gets": 4, "uploads": 0, "downloads": 1}
    recorded = api.requests[0]
    assert recorded.method == "POST" and recorded.json["seed"] == 42 and recorded.auth_ok


def test_the_v3_root_and_the_480p_model_answer_alike(api):
    resp = submit(api, {**BODY, "size": "480*832"}, model=REF2V_480P, base=api.base_url_v3)
    data = check_envelope(resp.json(), "created")
    assert data["model"] == REF2V_480P.model_id and "/api/v3/predictions/" in data["urls"]["get"]
    # 720p sizes are not 480p sizes: the table is per model.
    wrong = submit(api, {**BODY, "size": "1280*720"}, model=REF2V_480P)
    assert wrong.status_code == 400 and wrong.json()["message"].startswith("size: ")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_missing_or_wrong_key_is_401_and_never_recorded(api, headers):
    resp = submit(api, headers=headers)
    assert resp.status_code == 401
    assert resp.json() == {"code": 401, "message": "Unauthorized", "data": None}
    assert api.stats()["submits"] == 0
    rec = api.requests[0]
    assert not rec.auth_ok
    assert KEY not in json.dumps(rec.headers) and "wrong" not in json.dumps(rec.headers)


def test_recorded_authorization_is_redacted(api):
    submit(api)
    rec = api.requests[0]
    assert rec.auth_ok and rec.headers["Authorization"] == "Bearer ***"


@pytest.mark.parametrize("change, field", [
    ({"guidance_scale": 10.5}, "guidance_scale"),
    ({"flow_shift": 0.5}, "flow_shift"),
    ({"seed": 10_000_000_000}, "seed"),
    ({"size": "640*480"}, "size"),
    ({"prompt": ""}, "prompt"),
    ({"enable_safety_checker": "yes"}, "enable_safety_checker"),
    ({"steps": 30}, "steps"),  # unknown fields are refused, not ignored
    ({"image": "/home/me/ref.png"}, "image"),  # local paths must be uploaded first
])
def test_invalid_bodies_are_400_naming_the_field(api, change, field):
    resp = submit(api, {**BODY, **change})
    assert resp.status_code == 400
    payload = resp.json()
    assert payload["code"] == 400 and payload["data"] is None
    assert payload["message"].startswith(f"{field}: ")
    assert api.stats()["submits"] == 0


def test_unknown_task_is_a_404_envelope(api):
    resp = requests.get(f"{api.base_url}/predictions/nope/result", headers=AUTH, timeout=10)
    assert resp.status_code == 404 and resp.json()["code"] == 404 and resp.json()["data"] is None


def test_failed_task_answers_200_with_the_error(api):
    api.set_scenario(fail_error="worker lost", processing_polls=0)
    task = submit(api).json()["data"]
    data = requests.get(task["urls"]["get"], headers=AUTH, timeout=10).json()["data"]
    assert data["status"] == "failed" and data["error"] == "worker lost" and data["outputs"] == []


def test_only_tasks_with_the_marked_prompt_fail(api):
    api.set_scenario(fail_if_prompt_contains="[fail]", processing_polls=0)
    failing = submit(api, {**BODY, "prompt": "A man waves. [fail]"}).json()["data"]
    passing = submit(api).json()["data"]
    failed = requests.get(failing["urls"]["get"], headers=AUTH, timeout=10).json()["data"]
    done = requests.get(passing["urls"]["get"], headers=AUTH, timeout=10).json()["data"]
    assert failed["status"] == "failed" and failed["error"] and failed["outputs"] == []
    assert done["status"] == "completed" and len(done["outputs"]) == 1


def test_nsfw_flags_and_blocked_outputs(api):
    api.set_scenario(nsfw=True, processing_polls=0)
    shown = requests.get(submit(api).json()["data"]["urls"]["get"], headers=AUTH, timeout=10).json()
    assert shown["data"]["has_nsfw_contents"] == [True] and len(shown["data"]["outputs"]) == 1
    api.set_scenario(nsfw_blocks_output=True)
    blocked = requests.get(submit(api).json()["data"]["urls"]["get"], headers=AUTH, timeout=10).json()
    assert blocked["data"]["has_nsfw_contents"] == [True] and blocked["data"]["outputs"] == []


def test_upload_round_trip_is_byte_exact(api):
    # Bytes that would trip a line-based parser: CR, LF, a fake boundary, every byte value.
    payload = png_bytes(make_test_image(None, 64, 48)) + b"\r\n--x\r\n\r\n" + bytes(range(256))
    resp = requests.post(f"{api.base_url}/media/upload/binary", headers=AUTH, timeout=10,
                         files={"file": ("ref image.png", payload, "image/png")})
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert data["type"] == "image" and data["filename"] == "ref image.png"
    assert data["size"] == len(payload) and data["download_url"].startswith(api.origin + "/files/")
    back = requests.get(data["download_url"], timeout=10)
    assert back.status_code == 200 and back.content == payload
    assert api.stats()["uploads"] == 1


def test_upload_without_the_file_field_is_400(api):
    resp = requests.post(f"{api.base_url}/media/upload/binary", headers=AUTH, timeout=10,
                         files={"image": ("a.png", b"x", "image/png")})
    assert resp.status_code == 400 and resp.json()["message"].startswith("file: ")


def test_scripted_429_carries_retry_after_then_the_api_answers(api):
    api.set_scenario(Scenario(submit_responses=[
        {"status": 429, "headers": {"Retry-After": "2"}, "body": {"code": 429, "message": "Too many"}},
    ]))
    first = submit(api)
    assert first.status_code == 429 and first.headers["Retry-After"] == "2"
    assert first.json()["message"] == "Too many"
    assert submit(api).status_code == 200
    assert api.stats()["submits"] == 1 and len(api.requests) == 2


def test_scripted_raw_and_dropped_answers(api):
    task = submit(api).json()["data"]
    api.set_scenario(result_responses=[{"raw": b"not json"}, {"drop": True}, {"status": 503}])
    raw = requests.get(task["urls"]["get"], headers=AUTH, timeout=10)
    assert raw.status_code == 200 and raw.content == b"not json"
    with pytest.raises(requests.ConnectionError):
        requests.get(task["urls"]["get"], headers=AUTH, timeout=10)
    unavailable = requests.get(task["urls"]["get"], headers=AUTH, timeout=10)
    assert unavailable.status_code == 503 and unavailable.json()["code"] == 503
    assert requests.get(task["urls"]["get"], headers=AUTH, timeout=10).status_code == 200
    assert api.stats()["result_gets"] == 1  # scripted answers do not advance the task


def test_insufficient_balance_is_402(api):
    api.set_scenario(insufficient_balance=True)
    resp = submit(api)
    assert resp.status_code == 402 and "Insufficient balance" in resp.json()["message"]


def test_expired_and_truncated_outputs(api):
    api.set_scenario(processing_polls=0, output_drop_first_n=1)
    url = requests.get(submit(api).json()["data"]["urls"]["get"], headers=AUTH, timeout=10
                       ).json()["data"]["outputs"][0]
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # fewer bytes than promised
        requests.get(url, timeout=10).content  # noqa: B018 - reading the body is the test
    whole = requests.get(url, timeout=10)
    assert len(whole.content) == int(whole.headers["Content-Length"])
    api.set_scenario(output_status=404)  # the task is done; its URL now "expired"
    assert requests.get(url, timeout=10).status_code == 404
    api.set_scenario(output_status=None, output_ttl_s=0.0)
    assert requests.get(url, timeout=10).status_code == 404
    assert api.stats()["downloads"] == 4


def test_redirected_trickled_and_stalled_answers(api):
    api.set_scenario(processing_polls=0, output_redirect_host="localhost")
    url = requests.get(submit(api).json()["data"]["urls"]["get"], headers=AUTH, timeout=10
                       ).json()["data"]["outputs"][0]
    first = requests.get(url, timeout=10, allow_redirects=False)
    assert first.status_code == 302
    assert first.headers["Location"] == f"http://localhost:{api.port}{url[len(api.origin):]}"
    assert requests.get(url, timeout=10).content == requests.get(first.headers["Location"]).content

    api.set_scenario(output_redirect_host=None, output_trickle_s=60.0, output_trickle_interval_s=0.01)
    with requests.get(url, stream=True, timeout=10) as r:  # announced whole, sent a byte at a time
        assert int(r.headers["Content-Length"]) > 3
        assert [r.raw.read(1) for _ in range(3)] and api.stalled.is_set()
        api.release_stalls()  # ... until told to stop: then the connection is cut
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            r.content  # noqa: B018 - reading the body is the test

    api.set_scenario(submit_stall_s=60.0)
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=submit(api)))
    t.start()
    assert api.stalled.wait(10) and len(api.task_ids()) == 2  # created before the answer
    api.release_stalls()
    t.join(10)
    assert answer["r"].status_code == 200


def test_custom_video_and_time_based_completion(api, tmp_path):
    video = make_test_video(tmp_path / "custom.mp4", frames=5, width=32, height=32)
    api.set_scenario(video_path=video, task_seconds=0.0, processing_polls=10**6)
    data = requests.get(submit(api).json()["data"]["urls"]["get"], headers=AUTH, timeout=10).json()["data"]
    assert data["status"] == "completed"  # time, not the poll count, decides
    assert requests.get(data["outputs"][0], timeout=10).content == video.read_bytes()
    api.set_scenario(task_seconds=3600.0)
    data = requests.get(submit(api).json()["data"]["urls"]["get"], headers=AUTH, timeout=10).json()["data"]
    assert data["status"] == "processing"


def test_http_control_routes(api):
    r = requests.post(f"{api.origin}/_control/scenario", timeout=10,
                      json={"api_key": "other", "processing_polls": 0, "fail_error": "boom"})
    assert r.status_code == 200 and api.scenario.api_key == "other"
    task = submit(api, headers={"Authorization": "Bearer other"}).json()["data"]
    status = requests.get(task["urls"]["get"], headers={"Authorization": "Bearer other"}, timeout=10)
    assert status.json()["data"]["status"] == "failed"
    stats = requests.get(f"{api.origin}/_control/stats", timeout=10).json()
    assert stats == {"submits": 1, "result_gets": 1, "uploads": 0, "downloads": 0}
    bad = requests.post(f"{api.origin}/_control/scenario", json={"no_such_field": 1}, timeout=10)
    assert bad.status_code == 400 and "no_such_field" in bad.json()["error"]
    assert requests.post(f"{api.origin}/_control/reset", timeout=10).json() == {"ok": True}
    assert api.stats()["submits"] == 0 and api.requests == [] and api.task_ids() == []
    assert api.errors == []


def test_stopped_server_refuses_connections():
    with FakeWaveSpeed() as gone:
        base = gone.base_url
        requests.get(f"{gone.origin}/_control/stats", timeout=10)  # a keep-alive connection
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/predictions/x/result", timeout=10)


def test_test_video_frames_are_distinct_and_in_order(tmp_path):
    path = make_test_video(tmp_path / "v.mp4", frames=9, width=64, height=48, fps=25)
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(float)
    assert frames.shape == (9, 48, 64, 3)
    # The blue level rises with the index (the median ignores the narrow white bar) ...
    assert np.all(np.diff(np.median(frames[..., 2], axis=(1, 2))) > 10)
    # ... and the white bar, the only place where every channel is high, moves right.
    bar_x = frames.min(axis=3).mean(axis=1).argmax(axis=1)
    assert np.all(np.diff(bar_x) > 0)


def test_command_line_server_prints_ready_and_serves(tmp_path):
    video = make_test_video(tmp_path / "cli.mp4", frames=3)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "hunyuancustom.testing.fake_api", "--port", "0",
                             "--video", str(video)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:") and line.endswith("/api/v2")
        base = line.split()[1]
        resp = requests.post(f"{base}/{REF2V_720P.model_id}", json=BODY, headers=AUTH, timeout=10)
        assert resp.status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err and "POST" not in err  # quiet: no per-request log lines
