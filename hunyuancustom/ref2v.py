"""The cloud ref2v job: reference image + prompt -> downloaded, decoded 720p/480p video.

One function, `run_ref2v`, used by the ComfyUI node and the CLI alike:
validate everything -> load the key -> upload the image -> submit once -> poll -> download -> decode.
Nothing touches the network before every value has been checked and a key has been found. With a
job journal (journal.py) the job is recorded before it is waited for, so it can be resumed or
served from disk instead of paid for again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from . import journal as journal_module
from .atomic import check_name_length, check_writable_dir, fit_stem, name_max, replacing
from .client import ClientOptions, WaveSpeedClient
from .config import ApiKey, Settings, load_api_key, load_settings, same_server
from .errors import (
    UNCERTAIN_ADVICE,
    ApiError,
    DownloadError,
    Interrupted,
    KeyRootError,
    MalformedResponseError,
    NSFWError,
    OutputExpiredError,
    SubmitUncertainError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTimeoutError,
    ValidationError,
)
from .journal import (
    DOWNLOADED,
    EXPIRED,
    FAILED,
    PENDING,
    REJECTED,
    SUBMITTING,
    UNCERTAIN,
    UPLOADING,
    Decision,
    JobRow,
    Journal,
    JournalError,
    file_identity,
    fingerprint,
)
from .params import CloudModel, validate_request
from .prediction import Prediction
from .progress import Deadline, NullReporter, Reporter, sleep
from .video import decode_frames, image_content_type, probe

log = logging.getLogger(__name__)


@dataclass
class ImageInput:
    """The reference image as the user gave it: image file bytes to upload (PNG from the nodes,
    the file as it is from the CLI), or a URL to pass as is."""

    png: bytes | None = None
    url: str | None = None
    filename: str = "reference.png"
    # The nodes' images: their pixel identity (video.image_upload), which the journal knows them
    # by instead of the PNG bytes (an encoder upgrade must not lose a resume).
    pixels: str | None = None

    def __post_init__(self):
        if (self.png is None) == (self.url is None):
            raise ValidationError("image", "give exactly one of an image or an image URL")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValidationError("image", f"a URL must start with http:// or https://, got {self.url!r}")

    @functools.cached_property
    def sha256(self) -> str | None:
        """Hex sha256 of the PNG bytes (None for a URL), computed once however many jobs share
        this image (a jobs file's lines naming one file do)."""
        return hashlib.sha256(self.png).hexdigest() if self.png is not None else None

    @property
    def content_type(self) -> str:
        """The upload's Content-Type, from the bytes themselves (the CLI uploads JPEGs as they are)."""
        return image_content_type(self.png) if self.png is not None else ""

    @property
    def ref(self) -> str:
        """What the journal knows the image by: its pixels (nodes), its file's bytes (CLI), or
        its URL (never fetched here: the provider reads it)."""
        return self.pixels or self.bytes_ref

    @property
    def bytes_ref(self) -> str:
        """The image by its bytes (or URL): `ref` before pixel identities, still the CLI's."""
        return "sha256:" + self.sha256 if self.png is not None else "url:" + str(self.url)


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


# How long a job keeps trying to write a submit's task id into a journal that refuses it (its
# write lock held by another program, a disk full for a moment) before it goes on with the id
# kept in memory and in its task-id slot. Module attribute: tests shorten it.
TASK_ID_RETRY_S = 30.0

# Typical time the provider takes for one 720p ref2v task; only shapes the estimated progress bar.
EXPECTED_TASK_S = 150.0


def status_line(pred: Prediction, elapsed_s: float) -> str:
    label = {"created": "Queued", "processing": "Processing", "completed": "Completed"}.get(
        pred.status, pred.status.capitalize())
    return f"{label} · {int(elapsed_s)} s · task {pred.id}"


# What each way of getting a result costs the user's provider account. A new task is the only one
# billed: a resumed task was paid for when it was first submitted, a saved result is a local file.
BILLING_NOTES = {
    "new": "billed: new task {id}",
    "resumed": "free: resumed task {id} (already paid; not billed again)",
    "cache": "free: saved result of task {id} (nothing submitted)",
}


def billing_note(source: str, task_id: str | None) -> str:
    return BILLING_NOTES[source].format(id=task_id)


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
    journal: Journal | None = None,
    force_new: bool = False,
    cache_copy: bool = True,
    batch: tuple[int, int] | None = None,
) -> Ref2VResult:
    """Run one job. With a `journal` (the node, the CLI and batches pass one) the job is recorded
    before it is waited for, a pending identical request is resumed instead of resubmitted, a
    saved result of an identical fixed-seed request is returned without any request, and the
    uploaded image is reused. `force_new` submits a new task whatever the journal holds.
    `cache_copy=False` returns a cached video at its saved path instead of copying it to `dest`.
    `batch` = (batch id, index) lets an interrupted batch find its own jobs again."""
    reporter = reporter or NullReporter()
    dest = Path(dest)
    # 1. Every check that needs no network, in the order a user would fix them.
    body = validate_request(model, {**params, "image": image.url or "https://placeholder.invalid/"})
    check_writable_dir(dest.parent, "output")
    check_name_length(dest, "output")
    settings = settings or load_settings()
    if journal is None:
        api_key = api_key or load_api_key()
        reporter.check_interrupt()
        return _run(model, image, body, dest, reporter, settings, api_key, decode, options, None)

    image_ref = image.ref
    fp, request = fingerprint(model.model_id, body, image_ref)
    if image_ref != image.bytes_ref:  # rows written before pixel identities: known by PNG bytes
        journal.adopt_fingerprint(fingerprint(model.model_id, body, image.bytes_ref)[0], fp, image_ref)
    seed = body["seed"]
    # A saved result needs neither the key nor the network.
    if not force_new and seed != -1:
        row = journal.peek_cached(fp)
        cached = _from_cache(journal, row, dest, decode, cache_copy, reporter,
                              settings.max_decoded_bytes) if row else None
        if cached is not None:
            return cached
    api_key = api_key or load_api_key()
    reporter.check_interrupt()
    deadline = Deadline.after(settings.timeout_s)  # the whole job, waits for another job included
    # Whether a new task pays for this request a second time (the node's line says "billed again").
    # (a saved result replaced by force_new, or a paid task the provider no longer has)
    paid_before = seed != -1 and ((force_new and journal.peek_cached(fp) is not None)
                                  or journal.paid_and_gone(fp))
    while True:
        decision = _decide(journal, fp, model, request, image_ref, seed, force_new, batch, reporter,
                           deadline)
        if decision.kind == "cached":
            cached = _from_cache(journal, decision.row, dest, decode, cache_copy, reporter,
                                 settings.max_decoded_bytes)
            if cached is not None:
                return cached
            continue  # the saved file is not its video any more: its task is fetched again
        job = _Job(journal, decision.row, resumed=decision.kind in ("resume", "refetch"),
                   refetch=decision.kind == "refetch")
        try:
            result = _run(model, image, body, dest, reporter, settings, api_key, decode, options,
                          job, deadline)
            if paid_before and result.extra.get("source") == "new":
                result.extra["billed_again"] = True
            return result
        except _TaskGone as gone:
            # That task's video can no longer be had. A new task would be billed again: never
            # within this run, only when the user runs the job again (the row is expired now).
            raise TaskNotFoundError(gone.note, task_id=job.row.task_id) from None
        except _ClaimLost:
            # Another process took this job over before our submit (and we did not submit):
            # its task serves this request, or the journal says what to do next.
            reporter.status(f"Journal job {job.row.id} was taken over by another process before "
                            "the submit; not submitted here")
            continue
        finally:
            job.release()


