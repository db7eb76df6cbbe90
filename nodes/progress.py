"""A core Reporter wired to ComfyUI: progress text on the node, its progress bar, and Cancel."""

from __future__ import annotations

import comfy.model_management
import comfy.utils
from server import PromptServer

STEPS = 1000


class ComfyReporter:
    def __init__(self, node_id: str | None):
        self.node_id = node_id
        self.bar = comfy.utils.ProgressBar(STEPS, node_id=node_id)
        self._last = -1

    def status(self, text: str) -> None:
        if self.node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, self.node_id)

    def progress(self, fraction: float) -> None:
        value = int(max(0.0, min(1.0, fraction)) * STEPS)
        if value != self._last:  # the bar is a websocket message: send only changes
            self._last = value
            self.bar.update_absolute(value)

    def check_interrupt(self) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
