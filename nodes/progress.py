"""A core Reporter wired to ComfyUI: status on the node, its progress bar, and Cancel.

Status goes out once, as the pack's own `hunyuancustom.status` event ({node, text, progress} as
JSON on the prompt's websocket), which js/hunyuancustom.js draws as a status line with a ticking
elapsed time and a bar, and clears when the run ends. Not also as core's progress text: the front
end draws that as a second text under the node, which stays after the run and grows the node.
API clients get the same text and fraction from this event, core's progress bar from `progress`,
and the result (billed or free, task id) in the node's output. Each event also carries the
provider task the run is waiting for once a status line names one (`task_id`, else null): after
Cancel the front end says that this task keeps running and was billed at submit.
"""

from __future__ import annotations

import re

import comfy.model_management
import comfy.utils
from server import PromptServer

STEPS = 1000
STATUS_EVENT = "hunyuancustom.status"
# How every status line of hunyuancustom/ref2v.py names the task it polls ("... · task ID",
# "Resuming task ID ...").
TASK_IN_STATUS = re.compile(r"\btask ([A-Za-z0-9_.:-]+)")


class ComfyReporter:
    def __init__(self, node_id: str | None):
        self.node_id = node_id
        self.bar = comfy.utils.ProgressBar(STEPS, node_id=node_id)
        self._last = -1
        self._fraction = 0.0
        self.task_id: str | None = None

    def _send(self, text: str) -> None:
        server = PromptServer.instance
        if self.node_id is None or server is None:
            return
        server.send_sync(STATUS_EVENT, {"node": self.node_id, "text": text,
                                        "progress": self._fraction, "task_id": self.task_id},
                         server.client_id)

    def status(self, text: str) -> None:
        named = TASK_IN_STATUS.search(text)
        if named:
            self.task_id = named.group(1)
        self._send(text)

    def progress(self, fraction: float) -> None:
        self._fraction = max(0.0, min(1.0, fraction))
        value = int(self._fraction * STEPS)
        if value != self._last:  # the bar is a websocket message: send only changes
            self._last = value
            self.bar.update_absolute(value)

    def check_interrupt(self) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