class _TaskGone(Exception):
    """A recorded task's video can no longer be had: the API itself answered that it does not
    know the task (its own 404 JSON answer; a page from a proxy or the video host never counts)."""

    def __init__(self, note: str):
        super().__init__(note)
        self.note = note  # what happened and what the user can do


class _ClaimLost(Exception):
    """This job's journal row was taken over by another process before the submit."""


def _decide(journal: Journal, fp: str, model: CloudModel, request: str, image_ref: str, seed: int,
            force_new: bool, batch: tuple[int, int] | None, reporter: Reporter,
            deadline: Deadline) -> Decision:
    while True:
        decision = journal.acquire(fp, model=model.model_id, request=request, image_ref=image_ref,
                                   seed=seed, force_new=force_new, batch=batch)
        if decision.kind == "uncertain":
            raise SubmitUncertainError(_uncertain_message(decision.row, journal))
        if decision.kind != "busy":
            return decision
        # The same fixed-seed request is running in another job: its result will serve this one.
        other = decision.row
        task = f" (task {other.task_id})" if other.task_id else ""
        if deadline.left() <= 0:
            raise TaskTimeoutError(
                f"Stopped after {deadline.budget_s:g} s (setting timeout_s) waiting for the identical "
                f"job {other.id}{task} that another ComfyUI or CLI process is running; nothing was "
                "submitted. Run again to get its video once it is done (not billed again), or raise "
                "timeout_s.", task_id=other.task_id, elapsed_s=deadline.elapsed())
        reporter.status(f"Waiting for the identical job {other.id} already running{task}")
        sleep(min(1.0, max(deadline.left(), 0.01)), reporter)


