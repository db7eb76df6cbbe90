"""A loopback implementation of the hosted HunyuanCustom API (WaveSpeedAI), for tests and benchmarks.

It is a real HTTP server on 127.0.0.1 that follows the documented contract (the seed's endpoints
and envelope, under both `/api/v2` and `/api/v3`), so the client is exercised through real
sockets, real JSON and real multipart bodies instead of mocks. A `Scenario` scripts how the
provider behaves: how long tasks take, failures, throttling, broken answers, NSFW flags, expired
or truncated downloads.

    with FakeWaveSpeed(Scenario(processing_polls=3)) as api:
        api.base_url       # "http://127.0.0.1:PORT/api/v2"
        ...
        api.stats()        # {"submits": 1, "result_gets": 4, "uploads": 1, "downloads": 1}

From another process (ComfyUI in an end-to-end test):

    python -m hunyuancustom.testing.fake_api --port 0 [--video out.mp4] [--api-key KEY]
    -> prints "READY http://127.0.0.1:PORT/api/v2"; control it over HTTP with
       POST /_control/scenario (JSON Scenario fields), GET /_control/stats, POST /_control/reset.

Control routes are unauthenticated on purpose: this server binds 127.0.0.1 only and holds no
real credentials. They are not recorded in `requests`.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import dataclasses
import io
import json
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ..errors import ValidationError
from ..params import model_for, validate_request
from .media import make_test_video

ROOTS = ("/api/v2", "/api/v3")
MAX_BODY = 64 << 20  # uploads beyond this answer 413; the real limit (~300 MB) is irrelevant here
_CHUNK = 64 << 10


# --- the scenario ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    """How the fake provider behaves. Every field has a default: `Scenario()` is a healthy API.

    Task timing and outcome (`created_polls`, `processing_polls`, `task_seconds`, `fail_error`,
    `nsfw`, `nsfw_blocks_output`, `video_path`) are fixed for a task when it is submitted.
    Download behaviour (`output_status`, `output_drop_first_n`, `output_ttl_s`) is read when the
    file is fetched, so a test can let a task complete and then make its output "expire".
    Scripted answers are consumed from the start each time a scenario is set.
    """

    api_key: str = "test-key"
    # Result polls answering "created", then "processing", then the terminal state.
    created_polls: int = 0
    processing_polls: int = 1
    # If set, the poll counts above only shape the early answers: the task reaches its terminal
    # state once this much wall time has passed since the submit (benchmarks, concurrency).
    task_seconds: float | None = None
    # The task ends "failed" with this error text instead of "completed".
    fail_error: str | None = None
    # Only tasks whose prompt contains this text fail (with fail_error, or a default text): one
    # scenario can then serve a run that succeeds and one that fails (browser tests).
    fail_if_prompt_contains: str | None = None
    # Scripted HTTP answers for the first N requests of each endpoint, before any other handling.
    # Each: {"status": int, "headers": {..}, "body": <JSON>} or {"raw": bytes|str} or {"drop": True}.
    submit_responses: list[dict[str, Any]] = field(default_factory=list)
    result_responses: list[dict[str, Any]] = field(default_factory=list)
    upload_responses: list[dict[str, Any]] = field(default_factory=list)
    # The safety checker flagged the output; with nsfw_blocks_output no output URL is given.
    nsfw: bool = False
    nsfw_blocks_output: bool = False
    # Output downloads: answer this status instead of the file (404/403/410 = expired URL), ...
    output_status: int | None = None
    # ... send half the body and close the connection for the first N output downloads, ...
    output_drop_first_n: int = 0
    # ... or answer 404 once an output is older than this many seconds (the provider keeps ~7 days).
    output_ttl_s: float | None = None
    # Submits answer HTTP 402 "Insufficient balance" (after auth and validation).
    insufficient_balance: bool = False
    # The MP4 served as every task's output; None = a small generated test video.
    video_path: str | Path | None = None
    # Stalls, to test Cancel mid-transfer: the media upload is answered only after this long, and
    # output downloads send half the file, then pause this long; a submit creates its task, then
    # answers only after `submit_stall_s`. All end early on `release_stalls()` or when the
    # server stops.
    upload_stall_s: float = 0.0
    output_stall_s: float = 0.0
    # Only the first N media uploads stall (None: every one), so a second client's upload of the
    # same image goes through while the first is held.
    upload_stall_first_n: int | None = None
    # Each task gets its own real MP4 (made at its submit; the n-th such task has 9 + n frames),
    # so a test can tell whose video a file is (`FakeWaveSpeed.task_video`). Overrides video_path.
    distinct_videos: bool = False
    submit_stall_s: float = 0.0
    # Hostile: the first N output downloads are sent with no Content-Length, cut after half the
    # file, and the connection closed cleanly, so the client sees an ordinary end of body.
    output_cut_no_length_first_n: int = 0
    # Hostile: completed tasks report this as their output URL (file://, ftp://, malformed) and
    # this as timings.inference (e.g. float("nan"), float("inf")).
    output_url: str | None = None
    inference_value: Any = None
    # Hostile: output downloads answer 302 to the same path under this host name (e.g.
    # "localhost" for a server reached as 127.0.0.1), so a redirect crosses to another host.
    output_redirect_host: str | None = None
    # Hostile: output downloads announce the whole file, then send it one byte every
    # `output_trickle_interval_s`, for at most `output_trickle_s` seconds, then cut the connection.
    # Ends early (and cuts) on `release_stalls()` or when the server stops.
    output_trickle_s: float = 0.0
    output_trickle_interval_s: float = 0.05
    # Hostile: these fields replace (or add to) those of `data` in every answer about a task, the
    # submit's and the polls' (e.g. {"created_at": "\ud800"}: a lone surrogate, sent as its
    # JSON escape).
    task_fields: dict[str, Any] = field(default_factory=dict)
    # Hostile: a submit creates its task, then sends its (whole, valid) answer one byte every
    # this many seconds. Ends early (and cuts) on `release_stalls()` or when the server stops.
    # Scripted answers (submit_responses...) take two more hostile forms: {"endless": True} (a
    # 200 JSON answer that never ends, chunked) and {"trickle_interval_s": s, "body"/"raw": ...}
    # (that answer, one byte every s seconds).
    submit_trickle_interval_s: float = 0.0

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Scenario:
        """Build from JSON (the control route, the CLI). `raw` answers may be given as text."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise ValueError(f"unknown Scenario fields: {', '.join(unknown)}")
        return cls(**obj)


