"""Text printed to a terminal with its control characters made visible.

Task ids, failure reasons and other provider text reach the CLI's output. Printed raw, an escape
sequence in them would act on the terminal (an OSC 52 clipboard write, a carriage return that
rewrites the line into a fake "Done"); here every control character is shown as an escape instead.
"""

from __future__ import annotations

import unicodedata

# Format characters that reorder or hide text (bidirectional overrides and isolates).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def safe(value: object) -> str:
    """`str(value)` with C0/C1 controls, DEL, line/paragraph separators and bidi controls escaped
    (`\\x1b`, `\\r`, `\\u202e`), so it prints as the characters it holds and nothing else."""
    text = str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == " " or (ch.isprintable() and ch not in _BIDI):
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or ch in _BIDI:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:  # e.g. other non-printable spaces: harmless, shown as they are
            out.append(ch)
    return "".join(out)