def _uncertain_message(row: JobRow, journal: Journal) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.updated_at))
    task = f", task {row.task_id}" if row.task_id else ""
    return (f"An earlier submit of this same request (journal job {row.id}{task}, {when}) may or "
            f"may not have created a task: {row.error or 'its answer was lost'} To avoid paying twice it was "
            "not submitted again. Check your WaveSpeedAI dashboard; to submit anyway, turn on "
            f"'force new' (CLI: --force-new). Journal: {journal.path}")


class _Job:
    """The journal row of a running job. Writes before the submit must succeed; writes after it
    are best effort, because by then the task is paid for and its video matters more. Every write
    is made only while this process still holds the row (`Journal.update_owned`)."""

    def __init__(self, journal: Journal, row: JobRow, resumed: bool, refetch: bool = False):
        self.journal = journal
        self.row = row
        self.resumed = resumed
        self.refetch = refetch  # a finished task whose saved video is gone, fetched again
        self.held = True
        self.submitted = resumed  # from the SUBMITTING write on, the task may exist
        self.warnings: list[str] = []
        # Values the journal refused (the submit's task id): written with the next write that
        # succeeds, so the id reaches the row as soon as the journal takes writes again.
        self.unsaved: dict[str, Any] = {}
        self._beat = time.monotonic()
        self._status = row.status

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            log.warning("[HunyuanCustom] %s", text)

    def _lost(self) -> None:
        self.held = False
        self._warn(f"Journal job {self.row.id} was taken over by another process; this run's "
                   "result is not recorded there.")

    def note(self, release: bool = False, **values: Any) -> bool:
        """Write `values` (and whatever the journal refused before) to the row; whether it did."""
        try:
            if not self.held:
                return False
            if not self.journal.update_owned(self.row.id, release=release,
                                             **{**self.unsaved, **values}):
                self._lost()
                return False
            if self.unsaved:
                self.unsaved = {}
                self.journal.clear_task_slot(self.row.id)
            if release:
                self.held = False
            return True
        except JournalError as e:
            self._warn(str(e))
            return False

    def record_task(self, pred: Prediction) -> None:
        """Record a submit's task id before anything else happens: in the task-id slot reserved
        before the submit (no new disk space needed), then in the row, retrying for a while a
        journal that is locked or full; failing that, it goes with the next write that succeeds,
        and the slot gives it to the next run."""
        now = time.time()
        values = {"status": pred.status if pred.status in PENDING else "created",
                  "task_id": pred.id, "submitted_at": now, "info": pred.info()}
        slotted = self.journal.fill_task_slot(self.row.id, pred.id, now)
        self.unsaved = dict(values)
        give_up = time.monotonic() + TASK_ID_RETRY_S
        while True:
            try:
                if not self.journal.update_owned(self.row.id, **values):
                    self._lost()  # taken over: the slot still tells the next run the id
                    return
            except JournalError as e:  # locked by another program, or a full disk: retried
                if time.monotonic() < give_up:
                    time.sleep(0.2)
                    continue
                where = (f"it is kept in {self.journal.task_slot_path(self.row.id)} and recorded "
                         "by the next run" if slotted else "it is recorded as soon as the journal "
                         "takes writes again")
                self._warn(f"Task {pred.id} (journal job {self.row.id}) could not be recorded in "
                           f"the job journal ({e}); {where}. Running the job again resumes this "
                           "task (not billed again).")
                return
            self.unsaved = {}
            self.journal.clear_task_slot(self.row.id)
            return

    def pending(self, pred: Prediction) -> None:
        """Record a poll answer: on a status change, and as a heartbeat now and then."""
        status = pred.status if pred.status in PENDING else self._status
        if status != self._status or time.monotonic() - self._beat > journal_module.HEARTBEAT_S:
            self._status = status
            self._beat = time.monotonic()
            self.note(status=status)

    def keepalive(self) -> None:
        """Refresh the claim now and then during uploads, downloads and Retry-After waits, so no
        process takes over a job that is alive. A claim lost before the submit stops the job."""
        if not self.held or time.monotonic() - self._beat <= journal_module.HEARTBEAT_S:
            return
        self._beat = time.monotonic()
        try:
            still_held = self.journal.heartbeat(self.row.id)
        except JournalError as e:
            self._warn(str(e))  # the SUBMITTING write checks the claim again
            return
        if not still_held:
            self._lost()
            if not self.submitted:
                raise _ClaimLost()

    def release(self) -> None:
        if self.held:
            self.note(release=True)
            self.held = False


