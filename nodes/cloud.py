"""Cloud ref2v nodes: IMAGE + prompt -> VIDEO through the hosted API (one node per hosted model).

Every run goes through the job journal: a re-run after Cancel or a restart resumes its pending
task, and an identical fixed-seed request returns the saved video without a request.
"""

from __future__ import annotations

import json
from pathlib import Path

import folder_paths
from comfy_api.latest import InputImpl, io, ui
from server import PromptServer

try:
    from comfy_execution.utils import get_executing_context
except ImportError:  # an older ComfyUI: the graph cannot be read, so frames are always decoded
    def get_executing_context():
        return None

from ..hunyuancustom.journal import Journal
from ..hunyuancustom.params import REF2V_480P, REF2V_720P, CloudModel
from ..hunyuancustom.ref2v import ImageInput, copy_atomic, run_ref2v
from ..hunyuancustom.video import image_upload, select_image
from .files import SUBFOLDER, numbered_mp4, portable
from .progress import ComfyReporter
from .widgets import widget


def ref2v_widgets(model: CloudModel, skip: tuple[str, ...] = ()) -> list[io.Input]:
    """The shared widgets of every ref2v node, in the seed table's order."""
    return [widget(p) for p in model.params if p.name != "image" and p.name not in skip]


def force_new_input() -> io.Input:
    return io.Boolean.Input(
        "force_new", default=False, optional=True,
        tooltip="Submit a new task even if an identical request already has a saved result or a "
                "pending task (you pay again). Off: identical fixed-seed requests reuse the saved "
                "video, and a task left pending by Cancel or a restart is resumed.")


def rerun_fingerprint(seed, force_new) -> float | int:
    """What ComfyUI's cache compares besides the widget values (agrees with the journal)."""
    # seed -1 asks the provider for a new video every run, force_new asks to pay again: never
    # reuse a cached result. A fresh NaN object each call (math.nan is one shared object and
    # compares equal to itself inside ComfyUI's cache keys).
    return float("nan") if seed == -1 or force_new else seed


FRAMES_OUTPUT = 1  # index of the `frames` output


def running_prompt(prompt_id: str) -> dict | None:
    """The API-format graph of the prompt now executing, from ComfyUI's queue; None if not found."""
    try:
        running, _ = PromptServer.instance.prompt_queue.get_current_queue_volatile()
        return next((item[2] for item in running if item[1] == prompt_id), None)
    except Exception:  # noqa: BLE001 - another ComfyUI's internals: then we cannot tell
        return None


def links_to(prompt: dict, node_id: str, output: int) -> bool:
    """Whether any node of `prompt` takes output `output` of node `node_id` as an input."""
    return any(isinstance(v, list) and len(v) == 2 and str(v[0]) == str(node_id) and v[1] == output
               for node in prompt.values() if isinstance(node, dict)
               for v in (node.get("inputs") or {}).values())


def frames_used() -> bool:
    """Whether anything in the running graph consumes the executing node's `frames` output.

    Decoding 129 frames of 720p to float32 holds ~1.3 GiB for as long as ComfyUI caches the
    output, so it is done only when used. fingerprint_inputs gets no hidden inputs (no prompt,
    no unique id) in ComfyUI, so both it and execute read the graph the same way: through the
    executing node's context and the prompt queue. Its answer is part of the cache key, so an
    output cached without frames is never served to a graph that wants them. When the graph
    cannot be found it says True: frames are decoded, as before.

    A core whose execution context carries `expected_outputs` (newer than 0.33.0, with
    `comfy_execution.utils.is_output_needed`) answers this itself: that answer wins. Its None means
    "not known", and then the graph is read as above."""
    ctx = get_executing_context()
    if getattr(ctx, "expected_outputs", None) is not None:
        return FRAMES_OUTPUT in ctx.expected_outputs
    prompt = running_prompt(ctx.prompt_id) if ctx is not None else None
    if prompt is None or ctx.node_id not in prompt:  # e.g. a node made by another node's expansion
        return True
    return links_to(prompt, ctx.node_id, FRAMES_OUTPUT)


