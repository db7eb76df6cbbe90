"""Is a downloaded MP4 whole? A walk over its top-level boxes, no decoding.

Without a Content-Length a cut connection looks like a clean end of the body. A "fast start" MP4
(index in front) cut in its media data still probes and half of it decodes, so byte counts and
probing cannot tell. Every ISO-BMFF box states its own size: a file is whole only when the
top-level boxes tile it exactly and its index (`moov`) is among them.
"""

from __future__ import annotations

import struct
from pathlib import Path


def mp4_incomplete(path: str | Path) -> str | None:
    """Why the file is not a complete MP4 (None if it is whole, or is not an MP4 at all)."""
    p = Path(path)
    size = p.stat().st_size
    seen: list[bytes] = []
    with open(p, "rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                return f"ends inside a box header at byte {pos} of {size}"
            box_size, kind = struct.unpack(">I4s", head)
            if pos == 0 and kind != b"ftyp":
                return None  # not ISO-BMFF: only the decoder's own checks apply
            if box_size == 1:  # a 64-bit size follows the type
                ext = f.read(8)
                if len(ext) < 8:
                    return f"ends inside a box header at byte {pos} of {size}"
                box_size = struct.unpack(">Q", ext)[0]
            elif box_size == 0:  # "to the end of the file": only legal for the last box
                box_size = size - pos
            if box_size < 8:
                return f"has a malformed '{kind.decode('latin-1')}' box at byte {pos}"
            if pos + box_size > size:
                return (f"is cut short: its '{kind.decode('latin-1')}' box needs "
                        f"{pos + box_size} bytes, the file has {size}")
            seen.append(kind)
            pos += box_size
    if b"moov" not in seen:
        return "has no index ('moov' box)"
    return None
