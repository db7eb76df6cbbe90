"""Batch cloud ref2v nodes: several reference images x several prompts -> a list of VIDEOs.

Thin adapter over `hunyuancustom.batch.run_batch`; the widgets are the cloud node's (the same
parameter table), with `prompts` taking one prompt per line.
"""

from __future__ import annotations

import json
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import InputImpl, io, ui

from ..hunyuancustom.batch import BatchJob, run_batch
from ..hunyuancustom.config import Settings
from ..hunyuancustom.errors import ApiError, ValidationError
from ..hunyuancustom.journal import Journal
from ..hunyuancustom.params import DEFAULT_PROMPT, REF2V_480P, REF2V_720P, CloudModel
from ..hunyuancustom.ref2v import ImageInput
from ..hunyuancustom.video import image_upload, select_image
from .cloud import SUBFOLDER, force_new_input, ref2v_widgets, rerun_fingerprint, saved_result
from .files import output_relative, portable
from .progress import ComfyReporter

MAX_JOBS = 256
ALL_PAIRS = "every image x every prompt"
BY_POSITION = "image N with prompt N"


def pair_jobs(n_images: int, prompts: list[str], combine: str) -> list[tuple[int, int]]:
    """(image index, prompt index) of each job, in output order."""
    if combine == ALL_PAIRS:
        return [(i, p) for i in range(n_images) for p in range(len(prompts))]
    n = max(n_images, len(prompts))
    if n_images not in (1, n) or len(prompts) not in (1, n):
        raise ValidationError("prompts", f"{len(prompts)} prompts cannot be paired by position with "
                                         f"{n_images} images: give as many of each, or one of "
                                         f"either, or choose '{ALL_PAIRS}'")
    return [(0 if n_images == 1 else k, 0 if len(prompts) == 1 else k) for k in range(n)]


class _CloudBatch(io.ComfyNode):
    MODEL: CloudModel

    @classmethod
    def define_schema(cls) -> io.Schema:
        m = cls.MODEL
        return io.Schema(
            node_id=f"HunyuanCustomCloudBatch{m.label}",
            display_name=f"Ref2V Batch (Cloud {m.label})",
            category="HunyuanCustom",
            description=(f"Many {m.label} videos in one run: every reference image of a batch with "
                         "every prompt (one per line), or paired by position. Runs a few tasks at "
                         f"once on the hosted {m.model_id}; a failed job does not stop the others. "
                         "Re-running after Cancel or a failure resumes: finished videos are kept, "
                         "pending tasks are polled, nothing is paid twice. Each new task is billed "
                         "to your WaveSpeedAI account by the provider; the summary counts the "
                         "billed and the free (saved or resumed) videos."),
            inputs=[
                io.Image.Input("images", tooltip="Reference images; each image of the batch is "
                                                 "one subject."),
                io.String.Input("prompts", default=DEFAULT_PROMPT, multiline=True,
                                tooltip="One prompt per line (blank lines are skipped)."),
                io.Combo.Input("combine", options=[ALL_PAIRS, BY_POSITION], default=ALL_PAIRS,
                               tooltip="Which images go with which prompts."),
                *ref2v_widgets(m, skip=("prompt",)),
                io.Int.Input("concurrency", default=Settings.concurrency, min=1, max=16,
                             tooltip="Tasks in flight at once. Your WaveSpeedAI account level "
                                     "limits this (the lowest level allows 2)."),
                force_new_input(),
            ],
            outputs=[
                io.Video.Output("videos", display_name="videos", is_output_list=True,
                                tooltip="One VIDEO per finished job, in job order (failed jobs "
                                        "are left out; see summary), each already saved by this "
                                        "node in ComfyUI's output folder (hunyuancustom/): no "
                                        "Save Video needed."),
                io.String.Output("summary", display_name="summary",
                                 tooltip="JSON: each job's image, prompt, outcome, billed or "
                                         "free, task id, output file (inside ComfyUI's output "
                                         "folder) or error; counts of billed and free videos."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, seed=-1, force_new=False, **kwargs):
        return rerun_fingerprint(seed, force_new)

    @classmethod
    def execute(cls, images, prompts, combine, negative_prompt, size, guidance_scale, flow_shift,
                seed, enable_safety_checker, concurrency, force_new=False) -> io.NodeOutput:
        lines = [line.strip() for line in prompts.splitlines() if line.strip()]
        if not lines:
            raise ValidationError("prompts", "give at least one prompt (one per line)")
        # Each image gets the cloud node's checks (shape, size, finite pixels) before any request.
        count = images.shape[0] if isinstance(images, torch.Tensor) and images.dim() == 4 else 1
        uploads = [image_upload(select_image(images, i, "images")) for i in range(count)]
        images_in = [ImageInput(png=png, pixels=pixels) for png, pixels in uploads]
        if not images_in:
            raise ValidationError("images", "the image batch is empty")
        pairs = pair_jobs(len(images_in), lines, combine)
        if len(pairs) > MAX_JOBS:
            raise ValidationError("prompts", f"{len(pairs)} jobs is more than {MAX_JOBS} in one run")
        shared = {"negative_prompt": negative_prompt, "size": size, "guidance_scale": guidance_scale,
                  "flow_shift": flow_shift, "seed": seed,
                  "enable_safety_checker": enable_safety_checker}
        full_dir, name, counter, _, _ = folder_paths.get_save_image_path(
            f"{SUBFOLDER}/batch_{cls.MODEL.label}", folder_paths.get_output_directory())
        jobs = [BatchJob(image=images_in[i], params={**shared, "prompt": lines[p]},
                         dest=Path(full_dir) / f"{name}_{counter:05}_{k + 1:03}_.mp4",
                         model=cls.MODEL, label=f"image {i + 1} · prompt {p + 1}")
                 for k, (i, p) in enumerate(pairs)]
        with Journal.open_default() as journal:
            result = run_batch(jobs, concurrency=concurrency, journal=journal,
                               reporter=ComfyReporter(cls.hidden.unique_id),
                               force_new=bool(force_new), cache_copy=False)
        summary = result.summary()
        for row, (i, p) in zip(summary["results"], pairs, strict=True):
            row.update(image=i, prompt=lines[p])
            if row.get("error"):
                row["error"] = portable(row["error"])
        done = [o for o in result.outcomes if o.ok]
        if not done:
            first = result.outcomes[0]
            raise ApiError(f"Every job of the batch failed; job 1 ({first.label}): {first.error}")
        videos, saved = [], []
        for o in done:
            path, filename, subfolder = saved_result(o.result.video_path, jobs[o.index].dest)
            # Relative to ComfyUI's output folder, like the cloud node's info: no server paths.
            summary["results"][o.index]["output"] = output_relative(filename, subfolder)
            videos.append(InputImpl.VideoFromFile(str(path)))
            saved.append(ui.SavedResult(filename, subfolder, io.FolderType.output))
        text = json.dumps(summary)
        preview = ui.PreviewVideo(saved)
        return io.NodeOutput(videos, text, ui={**preview.as_dict(), "hunyuancustom_batch": [summary]})


class CloudBatch720p(_CloudBatch):
    MODEL = REF2V_720P


class CloudBatch480p(_CloudBatch):
    MODEL = REF2V_480P


NODES = [CloudBatch720p, CloudBatch480p]