def _scripted_queue(answers: list[dict[str, Any]]) -> collections.deque:
    for a in answers:
        if not isinstance(a, dict):
            raise TypeError(f"a scripted answer must be a dict, got {a!r}")
    return collections.deque(answers)


# --- recorded requests and tasks --------------------------------------------------------------------


class RecordedRequest(NamedTuple):
    """One request as the server saw it. The Authorization value is never kept, only whether it
    matched the scenario's key."""

    method: str
    path: str  # without the query string
    json: Any  # parsed JSON body, or None (no body, not JSON, multipart)
    headers: dict[str, str]  # Authorization redacted to "Bearer ***"
    auth_ok: bool


@dataclass
class _Task:
    id: str
    model: str
    root: str
    body: dict[str, Any]
    created_at: str
    submitted: float  # time.monotonic()
    plan: Scenario  # the scenario at submit time
    video: Path
    polls: int = 0
    finished: float | None = None  # monotonic time the terminal state was first reported


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _envelope(code: int, message: str, data: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "data": data}


def _error(code: int, message: str) -> tuple[int, dict[str, Any]]:
    return code, _envelope(code, message, None)


# --- default video, made once per process -----------------------------------------------------------

_default_video_lock = threading.Lock()
_default_video_path: Path | None = None


def default_video() -> Path:
    """The generated MP4 served when a scenario names none (made once per process: tests start
    many servers, and encoding costs a tenth of a second)."""
    global _default_video_path
    with _default_video_lock:
        if _default_video_path is None or not _default_video_path.exists():
            folder = Path(tempfile.mkdtemp(prefix="fake-wavespeed-"))
            atexit.register(shutil.rmtree, folder, True)
            _default_video_path = make_test_video(folder / "output.mp4", frames=9, width=64, height=48)
        return _default_video_path


# --- the server ---------------------------------------------------------------------------------------


