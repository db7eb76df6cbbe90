"""Run a real ComfyUI server with this pack loaded, for end-to-end tests.

The ComfyUI checkout is found through `COMFYUI_PATH` (and its interpreter through
`COMFYUI_PYTHON`, default: the one running pytest). Without it, e2e tests skip with `skip_reason`:
a fresh CI machine has no ComfyUI, and every other test must still pass there.

The pack is loaded without copying it: the server's `--base-directory` is the test's temporary
folder, whose `custom_nodes` holds one symlink, `ComfyUI-HunyuanCustom` -> this repository (an
`--extra-model-paths-config` file names that folder too, for tests that add more paths). Every
writable folder (output, input, user, temp, database, models) lives under the test's temporary
directory, so runs never write into the checkout (which may be read-only) and may run side by side.

    with running_comfyui(tmp_path, {"WAVESPEED_API_BASE": api.base_url}) as comfy:
        prompt_id = comfy.queue(graph)
        entry = comfy.wait(prompt_id, timeout=120)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_DIR_NAME = "ComfyUI-HunyuanCustom"
NODE_NAMES = ("HunyuanCustomCloudRef2V720p", "HunyuanCustomCloudRef2V480p")
START_TIMEOUT_S = 180.0

skip_reason = ("COMFYUI_PATH is not set: the real-ComfyUI tests need a ComfyUI checkout "
               "(see README, Tests)")

# Variables that must never leak from the developer's shell into a test server: a real key would
# let a test bill a real account, a real API root would send test traffic to the provider.
_SCRUBBED_ENV = ("WAVESPEED_API_KEY", "WAVESPEED_API_BASE", "HUNYUANCUSTOM_TIMEOUT",
                 "HUNYUANCUSTOM_DATA_DIR")


def comfyui_path() -> Path | None:
    """The ComfyUI checkout named by COMFYUI_PATH, or None when unset."""
    value = os.environ.get("COMFYUI_PATH", "").strip()
    return Path(value).expanduser().resolve() if value else None


requires_comfyui = pytest.mark.skipif(comfyui_path() is None, reason=skip_reason)


def import_comfy():
    """Import ComfyUI core into this test process, on the CPU (for in-process model tests);
    returns the `comfy` package with the modules the pack's tests use already imported."""
    root = comfyui_path()
    if root is None:
        pytest.skip(skip_reason)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    saved = sys.argv
    sys.argv = [saved[0], "--cpu"]  # core reads its flags from argv on first import
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        if (root / "utils" / "__init__.py").is_file() and "utils" not in sys.modules:
            # As main.py does early: core's nodes.py later puts comfy/ first on sys.path, and a
            # later `import utils...` (server.py on 0.3.64) would then find comfy/utils.py.
            import utils.extra_config  # noqa: F401
        import comfy.ldm.hunyuan_video.model
        import comfy.ldm.models.autoencoder
        import comfy.model_detection
        import comfy.model_management
        import comfy.ops
        import comfy.sample
        import comfy.sd
    finally:
        sys.argv = saved
    return comfy


