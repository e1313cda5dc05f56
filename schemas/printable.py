"""User-provided text (file names, URIs, feed titles) made safe to show in a log line or a terminal.

A file name may hold any byte but `/` and NUL: an ESC or OSC sequence in it would drive the
reader's terminal (retitle it, hide text, fake colours), and a newline would forge a whole
log line. `printable` escapes exactly the characters that can do that, in `repr` style, and
leaves everything else (accents, CJK, emoji, backslashes) as it is. Only what is shown goes
through it: the tables keep the exact original strings.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls (newline, ESC, BEL ...), DEL, C1 controls (CSI, OSC, NEL ...), the Unicode line
# and paragraph separators (str.splitlines breaks lines on them), and lone surrogates (a
# surrogate-escaped byte of a non-UTF-8 name: writing one to a UTF-8 stream raises).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object) -> str:
    """`str(value)` with control characters escaped (`\\n`, `\\x1b`, `\\x9b`, `\\u2028`)."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text)


def error_text(e: BaseException | str, limit: int = 500) -> str:
    """The ledger's text of a failure (a `Rejection`'s detail): `ExcType: message` of an
    exception, a string as it is, cut to `limit` characters with a closing `...`. Not escaped:
    the table keeps it exactly; `printable` it for a log line."""
    text = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dead_letter_text(error: Any, limit: int = 500) -> str:
    """`error_text` of the error part of a RunInference dead-letter element (`(batch, error)`
    from `.with_exception_handling()`): Beam gives `(exc type, repr(exc), traceback lines)`,
    of which the repr is the line a ledger wants; an exception or anything else is taken as
    it is. The one way every stage turns a failed inference into ledger text."""
    if isinstance(error, BaseException):
        return error_text(error, limit)
    if isinstance(error, tuple) and len(error) >= 2:  # (type, repr, traceback lines)
        return error_text(str(error[1]), limit)
    return error_text(str(error), limit)
