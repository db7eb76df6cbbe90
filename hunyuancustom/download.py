"""Download a result: streamed, size-capped, retried, cancellable, written atomically.

The file appears at its final path only once it is complete, flushed to disk and known to
decode; until then it lives under a hidden `.part` name that is removed on any failure.
With a deadline (the job's timeout_s) the download stops when it passes, even while bytes keep
trickling in: the waiting thread gives up on time and shuts the socket under the reader.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable

import requests

from .atomic import remove_stale_temps, replacing
from .errors import DownloadError, OutputExpiredError, TaskTimeoutError
from .mp4check import mp4_incomplete
from .progress import CancelEvent, Deadline, NullReporter, Reporter, run_cancellable, sleep
from .video import VideoInfo, probe

CHUNK = 1 << 20
_GONE = {401, 403, 404, 410}


def download_video(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    reporter: Reporter | None = None,
    attempts: int = 3,
    timeout: tuple[float, float] = (10.0, 60.0),
    task_id: str | None = None,
    backoff: Callable[[int], float] = lambda attempt: min(8.0, 2.0**attempt),
    sleep_fn: Callable[[float], None] | None = None,
    deadline: Deadline | None = None,
) -> VideoInfo:
    """Fetch `url` to `dest` and return the video's info; `dest` is complete or absent."""
    reporter = reporter or NullReporter()
    sleep_fn = sleep_fn or (lambda s: sleep(s, reporter))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent)  # left by downloads killed outright (kill -9, power loss)
    last: Exception | None = None
    for attempt in range(attempts):
        reporter.check_interrupt()
        if deadline is not None and deadline.left() <= 0:
            raise _timed_out(deadline, task_id)
        # No socket wait may outlast the job: each attempt's timeouts end by the deadline.
        limits = timeout if deadline is None else (deadline.bound(timeout[0]), deadline.bound(timeout[1]))
        try:
            return run_cancellable(
                lambda cancel, t=limits: _fetch_once(session, url, dest, max_bytes, reporter,
                                                     cancel, t, task_id),
                reporter, deadline=deadline, on_deadline=lambda: _timed_out(deadline, task_id),
            )
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                _Truncated, _ServerSide) as e:
            last = e
            if attempt + 1 < attempts:
                wait = backoff(attempt)
                if deadline is not None and wait >= deadline.left():
                    raise _timed_out(deadline, task_id) from None
                reporter.status(f"Download interrupted; retrying ({attempt + 2}/{attempts})")
                sleep_fn(wait)
        except requests.RequestException:
            raise
        except OSError as e:  # our side: disk full, folder removed or read-only, name too long
            advice = ("Choose a shorter file name" if e.errno == errno.ENAMETOOLONG
                      else "Make room or choose another folder")
            raise DownloadError(f"Could not write the video to {dest}: {e.strerror or e}. {advice}, "
                                "then run again: the finished output stays available for about 7 "
                                "days (not billed again).", task_id=task_id) from None
    raise DownloadError(f"Could not download the output after {attempts} tries "
                        f"({type(last).__name__}: {last}).", task_id=task_id)


def _timed_out(deadline: Deadline, task_id: str | None) -> TaskTimeoutError:
    return TaskTimeoutError(
        f"Stopped after {int(deadline.budget_s)} s (setting timeout_s) while downloading the "
        "output. The task is done and paid for: run the job again to fetch its video without "
        "paying again (the provider keeps it for about 7 days), or raise timeout_s.",
        task_id=task_id, elapsed_s=deadline.elapsed())


class _Truncated(Exception):
    pass


class _ServerSide(Exception):
    pass


class _Cancelled(Exception):
    pass


def _fetch_once(session, url, dest: Path, max_bytes, reporter, cancel: CancelEvent,
                timeout, task_id) -> VideoInfo:
    # The output URL is a plain CDN link: no Authorization header is sent to it.
    with session.get(url, stream=True, timeout=timeout, auth=_NoAuth()) as resp:
        # A read blocks until its whole chunk arrives, however slowly: on Cancel or the deadline,
        # shut the socket so the read ends now and the partial file is removed.
        cancel.on_set(lambda: _shut(resp))
        if resp.status_code in _GONE:
            raise OutputExpiredError(
                f"The video host answered HTTP {resp.status_code} for the output URL: the video "
                "could not be fetched (it may have expired, or a proxy or the host may be blocking "
                "it).", status=resp.status_code,
                task_id=task_id)
        if resp.status_code >= 500:
            raise _ServerSide(f"HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise DownloadError(f"The output URL answered HTTP {resp.status_code}.",
                                status=resp.status_code, task_id=task_id)
        length = resp.headers.get("Content-Length", "")
        expected = int(length) if length.isdigit() and int(length) > 0 else None  # else: unknown
        if expected and expected > max_bytes:
            raise DownloadError(f"The output is {expected} bytes, over the {max_bytes}-byte cap "
                                "(setting max_download_bytes).", task_id=task_id)
        with replacing(dest) as tmp:  # a file that does not decode never reaches its final name
            got = 0
            with open(tmp, "wb") as f:
                for chunk in resp.iter_content(CHUNK):
                    if cancel.is_set():
                        raise _Cancelled()
                    got += len(chunk)
                    if got > max_bytes:
                        raise DownloadError(f"The output exceeded the {max_bytes}-byte cap "
                                            "(setting max_download_bytes).", task_id=task_id)
                    f.write(chunk)
                    if expected:
                        reporter.progress(0.9 + 0.1 * got / expected)
            if expected is not None and got != expected:
                raise _Truncated(f"got {got} of {expected} bytes")
            # With no Content-Length a cut connection ends the body like a finished one: the
            # file's own structure must say it is whole before it counts as the paid result.
            broken = mp4_incomplete(tmp)
            if broken:
                raise _Truncated(f"the downloaded MP4 {broken}")
            try:  # errors name the URL and the file asked for, not the hidden temporary file
                return probe(tmp, name=f"the output for {dest}")
            except DownloadError as e:
                raise DownloadError(f"{e} (from {url}). Nothing was saved.", task_id=task_id) from None


def _shut(resp: requests.Response) -> None:
    try:
        resp.raw.shutdown()  # urllib3 >= 2.3: shuts the socket for reading, from any thread
    except (AttributeError, ValueError, RuntimeError, OSError):
        pass  # older urllib3, or already closed: the read ends at its own timeout


class _NoAuth(requests.auth.AuthBase):
    def __call__(self, r):
        r.headers.pop("Authorization", None)
        return r