def core_hunyuan_video(comfy, *, width: int, context: int, depth: int, single: int = 1,
                       channels: int = 16, operations=None):
    """Core's HunyuanVideo (the 1.0 architecture: one head per 128 of width, CLIP-L vector, no
    guidance embedding) with the configuration core's own detection gives a checkpoint of that shape.

    Core's `HunyuanVideoParams` gains fields over versions (0.33.0 added three for HunyuanVideo 1.5);
    building it from a hand-written field list breaks on the next core. So a skeleton state dict
    (shapes only, on the meta device: no memory) goes through `comfy.model_detection`, exactly as a
    real checkpoint does, and the model is built from what core answers."""
    import math

    import torch

    patch = (1, 2, 2)

    def meta(*shape):
        return torch.empty(shape, device="meta")

    skeleton = {
        "img_in.proj.weight": meta(width, channels, *patch),
        "final_layer.linear.weight": meta(channels * math.prod(patch), width),
        "vector_in.in_layer.weight": meta(width, 768),
        "txt_in.input_embedder.weight": meta(width, context),
        "txt_in.individual_token_refiner.blocks.0.norm1.weight": meta(width),
        **{f"double_blocks.{i}.img_mod.lin.weight": meta(6 * width, width) for i in range(depth)},
        **{f"single_blocks.{i}.modulation.lin.weight": meta(3 * width, width) for i in range(single)},
    }
    config = comfy.model_detection.detect_unet_config(skeleton, "")
    if not config or config.get("image_model") != "hunyuan_video":
        raise RuntimeError(f"core at {comfyui_path()} does not detect a HunyuanVideo checkpoint from "
                           f"its keys (detected: {config!r}): the test models need updating for it")
    net = comfy.ldm.hunyuan_video.model.HunyuanVideo(
        operations=operations or comfy.ops.disable_weight_init, **config)
    assert (len(net.double_blocks), len(net.single_blocks), net.params.hidden_size) == (depth, single, width)
    return net