class _KeepAlive:
    """The job's reporter as the client sees it: each Cancel check (every tick of every wait and
    transfer) also refreshes the job's claim when it is due."""

    def __init__(self, inner: Reporter, job: _Job):
        self.inner = inner
        self.job = job

    def status(self, text: str) -> None:
        self.inner.status(text)

    def progress(self, fraction: float) -> None:
        self.inner.progress(fraction)

    def check_interrupt(self) -> None:
        self.inner.check_interrupt()
        self.job.keepalive()


def _run(model: CloudModel, image: ImageInput, body: dict[str, Any], dest: Path, reporter: Reporter,
         settings: Settings, api_key: ApiKey, decode: bool, options: ClientOptions | None,
         job: _Job | None, deadline: Deadline | None = None) -> Ref2VResult:
    resumed = job is not None and job.resumed
    deadline = deadline or Deadline.after(settings.timeout_s)  # the whole job, upload to download
    # A task is polled where it was submitted, whatever the settings say now.
    api_base = (job.row.api_base if resumed else None) or settings.api_base
    _check_key_root(api_key, api_base, settings, job)
    client_reporter = _KeepAlive(reporter, job) if job is not None else reporter
    with WaveSpeedClient(api_key, api_base, reporter=client_reporter,
                         options=options or ClientOptions(), key_root=settings.api_base,
                         deadline=deadline) as client:
        if resumed:
            pred = _resume(client, job, settings, reporter)
        else:
            pred = _upload_and_submit(client, model, image, body, reporter, settings, job)
        reporter.status(status_line(pred, 0))

        # 4. Poll.
        def on_update(p: Prediction, elapsed: float) -> None:
            reporter.status(status_line(p, elapsed))
            # The provider reports no percentage: estimate from elapsed time, never reaching 90%.
            reporter.progress(0.05 + 0.85 * (1 - math.exp(-elapsed / EXPECTED_TASK_S)))
            if job is not None:
                job.pending(p)

        try:
            pred = client.wait(pred.id, timeout_s=settings.timeout_s, on_update=on_update)
        except TaskFailedError as e:
            if job is not None:
                job.note(release=True, status=FAILED, error=str(e), finished_at=time.time())
            raise

        # 5. Outputs and the safety checker.
        if not pred.outputs:
            if pred.nsfw:
                err: ApiError = NSFWError("The safety checker flagged the output as NSFW and no "
                                          "video was delivered. Change the prompt or reference "
                                          "image.", task_id=pred.id)
            else:
                err = ApiError("The task completed without an output video.", task_id=pred.id)
            if job is not None:
                job.note(release=True, status=FAILED, error=str(err), info=pred.info(),
                         finished_at=time.time())
            raise err
        url = pred.outputs[0]
        bad_url = _unusable_output_url(url)
        if bad_url:  # finished and unusable: recorded as failed, so no rerun polls it forever
            err = ApiError(f"The task's output URL {url[:200]!r} {bad_url}; allowed: an http(s) "
                           "URL.", task_id=pred.id)
            if job is not None:
                job.note(release=True, status=FAILED, error=str(err), info=pred.info(),
                         finished_at=time.time())
            raise err
        if job is not None:
            job.note(status="completed", output_url=url, inference_ms=pred.inference_ms,
                     info=pred.info(), finished_at=time.time())
            dest = free_destination(job.journal, dest, job.row.id, reporter)
        reporter.status(("NSFW flagged · " if pred.nsfw else "") + "Downloading video")
        try:
            info = client.download(url, dest, max_bytes=settings.max_download_bytes, task_id=pred.id)
        except OutputExpiredError as e:
            # A 401/403/404/410 from the video host (a CDN, a proxy) is not the provider's word
            # that the output is gone: the task stays resumable (status completed) and nothing
            # is submitted in this run. Only the API's own answer may end a task.
            if job is not None:
                advice = ("it is kept so that running the job again later retries the download "
                          "(not billed again). If the provider no longer keeps the video (about 7 "
                          f"days), `python -m hunyuancustom jobs abandon {pred.id}` or 'force new' "
                          "submits a new task (billed again).")
            else:
                advice = f"its output URL {url[:200]} may still serve it later."
            err = OutputExpiredError(f"{e} The task is done and paid for; {advice}",
                                     status=e.status, task_id=pred.id)
            if job is not None:
                job.note(release=True, error=str(err))
            raise err from None
    if job is not None:
        # The video is on disk: a failing journal write must not cost it (it only warns). What it
        # is (size, sha256) is recorded, so a file put there later is never served as this task.
        job.note(release=True, status=DOWNLOADED, output_path=str(dest.resolve()), error=None,
                 **_identity(dest))

    frames = None
    if decode:
        reporter.status("Decoding frames")
        frames, _ = decode_frames(dest, info, source=f"{url} (saved as {dest})",
                                  max_bytes=settings.max_decoded_bytes)
    reporter.progress(1.0)
    source = "resumed" if resumed else "new"
    done = f"Done · {billing_note(source, pred.id)}"
    if pred.inference_ms:
        done += f" · {pred.inference_ms / 1000:.1f} s inference"
    reporter.status(("NSFW flagged · " if pred.nsfw else "") + done)
    extra: dict[str, Any] = {"source": source, "billed": source == "new"}
    if job is not None:
        extra["journal_id"] = job.row.id
        if job.refetch:
            extra["refetched"] = True
        if job.warnings:
            extra["journal_warning"] = job.warnings[-1]
    return Ref2VResult(video_path=dest, fps=info.fps, url=url, prediction=pred, frames=frames,
                       extra=extra)


