"""The cloud ref2v job: reference image + prompt -> downloaded, decoded 720p/480p video.

One function, `run_ref2v`, used by the ComfyUI node and the CLI alike:
validate everything -> load the key -> upload the image -> submit once -> poll -> download -> decode.
Nothing touches the network before every value has been checked and a key has been found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .client import ClientOptions, WaveSpeedClient
from .config import ApiKey, Settings, load_api_key, load_settings
from .errors import ApiError, NSFWError, ValidationError
from .params import CloudModel, validate_request
from .prediction import Prediction
from .progress import NullReporter, Reporter
from .video import decode_frames


@dataclass
class ImageInput:
    """The reference image as the user gave it: PNG bytes to upload, or a URL to pass as is."""

    png: bytes | None = None
    url: str | None = None
    filename: str = "reference.png"

    def __post_init__(self):
        if (self.png is None) == (self.url is None):
            raise ValidationError("image", "give exactly one of an image or an image URL")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValidationError("image", f"a URL must start with http:// or https://, got {self.url!r}")


@dataclass
class Ref2VResult:
    video_path: Path
    fps: float
    url: str
    prediction: Prediction
    frames: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {**self.prediction.info(), "url": self.url, "video_path": str(self.video_path),
                "fps": self.fps, **self.extra}


# Typical time the provider takes for one 720p ref2v task; only shapes the estimated progress bar.
EXPECTED_TASK_S = 150.0


def status_line(pred: Prediction, elapsed_s: float) -> str:
    label = {"created": "Queued", "processing": "Processing", "completed": "Completed"}.get(
        pred.status, pred.status.capitalize())
    return f"{label} · {int(elapsed_s)} s · task {pred.id}"


def run_ref2v(
    model: CloudModel,
    image: ImageInput,
    params: dict[str, Any],
    dest: Path,
    *,
    reporter: Reporter | None = None,
    settings: Settings | None = None,
    api_key: ApiKey | None = None,
    decode: bool = True,
    options: ClientOptions | None = None,
) -> Ref2VResult:
    reporter = reporter or NullReporter()
    # 1. Every check that needs no network, in the order a user would fix them.
    body = validate_request(model, {**params, "image": image.url or "https://placeholder.invalid/"})
    settings = settings or load_settings()
    api_key = api_key or load_api_key()
    reporter.check_interrupt()

    with WaveSpeedClient(api_key, settings.api_base, reporter=reporter,
                         options=options or ClientOptions()) as client:
        # 2. Upload the reference (a retried GET-like call: an upload bills nothing).
        if image.png is not None:
            reporter.status("Uploading reference image")
            reporter.progress(0.01)
            body["image"] = client.upload(image.png, image.filename, "image/png")
        reporter.progress(0.05)

        # 3. Submit exactly once.
        reporter.status("Submitting task")
        pred = client.submit(model.model_id, body)
        reporter.status(status_line(pred, 0))

        # 4. Poll.
        def on_update(p: Prediction, elapsed: float) -> None:
            reporter.status(status_line(p, elapsed))
            # The provider reports no percentage: estimate from elapsed time, never reaching 90%.
            reporter.progress(0.05 + 0.85 * (1 - math.exp(-elapsed / EXPECTED_TASK_S)))

        pred = client.wait(pred.id, timeout_s=settings.timeout_s, on_update=on_update)

        # 5. Outputs and the safety checker.
        if not pred.outputs:
            if pred.nsfw:
                raise NSFWError("The safety checker flagged the output as NSFW and no video was "
                                "delivered. Change the prompt or reference image.", task_id=pred.id)
            raise ApiError("The task completed without an output video.", task_id=pred.id)
        url = pred.outputs[0]
        reporter.status(("NSFW flagged · " if pred.nsfw else "") + "Downloading video")
        info = client.download(url, dest, max_bytes=settings.max_download_bytes, task_id=pred.id)

    frames = None
    if decode:
        reporter.status("Decoding frames")
        frames, _ = decode_frames(dest, info)
    reporter.progress(1.0)
    done = f"Done · {pred.inference_ms / 1000:.1f} s inference" if pred.inference_ms else "Done"
    reporter.status(("NSFW flagged · " if pred.nsfw else "") + done + f" · task {pred.id}")
    return Ref2VResult(video_path=dest, fps=info.fps, url=url, prediction=pred, frames=frames)
