"""Reading a file a user named (a reference image, a jobs file): capped, and never stuck on open.

A path can name something that is not a file. /dev/zero never ends, so the read is bounded: at
most the cap + 1 bytes are read. A FIFO that nobody writes to makes a plain open() wait forever,
so the open does not block; the reads then wait only while a writer is there (`<(command)` works),
and a FIFO with no writer reads as empty at once.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ValidationError

_CHUNK = 1 << 20
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX only; Windows has no FIFOs to wait on


def _open_without_waiting(path: str, flags: int) -> int:
    fd = os.open(path, flags | _NONBLOCK)
    if _NONBLOCK:
        try:
            os.set_blocking(fd, True)  # only the open must not wait; reads wait for a live writer
        except OSError:
            os.close(fd)
            raise
    return fd


def read_capped(path: str | Path, field: str, max_bytes: int, what: str, allowed: str) -> bytes:
    """The bytes of `path`, or a ValidationError naming `field`: file not found, cannot be read,
    over `max_bytes` ("over the N MiB limit for `what`; allowed: `allowed`"), or a FIFO that
    nobody writes to."""
    p = Path(path)
    too_big = f"{p} is over the {max_bytes / 2**20:g} MiB limit for {what}; allowed: {allowed}"
    try:
        with open(p, "rb", opener=_open_without_waiting) as f:
            info = os.fstat(f.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > max_bytes:  # refused before reading
                raise ValidationError(field, too_big)
            chunks, got = [], 0
            while got <= max_bytes and (chunk := f.read(min(_CHUNK, max_bytes + 1 - got))):
                chunks.append(chunk)
                got += len(chunk)
    except FileNotFoundError:
        raise ValidationError(field, f"file not found: {p}") from None
    except OSError as e:
        raise ValidationError(field, f"cannot read {p}: {e.strerror or e}") from None
    if got > max_bytes:
        raise ValidationError(field, too_big)
    if got == 0 and stat.S_ISFIFO(info.st_mode):
        raise ValidationError(field, f"{p} is a pipe (FIFO) that nothing was written to: start "
                                     f"its writer first, or name {what}")
    return b"".join(chunks)


__all__ = ["read_capped"]
