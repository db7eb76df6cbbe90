"""Command line for the same jobs the nodes run.

    python -m hunyuancustom ref2v --image ref.png --prompt "..." -o out.mp4
    python -m hunyuancustom batch jobs.jsonl -o videos/ --concurrency 2
    python -m hunyuancustom jobs [--status S] | jobs show ID | jobs prune --older-than 30d

Flags are generated from the parameter table (params.py), so they always match the nodes.
Every job is recorded in the job journal (journal.py): rerunning a command resumes its pending
task or returns its saved video instead of paying again (`--force-new` submits anyway).
Exit codes: 0 done (every job of a batch), 1 a job failed, 2 bad input, 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from . import __version__
from .config import how_to_set_key
from .errors import ApiError, ConfigError, HunyuanCustomError, ValidationError
from .params import CLOUD_MODELS, REF2V_720P, Param, model_for
from .progress import StderrReporter
from .terminal import safe


def _flag(p: Param) -> str:
    return "--" + p.name.replace("_", "-")


def add_param_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per table row (besides image), with the table's help, default and range."""
    for p in REF2V_720P.params:
        if p.name == "image":
            continue
        help_text = f"{p.description} Allowed: {p.allowed()}."
        if p.kind is bool:
            parser.add_argument(_flag(p), dest=p.name, action=argparse.BooleanOptionalAction,
                                default=None, help=f"{help_text} Default: {str(p.default).lower()}.")
            continue
        if p.name == "size":  # each model has its own list; validation checks the pair
            help_text = f"{p.description} Allowed: " + "; ".join(
                f"{m.label}: {', '.join(m.sizes)}" for m in CLOUD_MODELS.values()) + "."
        default = "" if p.required or p.default in (None, "") else f" Default: {p.default}."
        parser.add_argument(_flag(p), dest=p.name, type=p.kind, default=None,
                            required=p.required, help=help_text + default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hunyuancustom",
                                     description="HunyuanCustom video generation (cloud API).")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("ref2v", help="reference image + prompt -> video through the hosted API")
    r.add_argument("--image", required=True, help="reference image: a local file or an http(s) URL")
    r.add_argument("--model", default="720p", choices=sorted(CLOUD_MODELS),
                   help="hosted model (720p: 1280*720/720*1280; 480p: 832*480/480*832)")
    add_param_flags(r)
    r.add_argument("-o", "--output", type=Path, required=True, help="where to write the MP4")
    r.add_argument("--timeout", type=float, default=None,
                   help="seconds the job may take, from the upload to the end of the download "
                        "(default: setting timeout_s, 1800)")
    r.add_argument("--api-base", default=None, help="API root (default: WAVESPEED_API_BASE or "
                                                    "settings, else https://api.wavespeed.ai/api/v2)")
    r.add_argument("--json", action="store_true", help="print the result info as JSON on stdout")
    _add_force_new(r)
    r.set_defaults(handler=cmd_ref2v)

    b = sub.add_parser(
        "batch", help="run many ref2v jobs from a JSON Lines file, a few at a time",
        description="One JSON object per line with the same fields as the ref2v command (image, "
                    "prompt, negative_prompt, size, guidance_scale, flow_shift, seed, "
                    "enable_safety_checker, model) and optionally output (MP4 path, relative to "
                    "--output-dir). Relative image paths are relative to the jobs file. Blank "
                    "lines and lines starting with # are skipped. Running an interrupted or "
                    "partly failed batch again resumes it without paying twice.")
    b.add_argument("jobs_file", type=Path, help="the .jsonl file")
    b.add_argument("-o", "--output-dir", type=Path, default=None,
                   help="folder for the MP4s (default: <jobs file name>_videos beside it); "
                        "job N is written to NNN.mp4 unless its line names an output")
    b.add_argument("--model", default="720p", choices=sorted(CLOUD_MODELS),
                   help="hosted model for lines that name none")
    b.add_argument("--concurrency", type=int, default=None,
                   help="jobs in flight at once (default: setting concurrency, 2; the provider's "
                        "lowest account level allows 2)")
    b.add_argument("--timeout", type=float, default=None,
                   help="seconds each job may take, upload to download (as for ref2v)")
    b.add_argument("--api-base", default=None, help="API root (as for ref2v)")
    b.add_argument("--json", action="store_true", help="print the batch summary as JSON on stdout")
    _add_force_new(b)
    b.set_defaults(handler=cmd_batch)

    j = sub.add_parser("jobs", help="list the job journal (every submitted task)",
                       description="Lists the newest jobs first. `jobs show ID` prints one job "
                                   "(ID: journal id or task id).")
    j.add_argument("--status", default=None,
                   help="only this status (uploading, submitting, uncertain, rejected, created, "
                        "processing, completed, downloaded, failed, expired, abandoned)")
    j.add_argument("--model", default=None, help="only models whose id contains this")
    j.add_argument("--since", default=None,
                   help="only jobs created since: a date (2026-11-24), or an age (90m, 12h, 7d)")
    j.add_argument("--limit", type=int, default=50, help="how many rows (0: all; default 50)")
    j.add_argument("--json", action="store_true", help="JSON instead of a table")
    j.set_defaults(handler=cmd_jobs)
    js = j.add_subparsers(dest="jobs_command")
    show = js.add_parser("show", help="print one job")
    show.add_argument("id", help="journal id or task id")
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    show.set_defaults(handler=cmd_jobs_show)
    ab = js.add_parser("abandon", help="stop an 'uncertain' job from blocking its request "
                                       "(after checking the dashboard: the next run submits anew), "
                                       "or give up a pending task (the next run pays again)")
    ab.add_argument("id", help="journal id or task id")
    ab.set_defaults(handler=cmd_jobs_abandon)
    pr = js.add_parser("prune", help="forget finished jobs older than an age or date (saved videos "
                                     "stay; pending and uncertain jobs are always kept)")
    pr.add_argument("--older-than", required=True,
                    help="an age (30d, 12h) or a date (2026-11-24): jobs last changed before it")
    pr.add_argument("--dry-run", action="store_true", help="only count what would be forgotten")
    pr.set_defaults(handler=cmd_jobs_prune)
    from .local.convert import add_convert_command  # local checkpoints (the "local" helper)
    add_convert_command(sub)
    return parser


