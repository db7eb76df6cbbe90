"""Batch throughput under a concurrency limit, and what the job journal costs per job.

    python benchmarks/batch_concurrency.py [--task-seconds 10] [--jobs 20] [--concurrency 2 8]
                                           [--journal-jobs 500]

Part 1 runs N jobs through `run_batch` against the loopback API server, each task taking
`--task-seconds` of wall time on the "provider", with the client's real poll schedule, uploads,
downloads and journal. Ideal time with a limit of C is ceil(N / C) x task seconds; the measured
figure adds poll latency (a completion is noticed up to one poll interval late), the download
and the journal.

Part 2 times the journal's own work for one job, directly: the decision (acquire), the rows
written before the submit, after it, on each status change, after the download (fsync'd SQLite
commits, WAL), sequentially and with C threads of one process writing at once.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hunyuancustom.batch import BatchJob, run_batch  # noqa: E402
from hunyuancustom.config import ApiKey, Settings  # noqa: E402
from hunyuancustom.journal import Journal, fingerprint  # noqa: E402
from hunyuancustom.ref2v import ImageInput  # noqa: E402
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario  # noqa: E402
from hunyuancustom.testing.media import make_test_image, png_bytes  # noqa: E402

KEY = "bench-key"


def batch_run(n: int, concurrency: int, task_s: float, work: Path) -> tuple[float, int]:
    image = ImageInput(png=png_bytes(make_test_image(None, 64, 48)))
    jobs = [BatchJob(image=image, params={"prompt": f"job {i}", "seed": -1},
                     dest=work / f"c{concurrency}" / f"{i:03d}.mp4") for i in range(n)]
    with FakeWaveSpeed(Scenario(api_key=KEY, processing_polls=0, task_seconds=task_s)) as api, \
            Journal(work / f"c{concurrency}.sqlite3") as journal:
        start = time.perf_counter()
        result = run_batch(jobs, concurrency=concurrency, journal=journal,
                           settings=Settings(api_base=api.base_url, timeout_s=600),
                           api_key=ApiKey(KEY, "benchmark"))
        elapsed = time.perf_counter() - start
        if not result.all_ok:
            raise SystemExit(f"jobs failed: {[o.error for o in result.outcomes if not o.ok]}")
        return elapsed, api.stats()["submits"]


def journal_job(journal: Journal, i: int, tag: str) -> float:
    """Every journal call one successful job makes, timed."""
    body = {"prompt": f"prompt {tag}-{i}", "negative_prompt": "", "size": "1280*720",
            "guidance_scale": 7.5, "flow_shift": 13.0, "seed": i, "enable_safety_checker": True}
    info = {"task_id": f"{tag}-{i}", "model": "m", "status": "completed", "inference_ms": 9000,
            "has_nsfw_contents": [False], "created_at": "2026-11-25T00:00:00Z", "error": "",
            "outputs": [f"https://cdn.test/{tag}-{i}.mp4"]}
    t0 = time.perf_counter()
    fp, request = fingerprint("m", body, "sha256:" + "0" * 64)
    row = journal.acquire(fp, model="m", request=request, image_ref="sha256:0", seed=i).row
    journal.cached_upload("0" * 64, "http://api", 86400)
    journal.update(row.id, status="submitting")
    journal.update(row.id, status="created", task_id=f"{tag}-{i}", submitted_at=time.time(), info=info)
    journal.update(row.id, status="processing")
    journal.update(row.id, status="completed", output_url=info["outputs"][0], inference_ms=9000,
                   info=info, finished_at=time.time())
    journal.update(row.id, release=True, status="downloaded", output_path=f"/out/{tag}-{i}.mp4")
    return (time.perf_counter() - t0) * 1000


def journal_costs(work: Path, jobs: int, threads: int) -> tuple[list[float], list[float]]:
    with Journal(work / "ops.sqlite3") as journal:
        journal_job(journal, -1, "warm")
        sequential = [journal_job(journal, i, "seq") for i in range(jobs)]
        contended: list[float] = []
        lock = threading.Lock()

        def worker(t: int) -> None:
            mine = [journal_job(journal, i, f"t{t}") for i in range(jobs // threads)]
            with lock:
                contended.extend(mine)

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return sequential, contended


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--task-seconds", type=float, default=10.0)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--journal-jobs", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hc-batch-bench-") as tmp:
        work = Path(tmp)
        os.environ["HUNYUANCUSTOM_DATA_DIR"] = str(work / "data")  # never the user's journal
        print(f"Part 1: {args.jobs} jobs, provider task time {args.task_seconds:g} s, real poll "
              "schedule (1 s polls), upload + submit + poll + download + journal per job")
        for c in args.concurrency:
            elapsed, submits = batch_run(args.jobs, c, args.task_seconds, work)
            ideal = math.ceil(args.jobs / c) * args.task_seconds
            print(f"  C={c}: measured {elapsed:6.1f} s, ideal ceil({args.jobs}/{c}) x "
                  f"{args.task_seconds:g} s = {ideal:6.1f} s, measured/ideal = {elapsed / ideal:.3f}"
                  f"  ({submits} submits)")

        threads = max(args.concurrency)
        seq, con = journal_costs(work, args.journal_jobs, threads)
        print(f"Part 2: journal work per job (acquire, upload lookup, 5 row updates; each an "
              f"fsync'd SQLite commit), {args.journal_jobs} jobs")
        print(f"  sequential:         mean {statistics.mean(seq):.2f} ms, median "
              f"{statistics.median(seq):.2f} ms, p95 {pct(seq, 0.95):.2f} ms per job")
        print(f"  {threads} threads at once: mean {statistics.mean(con):.2f} ms, median "
              f"{statistics.median(con):.2f} ms, p95 {pct(con, 0.95):.2f} ms per job "
              "(includes waiting for the others' commits)")
        verdict = "under" if statistics.mean(seq) < 5.0 else "NOT under"
        print(f"  -> {verdict} the 5 ms per job budget (sequential mean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