def import_pack(name: str = "hc_pack_under_test"):
    """This pack imported as ComfyUI imports it (a package named after its folder), in-process,
    after `import_comfy`; returns the package."""
    import_comfy()
    if name not in sys.modules:
        import importlib.util

        root = Path(__file__).resolve().parent.parent
        spec = importlib.util.spec_from_file_location(name, root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


class ComfyError(AssertionError):
    """ComfyUI refused a prompt, a run failed, or the server misbehaved. An AssertionError so
    pytest shows it as a test failure with its message in full."""

    def __init__(self, message: str, details: Any = None, status: int | None = None):
        self.details = details
        self.status = status  # the HTTP status of a refused request
        super().__init__(message)


def _free_port() -> int:
    # Small race (another process could take it before ComfyUI binds); acceptable for tests.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """One ComfyUI process. Created by `running_comfyui`; talk to it over its HTTP API."""

    def __init__(self, base_dir: Path, env_extra: Mapping[str, str] | None = None,
                 listen: str = "127.0.0.1", models_config: Path | None = None,
                 extra_args: tuple[str, ...] | list[str] = ()):
        root = comfyui_path()
        if root is None:
            raise RuntimeError(skip_reason)
        if not (root / "main.py").is_file():
            raise RuntimeError(f"COMFYUI_PATH={root} has no main.py: not a ComfyUI checkout")
        self.comfyui_root = root
        self.base_dir = Path(base_dir)
        self.output_dir = self.base_dir / "output"
        self.input_dir = self.base_dir / "input"
        self.user_dir = self.base_dir / "user"
        self.temp_dir = self.base_dir / "temp"
        self.data_dir = self.base_dir / "hunyuancustom-data"
        self.custom_nodes_dir = self.base_dir / "custom_nodes"
        for d in (self.output_dir, self.input_dir, self.user_dir, self.temp_dir, self.data_dir,
                  self.custom_nodes_dir):
            d.mkdir(parents=True, exist_ok=True)
        link = self.custom_nodes_dir / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
        self.paths_config = self.base_dir / "extra_model_paths.yaml"
        # A JSON string is a valid YAML scalar: safe for any path.
        self.paths_config.write_text(
            f"hunyuancustom_tests:\n    custom_nodes: {json.dumps(str(self.custom_nodes_dir))}\n")
        self.log_path = self.base_dir / "comfyui.log"
        self.listen = listen  # "0.0.0.0" to be reachable on the machine's other addresses too
        self.models_config = models_config  # a second extra-model-paths file (e.g. stand_in_models)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        self.env.update({"PYTHONUNBUFFERED": "1", "HUNYUANCUSTOM_DATA_DIR": str(self.data_dir)})
        if "PYTHONPYCACHEPREFIX" not in self.env:  # no __pycache__ written into the checkout
            self.env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.env.update(env_extra or {})
        self.python = os.environ.get("COMFYUI_PYTHON") or sys.executable
        self.extra_args = list(extra_args)  # more ComfyUI flags, e.g. ["--preview-method", "latent2rgb"]
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [
            self.python, "main.py", "--cpu", "--listen", self.listen, "--port", str(self.port),
            "--disable-auto-launch",
            # The checkout may be read-only and has no custom_nodes/ of its own (ComfyUI stops with
            # FileNotFoundError then): everything ComfyUI looks for by default lives here instead.
            "--base-directory", str(self.base_dir),
            "--output-directory", str(self.output_dir),
            "--input-directory", str(self.input_dir),
            "--user-directory", str(self.user_dir),
            # Core appends "temp" to this folder (and empties it at start and exit).
            "--temp-directory", str(self.base_dir),
            "--extra-model-paths-config", str(self.paths_config),
            # The default database lives inside the checkout and would be shared between runs.
            "--database-url", f"sqlite:///{self.base_dir / 'comfyui.db'}",
            *self.extra_args,
        ] + (["--extra-model-paths-config", str(self.models_config)] if self.models_config else [])

    # --- lifecycle ---

    def start(self, timeout: float = START_TIMEOUT_S) -> ComfyServer:
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.command(), cwd=self.comfyui_root, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        finally:
            log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + timeout
        # Core loads every custom node before it binds the port, so an answer here means the
        # pack's import has already succeeded or failed (and been logged).
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} during start-up.\n"
                                 f"{self.log_tail()}")
            try:
                self._request("GET", "/system_stats", timeout=2)
                return self
            except (OSError, ComfyError):
                time.sleep(0.25)  # polling a starting process; not a timing assumption
        self.stop()
        raise ComfyError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s.\n"
                         f"{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- HTTP ---

    def _request(self, method: str, path: str, payload: Any = None, timeout: float = 30,
                 raw: bool = False) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                details = json.loads(body)
            except ValueError:
                details = body.decode("utf-8", "replace")[:2000]
            raise ComfyError(f"{method} {path} answered HTTP {e.code}: {details}", details, e.code) from None
        if raw:
            return body
        return json.loads(body) if body else None

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """All node definitions (or one node's) as the front end sees them."""
        path = "/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else "")
        return self._request("GET", path, timeout=60)

    def queue(self, prompt: dict[str, Any]) -> str:
        """Queue an API-format graph; return its prompt id. A refused graph raises ComfyError whose
        `details` holds ComfyUI's answer (`error`, `node_errors`)."""
        return self.submit(prompt)["prompt_id"]

    def submit(self, prompt: dict[str, Any], extra_data: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST /prompt as the front end does (its `extra_data` carries the UI workflow); return
        ComfyUI's whole answer (`prompt_id`, `number`, `node_errors`). A refused graph raises
        ComfyError whose `details` holds the answer (`error`, `node_errors`)."""
        payload = {"prompt": prompt, "client_id": self.client_id}
        if extra_data is not None:
            payload["extra_data"] = extra_data
        try:
            return self._request("POST", "/prompt", payload)
        except ComfyError as e:
            details = e.details if isinstance(e.details, dict) else {"error": e.details}
            raise ComfyError(f"ComfyUI refused the prompt (HTTP {e.status}): "
                             f"{json.dumps(details.get('error'))}\nnode_errors: "
                             f"{json.dumps(details.get('node_errors'), indent=1)}",
                             details, e.status) from None

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        return (self._request("GET", f"/history/{prompt_id}") or {}).get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120, *, raise_on_error: bool = True) -> dict:
        """Poll the history until the prompt finished; return its history entry.

        A failed or interrupted run raises ComfyError carrying the `execution_error` (node, type,
        message, traceback), unless raise_on_error=False (then inspect `execution_error(entry)`).
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            status = (entry or {}).get("status") or {}
            if entry is not None and (status.get("completed") or status.get("status_str") == "error"):
                if raise_on_error and status.get("status_str") == "error":
                    err = execution_error(entry)
                    raise ComfyError(f"The prompt {prompt_id} failed: {_describe(err)}", err)
                return entry
            if not self.running:
                raise ComfyError(f"ComfyUI exited while running {prompt_id}.\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ComfyError(f"The prompt {prompt_id} did not finish within {timeout:.0f} s.\n"
                                 f"{self.log_tail()}")
            time.sleep(0.2)  # polling, like a client without a websocket

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Press Cancel: interrupt the running prompt (only if it is `prompt_id`, when given)."""
        self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:  # noqa: A002
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return self._request("GET", f"/view?{query}", raw=True, timeout=60)

    # --- logs ---

    def log_text(self) -> str:
        """Everything ComfyUI printed so far (stdout and stderr, interleaved)."""
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- last {lines} lines of the ComfyUI log ({self.log_path}) ---\n{tail}"

    def pack_import_failed(self) -> bool:
        """True when core logged this pack's import as failed."""
        return any("IMPORT FAILED" in line and PACK_DIR_NAME in line
                   for line in self.log_text().splitlines())


# The model files the README's "Model files and where they go" names (what the example workflows
# load), relative to ComfyUI/models.
README_MODEL_FILES = (
    "diffusion_models/hunyuancustom_720P/mp_rank_00_model_states_fp8.pt",
    "diffusion_models/hunyuancustom_audio_720P/mp_rank_00_model_states_fp8.pt",
    "diffusion_models/hunyuancustom_editing_720P/mp_rank_00_model_states_fp8.pt",
    "vae/hunyuan_video_vae_bf16.safetensors",
    "text_encoders/clip_l.safetensors",
    "text_encoders/llava_llama3_fp8_scaled.safetensors",
    "clip_vision/llava_llama3_vision.safetensors",
)


def stand_in_models(root: Path, names: tuple[str, ...] = README_MODEL_FILES) -> Path:
    """Empty files with the model files' names under root/models, and an extra-model-paths file
    naming those folders (for ComfyServer's models_config); returns the paths file. Enough for the
    file lists the front end and /prompt check; a run stops at the first model it loads."""
    models = root / "models"
    for name in names:
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).touch()
    config = root / "stand_in_models.yaml"
    config.write_text("hunyuancustom_stand_in_models:\n"
                      f"    base_path: {json.dumps(str(models))}\n"
                      "    diffusion_models: diffusion_models\n    vae: vae\n"
                      "    text_encoders: text_encoders\n    clip_vision: clip_vision\n")
    return config