def _add_force_new(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force-new", action="store_true",
                   help="submit a new task even when the journal holds a saved result or a "
                        "pending task for the same request (you pay again)")


def _settings(args: argparse.Namespace):
    from dataclasses import replace

    from .config import load_settings

    settings = load_settings()
    if args.api_base:
        settings = replace(settings, api_base=args.api_base.rstrip("/"))
    if args.timeout is not None:
        if not (math.isfinite(args.timeout) and args.timeout > 0):  # inf would be no deadline
            raise ValidationError("timeout", f"must be a finite number of seconds above 0, got "
                                             f"{args.timeout}")
        settings = replace(settings, timeout_s=args.timeout)
    return settings


def _image_input(value: str, base: Path | None = None, seen: dict | None = None):
    """The image a flag or jobs line names. With `seen`, each distinct file (or URL) is read once
    and its one ImageInput (bytes and content hash) is shared by every line that names it."""
    from .ref2v import ImageInput
    from .video import read_image_file

    is_url = value.startswith(("http://", "https://"))
    path = Path(value).expanduser()
    if base is not None and not is_url and not path.is_absolute():
        path = base / path
    key = value if is_url else os.path.realpath(path)
    if seen is not None and key in seen:
        return seen[key]
    image = ImageInput(url=value) if is_url else ImageInput(png=read_image_file(path), filename=path.name)
    if seen is not None:
        seen[key] = image
    return image


def _params_from_args(args: argparse.Namespace) -> dict:
    return {p.name: getattr(args, p.name) for p in REF2V_720P.params
            if p.name != "image" and getattr(args, p.name, None) is not None}


