"""The provider's answer envelope, parsed strictly into a typed Prediction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import MalformedResponseError

PENDING = ("created", "processing")
TERMINAL_FAILED = ("failed", "cancelled", "canceled", "timeout")


@dataclass(frozen=True)
class Prediction:
    id: str
    model: str
    status: str
    outputs: tuple[str, ...] = ()
    has_nsfw_contents: tuple[bool, ...] = ()
    error: str = ""
    inference_ms: int | None = None
    created_at: str = ""
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.status == "completed" or self.status in TERMINAL_FAILED

    @property
    def nsfw(self) -> bool:
        return any(self.has_nsfw_contents)

    def info(self) -> dict[str, Any]:
        """What the node's `info` output and the journal show (nothing secret in here)."""
        return {
            "task_id": self.id,
            "model": self.model,
            "status": self.status,
            # As the API names it (data.timings.inference, ms), and flat for quick reading.
            "timings": {"inference": self.inference_ms},
            "inference_ms": self.inference_ms,
            "has_nsfw_contents": list(self.has_nsfw_contents),
            "created_at": self.created_at,
            "error": self.error,
            "outputs": list(self.outputs),
        }


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise MalformedResponseError(f"The API answered with an unexpected shape: {what}.")


def parse_envelope(payload: Any) -> dict:
    """Return `data` of a `{code, message, data}` envelope, or raise MalformedResponseError."""
    _expect(isinstance(payload, dict), "expected a JSON object")
    _expect("data" in payload, "no 'data' field")
    data = payload["data"]
    _expect(isinstance(data, dict), "'data' is not an object")
    return data


def parse_prediction(payload: Any) -> Prediction:
    data = parse_envelope(payload)
    task_id = data.get("id")
    _expect(isinstance(task_id, str) and task_id != "", "'data.id' is missing")
    status = data.get("status")
    _expect(isinstance(status, str) and status != "", f"'data.status' is missing (task {task_id})")
    outputs = data.get("outputs") or []
    _expect(isinstance(outputs, list) and all(isinstance(u, str) for u in outputs),
            f"'data.outputs' is not a list of URLs (task {task_id})")
    nsfw = data.get("has_nsfw_contents") or []
    _expect(isinstance(nsfw, list), f"'data.has_nsfw_contents' is not a list (task {task_id})")
    timings = data.get("timings") or {}
    _expect(isinstance(timings, dict), f"'data.timings' is not an object (task {task_id})")
    inference = timings.get("inference")
    # Only shown to the user: a value that is no time (NaN, Infinity, negative) is dropped
    # rather than failing every poll and every resume of a finished, paid task.
    if isinstance(inference, bool) or not isinstance(inference, (int, float)) \
            or not math.isfinite(inference) or inference < 0:
        inference = None
    error = data.get("error") or ""
    return Prediction(
        id=task_id,
        model=str(data.get("model") or ""),
        status=status.lower(),
        outputs=tuple(outputs),
        has_nsfw_contents=tuple(bool(x) for x in nsfw),
        error=str(error),
        inference_ms=int(inference) if inference is not None else None,
        created_at=str(data.get("created_at") or ""),
        raw=data,
    )