class FakeWaveSpeed:
    """The fake provider. Use as a context manager, or call `start()` / `stop()`."""

    def __init__(self, scenario: Scenario | None = None, *, port: int = 0):
        self._lock = threading.RLock()
        self._requested_port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._requests: list[RecordedRequest] = []
        self._tasks: dict[str, _Task] = {}
        self._files: dict[str, tuple[bytes | Path, str, float]] = {}  # name -> (data, ctype, t0)
        self._counts = dict.fromkeys(("submits", "result_gets", "uploads", "downloads"), 0)
        self.errors: list[str] = []  # tracebacks of handler crashes (a test may assert it's empty)
        self._unstall = threading.Event()
        self.stalled = threading.Event()  # set when a transfer enters a stall
        self._videos_dir: Path | None = None  # distinct task videos, removed on stop()
        self._distinct_made = 0
        self._expired: set[str] = set()
        self.set_scenario(scenario or Scenario())

    # --- lifecycle ---

    def start(self) -> FakeWaveSpeed:
        if self._httpd is not None:
            return self
        self._httpd = _Server(("127.0.0.1", self._requested_port), _Handler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="FakeWaveSpeed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._unstall.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()  # keep-alive connections would otherwise linger in their threads
        if self._thread is not None:
            self._thread.join(5)
        if self._videos_dir is not None:
            shutil.rmtree(self._videos_dir, ignore_errors=True)
            self._videos_dir = None

    def __enter__(self) -> FakeWaveSpeed:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- addresses ---

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the fake API is not running")
        return self._httpd.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + "/api/v2"

    @property
    def base_url_v3(self) -> str:
        return self.origin + "/api/v3"

    # --- control and inspection ---

    def set_scenario(self, scenario: Scenario | None = None, **changes: Any) -> Scenario:
        """Replace the scenario (`set_scenario(Scenario(...))`), or change fields of the current
        one (`set_scenario(processing_polls=3)`). Scripted answers restart from their first."""
        with self._lock:
            base = scenario if scenario is not None else getattr(self, "_scenario", Scenario())
            new = dataclasses.replace(base, **changes)
            if new.video_path is not None and not Path(new.video_path).is_file():
                raise FileNotFoundError(f"Scenario.video_path does not exist: {new.video_path}")
            self._scenario = new
            self._scripted = {
                "submit": _scripted_queue(new.submit_responses),
                "result": _scripted_queue(new.result_responses),
                "upload": _scripted_queue(new.upload_responses),
            }
            self._drops_left = new.output_drop_first_n
            self._cuts_left = new.output_cut_no_length_first_n
            self._upload_stalls_left = new.upload_stall_first_n
            self._unstall.clear()
            self.stalled.clear()
            return new

    def release_stalls(self) -> None:
        """End every stall now (see Scenario.upload_stall_s, output_stall_s)."""
        self._unstall.set()

    def _upload_stall(self) -> None:
        with self._lock:
            if self._upload_stalls_left is not None:
                if self._upload_stalls_left <= 0:
                    return
                self._upload_stalls_left -= 1
        self._stall(self.scenario.upload_stall_s)

    def _stall(self, seconds: float) -> None:
        if seconds > 0:
            self.stalled.set()
            self._unstall.wait(seconds)

    @property
    def scenario(self) -> Scenario:
        with self._lock:
            return self._scenario

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every API and file request so far (control routes excluded), oldest first."""
        with self._lock:
            return list(self._requests)

    def stats(self) -> dict[str, int]:
        """submits: tasks created; result_gets: polls answered with a task's state (scripted,
        401 and 404 answers excluded); uploads: files stored; downloads: GETs of /files/."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """Forget tasks, files, recorded requests and counters; keep the scenario."""
        with self._lock:
            self._tasks.clear()
            self._files.clear()
            self._requests.clear()
            self._counts = dict.fromkeys(self._counts, 0)
            self.errors.clear()
            self.set_scenario(self._scenario)

    def task_ids(self) -> list[str]:
        with self._lock:
            return list(self._tasks)

    def expire_output(self, task_id: str) -> None:
        """The provider's storage drops that task's output: its URL answers 404 from now on, while
        the task itself is still known (as after the provider's retention for outputs)."""
        with self._lock:
            self._files.pop(f"{task_id}.mp4", None)
            self._expired.add(task_id)

    def task_video(self, task_id: str) -> Path:
        """The MP4 that task serves as its output."""
        with self._lock:
            return self._tasks[task_id].video

    def _distinct_video(self) -> Path:
        """A new MP4, unlike any other this server made (Scenario.distinct_videos)."""
        with self._lock:
            if self._videos_dir is None:
                self._videos_dir = Path(tempfile.mkdtemp(prefix="fake-wavespeed-tasks-"))
            self._distinct_made += 1
            n = self._distinct_made
            folder = self._videos_dir
        # Encoded outside the lock: other requests go on meanwhile.
        return make_test_video(folder / f"task-{n}.mp4", frames=9 + n, width=64, height=48)

    # --- used by the handler ---

    def _record(self, rec: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(rec)

    def _next_scripted(self, endpoint: str) -> dict[str, Any] | None:
        with self._lock:
            queue = self._scripted[endpoint]
            return queue.popleft() if queue else None

    def _auth_ok(self, header: str | None) -> bool:
        return header == "Bearer " + self.scenario.api_key

    def _submit(self, root: str, model_name: str, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            model = model_for(model_name)
        except ValidationError:
            return _error(404, f"Model not found: wavespeed-ai/{model_name}")
        if not isinstance(body, dict):
            return _error(400, "body: must be a JSON object")
        try:
            clean = validate_request(model, body)
        except ValidationError as e:
            return _error(400, f"{e.field}: {e.problem}")
        if not clean["image"].startswith(("http://", "https://", "data:")):
            return _error(400, "image: must be a URL (upload local files through media/upload/binary)")
        own_video = self._distinct_video() if self.scenario.distinct_videos else None
        with self._lock:
            plan = self._scenario
            if plan.fail_if_prompt_contains is not None:
                fails = plan.fail_if_prompt_contains in clean["prompt"]
                plan = dataclasses.replace(plan, fail_if_prompt_contains=None, fail_error=(
                    plan.fail_error or "The model failed to generate the video.") if fails else None)
            if plan.insufficient_balance:
                return _error(402, "Insufficient balance: please top up your account")
            task = _Task(id=uuid.uuid4().hex, model=model.model_id, root=root, body=clean,
                         created_at=_iso_now(), submitted=time.monotonic(), plan=plan,
                         video=own_video or (Path(plan.video_path) if plan.video_path
                                             else default_video()))
            self._tasks[task.id] = task
            self._counts["submits"] += 1
            return 200, _envelope(200, "success", self._task_data(task, "created"))

    def _result(self, task_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return _error(404, f"Prediction not found: {task_id}")
            self._counts["result_gets"] += 1
            task.polls += 1
            return 200, _envelope(200, "success", self._task_data(task, self._state(task)))

    def _state(self, task: _Task) -> str:
        """Advance the task by one poll and return its status."""
        plan = task.plan
        if task.finished is None:
            if task.polls <= plan.created_polls:
                pending = "created"
            elif plan.task_seconds is not None:
                done = time.monotonic() - task.submitted >= plan.task_seconds
                pending = None if done else "processing"
            elif task.polls <= plan.created_polls + plan.processing_polls:
                pending = "processing"
            else:
                pending = None
            if pending is not None:
                return pending
            task.finished = time.monotonic()
            if task.id not in self._expired:
                self._files[f"{task.id}.mp4"] = (task.video, "video/mp4", task.finished)
        return "failed" if plan.fail_error else "completed"

    def _task_data(self, task: _Task, status: str) -> dict[str, Any]:
        plan = task.plan
        outputs: list[str] = []
        nsfw: list[bool] = []
        inference_ms = 0
        if status == "completed":
            nsfw = [plan.nsfw]
            if not (plan.nsfw and plan.nsfw_blocks_output):
                outputs = [f"{self.origin}/files/{task.id}.mp4"]
            inference_ms = max(1, int(((task.finished or time.monotonic()) - task.submitted) * 1000))
        if outputs and plan.output_url is not None:  # hostile scenario: output_url
            outputs = [plan.output_url]
        if status == "completed" and plan.inference_value is not None:  # ... and inference_value
            inference_ms = plan.inference_value
        return {**{
            "id": task.id,
            "model": task.model,
            "outputs": outputs,
            "urls": {"get": f"{self.origin}{task.root}/predictions/{task.id}/result"},
            "has_nsfw_contents": nsfw,
            "status": status,
            "created_at": task.created_at,
            "error": plan.fail_error if status == "failed" else "",
            "timings": {"inference": inference_ms},
        }, **plan.task_fields}

    def _store_upload(self, filename: str, ctype: str, data: bytes) -> dict[str, Any]:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[-80:] or "upload.bin"
        name = f"{uuid.uuid4().hex[:12]}-{safe}"
        with self._lock:
            self._files[name] = (data, ctype, time.monotonic())
            self._counts["uploads"] += 1
        kind = ctype.split("/")[0] if ctype.split("/")[0] in ("image", "video", "audio") else "file"
        return {"type": kind, "download_url": f"{self.origin}/files/{name}", "filename": filename,
                "size": len(data)}

    def _file(self, name: str) -> tuple[int, bytes | Path | None, str, bool]:
        """(status, data, content type, drop half-way) for GET /files/<name>."""
        with self._lock:
            self._counts["downloads"] += 1
            entry = self._files.get(name)
            if entry is None:
                return 404, None, "", False
            data, ctype, t0 = entry
            if isinstance(data, Path):  # a task output (uploads are kept as bytes)
                plan = self._scenario
                if plan.output_status is not None:
                    return plan.output_status, None, "", False
                if plan.output_ttl_s is not None and time.monotonic() - t0 >= plan.output_ttl_s:
                    return 404, None, "", False
                if self._drops_left > 0:
                    self._drops_left -= 1
                    return 200, data, ctype, True
            return 200, data, ctype, False


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # server_close must not wait for clients that keep connections open

    def __init__(self, address, handler, api: FakeWaveSpeed):
        self.api = api
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        # Clients hanging up mid-answer are normal here (timeouts, cancels); say nothing.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            self.api.errors.append(traceback.format_exc())


class _Drop(Exception):
    """Close the connection without an answer."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind its CDN
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # quiet: no per-request lines on stderr

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # --- plumbing ---

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        path = urlsplit(self.path).path
        try:
            body = self._read_body()
        except ValueError as e:
            self._send_json(*_error(400, f"body: {e}"))
            return
        except _Drop:
            self.close_connection = True
            return
        try:
            if path.startswith("/_control/"):
                self._control(method, path, body)
                return
            auth = self.headers.get("Authorization")
            headers = {k: v for k, v in self.headers.items()}
            if auth is not None:
                headers["Authorization"] = "Bearer ***" if auth.startswith("Bearer ") else "***"
            api._record(RecordedRequest(method, path, _json_or_none(self.headers, body), headers,
                                        api._auth_ok(auth)))
            self._route(method, path, body, auth)
        except _Drop:
            self.close_connection = True
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            api.errors.append(traceback.format_exc())
            self._send_json(*_error(500, "fake API crashed (see FakeWaveSpeed.errors)"))

    def _route(self, method: str, path: str, body: bytes, auth: str | None) -> None:
        api = self.server.api
        if path.startswith("/files/"):
            if method not in ("GET", "HEAD"):
                self._send_json(*_error(405, "Method not allowed"))
            else:
                self._serve_file(path[len("/files/"):], head=method == "HEAD")
            return
        root = next((r for r in ROOTS if path.startswith(r + "/")), None)
        if root is None:
            self._send_json(*_error(404, f"Not found: {path}"))
            return
        rest = path[len(root):]
        m_submit = re.fullmatch(r"/wavespeed-ai/([A-Za-z0-9._-]+)", rest)
        m_result = re.fullmatch(r"/predictions/([A-Za-z0-9_-]+)/result", rest)
        if m_submit and method == "POST":
            endpoint = "submit"
        elif m_result and method == "GET":
            endpoint = "result"
        elif rest == "/media/upload/binary" and method == "POST":
            endpoint = "upload"
        elif m_submit or m_result or rest == "/media/upload/binary":
            self._send_json(*_error(405, "Method not allowed"))
            return
        else:
            self._send_json(*_error(404, f"Not found: {path}"))
            return

        # A scripted answer stands in for whatever sits in front of the API (gateway, limiter).
        scripted = api._next_scripted(endpoint)
        if scripted is not None:
            self._send_scripted(scripted)
            return
        if not api._auth_ok(auth):
            self._send_json(*_error(401, "Unauthorized"))
            return
        if endpoint == "submit":
            try:
                payload = json.loads(body or b"null")
            except ValueError:
                self._send_json(*_error(400, "body: not valid JSON"))
                return
            answer = api._submit(root, m_submit.group(1), payload)
            api._stall(api.scenario.submit_stall_s)
            if api.scenario.submit_trickle_interval_s > 0:  # hostile: submit_trickle_interval_s
                self._send_trickle(answer[0], json.dumps(answer[1]).encode(), "application/json",
                                   api.scenario.submit_trickle_interval_s)
                return
            self._send_json(*answer)
        elif endpoint == "result":
            self._send_json(*api._result(m_result.group(1)))
        else:
            api._upload_stall()
            self._upload(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError(f"over {MAX_BODY} bytes")
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            raise _Drop()  # the client went away mid-body
        return data

    def _read_chunked(self) -> bytes:
        parts, total = [], 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise ValueError(f"over {MAX_BODY} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _send_head(self, status: int, length: int, ctype: str, headers: dict[str, str] | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()

    def _send(self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        self._send_head(status, len(data), ctype, headers)
        if not head:
            self.wfile.write(data)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_scripted(self, answer: dict[str, Any]) -> None:
        if answer.get("drop"):
            raise _Drop()
        status = int(answer.get("status", 200))
        headers = dict(answer.get("headers") or {})
        if answer.get("endless"):  # hostile scripted answer: {"endless": True}
            self._send_endless(status)
            return
        if answer.get("trickle_interval_s"):  # hostile scripted answer: trickled
            raw = answer.get("raw")
            data = (raw.encode() if isinstance(raw, str) else bytes(raw)) if raw is not None \
                else json.dumps(answer.get("body")).encode()
            self._send_trickle(status, data, headers.pop("Content-Type", "application/json"),
                               float(answer["trickle_interval_s"]), headers)
            return
        if "raw" in answer:
            raw = answer["raw"]
            raw = raw.encode() if isinstance(raw, str) else bytes(raw)
            ctype = headers.pop("Content-Type", "text/html; charset=utf-8")
            self._send(status, raw, ctype, headers)
            return
        body = answer.get("body")
        if body is None:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            body = _envelope(status, phrase, None)
        headers.pop("Content-Type", None)
        self._send_json(status, body, headers)

    def _upload(self, body: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        try:
            part = _multipart_field(ctype, body, "file")
        except ValueError as e:
            self._send_json(*_error(400, f"file: {e}"))
            return
        filename, part_type, data = part
        info = self.server.api._store_upload(filename, part_type, data)
        self._send_json(200, _envelope(200, "success", info))

    def _serve_file(self, name: str, head: bool) -> None:
        if self._redirect_output(name):
            return
        if not head and (self._serve_cut_output(name) or self._serve_trickle(name)):
            return
        status, data, ctype, drop = self.server.api._file(name)
        if status != 200 or data is None:
            self._send_json(*_error(status, "File not found" if status == 404 else "Forbidden"))
            return
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if head:
            return
        # Streamed in chunks: benchmarks serve realistic multi-megabyte outputs.
        limit = size // 2 if drop else size
        stall_at = size // 2 if isinstance(data, Path) and self.server.api.scenario.output_stall_s else None
        sent = 0
        with (open(data, "rb") if isinstance(data, Path) else io.BytesIO(data)) as f:
            while sent < limit:
                if stall_at is not None and sent >= stall_at:
                    self.wfile.flush()
                    self.server.api._stall(self.server.api.scenario.output_stall_s)
                    stall_at = None
                end = limit if stall_at is None else min(limit, stall_at)
                chunk = f.read(min(_CHUNK, end - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
        if drop:
            self.wfile.flush()
            raise _Drop()  # a truncated body: fewer bytes than Content-Length promised

    # --- hostile answers: trickled, endless ---
    def _send_trickle(self, status: int, data: bytes, ctype: str, interval: float,
                      headers: dict[str, str] | None = None) -> None:
        """Announce `data`, then send it one byte every `interval` s (cut on release_stalls)."""
        api = self.server.api
        self._send_head(status, len(data), ctype, headers)
        api.stalled.set()
        for i in range(len(data)):
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            if api._unstall.wait(interval):
                raise _Drop()

    def _send_endless(self, status: int) -> None:
        """A JSON answer that never ends: chunked, until the client hangs up or the server stops."""
        api = self.server.api
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        api.stalled.set()
        chunk = b'{"code": 200, "data": {"id": "' + b"x" * _CHUNK
        while not api._unstall.is_set():
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            chunk = b"x" * _CHUNK
        raise _Drop()

    # --- hostile scenario: output_cut_no_length_first_n ---
    def _serve_cut_output(self, name: str) -> bool:
        """Serve half of a task output with no Content-Length, then close (True if it did)."""
        api = self.server.api
        with api._lock:
            entry = api._files.get(name)
            if entry is None or not isinstance(entry[0], Path) or api._cuts_left <= 0:
                return False
            api._cuts_left -= 1
            api._counts["downloads"] += 1
        data = entry[0].read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", entry[1])
        self.send_header("Connection", "close")  # the body ends where the connection does
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        return True

    # --- hostile scenario: output_redirect_host ---
    def _redirect_output(self, name: str) -> bool:
        host = self.server.api.scenario.output_redirect_host
        asked = urlsplit("//" + (self.headers.get("Host") or "")).hostname
        if host is None or asked == host.lower():
            return False
        self.send_response(302)
        self.send_header("Location", f"http://{host}:{self.server.api.port}/files/{name}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    # --- hostile scenario: output_trickle_s ---
    def _serve_trickle(self, name: str) -> bool:
        """Announce a task output, then trickle it a byte at a time and cut (True if it did)."""
        api = self.server.api
        plan = api.scenario
        with api._lock:
            entry = api._files.get(name)
            if entry is None or not isinstance(entry[0], Path) or plan.output_trickle_s <= 0:
                return False
            api._counts["downloads"] += 1
        data = entry[0].read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", entry[1])
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        api.stalled.set()
        end = time.monotonic() + plan.output_trickle_s
        for byte in data[:-1]:  # never the whole file: the download cannot finish on its own
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            if api._unstall.wait(plan.output_trickle_interval_s) or time.monotonic() >= end:
                break
        raise _Drop()

    def _control(self, method: str, path: str, body: bytes) -> None:
        api = self.server.api
        if path == "/_control/stats" and method == "GET":
            self._send_json(200, api.stats())
        elif path == "/_control/reset" and method == "POST":
            api.reset()
            self._send_json(200, {"ok": True})
        elif path == "/_control/scenario" and method == "POST":
            try:
                scenario = Scenario.from_json(json.loads(body or b"{}"))
                api.set_scenario(scenario)
            except (ValueError, TypeError, FileNotFoundError) as e:
                self._send_json(400, {"ok": False, "error": str(e)})
                return
            self._send_json(200, {"ok": True})
        elif path == "/_control/requests" and method == "GET":
            self._send_json(200, [r._asdict() for r in api.requests])
        else:
            self._send_json(*_error(404, f"Not found: {path}"))


def _json_or_none(headers, body: bytes) -> Any:
    if not body or "json" not in headers.get("Content-Type", ""):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _multipart_field(content_type: str, body: bytes, name: str) -> tuple[str, str, bytes]:
    """(filename, content type, bytes) of form field `name` in a multipart/form-data body.

    Parsed by hand (the `cgi` module is deprecated, and the `email` parser is not byte-exact for
    binary parts): split on the boundary, then read each part's headers.
    """
    m = re.match(r'\s*multipart/form-data\s*;.*?boundary="?([^";]+)"?', content_type, re.I)
    if not m:
        raise ValueError("expected a multipart/form-data body")
    delimiter = b"--" + m.group(1).encode()
    sections = body.split(delimiter)
    if len(sections) < 3:
        raise ValueError("malformed multipart body")
    for section in sections[1:-1]:  # before the first delimiter: preamble; after the last: "--"
        section = section[2:] if section.startswith(b"\r\n") else section
        head, sep, content = section.partition(b"\r\n\r\n")
        if not sep:
            continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        part_headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            k, _, v = line.partition(":")
            part_headers[k.strip().lower()] = v.strip()
        disposition = part_headers.get("content-disposition", "")
        field_name = re.search(r'(?:^|;)\s*name="([^"]*)"', disposition)
        if field_name and field_name.group(1) == name:
            fname = re.search(r'filename="([^"]*)"', disposition)
            ctype = part_headers.get("content-type", "application/octet-stream")
            return (fname.group(1) if fname else "upload.bin"), ctype, content
    raise ValueError(f"no form field named {name!r}")


# --- command line -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the fake WaveSpeedAI API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--video", help="MP4 served as every task's output")
    parser.add_argument("--api-key", default=Scenario.api_key, help="the key the server accepts")
    parser.add_argument("--scenario", default="{}", help="JSON object of further Scenario fields")
    args = parser.parse_args(argv)
    fields = json.loads(args.scenario)
    fields.setdefault("api_key", args.api_key)
    if args.video:
        fields["video_path"] = args.video
    api = FakeWaveSpeed(Scenario.from_json(fields), port=args.port).start()
    print(f"READY {api.base_url}", flush=True)
    try:
        threading.Event().wait()  # until killed
    except KeyboardInterrupt:
        pass
    finally:
        api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
