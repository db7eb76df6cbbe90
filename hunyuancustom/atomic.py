"""Files that appear whole or not at all.

Every file the pack writes for a user (a downloaded or cached video, a preview, the key file, a
converted checkpoint) is written under a hidden temporary name beside its target, flushed to disk,
and renamed over the target only when complete. On any error, Cancel included, the temporary file
is removed, so neither a crash nor an interrupt leaves a half-written file under a real name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, suffix: str = ".part", mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends normally the file written there
    is fsynced and renamed to `path`, otherwise it is deleted. `suffix` keeps an extension that a
    writer needs (ffmpeg, PyAV pick the container from it); `mode` sets permissions before any byte
    is written (the key file is 0600 from its first moment); by default 0666 less the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    if mode is None:  # mkstemp makes 0600; a video is an ordinary output, as open() would make it
        mode = 0o666 & ~_umask()
    try:
        if mode is not None:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            else:  # Windows before Python 3.13: no fchmod; chmod there sets only the read-only bit
                os.chmod(tmp, mode)
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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
