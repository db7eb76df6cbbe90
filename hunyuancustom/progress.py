"""How long-running work reports to its host and learns it was cancelled.

The core never imports ComfyUI: the node passes a Reporter that talks to ComfyUI's progress bar,
progress text and interrupt flag; the CLI passes one that writes to stderr and listens for Ctrl-C.
All waiting (back-off sleeps, blocking HTTP calls) goes through `sleep` and `run_cancellable`, so
Cancel is honoured within a tick wherever the work is.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Protocol, TypeVar

T = TypeVar("T")

TICK_S = 0.1  # how often a wait checks for Cancel
CLEANUP_S = 0.5  # how long a cancelled wait gives its worker to clean up


class Reporter(Protocol):
    def status(self, text: str) -> None:
        """One line of status shown to the user (replaces the previous one)."""

    def progress(self, fraction: float) -> None:
        """Overall progress, 0..1."""

    def check_interrupt(self) -> None:
        """Raise if the user cancelled."""


class NullReporter:
    def status(self, text: str) -> None:
        pass

    def progress(self, fraction: float) -> None:
        pass

    def check_interrupt(self) -> None:
        pass


class StderrReporter:
    """CLI reporter: one status line rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self._last = ""
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def status(self, text: str) -> None:
        if text == self._last:
            return
        self._last = text
        if self._tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def progress(self, fraction: float) -> None:
        pass

    def check_interrupt(self) -> None:
        pass  # Ctrl-C arrives as KeyboardInterrupt in the main thread

    def finish(self) -> None:
        if self._tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


def sleep(seconds: float, reporter: Reporter, on_tick: Callable[[], None] | None = None) -> None:
    """Sleep `seconds`, checking for Cancel every tick and calling `on_tick` about once a second."""
    end = time.monotonic() + seconds
    next_tick = time.monotonic() + 1.0
    while True:
        reporter.check_interrupt()
        now = time.monotonic()
        if now >= end:
            return
        if on_tick is not None and now >= next_tick:
            on_tick()
            next_tick = now + 1.0
        time.sleep(min(TICK_S, end - now))


def run_cancellable(fn: Callable[[threading.Event], T], reporter: Reporter,
                    on_tick: Callable[[], None] | None = None) -> T:
    """Run blocking `fn(cancel_event)` in a worker thread; return its result or raise its error.

    The caller's thread keeps checking for Cancel. On Cancel the event is set (fn should stop at
    its next chunk and clean up) and the cancellation error is raised at once, without waiting for
    a socket that may be stalled.
    """
    cancel = threading.Event()
    box: dict = {}

    def target():
        try:
            box["value"] = fn(cancel)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, name="hunyuancustom-io", daemon=True)
    worker.start()
    next_tick = time.monotonic() + 1.0
    try:
        while worker.is_alive():
            reporter.check_interrupt()
            worker.join(TICK_S)
            if on_tick is not None and time.monotonic() >= next_tick:
                on_tick()
                next_tick = time.monotonic() + 1.0
    except BaseException:  # Cancel, Ctrl-C: let the worker drop its partial file, briefly
        cancel.set()
        worker.join(CLEANUP_S)
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]