def _resume(client: WaveSpeedClient, job: _Job, settings: Settings, reporter: Reporter) -> Prediction:
    """The first poll of a task submitted earlier (pending, or finished with its video gone)."""
    task_id = job.row.task_id
    where = "" if client.api_base == settings.api_base.rstrip("/") else f" at {client.api_base}"
    if job.refetch:
        reporter.status(f"Fetching the video of task {task_id}{where} again: its saved file "
                        "is gone or was replaced (not submitted again, not billed again)")
    else:
        reporter.status(f"Resuming task {task_id}{where} (submitted earlier; not submitted again)")
    reporter.progress(0.05)
    try:
        return client.result(task_id)
    except TaskNotFoundError as e:  # the API itself says so, not a proxy's 404 page
        job.note(release=True, status=EXPIRED, error=f"The provider no longer knows this task "
                 f"({e}); it cannot be resumed.")
        what = "its saved video is gone and the provider" if job.refetch else "the provider"
        raise _TaskGone(f"Task {task_id}: {what} no longer knows the task (its own answer), so its "
                        "video can no longer be had. Nothing was submitted in this run. Run the job "
                        "again to submit a new task (billed again by WaveSpeedAI).") from None


def _identity(path: Path) -> dict[str, Any]:
    """The output_size / output_sha256 columns of a saved video (empty if it cannot be read)."""
    try:
        size, sha = file_identity(path)
    except OSError:
        return {}
    return {"output_size": size, "output_sha256": sha}


def free_destination(journal: Journal, dest: Path, own_row: int, reporter: Reporter) -> Path:
    """Where a job may write its video: `dest`, unless that file is the saved video of another
    job of the journal (and still holds it); then the first of `name-2.mp4`, `name-3.mp4`, ...
    that does not exist (or already holds this job's own video). A paid result is never
    overwritten, and the caller reports the path actually used."""
    try:
        owner = journal.owner_of_file(dest)
    except JournalError as e:  # cannot tell whose the file is: keep it, whoever's it is
        log.warning("[HunyuanCustom] %s", e)
        if not dest.exists():
            return dest
        owner = None
    else:
        if owner is None or owner.id == own_row:
            return dest
    n = 2
    while True:
        # A name at the file system's limit leaves no room for "-2": its stem is cut to fit.
        stem = fit_stem(dest.stem, name_max(dest.parent) - len(f"-{n}{dest.suffix}".encode()))
        candidate = dest.with_name(f"{stem}-{n}{dest.suffix}")
        if not candidate.exists():
            break
        try:
            other = journal.owner_of_file(candidate)
        except JournalError:
            other = None
        if other is not None and other.id == own_row:
            break
        n += 1
    whose = (f"the saved video of journal job {owner.id} (task {owner.task_id})" if owner
             else "a file the unreadable journal may record as a saved video")
    reporter.status(f"{dest.name} holds {whose}; not overwritten: this video goes to "
                    f"{candidate.name}")
    return candidate


