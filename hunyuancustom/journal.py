"""The job journal: every paid task, recorded on disk before we wait for it.

A small SQLite database in the pack's data folder (`jobs.sqlite3`, WAL mode). It lets a job

- resume instead of resubmit: a task that is still pending after Cancel, a timeout, a crash or a
  restart is polled again under the same task id;
- return a finished result from disk (fixed seed), with no request at all;
- reuse an uploaded reference image while its URL is young;
- refuse to resubmit blindly after a submit whose answer was lost.

Rows are identified by a fingerprint of the request: the model, the canonical JSON of the
validated body without the image URL, and the image's identity (`ImageInput.ref`: a node's pixels,
a file's bytes, or the URL when the user gave one). The seed is part of it, so `seed = -1` rows
identify "this request, random seed".

Several processes may share the file (two ComfyUIs, the CLI): every read-decide-write is one
`BEGIN IMMEDIATE` transaction, so SQLite lets one writer in at a time. A row being worked on is
claimed by its process (pid, host and a per-process token; the host includes the boot and the pid
namespace, so "this machine" means "this process table"). On this machine a claim stands exactly
as long as its process lives, however long an upload or a Retry-After wait keeps it from refreshing
the heartbeat; a claim of another machine stands until it has not been refreshed for
`STALE_CLAIM_S`. A job writes its row only while it still holds the claim (`update_owned`), so a
job whose claim was taken over never submits. The API key is never stored.

Each saved video is recorded with its size and sha256, so a file that has since been deleted or
replaced (another job's video under the same name) is never served as this job's result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from .atomic import host_identity
from .config import data_dir
from .errors import ConfigError

JOURNAL_FILE_NAME = "jobs.sqlite3"
SCHEMA_VERSION = 3  # 2: jobs.api_base; 3: jobs.output_size, jobs.output_sha256
# A claim of another machine not refreshed for this long is abandoned (hung, or gone). Claims of
# this machine are judged by their process instead. Module attributes, read at each use: a test's
# child process may shorten them.
STALE_CLAIM_S = 300.0
HEARTBEAT_S = 30.0  # how often a job refreshes its claim (while polling, uploading or waiting)
# The task-id slot of a job (`reserve_task_slot`): this many bytes, taken before the submit.
TASK_SLOT_BYTES = 512

# Local statuses. A task exists at the provider from "submitting" (maybe) / "created" on.
UPLOADING = "uploading"  # row reserved; nothing submitted yet
SUBMITTING = "submitting"  # the submit POST is (or was) on its way; its answer not yet recorded
UNCERTAIN = "uncertain"  # the submit's answer was lost: a task may or may not exist
REJECTED = "rejected"  # the provider refused the submit: no task, nothing billed
PENDING = ("created", "processing", "completed")  # a task exists and its video is not saved yet
DOWNLOADED = "downloaded"  # the video is saved at output_path
FAILED = "failed"  # the task failed (or the safety checker blocked its output)
EXPIRED = "expired"  # completed, but the output URL expired before we saved it
ABANDONED = "abandoned"  # an uncertain row the user chose to move past (force new)
FINISHED = (DOWNLOADED, FAILED, REJECTED, EXPIRED, ABANDONED)  # nothing left to resume or pay


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a process from Linux's /proc; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()  # the name may hold spaces and ")"
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _start_mark() -> str:
    mine = _proc_stat(os.getpid())
    return f"@{mine[1]}" if mine else ""


# Tells this process apart from an earlier one with the same pid. On Linux it ends in the
# process's start time, so a pid reused by an unrelated program does not keep a dead claim alive.
_PROCESS_TOKEN = uuid.uuid4().hex + _start_mark()
# The rows this process holds, by (journal file, row id). For its own claims the process knows the
# truth, whatever a failed release write left in the file.
_HELD: set[tuple[str, int]] = set()
# Where a claim's pid means something: host name, boot and pid namespace (atomic.host_identity).
# A claim made under another pid namespace (another container sharing the host name and the
# folder) is judged like another machine's: by its heartbeat, never by a pid that is not ours.
_HOST = host_identity()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    image_ref TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    task_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    submitted_at REAL,
    finished_at REAL,
    inference_ms INTEGER,
    output_url TEXT,
    output_path TEXT,
    error TEXT,
    info TEXT,
    batch_id INTEGER,
    batch_index INTEGER,
    owner_host TEXT,
    owner_pid INTEGER,
    owner_token TEXT,
    heartbeat_at REAL,
    api_base TEXT,
    output_size INTEGER,
    output_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint, status);
CREATE INDEX IF NOT EXISTS jobs_task ON jobs (task_id);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, batch_index);
CREATE INDEX IF NOT EXISTS jobs_output ON jobs (output_path);
CREATE TABLE IF NOT EXISTS uploads (
    sha256 TEXT NOT NULL,
    api_base TEXT NOT NULL,
    url TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    PRIMARY KEY (sha256, api_base)
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    owner_host TEXT,
    owner_pid INTEGER,
    owner_token TEXT,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS batches_key ON batches (batch_key, status);
"""
# Columns added after version 1, in order: (name, SQL type).
_ADDED_COLUMNS = (("api_base", "TEXT"), ("output_size", "INTEGER"), ("output_sha256", "TEXT"))