def saved_result(path: Path, dest: Path) -> tuple[Path, str, str]:
    """(path, filename, subfolder) of a result inside ComfyUI's output folder, for the preview.
    A cached video saved elsewhere (e.g. by the CLI) is copied to `dest` first."""
    out_dir = Path(folder_paths.get_output_directory()).resolve()
    try:
        rel = Path(path).resolve().relative_to(out_dir)
    except ValueError:
        copy_atomic(Path(path), dest)
        rel = dest.resolve().relative_to(out_dir)
    subfolder = "" if str(rel.parent) == "." else rel.parent.as_posix()
    return out_dir / rel, rel.name, subfolder


class _CloudRef2V(io.ComfyNode):
    MODEL: CloudModel

    @classmethod
    def define_schema(cls) -> io.Schema:
        m = cls.MODEL
        return io.Schema(
            node_id=f"HunyuanCustomCloudRef2V{m.label}",
            display_name=f"Ref2V (Cloud {m.label})",
            category="HunyuanCustom",
            description=(f"Subject-consistent {m.label} video from a reference image and a prompt, "
                         f"generated by the hosted {m.model_id} (WaveSpeedAI; needs an API key). "
                         "Each new task is billed to your WaveSpeedAI account by the provider; a "
                         "saved result or a resumed task is not billed again, and the node says "
                         "which after each run."),
            inputs=[
                io.Image.Input("image", tooltip="Reference image of the subject."),
                *ref2v_widgets(m),
                io.Int.Input("image_index", default=-1, min=-1, max=4095, optional=True,
                             tooltip="Which image of a batch to use; -1 accepts a single image only."),
                force_new_input(),
            ],
            outputs=[
                io.Video.Output("video", display_name="video",
                                tooltip="The generated video (core VIDEO), already saved by this "
                                        "node in ComfyUI's output folder (hunyuancustom/): no "
                                        "Save Video needed, it would save a second copy."),
                io.Image.Output("frames", display_name="frames",
                                tooltip="The video's frames (IMAGE); decoded only when something is "
                                        "connected here."),
                io.Float.Output("fps", display_name="fps", tooltip="Frame rate of the video."),
                io.String.Output("url", display_name="url",
                                 tooltip="The provider's output URL (expires after ~7 days)."),
                io.String.Output("info", display_name="info",
                                 tooltip="JSON: task id, model, status, timings, NSFW flags, "
                                         "source, and billed: true for a new task, false for a "
                                         "saved result or a resumed task (refetched: its saved "
                                         "video was fetched again; billed_again: a new task for "
                                         "a request that was paid before)."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, seed=-1, force_new=False, **kwargs):
        # Whether the frames are used is part of the key: connecting `frames` later runs the node
        # again (from the journal's saved video, not billed) instead of serving a result without them.
        return rerun_fingerprint(seed, force_new), frames_used()

    @classmethod
    def execute(cls, image, prompt, negative_prompt, size, guidance_scale, flow_shift, seed,
                enable_safety_checker, image_index=-1, force_new=False) -> io.NodeOutput:
        params = {"prompt": prompt, "negative_prompt": negative_prompt, "size": size,
                  "guidance_scale": guidance_scale, "flow_shift": flow_shift, "seed": seed,
                  "enable_safety_checker": enable_safety_checker}
        png, pixels = image_upload(select_image(image, image_index))
        dest, filename, subfolder = numbered_mp4(f"{SUBFOLDER}/ref2v_{cls.MODEL.label}")
        with Journal.open_default() as journal:
            result = run_ref2v(cls.MODEL, ImageInput(png=png, pixels=pixels), params, dest,
                               reporter=ComfyReporter(cls.hidden.unique_id), journal=journal,
                               force_new=bool(force_new), cache_copy=False,
                               decode=frames_used())
        # A cached result is previewed where it was saved, not copied again.
        dest, filename, subfolder = saved_result(result.video_path, dest)
        info = result.info()
        info.pop("video_path", None)  # the preview names the file; keep info portable
        if "journal_warning" in info:
            info["journal_warning"] = portable(info["journal_warning"])
        preview = ui.PreviewVideo([ui.SavedResult(filename, subfolder, io.FolderType.output)])
        return io.NodeOutput(
            InputImpl.VideoFromFile(str(dest)), result.frames, float(result.fps), result.url,
            json.dumps(info),
            ui={**preview.as_dict(), "hunyuancustom": [info]},
        )


class CloudRef2V720p(_CloudRef2V):
    MODEL = REF2V_720P


class CloudRef2V480p(_CloudRef2V):
    MODEL = REF2V_480P


NODES = [CloudRef2V720p, CloudRef2V480p]
