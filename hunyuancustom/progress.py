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
from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

from .terminal import safe

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
        text = safe(text)  # may hold a provider's status or message: no raw control characters
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


@dataclass(frozen=True)
class Deadline:
    """When a whole job must be over (a `time.monotonic()` value), and the budget that set it."""

    at: float
    budget_s: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def left(self) -> float:
        return self.at - time.monotonic()

    def elapsed(self) -> float:
        return self.budget_s - self.left()

    def bound(self, seconds: float) -> float:
        """`seconds`, shortened to the time left (a socket timeout must not outlast the job)."""
        return max(0.01, min(seconds, self.left()))


class CancelEvent(threading.Event):
    """The event `run_cancellable` hands its worker. A worker blocked in a socket read can
    register `on_set` callbacks (close that socket) so that Cancel or a deadline wakes it."""

    def __init__(self):
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def on_set(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
        if self.is_set():
            callback()

    def set(self) -> None:
        super().set()
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:  # best effort: the worker also stops at its next check
                pass


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


def run_cancellable(fn: Callable[[CancelEvent], T], reporter: Reporter,
                    on_tick: Callable[[], None] | None = None, *,
                    deadline: Deadline | None = None,
                    on_deadline: Callable[[], BaseException] | None = None) -> T:
    """Run blocking `fn(cancel_event)` in a worker thread; return its result or raise its error.

    The caller's thread keeps checking for Cancel and, with a `deadline`, the clock. On Cancel the
    event is set (fn should stop at its next chunk and clean up) and the cancellation error is
    raised at once, without waiting for a socket that may be stalled; when the deadline passes
    the same happens with the error `on_deadline()` makes.
    """
    cancel = CancelEvent()
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
            if deadline is not None and on_deadline is not None and deadline.left() <= 0:
                raise on_deadline()
            worker.join(TICK_S if deadline is None else max(0.0, min(TICK_S, deadline.left())))
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