def _upload_and_submit(client: WaveSpeedClient, model: CloudModel, image: ImageInput,
                       body: dict[str, Any], reporter: Reporter, settings: Settings,
                       job: _Job | None) -> Prediction:
    # 2. Upload the reference (a retried GET-like call: an upload bills nothing), or reuse a
    # recent upload of the same bytes.
    try:
        if image.png is not None:
            reporter.status("Uploading reference image")
            reporter.progress(0.01)
            body["image"] = _upload(client, image, settings, job)
        reporter.progress(0.05)
        # Recorded before the POST: a crash from here on leaves a row that says so. Checked and
        # written in one transaction: a job whose row another process took over (it thought this
        # one dead) must not submit, or both would pay.
        if job is not None:
            job.submitted = True
            job.journal.reserve_task_slot(job.row.id)
            if not job.journal.update_owned(job.row.id, expect_status=UPLOADING, status=SUBMITTING,
                                            api_base=client.api_base):
                job.held = False
                raise _ClaimLost()
    except BaseException:
        if job is not None:
            job.journal.clear_task_slot(job.row.id)
            if job.held:  # nothing reached the provider: the row would mislead
                _forget(job)
        raise

    # 3. Submit exactly once.
    reporter.status("Submitting task")
    try:
        pred = client.submit(model.model_id, body)
    except BaseException as e:
        err = _submit_failed(client, job, reporter, e)
        if err is e:
            raise
        raise err from e
    if job is not None:
        job.record_task(pred)
    return pred


def _submit_failed(client: WaveSpeedClient, job: _Job | None, reporter: Reporter,
                   e: BaseException) -> BaseException:
    """Record in the journal what a failed submit leaves behind; return the error to raise."""
    if not client.submit_in_doubt and not isinstance(e, ApiError):
        # Cancelled before the POST left (or while waiting out a 429): there is no task.
        _forget(job)
        return e
    error = str(e)
    if isinstance(e, (SubmitUncertainError, MalformedResponseError)):
        status = UNCERTAIN
    elif isinstance(e, ApiError):  # refused (400, 401, 402, 403, 429...) or never sent: no task
        status = REJECTED
    elif isinstance(e, (Interrupted, KeyboardInterrupt)) or not isinstance(e, Exception) \
            or _cancelled(reporter):  # ComfyUI's Cancel raises its own exception type
        status, error = UNCERTAIN, "The run was cancelled while the submit was in flight."
    else:  # the POST went out, its answer could not be handled: a task may exist
        e = SubmitUncertainError(f"The submit's answer could not be read ({type(e).__name__}: "
                                 f"{str(e)[:200]}); " + UNCERTAIN_ADVICE)
        status, error = UNCERTAIN, str(e)
    if job is not None:
        job.note(release=True, status=status, error=error)
        job.journal.clear_task_slot(job.row.id)  # no answer, no id to keep
    return e


def _cancelled(reporter: Reporter) -> bool:
    try:
        reporter.check_interrupt()
    except BaseException:
        return True
    return False


def _forget(job: _Job | None) -> None:
    """Drop the row of a job that reached no provider: it would only block or mislead."""
    if job is None:
        return
    job.journal.clear_task_slot(job.row.id)
    try:
        job.journal.delete_owned(job.row.id)  # never a row another process took over
        job.held = False
    except JournalError:
        pass


