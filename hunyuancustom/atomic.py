"""Files that appear whole or not at all.

Every file the pack writes for a user (a downloaded or cached video, a preview, the key file, a
converted checkpoint) is written under a hidden temporary name beside its target, flushed to disk,
and renamed over the target only when complete. On any error, Cancel included, the temporary file
is removed, so neither a crash nor an interrupt leaves a half-written file under a real name.

A process killed outright (kill -9, power loss) cannot remove its temporary file, so each one's name
says who wrote it: `.<stem>.hc<pid>-<start>-<host>.<random><suffix>`, where `start` tells a reused
pid from the writer (the process's start time, on Linux) and `host` is a hash of the host name
(`stem` is cut where the whole name would pass the file system's name limit).
`remove_stale_temps` (run before each download into a folder) deletes those whose writer is gone:
on this host a pid that is dead or now another process. A writer also holds an advisory lock
(flock) on its file for as long as it writes, and a locked file is never deleted: a pid from
another pid namespace (a container sharing the host name and the folder) may name a dead or an
unrelated process here, but the lock is the kernel's, shared by every namespace. Where a writer's
end cannot be told (another host sharing the folder; Windows; a running pid on a system without
start times; a name from before names carried a writer), only a file untouched for a day counts as
stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .errors import ValidationError


def _umask() -> int:
    """The process umask, read without changing it where the system says it (Linux), else by the
    set-and-restore dance (only racy against other threads creating files at that instant)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


STALE_TEMP_AGE_S = 86400.0  # a temp whose writer cannot be asked about is stale after a day untouched

_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return ""


def host_identity() -> str:
    """Which process table a pid belongs to: the host name, and on Linux also the boot id and
    the pid namespace. Containers sharing a host name and a folder (ComfyUI as pid 1 under
    `docker --network host`) each have their own pids: a pid from another namespace says nothing
    about the processes here."""
    name = socket.gethostname()
    boot = _read_first_line("/proc/sys/kernel/random/boot_id")[:8]
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return name if not boot else f"{name} (boot {boot})"
    return f"{name} (boot {boot}, pid ns {ns})"


try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writers are told apart by pid and age only
    fcntl = None


def _try_lock(fd: int) -> bool | None:
    """Take an exclusive advisory lock on an open file without waiting: True if taken, False if
    another open file holds it (a live writer, in whatever pid namespace), None if this file
    system or platform cannot say."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True
# mkstemp's random part: 8 characters of [a-z0-9_].
_TEMP = re.compile(r"\.(?P<stem>.+)\.hc(?P<pid>\d+)-(?P<start>\d+)-(?P<host>[0-9a-f]{6})"
                   r"\.[a-z0-9_]{8}\..+")
_LEGACY_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.part")  # a download's, before writers were named


def _start_token(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc), or "0" if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()[19].decode("ascii")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return "0"


def _writer_tag() -> str:
    pid = os.getpid()  # asked each time: a forked child is another writer
    return f"hc{pid}-{_start_token(pid)}-{_HOST}"


def _writer_gone(pid: int, start: str) -> bool | None:
    """True if process `pid` (started at `start`) has ended, False if it is still running, None
    where that cannot be told (then only the file's age counts)."""
    if os.name != "posix":  # os.kill on Windows would terminate the process, not probe it
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return None
    now = _start_token(pid)
    if start == "0" or now == "0":  # no start times here: the pid may have been reused
        return None
    return now != start  # a different start: the pid now belongs to a newer process


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete this pack's temporary files in `folder` whose writer is gone (see the module
    docstring); return them. A live writer's file is never touched; errors are ignored (a file
    another process removed first, a folder that cannot be listed)."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith("."):
            continue
        m = _TEMP.fullmatch(name)
        if m is None and not _LEGACY_TEMP.fullmatch(name):
            continue  # not this pack's
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            # Windows has no such lock, and cannot delete a file held open: no fd there.
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW) if fcntl is not None else None
        except OSError:
            continue
        try:
            # A live writer holds its file's lock for as long as it writes, whatever its pid
            # means here (another container's pid namespace): such a file is never touched.
            # The lock is kept while the file is judged and removed.
            if fd is not None and _try_lock(fd) is False:
                continue
            gone = None
            if m is not None and m["host"] == _HOST:
                gone = _writer_gone(int(m["pid"]), m["start"])
            if gone is None:
                gone = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_AGE_S
            if gone:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (in bytes) the file system of `folder` allows; 255 if unknown."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return 255


def fit_stem(stem: str, limit: int) -> str:
    """`stem`, cut (at a whole character) to at most `limit` bytes as a file name, at least one
    character."""
    while len(os.fsencode(stem)) > limit and len(stem) > 1:
        stem = stem[:-1]
    return stem


def check_name_length(path: str | os.PathLike, field: str) -> None:
    """Fail now, naming `field`, if the file name of `path` is longer than its file system allows,
    rather than after a paid task has finished."""
    path = Path(path)
    limit = name_max(path.parent)
    size = len(os.fsencode(path.name))
    if size > limit:
        raise ValidationError(field, f"the file name {path.name[:60]!r}... is {size} bytes long; "
                                     f"this file system allows at most {limit}. Choose a shorter "
                                     "name.")


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, suffix: str = ".part", mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends normally the file written there
    is fsynced and renamed to `path`, otherwise it is deleted. `suffix` keeps an extension that a
    writer needs (ffmpeg, PyAV pick the container from it); `mode` sets permissions before any byte
    is written (the key file is 0600 from its first moment); by default 0666 less the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = _writer_tag()
    # The hidden name must fit the file system's limit too (a legal 250-byte name plus the
    # writer's tag would not): its stem part is cut; the target's own name is kept whole.
    room = name_max(path.parent) - len(os.fsencode(f"..{tag}.{suffix}")) - 8  # 8: mkstemp's part
    stem = fit_stem(path.stem, room)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.{tag}.", suffix=suffix, dir=path.parent)
    # Held (open and locked) until the file is renamed or removed: `remove_stale_temps` in any
    # process, any pid namespace, sees a live writer by its lock. Windows cannot rename an open
    # file, and has no such lock: there the file is closed at once, as before.
    held = fd if _try_lock(fd) is not None else None
    if mode is None:  # mkstemp makes 0600; a video is an ordinary output, as open() would make it
        mode = 0o666 & ~_umask()
    try:
        if mode is not None:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            else:  # Windows before Python 3.13: no fchmod; chmod there sets only the read-only bit
                os.chmod(tmp, mode)
        if held is None:
            os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if held is not None:
            os.close(held)


def check_writable_dir(folder: str | os.PathLike, field: str) -> None:
    """Fail now, naming `field`, if files cannot be created in `folder` (made if missing), rather
    than after a paid task has finished."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValidationError(field, f"cannot write files in {folder}: {e.strerror or e}. Choose a "
                                     "folder you can write to.") from None