def execution_error(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `execution_error` (or `execution_interrupted`) message of a history entry, or None."""
    for event, data in (entry.get("status") or {}).get("messages") or []:
        if event in ("execution_error", "execution_interrupted"):
            return {"event": event, **data}
    return None


def _describe(err: Mapping[str, Any] | None) -> str:
    if not err:
        return "no execution_error message recorded"
    if err["event"] == "execution_interrupted":
        return f"interrupted at node {err.get('node_id')} ({err.get('node_type')})"
    trace = "".join(err.get("traceback") or [])[-3000:]
    return (f"node {err.get('node_id')} ({err.get('node_type')}) raised "
            f"{err.get('exception_type')}: {err.get('exception_message')}\n{trace}")


@contextlib.contextmanager
def running_comfyui(base_dir: Path, env_extra: Mapping[str, str] | None = None,
                    listen: str = "127.0.0.1") -> Iterator[ComfyServer]:
    """Start ComfyUI with this pack under `base_dir`; stop it afterwards, whatever happens."""
    server = ComfyServer(base_dir, env_extra, listen)
    try:
        yield server.start()
    finally:
        server.stop()


def comfyui_fixture(scope: str = "module", env_extra: Mapping[str, str] | None = None):
    """A pytest fixture (default: one server per test module, start-up costs ~10-60 s) that
    skips when COMFYUI_PATH is unset:

        comfy = comfyui_fixture()
    """

    @pytest.fixture(scope=scope)
    def _comfy(tmp_path_factory):
        if comfyui_path() is None:
            pytest.skip(skip_reason)
        with running_comfyui(tmp_path_factory.mktemp("comfyui"), env_extra) as server:
            yield server

    return _comfy