class JournalError(ConfigError):
    """The journal cannot be read or written; the message says which file and what to do."""


# --- fingerprints ---------------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_ref(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_identity(path: str | Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file's content: what a saved video is recorded as."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def fingerprint(model_id: str, body: dict[str, Any], image_ref: str) -> tuple[str, str]:
    """(fingerprint, canonical request JSON) of a validated body; its image URL is left out
    (an upload URL changes every time) and `image_ref` identifies the content instead."""
    request = canonical_json({k: v for k, v in body.items() if k != "image"})
    digest = hashlib.sha256(canonical_json(
        {"model": model_id, "request": request, "image": image_ref}).encode()).hexdigest()
    return digest, request


def storable(value: Any) -> Any:
    """`value` with every lone UTF-16 surrogate (what a JSON escape such as "\\ud800" in a
    provider's answer decodes to) written out as its escape text, in strings nested in dicts and
    lists too: SQLite stores UTF-8, which has no form for them, and a paid task's record must
    never fail on the provider's text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


# --- rows -----------------------------------------------------------------------------------------


@dataclass
class JobRow:
    id: int
    fingerprint: str
    model: str
    request: dict[str, Any]
    image_ref: str
    seed: int
    status: str
    task_id: str | None
    created_at: float
    updated_at: float
    submitted_at: float | None
    finished_at: float | None
    inference_ms: int | None
    output_url: str | None
    output_path: str | None
    error: str | None
    info: dict[str, Any] = field(default_factory=dict)
    batch_id: int | None = None
    batch_index: int | None = None
    owner_host: str | None = None
    owner_pid: int | None = None
    owner_token: str | None = None
    heartbeat_at: float | None = None
    api_base: str | None = None  # the API root the task was submitted to (where it can be polled)
    output_size: int | None = None  # what the saved video at output_path was when it was saved;
    output_sha256: str | None = None  # None: saved before journal version 3 (nothing recorded)

    @classmethod
    def from_sql(cls, row: sqlite3.Row) -> JobRow:
        d = dict(row)
        d["request"] = json.loads(d["request"])
        d["info"] = json.loads(d["info"]) if d["info"] else {}
        return cls(**d)

    @property
    def has_video(self) -> bool:
        """Whether the saved video looks present: the file exists with its recorded size. Only a
        cheap check (it runs inside the journal's write lock); `video_matches` reads the content."""
        if self.status != DOWNLOADED or not self.output_path:
            return False
        try:
            st = os.stat(self.output_path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and self.output_size in (None, st.st_size)

    def video_matches(self) -> bool | None:
        """Whether the file at output_path is still the video this row saved: True, False (gone or
        other content), or None when nothing was recorded (saved before journal version 3)."""
        if not self.has_video:
            return False
        if self.output_sha256 is None:
            return None
        try:
            return file_identity(self.output_path) == (self.output_size, self.output_sha256)
        except OSError:
            return False

    def summary(self) -> dict[str, Any]:
        """What `jobs` shows: no owner bookkeeping, nothing secret (the journal holds no key)."""
        return {
            "id": self.id, "status": self.status, "task_id": self.task_id, "model": self.model,
            "created": _iso(self.created_at), "submitted": _iso(self.submitted_at),
            "finished": _iso(self.finished_at), "inference_ms": self.inference_ms,
            "output_path": self.output_path, "output_url": self.output_url, "error": self.error,
            "request": self.request, "image": self.image_ref, "fingerprint": self.fingerprint,
            "batch_id": self.batch_id, "batch_index": self.batch_index, "api_base": self.api_base,
            "output_size": self.output_size, "output_sha256": self.output_sha256,
        }


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _pid_alive(pid: int) -> bool:
    if sys.platform == "win32":
        return _win_pid_alive(pid)
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _win_pid_alive(pid: int) -> bool:
    # Never os.kill on Windows: signal 0 there is CTRL_C_EVENT, which would interrupt the other
    # process (another ComfyUI). Ask the kernel instead.
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists, owned by another user
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _claim_is_live(host: str | None, pid: int | None, token: str | None, heartbeat: float | None,
                   now: float) -> bool:
    """Whether a claim still stands. Jobs check this process's own claims in `_HELD` first."""
    if token is None:
        return False
    if token == _PROCESS_TOKEN:
        return True  # another run of this very process holds it
    if host == _HOST and pid is not None:
        # On this machine the process table is the truth, whatever the heartbeat: a live owner may
        # be in a long upload or Retry-After wait, and taking its job over would pay twice.
        # Same pid but another token: an earlier process (e.g. a restarted container) - dead.
        return pid != os.getpid() and _process_alive(pid, token)
    if heartbeat is not None and now - heartbeat > STALE_CLAIM_S:
        return False
    return True  # another machine sharing the folder, recently alive


def _process_alive(pid: int, token: str) -> bool:
    """Whether the process that made `token` still runs as `pid` (not a zombie, not a reused pid)."""
    if not _pid_alive(pid):
        return False
    found = _proc_stat(pid)
    if found is None:
        return True  # not Linux: the pid alone has to do
    state, started = found
    if state in ("Z", "X"):
        return False  # exited; its parent has not reaped it yet
    _, at, mark = token.rpartition("@")
    return not at or mark == started


_NO_OWNER = {"owner_host": None, "owner_pid": None, "owner_token": None, "heartbeat_at": None}


class Decision(NamedTuple):
    """What `Journal.acquire` found for a request.

    kind: "cached" (row has the saved video), "resume" (a pending task, now claimed by us),
    "refetch" (a finished task whose saved video is gone, now claimed by us to fetch it again),
    "busy" (the same fixed-seed request is being run by a live job: wait and ask again),
    "uncertain" (an earlier submit's answer was lost) or "new" (a fresh row, claimed by us).
    """

    kind: str
    row: JobRow


# --- the journal ----------------------------------------------------------------------------------


def default_path() -> Path:
    return data_dir() / JOURNAL_FILE_NAME


class Journal:
    """One connection, shared by the threads of this process under a lock."""

    def __init__(self, path: str | Path | None = None, *, busy_timeout_s: float = 10.0,
                 max_bytes: int | None = None):
        """`max_bytes` caps the database's size (writes past it fail like a full disk)."""
        self.path = Path(path) if path is not None else default_path()
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._upload_locks: dict[str, threading.Lock] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise JournalError(f"Cannot create the folder of the job journal {self.path.parent}: "
                               f"{e.strerror or e}. Make it writable (or set "
                               "HUNYUANCUSTOM_DATA_DIR to a writable folder).") from None
        try:
            self._open(max_bytes)
        except BaseException:
            self.close()
            raise

    def _open(self, max_bytes: int | None) -> None:
        busy_timeout_s = self.busy_timeout_s
        with self._guard("open"):
            conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            self._conn = conn
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"The job journal {self.path} cannot use WAL mode (got {mode}); "
                                   "is the folder on a network file system?")
            # FULL: a committed row survives a power cut as well as a crash.
            conn.execute("PRAGMA synchronous = FULL")
            if max_bytes is not None:
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page)}")
            with self._tx() as c:
                if c.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            c.execute(stmt)
                    # An older journal is upgraded in place and keeps its rows: version 1 lacks
                    # api_base, versions 1 and 2 the saved video's identity (left NULL: unknown).
                    columns = {r[1] for r in c.execute("PRAGMA table_info(jobs)")}
                    for name, kind in _ADDED_COLUMNS:
                        if name not in columns:
                            c.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
                    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                c.execute("SELECT count(*) FROM jobs").fetchone()  # a damaged file fails here

    @classmethod
    def open_default(cls) -> Journal:
        return cls(default_path())

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    # --- plumbing ---

    def _explain(self, e: sqlite3.Error, doing: str) -> JournalError:
        text = str(e)
        low = text.lower()
        if "locked" in low or "busy" in low:
            why = (f"it stayed locked by another process for over {self.busy_timeout_s:g} s. "
                   "Another ComfyUI or CLI run may be stuck; try again")
        elif "full" in low:
            why = "the disk (or the journal's size cap) is full. Free some space and run again"
        elif "not a database" in low or "malformed" in low or "corrupt" in low:
            why = (f"the file is damaged ({text}). Move it aside (e.g. rename it to "
                   f"{self.path.name}.bad) and run again; saved videos are not affected, only "
                   "the record of earlier jobs. Warning: tasks that were pending or uncertain in "
                   "it are then forgotten, and running the same requests again submits (and "
                   "pays for) them again; check your provider dashboard for them first")
        elif "readonly" in low or "unable to open" in low or "disk i/o" in low:
            why = f"it cannot be written ({text}). Check the folder's permissions and free space"
        else:
            why = text
        return JournalError(f"The job journal {self.path} could not {doing}: {why}.")

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turn SQLite's errors into a JournalError that says what to do."""
        try:
            yield
        except sqlite3.Error as e:
            raise self._explain(e, doing) from None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the thread lock here, SQLite's write lock across processes."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise JournalError(f"The job journal {self.path} is closed.")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            conn.execute("COMMIT")

    def _write(self, doing: str, sql: str, args: tuple = ()) -> None:
        with self._guard(doing), self._tx() as c:
            c.execute(sql, tuple(map(storable, args)))

    def _owner(self, now: float) -> tuple:
        return (_HOST, os.getpid(), _PROCESS_TOKEN, now)

    def adopt_fingerprint(self, old: str, new: str, image_ref: str) -> int:
        """Move the rows of `old` (a request whose image was known by other means before) to
        `new`, so they resume and serve as before; how many moved. Reads first: no write once
        there is nothing left to move (a read-only journal still serves saved videos)."""
        with self._guard("be read"), self._lock:
            if self._conn.execute("SELECT 1 FROM jobs WHERE fingerprint=? LIMIT 1",
                                  (old,)).fetchone() is None:
                return 0
        with self._guard("record the job"), self._tx() as c:
            return c.execute("UPDATE jobs SET fingerprint=?, image_ref=? WHERE fingerprint=?",
                             (new, image_ref, old)).rowcount

    # --- deciding what a job does ---

    def peek_cached(self, fp: str) -> JobRow | None:
        """The newest saved video for this fingerprint, or None (read only)."""
        with self._guard("be read"), self._lock:
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE fingerprint = ? AND status = ? ORDER BY id DESC",
                (fp, DOWNLOADED)).fetchall()
        for r in rows:
            row = JobRow.from_sql(r)
            if row.has_video:
                return row
        return None

    def paid_and_gone(self, fp: str) -> bool:
        """Whether a task was paid for this fingerprint and can no longer be had (the API said it no
        longer knows it, or the user gave it up): a new task for it is billed a second time."""
        with self._guard("be read"), self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM jobs WHERE fingerprint = ? AND status IN (?, ?) AND task_id IS NOT NULL "
                "AND task_id != '' LIMIT 1", (fp, EXPIRED, ABANDONED)).fetchone()
        return row is not None

    def acquire(self, fp: str, *, model: str, request: str, image_ref: str, seed: int,
                force_new: bool = False, batch: tuple[int, int] | None = None) -> Decision:
        """Decide, atomically across processes, whether a request is served from the cache,
        resumes a pending task, must wait, is blocked by an uncertain submit, or is new."""
        now = time.time()
        decision = None
        with self._guard("record the job"), self._tx() as c:
            adopted = self._adopt_task_slots(c, now)
            if not force_new:
                found = self._find(c, fp, seed, batch, now)
                if found is not None:
                    kind, row = found
                    if kind in ("resume", "refetch"):
                        c.execute("UPDATE jobs SET owner_host=?, owner_pid=?, owner_token=?, "
                                  "heartbeat_at=?, updated_at=? WHERE id=?",
                                  (*self._owner(now), now, row.id))
                        _HELD.add(self._held_key(row.id))
                        row = self._row(c, row.id)
                    decision = Decision(kind, row)
            else:
                c.execute("UPDATE jobs SET status=?, updated_at=? WHERE fingerprint=? AND status=?",
                          (ABANDONED, now, fp, UNCERTAIN))
            if decision is None:
                cur = c.execute(
                    "INSERT INTO jobs (fingerprint, model, request, image_ref, seed, status, "
                    "created_at, updated_at, batch_id, batch_index, owner_host, owner_pid, "
                    "owner_token, heartbeat_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (fp, model, request, image_ref, seed, UPLOADING, now, now,
                     batch[0] if batch else None, batch[1] if batch else None, *self._owner(now)))
                row = self._row(c, cur.lastrowid)
                _HELD.add(self._held_key(row.id))
                decision = Decision("new", row)
        for row_id in adopted:  # committed: the rows hold those ids now
            self.clear_task_slot(row_id)
        return decision

    # --- task-id slots: a submit's task id outlives a failing journal write ---

    def task_slot_path(self, row_id: int) -> Path:
        return self.path.with_name(f"{self.path.name}.task-{row_id}")

    def reserve_task_slot(self, row_id: int) -> None:
        """Before a submit: a small file beside the journal, its disk space taken now, into which
        the submit's task id is written at once (`fill_task_slot`). If the journal cannot take
        the id then (its write lock held by another program, a full disk), the id still survives,
        and the next `acquire` (or `get`) puts it into the row."""
        try:
            with open(self.task_slot_path(row_id), "wb") as f:
                f.write(b" " * TASK_SLOT_BYTES)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self.clear_task_slot(row_id)
            raise JournalError(f"The job journal {self.path} could not record the job: "
                               f"{e.strerror or e}. Free some space (or fix the folder's "
                               "permissions) and run again; nothing was submitted.") from None

    def fill_task_slot(self, row_id: int, task_id: str, submitted_at: float) -> bool:
        """Write a submit's task id into its reserved slot, over the space taken before the
        submit (no new space is needed); whether it was written."""
        data = json.dumps({"task_id": storable(task_id), "submitted_at": submitted_at}).encode()
        try:
            fd = os.open(self.task_slot_path(row_id), os.O_WRONLY)  # no O_TRUNC: overwritten in place
            try:
                if len(data) > TASK_SLOT_BYTES:  # a hostile length: needs space after all
                    os.ftruncate(fd, 0)
                os.pwrite(fd, data.ljust(TASK_SLOT_BYTES), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return False
        return True

    def clear_task_slot(self, row_id: int) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.task_slot_path(row_id))

    def _task_slots(self) -> list[tuple[int, str, float | None]]:
        """(row id, task id, submitted_at) of every filled slot beside this journal."""
        found = []
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return found
        prefix = self.path.name + ".task-"
        for entry in entries:
            rest = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
            if not rest.isdigit():
                continue
            try:
                with open(entry.path, encoding="utf-8", errors="replace") as f:
                    text = f.read(1 << 16).strip()
                record = json.loads(text) if text else None
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and isinstance(record.get("task_id"), str) \
                    and record["task_id"]:
                at = record.get("submitted_at")
                found.append((int(rest), record["task_id"],
                              at if isinstance(at, (int, float)) else None))
        return found

    def _adopt_task_slots(self, c: sqlite3.Connection, now: float) -> list[int]:
        """Put the task id of every filled slot into its row, if the row has none; a row that was
        `submitting` or `uncertain` is then a pending task again (resumed, not paid again).
        Returns the rows whose slot may go once this transaction is committed."""
        done = []
        for row_id, task_id, submitted_at in self._task_slots():
            r = c.execute("SELECT status, task_id FROM jobs WHERE id = ?", (row_id,)).fetchone()
            if r is not None and r["task_id"] is None:
                values: dict[str, Any] = {"task_id": task_id, "submitted_at": submitted_at}
                if r["status"] in (SUBMITTING, UNCERTAIN):
                    values.update(status="created", error=None)
                self._set(c, row_id, now, **values)
            done.append(row_id)
        return done

    def _held_key(self, row_id: int) -> tuple[str, int]:
        return (str(self.path.resolve()), row_id)

    def _find(self, c: sqlite3.Connection, fp: str, seed: int, batch: tuple[int, int] | None,
              now: float) -> tuple[str, JobRow] | None:
        rows = [JobRow.from_sql(r) for r in c.execute(
            "SELECT * FROM jobs WHERE fingerprint = ? AND status NOT IN (?, ?, ?, ?) "
            "ORDER BY id DESC", (fp, REJECTED, FAILED, EXPIRED, ABANDONED))]
        # A resumed batch takes its own slot's row first, whatever the seed.
        if batch is not None:
            slot = [r for r in rows if (r.batch_id, r.batch_index) == batch]
            rows = slot + [r for r in rows if r not in slot]
        fixed = seed != -1
        refetch: JobRow | None = None
        for row in rows:
            own_slot = batch is not None and (row.batch_id, row.batch_index) == batch
            if row.owner_token == _PROCESS_TOKEN:
                live = self._held_key(row.id) in _HELD  # another job of this very process
            else:
                live = _claim_is_live(row.owner_host, row.owner_pid, row.owner_token,
                                      row.heartbeat_at, now)
            if row.status == DOWNLOADED:
                if not (fixed or own_slot):
                    continue
                if row.has_video:
                    return "cached", row
                # Paid for, but its saved video is gone: fetch it again from the same task (after
                # looking for another saved copy of this request, which costs nothing).
                if row.task_id and live and fixed:
                    return "busy", row
                if row.task_id and not live and refetch is None:
                    refetch = row
                continue
            if row.status in PENDING and row.task_id:
                if not live:
                    return "resume", row
                if fixed:
                    return "busy", row
                continue  # seed -1: another job's random video, not ours
            if row.status in PENDING:  # a task exists, but its id never reached the journal
                if live:
                    if fixed:
                        return "busy", row
                    continue
                self._set(c, row.id, now, status=UNCERTAIN, **_NO_OWNER, error=(
                    "The task was submitted, but its task id never reached the journal."))
                return "uncertain", self._row(c, row.id)
            if row.status in (UPLOADING, SUBMITTING):
                if live:
                    if fixed:
                        return "busy", row
                    continue
                # Taken from its owner: the owner's later writes (`update_owned`) are refused, so
                # it cannot submit or record anything in this row any more.
                if row.status == SUBMITTING:
                    self._set(c, row.id, now, status=UNCERTAIN, **_NO_OWNER, error=(
                        "The process that submitted this job stopped before the answer was "
                        "recorded; the task may or may not exist."))
                    row = self._row(c, row.id)
                    return "uncertain", row
                self._set(c, row.id, now, status=ABANDONED, **_NO_OWNER,
                          error="stopped before the submit")
                continue
            if row.status == UNCERTAIN:
                return "uncertain", row
        if refetch is not None:
            return "refetch", refetch
        return None

    @staticmethod
    def _row(c: sqlite3.Connection, row_id: int) -> JobRow:
        r = c.execute("SELECT * FROM jobs WHERE id = ?", (row_id,)).fetchone()
        return JobRow.from_sql(r)

    @staticmethod
    def _set(c: sqlite3.Connection, row_id: int, now: float, *, where: str = "", where_args: tuple = (),
             **values: Any) -> bool:
        """Set columns of row `row_id` if it also meets `where`; whether it did."""
        cols = ", ".join(f"{k} = ?" for k in values)
        cur = c.execute(f"UPDATE jobs SET {cols}, updated_at = ? WHERE id = ?{where}",  # noqa: S608 (our names)
                        (*map(storable, values.values()), now, row_id, *where_args))
        return cur.rowcount > 0

    @staticmethod
    def _values(values: dict[str, Any], release: bool, now: float) -> dict[str, Any]:
        if "info" in values and isinstance(values["info"], dict):
            values["info"] = canonical_json(storable(values["info"]))
        if release:
            values.update(_NO_OWNER)
        elif values.get("status") in (*PENDING, SUBMITTING, UPLOADING):
            values["heartbeat_at"] = now
        return values

    def update(self, row_id: int, *, release: bool = False, **values: Any) -> None:
        """Set columns of a row whoever holds it (`info` may be a dict); `release` drops this
        process's claim. For the user's own commands (`jobs abandon`); a job uses `update_owned`."""
        now = time.time()
        if release:
            _HELD.discard(self._held_key(row_id))  # first: released even if the write below fails
        values = self._values(values, release, now)
        with self._guard("be updated"), self._tx() as c:
            self._set(c, row_id, now, **values)

    def update_owned(self, row_id: int, *, release: bool = False, expect_status: str | None = None,
                     **values: Any) -> bool:
        """Set columns of a row this process still holds (and, with `expect_status`, that still has
        that status), checked and written in one transaction; False, writing nothing, when another
        process has taken the row over. `release` drops the claim."""
        now = time.time()
        if release:
            _HELD.discard(self._held_key(row_id))  # first: released even if the write below fails
        values = self._values(values, release, now)
        where, args = " AND owner_token = ?", (_PROCESS_TOKEN,)
        if expect_status is not None:
            where, args = where + " AND status = ?", (*args, expect_status)
        with self._guard("be updated"), self._tx() as c:
            return self._set(c, row_id, now, where=where, where_args=args, **values)

    def heartbeat(self, row_id: int) -> bool:
        """Refresh this process's claim on a row; False when it no longer holds it."""
        return self.update_owned(row_id, heartbeat_at=time.time())

    def delete(self, row_id: int) -> None:
        _HELD.discard(self._held_key(row_id))
        self._write("be updated", "DELETE FROM jobs WHERE id = ?", (row_id,))

    def delete_owned(self, row_id: int) -> bool:
        """Delete a row this process still holds (never one another process took over)."""
        _HELD.discard(self._held_key(row_id))
        with self._guard("be updated"), self._tx() as c:
            cur = c.execute("DELETE FROM jobs WHERE id = ? AND owner_token = ?", (row_id, _PROCESS_TOKEN))
            return cur.rowcount > 0

    # --- saved videos ---

    def forget_video(self, row: JobRow, why: str) -> bool:
        """The file at a row's output_path is no longer its video (deleted, damaged, or another
        job's video under the same name): drop the path, so the row's task is fetched again
        and the file is not counted as this row's. Only if nothing changed the row meanwhile."""
        now = time.time()
        with self._guard("be updated"), self._tx() as c:
            return self._set(c, row.id, now, where=" AND status = ? AND output_path IS ?",
                             where_args=(DOWNLOADED, row.output_path), output_path=None,
                             output_size=None, output_sha256=None, error=why)

    def adopt_video(self, row: JobRow, size: int, sha256: str) -> bool:
        """Record the identity of a video saved before journal version 3 (nothing recorded)."""
        now = time.time()
        with self._guard("be updated"), self._tx() as c:
            return self._set(c, row.id, now, where=" AND status = ? AND output_path IS ? AND "
                             "output_sha256 IS NULL", where_args=(DOWNLOADED, row.output_path),
                             output_size=size, output_sha256=sha256)

    def saved_at(self, path: str | Path) -> list[JobRow]:
        """The rows whose saved video is recorded at `path` (resolved), newest first."""
        with self._guard("be read"), self._lock:
            return [JobRow.from_sql(r) for r in self._conn.execute(
                "SELECT * FROM jobs WHERE output_path = ? AND status = ? ORDER BY id DESC",
                (str(Path(path).resolve()), DOWNLOADED))]

    def owner_of_file(self, path: str | Path) -> JobRow | None:
        """The row whose saved video the file at `path` is, or None: a row with a recorded
        identity that the file's content matches, or, for videos saved before version 3, the
        newest row naming the path (it was written last)."""
        rows = self.saved_at(path)
        if not rows:
            return None
        try:
            have = file_identity(path)
        except OSError:
            return None  # no file there: nothing to protect
        for row in rows:
            if row.output_sha256 is None:
                if row is rows[0]:
                    return row
                continue
            if (row.output_size, row.output_sha256) == have:
                return row
        return None

    # --- reading ---

    def get(self, ref: str | int) -> JobRow | None:
        """A row by journal id or by task id (also one only a task-id slot knows yet)."""
        if any(task_id == str(ref) for _, task_id, _ in self._task_slots()):
            now = time.time()
            try:
                with self._guard("record the task id"), self._tx() as c:
                    adopted = self._adopt_task_slots(c, now)
                for row_id in adopted:
                    self.clear_task_slot(row_id)
            except JournalError:
                pass  # read only: the row is shown as it is
        with self._guard("be read"), self._lock:
            r = None
            if isinstance(ref, int) or str(ref).isdigit():
                r = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (int(ref),)).fetchone()
            if r is None:
                r = self._conn.execute("SELECT * FROM jobs WHERE task_id = ? ORDER BY id DESC",
                                       (str(ref),)).fetchone()
        return JobRow.from_sql(r) if r is not None else None

    def list(self, *, status: str | None = None, model: str | None = None,
             since: float | None = None, batch_id: int | None = None,
             limit: int | None = 50) -> list[JobRow]:
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if model:
            where.append("model LIKE ?")
            args.append(f"%{model}%")
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if batch_id is not None:
            where.append("batch_id = ?")
            args.append(batch_id)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        with self._guard("be read"), self._lock:
            return [JobRow.from_sql(r) for r in self._conn.execute(sql, args)]

    def iter_all(self) -> Iterator[JobRow]:
        yield from reversed(self.list(limit=None))

    def prune(self, before: float, *, dry_run: bool = False) -> int:
        """Forget finished jobs (FINISHED) last updated before `before` (a timestamp), with the
        upload records and finished batches of that age; return how many jobs. Rows of tasks that
        may still exist or be paid for (uploading, submitting, uncertain, created, processing,
        completed) are always kept: they are what prevents a second payment. Saved videos stay
        on disk, but an identical request afterwards is no longer served from them."""
        marks = ",".join("?" * len(FINISHED))
        with self._guard("be pruned"), self._tx() as c:
            n = c.execute(f"SELECT count(*) FROM jobs WHERE status IN ({marks}) AND updated_at < ?",  # noqa: S608
                          (*FINISHED, before)).fetchone()[0]
            if not dry_run:
                c.execute(f"DELETE FROM jobs WHERE status IN ({marks}) AND updated_at < ?",  # noqa: S608
                          (*FINISHED, before))
                c.execute("DELETE FROM uploads WHERE uploaded_at < ?", (before,))
                c.execute("DELETE FROM batches WHERE status = 'finished' AND finished_at < ?", (before,))
        return n

    # --- uploads ---

    def upload_lock(self, sha256: str) -> threading.Lock:
        """Held while one job of this process uploads these bytes, so concurrent jobs of a batch
        wait for its URL instead of uploading the same image again."""
        with self._lock:
            return self._upload_locks.setdefault(sha256, threading.Lock())

    def cached_upload(self, sha256: str, api_base: str, max_age_s: float) -> str | None:
        with self._guard("be read"), self._lock:
            r = self._conn.execute("SELECT url, uploaded_at FROM uploads WHERE sha256=? AND api_base=?",
                                   (sha256, api_base)).fetchone()
        if r is None or time.time() - r["uploaded_at"] >= max_age_s:
            return None
        return r["url"]

    def record_upload(self, sha256: str, api_base: str, url: str) -> None:
        self._write("record the upload",
                    "INSERT OR REPLACE INTO uploads (sha256, api_base, url, uploaded_at) "
                    "VALUES (?,?,?,?)", (sha256, api_base, url, time.time()))

    # --- batches ---

    def start_batch(self, batch_key: str, size: int, *, force_new: bool = False) -> tuple[int, bool]:
        """(batch id, resumed): an unfinished, unclaimed run of the same batch is taken over."""
        now = time.time()
        with self._guard("record the batch"), self._tx() as c:
            if not force_new:
                for r in c.execute("SELECT * FROM batches WHERE batch_key=? AND status='running' "
                                   "ORDER BY id DESC", (batch_key,)).fetchall():
                    if not _claim_is_live(r["owner_host"], r["owner_pid"], r["owner_token"],
                                          r["heartbeat_at"], now):
                        c.execute("UPDATE batches SET owner_host=?, owner_pid=?, owner_token=?, "
                                  "heartbeat_at=? WHERE id=?", (*self._owner(now), r["id"]))
                        return r["id"], True
            cur = c.execute("INSERT INTO batches (batch_key, size, status, created_at, owner_host, "
                            "owner_pid, owner_token, heartbeat_at) VALUES (?,?,?,?,?,?,?,?)",
                            (batch_key, size, "running", now, *self._owner(now)))
            return cur.lastrowid, False

    def end_batch(self, batch_id: int, *, complete: bool) -> None:
        """A fully successful batch is finished; otherwise it stays resumable, unclaimed."""
        self._write("record the batch",
                    "UPDATE batches SET status=?, finished_at=?, owner_host=NULL, owner_pid=NULL, "
                    "owner_token=NULL, heartbeat_at=NULL WHERE id=?",
                    ("finished" if complete else "running", time.time() if complete else None,
                     batch_id))


__all__ = ["Journal", "JournalError", "JobRow", "Decision", "fingerprint", "content_ref",
           "canonical_json", "default_path", "PENDING", "DOWNLOADED", "UNCERTAIN", "SUBMITTING",
           "ABANDONED"]
