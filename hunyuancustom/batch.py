"""Many ref2v jobs at once: up to `concurrency` in flight, results in input order, resumable.

Every job goes through `run_ref2v` with the job journal, so a finished job is served from disk, a
pending one is polled again and a failed one is retried, never resubmitted blindly. The batch is
recorded too: running the same batch again after an interruption (Ctrl-C, Cancel, a crash, a job
that failed) takes the earlier run over and reuses its jobs' results, even for `seed = -1`. Once
every job has succeeded the batch is finished, and running it again is a new batch.

Only the calling thread talks to the caller's reporter (ComfyUI's progress calls and its interrupt
flag are not meant for worker threads); workers see Cancel through a shared event.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .client import ClientOptions
from .config import ApiKey, Settings, load_api_key, load_settings
from .errors import HunyuanCustomError, Interrupted, ValidationError
from .journal import Journal, canonical_json, fingerprint
from .params import REF2V_720P, CloudModel, validate_request
from .progress import NullReporter, Reporter
from .ref2v import ImageInput, Ref2VResult, run_ref2v

TICK_S = 0.1


@dataclass
class BatchJob:
    image: ImageInput
    params: dict[str, Any]
    dest: Path
    model: CloudModel = REF2V_720P
    label: str = ""  # how errors name the job ("line 3", "job 2")


@dataclass
class JobOutcome:
    index: int
    label: str
    ok: bool
    result: Ref2VResult | None = None
    error: str | None = None
    error_type: str | None = None

    @property
    def source(self) -> str | None:
        return self.result.extra.get("source") if self.result is not None else None

    @property
    def billed(self) -> bool:
        """Whether the job's video came from a new task, which the provider bills; False for a
        saved result or a resumed task (paid for when first submitted). A failed job has no video
        and counts as neither."""
        return self.result is not None and bool(self.result.extra.get("billed"))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "job": self.label,
                               "status": "done" if self.ok else "failed"}
        if self.result is not None:
            pred = self.result.prediction
            out.update(source=self.source, billed=self.billed, task_id=pred.id,
                       output=str(self.result.video_path),
                       url=self.result.url, inference_ms=pred.inference_ms,
                       journal_id=self.result.extra.get("journal_id"))
        else:
            out.update(error=self.error, error_type=self.error_type)
        return out


@dataclass
class BatchResult:
    outcomes: list[JobOutcome]
    batch_id: int
    resumed: bool
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def all_ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    def summary(self) -> dict[str, Any]:
        done = sum(o.ok for o in self.outcomes)
        billed = sum(o.billed for o in self.outcomes)
        # Of the videos done: "billed" came from new tasks, "free" from saved results or resumed tasks.
        return {"batch_id": self.batch_id, "resumed": self.resumed, "jobs": len(self.outcomes),
                "done": done, "failed": len(self.outcomes) - done, "billed": billed,
                "free": done - billed,
                "elapsed_s": round(self.elapsed_s, 2),
                "results": [o.summary() for o in self.outcomes]}


def validate_jobs(jobs: list[BatchJob]) -> list[str]:
    """Check every job before any of them starts; return their fingerprints."""
    fps = []
    for i, job in enumerate(jobs):
        label = job.label or f"job {i + 1}"
        try:
            body = validate_request(job.model, {**job.params,
                                                "image": job.image.url or "https://placeholder.invalid/"})
        except ValidationError as e:
            raise ValidationError(e.field, f"{e.problem} ({label})") from None
        fps.append(fingerprint(job.model.model_id, body, job.image.ref)[0])
    return fps


class _JobReporter:
    """A worker's reporter: remembers its latest status and fraction for the batch's own thread."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel
        self.text = "Waiting for a free slot"
        self.fraction = 0.0
        self.seq = 0  # bumped on each new status line

    def status(self, text: str) -> None:
        self.text = text
        self.seq += 1

    def progress(self, fraction: float) -> None:
        self.fraction = fraction

    def check_interrupt(self) -> None:
        if self.cancel.is_set():
            raise Interrupted("The batch was cancelled.")