def _check_key_root(api_key: ApiKey, api_base: str, settings: Settings, job: _Job | None) -> None:
    """Stop, sending nothing, when the key was set for another server than `api_base`."""
    key_root = api_key.root or settings.api_base.rstrip("/")
    if same_server(api_base, key_root):
        return
    if job is None or not job.resumed:
        _forget(job)
        raise KeyRootError(f"The API key from {api_key.source} was set for {key_root}, but "
                           f"api_base is now {api_base}: the key is not sent to another server. "
                           f"Set the key again for {api_base}, or point api_base back to "
                           f"{key_root}.")
    raise KeyRootError(
        f"Task {job.row.task_id} (journal job {job.row.id}) is pending at {api_base}, but the API "
        f"key from {api_key.source} is for {key_root}, so it is not sent there. To resume the "
        f"task, set the key for {api_base} (or point api_base back to it) and run again; to give "
        f"the task up and submit anew (paid again), run `python -m hunyuancustom jobs abandon "
        f"{job.row.id}` first.")


def _upload(client: WaveSpeedClient, image: ImageInput, settings: Settings, job: _Job | None) -> str:
    if job is None:
        return client.upload(image.png, image.filename, image.content_type)
    sha = image.sha256
    with job.journal.upload_lock(sha):
        url = job.journal.cached_upload(sha, settings.api_base, settings.upload_max_age_s)
        if url is not None:
            return url
        url = client.upload(image.png, image.filename, image.content_type)
        try:
            job.journal.record_upload(sha, settings.api_base, url)
        except JournalError as e:
            job.warnings.append(str(e))
        return url


def _from_cache(journal: Journal, row: JobRow, dest: Path, decode: bool, cache_copy: bool,
                reporter: Reporter, max_decoded_bytes: int) -> Ref2VResult | None:
    """The saved video of an earlier identical job: no request, not even for the key. None when
    the file is no longer that video (deleted, damaged, or another job's video under its name):
    the row then says its task's video must be fetched again."""
    path = Path(row.output_path)
    wrong = _not_its_video(journal, row)
    vinfo = None
    if wrong is None:
        try:
            vinfo = probe(path)
        except DownloadError as e:
            wrong = f"no longer decodes ({e})"
    if wrong is not None:
        journal.forget_video(row, f"The saved video {path} {wrong}; it is fetched again.")
        reporter.status(f"The saved video of task {row.task_id} {wrong.split(' (')[0]}; fetching "
                        "it again")
        return None
    if cache_copy and dest.resolve() != path.resolve():
        dest = free_destination(journal, dest, row.id, reporter)
        if dest.resolve() != path.resolve():
            copy_atomic(path, dest)
        path = dest
    pred = Prediction(id=row.task_id or "", model=row.model, status="completed",
                      outputs=(row.output_url,) if row.output_url else (),
                      has_nsfw_contents=tuple(bool(x) for x in row.info.get("has_nsfw_contents", [])),
                      inference_ms=row.inference_ms, created_at=str(row.info.get("created_at", "")))
    frames = None
    if decode:
        reporter.status("Decoding frames")
        frames, _ = decode_frames(path, vinfo, source=f"{row.output_url or path} (saved as {path})",
                                  max_bytes=max_decoded_bytes)
    reporter.progress(1.0)
    reporter.status(f"Cached · {billing_note('cache', row.task_id)}")
    return Ref2VResult(video_path=path, fps=vinfo.fps, url=row.output_url or "", prediction=pred,
                       frames=frames, extra={"source": "cache", "billed": False, "journal_id": row.id})


def _not_its_video(journal: Journal, row: JobRow) -> str | None:
    """Why the file at a row's output_path is not the video the row saved, or None if it is."""
    matches = row.video_matches()
    if matches:
        return None
    if matches is False:
        return "is gone" if not row.has_video else "was replaced by another file"
    # Saved before its identity was recorded: the file is the row's unless a newer job has
    # since saved its own video under the same name. Then it is adopted (recorded) as it is.
    newest = journal.saved_at(row.output_path)
    if newest and newest[0].id != row.id:
        return f"was overwritten by the video of journal job {newest[0].id}"
    identity = _identity(Path(row.output_path))
    if identity:
        journal.adopt_video(row, identity["output_size"], identity["output_sha256"])
    return None


def _unusable_output_url(url: str) -> str | None:
    """Why an output URL is not a plain web address (file://, ftp://, malformed), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "is malformed"
    if parts.scheme.lower() not in ("http", "https"):
        return f"uses the scheme {parts.scheme or '(none)'!r}"
    if not parts.hostname:
        return "has no host"
    return None


def copy_atomic(src: Path, dest: Path) -> None:
    """Copy a saved video to `dest`: complete or absent, never half-written."""
    with replacing(dest) as tmp:
        shutil.copyfile(src, tmp)