def cmd_ref2v(args: argparse.Namespace, reporter: StderrReporter) -> int:
    from .journal import Journal
    from .ref2v import run_ref2v

    model = model_for(args.model)
    image = _image_input(args.image)
    settings = _settings(args)
    output = args.output
    if output.suffix.lower() != ".mp4":
        raise ValidationError("output", f"must end in .mp4, got {output}")
    with Journal.open_default() as journal:
        result = run_ref2v(model, image, _params_from_args(args), output, reporter=reporter,
                           settings=settings, decode=False, journal=journal,
                           force_new=args.force_new)
    reporter.finish()
    if "journal_warning" in result.extra:
        print(f"warning: {safe(result.extra['journal_warning'])}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.info(), indent=2))
    else:
        print(safe(result.video_path))
    return 0


# --- batch ------------------------------------------------------------------------------------------

_LINE_ONLY = ("image", "model", "output")
# Far above any real batch (a line is a few hundred bytes); what it stops is a device such as
# /dev/zero, read until memory runs out.
MAX_JOBS_FILE_BYTES = 64 << 20


def read_jobs_file(path: Path, output_dir: Path, default_model: str) -> list:
    """Parse and check every line of a jobs file (errors name the line) before anything runs."""
    from .batch import BatchJob
    from .readfile import read_capped

    try:
        text = read_capped(path, "jobs_file", MAX_JOBS_FILE_BYTES, "a jobs file", "a JSON Lines "
                           "file up to that size (split a bigger batch into several files)").decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValidationError("jobs_file", f"{path} is not UTF-8 text (byte {e.start}); allowed: "
                                           "JSON lines saved as UTF-8") from None
    jobs, outputs, images = [], set(), {}
    known = {p.name for p in REF2V_720P.params} | set(_LINE_ONLY)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"line {number}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValidationError(where, f"is not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValidationError(where, "must be a JSON object")
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValidationError(unknown[0], f"is not a job field ({where}); known: "
                                              f"{', '.join(sorted(known))}")
        image = obj.get("image")
        if not isinstance(image, str) or not image.strip():
            raise ValidationError("image", f"is required: a file path or an http(s) URL ({where})")
        try:
            model = model_for(str(obj.get("model", default_model)))
            img = _image_input(image, base=path.parent, seen=images)
        except ValidationError as e:
            raise ValidationError(e.field, f"{e.problem} ({where})") from None
        out = obj.get("output") or f"{len(jobs) + 1:03d}.mp4"
        if not isinstance(out, str) or not out.lower().endswith(".mp4"):
            raise ValidationError("output", f"must be a path ending in .mp4 ({where})")
        dest = _batch_output(output_dir, out, where)
        if dest in outputs:
            raise ValidationError("output", f"{out} is used by two jobs ({where})")
        outputs.add(dest)
        params = {k: v for k, v in obj.items() if k not in _LINE_ONLY}
        jobs.append(BatchJob(image=img, params=params, dest=dest, model=model, label=where))
    if not jobs:
        raise ValidationError("jobs_file", f"{path} holds no jobs (one JSON object per line)")
    return jobs


def _batch_output(output_dir: Path, out: str, where: str) -> Path:
    """A line's `output` inside the output folder: a jobs file (maybe someone else's) must not
    write over files elsewhere, through `..`, an absolute path or a symlinked folder."""
    allowed = "allowed: a relative .mp4 path inside the output folder"
    rel = Path(out)
    if rel.is_absolute() or rel.drive or ".." in rel.parts or "\x00" in out:
        raise ValidationError("output", f"{out!r} leaves the output folder {output_dir} ({where}); "
                                        f"{allowed}")
    base = output_dir.resolve()
    dest = (base / rel).resolve()
    if not dest.is_relative_to(base) or dest == base:
        raise ValidationError("output", f"{out!r} resolves to {dest}, outside the output folder "
                                        f"{base} ({where}); {allowed}")
    return dest


def cmd_batch(args: argparse.Namespace, reporter: StderrReporter) -> int:
    from .batch import run_batch
    from .journal import Journal

    settings = _settings(args)
    path: Path = args.jobs_file
    output_dir = args.output_dir or path.with_name(path.stem + "_videos")
    jobs = read_jobs_file(path, output_dir, args.model)
    with Journal.open_default() as journal:
        result = run_batch(jobs, concurrency=args.concurrency, journal=journal, reporter=reporter,
                           settings=settings, force_new=args.force_new, job_lines=True)
    reporter.finish()
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for o in result.outcomes:
            if o.ok:
                print(f"{o.label}\tdone\t{o.source}\t{safe(o.result.prediction.id)}\t"
                      f"{safe(o.result.video_path)}")
            else:
                print(f"{o.label}\tfailed\t{safe(o.error)}")
    resumed = " (resumed)" if result.resumed else ""
    print(f"batch {result.batch_id}{resumed}: {summary['done']} of {summary['jobs']} done, "
          f"{summary['failed']} failed, {summary['elapsed_s']:.1f} s", file=sys.stderr)
    if "journal_warning" in result.extra:
        print(f"warning: {safe(result.extra['journal_warning'])}", file=sys.stderr)
    return 0 if result.all_ok else 1


# --- jobs -------------------------------------------------------------------------------------------


def _since(value: str, field: str = "since") -> float:
    import re
    import time
    from datetime import datetime

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
    if m:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time() - float(m.group(1)) * scale
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValidationError(field, f"{value!r} is neither a date (2026-11-24) nor an age "
                                     "(90m, 12h, 7d)") from None


def _local(t: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def cmd_jobs(args: argparse.Namespace, reporter: StderrReporter) -> int:
    from .journal import Journal

    if args.limit < 0:
        raise ValidationError("limit", f"must be 0 (all) or more, got {args.limit}")
    since = _since(args.since) if args.since else None
    with Journal.open_default() as journal:
        rows = journal.list(status=args.status, model=args.model, since=since,
                            limit=args.limit or None)
    if args.json:
        print(json.dumps([r.summary() for r in rows], indent=2))
        return 0
    if not rows:
        print("no jobs", file=sys.stderr)
        return 0
    print(f"{'id':>5}  {'status':<10}  {'created':<19}  {'inference':>9}  {'task':<32}  output")
    for r in rows:
        inference = f"{r.inference_ms / 1000:.1f} s" if r.inference_ms else "-"
        print(f"{r.id:>5}  {safe(r.status):<10}  {_local(r.created_at):<19}  {inference:>9}  "
              f"{safe(r.task_id or '-'):<32}  {safe(r.output_path or r.error or '-')}")
    return 0


def cmd_jobs_abandon(args: argparse.Namespace, reporter: StderrReporter) -> int:
    import time

    from .journal import ABANDONED, PENDING, STALE_CLAIM_S, UNCERTAIN, Journal

    with Journal.open_default() as journal:
        row = journal.get(args.id)
        if row is None:
            raise ValidationError("id", f"no job with journal id or task id {args.id!r}")
        if row.status not in (UNCERTAIN, *PENDING):
            raise ValidationError("id", f"job {row.id} is {row.status}; only an uncertain job or "
                                        "a pending one can be abandoned")
        if row.status in PENDING and row.owner_token and row.heartbeat_at \
                and time.time() - row.heartbeat_at < STALE_CLAIM_S:  # a run is polling it now
            raise ValidationError("id", f"job {row.id} (task {row.task_id}) is being run right now; "
                                        "stop that run first")
        journal.update(row.id, status=ABANDONED)
    if row.status in PENDING:  # e.g. pending at a root whose key the user no longer has
        print(f"job {row.id} abandoned: task {safe(row.task_id)} at "
              f"{safe(row.api_base or 'its API root')} is "
              "no longer waited for; the next identical request is submitted anew (and paid "
              "again)", file=sys.stderr)
    else:
        print(f"job {row.id} abandoned: the next identical request is submitted anew",
              file=sys.stderr)
    return 0


def cmd_jobs_prune(args: argparse.Namespace, reporter: StderrReporter) -> int:
    from .journal import Journal

    before = _since(args.older_than, field="older_than")
    with Journal.open_default() as journal:
        n = journal.prune(before, dry_run=args.dry_run)
    jobs = f"{n} finished job{'' if n == 1 else 's'} last changed before {_local(before)}"
    if args.dry_run:
        print(f"{jobs} would be forgotten", file=sys.stderr)
    else:
        print(f"forgot {jobs}; their videos stay on disk, but identical requests are no longer "
              "served from them", file=sys.stderr)
    return 0


def cmd_jobs_show(args: argparse.Namespace, reporter: StderrReporter) -> int:
    from .journal import Journal

    with Journal.open_default() as journal:
        row = journal.get(args.id)
    if row is None:
        raise ValidationError("id", f"no job with journal id or task id {args.id!r}")
    summary = row.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for k, v in summary.items():
        if k == "request":
            v = json.dumps(v)
        print(f"{k:>13}: {'-' if v is None else safe(v)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    reporter = StderrReporter()
    try:
        return args.handler(args, reporter)
    except ValidationError as e:
        reporter.finish()
        print(f"error: {safe(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        reporter.finish()
        print("cancelled", file=sys.stderr)
        return 130
    except ConfigError as e:
        reporter.finish()
        print(f"error: {safe(e)}", file=sys.stderr)
        return 2
    except (ApiError, HunyuanCustomError) as e:
        reporter.finish()
        print(f"error: {safe(e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`
        return 0
    except OSError as e:  # a file the user named could not be read or written
        reporter.finish()
        print(f"error: {safe(e)}", file=sys.stderr)
        return 1


__all__ = ["main", "build_parser", "how_to_set_key"]