def run_batch(
    jobs: list[BatchJob],
    *,
    concurrency: int | None = None,
    journal: Journal,
    reporter: Reporter | None = None,
    settings: Settings | None = None,
    api_key: ApiKey | None = None,
    options: ClientOptions | None = None,
    force_new: bool = False,
    decode: bool = False,
    cache_copy: bool = True,
    job_lines: bool = False,
    on_job_done: Callable[[JobOutcome], None] | None = None,
) -> BatchResult:
    """Run `jobs`; a failed job does not stop the others. Raises only for bad input (before any
    request) and for Cancel (after every running job has let go of its task, which stays
    resumable). `job_lines` reports each job's status lines ("[3/20] ...") instead of a summary."""
    reporter = reporter or NullReporter()
    if not jobs:
        raise ValidationError("jobs", "the batch is empty")
    settings = settings or load_settings()
    concurrency = settings.concurrency if concurrency is None else concurrency
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
        raise ValidationError("concurrency", f"must be a whole number from 1 to 64, got {concurrency!r}")
    fps = validate_jobs(jobs)
    api_key = api_key or load_api_key()
    key = hashlib.sha256(canonical_json(fps).encode()).hexdigest()
    batch_id, resumed = journal.start_batch(key, len(jobs), force_new=force_new)
    if resumed:
        reporter.status(f"Resuming batch {batch_id}: finished jobs are kept, pending ones polled")

    n = len(jobs)
    cancel = threading.Event()
    reps = [_JobReporter(cancel) for _ in jobs]
    outcomes: list[JobOutcome | None] = [None] * n
    start = time.monotonic()

    def work(i: int) -> JobOutcome:
        job = jobs[i]
        label = job.label or f"job {i + 1}"
        if cancel.is_set():
            raise Interrupted("The batch was cancelled.")
        try:
            result = run_ref2v(job.model, job.image, job.params, job.dest, reporter=reps[i],
                               settings=settings, api_key=api_key, decode=decode, options=options,
                               journal=journal, force_new=force_new, cache_copy=cache_copy,
                               batch=(batch_id, i))
            return JobOutcome(i, label, True, result=result)
        except Interrupted:
            raise
        except HunyuanCustomError as e:
            return JobOutcome(i, label, False, error=str(e), error_type=type(e).__name__)
        except Exception as e:  # noqa: BLE001 - one broken job must not sink the batch
            return JobOutcome(i, label, False, error=f"{type(e).__name__}: {e}",
                              error_type=type(e).__name__)

    seen = [0] * n
    last_line = ""
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="hunyuancustom-batch")
    futures: dict[Future, int] = {pool.submit(work, i): i for i in range(n)}
    pending = set(futures)
    try:
        while pending:
            reporter.check_interrupt()
            finished, pending = wait(pending, timeout=TICK_S, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = futures[fut]
                outcome = fut.result()  # Interrupted from a worker means Cancel: re-raised
                outcomes[i] = outcome
                if on_job_done is not None:
                    on_job_done(outcome)
                if job_lines:
                    what = (f"done ({outcome.source}) -> {outcome.result.video_path}" if outcome.ok
                            else f"FAILED: {outcome.error}")
                    reporter.status(f"[{i + 1}/{n}] {what}")
            if job_lines:
                for i, rep in enumerate(reps):
                    if rep.seq != seen[i] and outcomes[i] is None:
                        seen[i] = rep.seq
                        reporter.status(f"[{i + 1}/{n}] {rep.text}")
            done = sum(o is not None for o in outcomes)
            failed = sum(1 for o in outcomes if o is not None and not o.ok)
            running = sum(1 for i, r in enumerate(reps) if r.seq and outcomes[i] is None)
            reporter.progress(sum(1.0 if outcomes[i] is not None else r.fraction
                                  for i, r in enumerate(reps)) / n)
            if not job_lines:
                line = (f"Batch · {done}/{n} done · {running} running"
                        + (f" · {failed} failed" if failed else "")
                        + f" · {int(time.monotonic() - start)} s")
                if line != last_line:
                    last_line = line
                    reporter.status(line)
    except BaseException:
        cancel.set()  # every worker stops at its next tick and releases its task
        pool.shutdown(wait=True, cancel_futures=True)
        try:
            journal.end_batch(batch_id, complete=False)
        except HunyuanCustomError:
            pass
        raise
    pool.shutdown(wait=True)
    result = BatchResult([o for o in outcomes if o is not None], batch_id, resumed,
                         elapsed_s=time.monotonic() - start)
    try:
        journal.end_batch(batch_id, complete=result.all_ok)
    except HunyuanCustomError as e:  # the videos are saved; only the batch's record is stale
        result.extra["journal_warning"] = str(e)
    reporter.progress(1.0)
    return result


__all__ = ["BatchJob", "JobOutcome", "BatchResult", "run_batch", "validate_jobs"]
