"""Give freed heap memory back to the operating system (glibc), so RSS follows what is live.

glibc's malloc raises its mmap threshold each time a large block allocated by mmap is freed
(the "dynamic threshold"), so after the first few MB-sized frees every later block of that
size comes from the heap. A loop that allocates blocks of many different sizes (the speaker
embeddings: one fbank per 10 s window, then a masked selection of it of any length) then
leaves the heap fragmented: the memory is free but stays in RSS, and RSS grows with the
length of the recording instead of staying flat. Measured on a 40-minute podcast
(bench/README.md, "Located and fixed ... peak RSS 2 h / 10 min"): +374 MB of RSS kept by the
embedding step, +11 MB with a trim
after each embedding batch.

`release_free_memory()` calls `malloc_trim(0)`, which hands every free page back (also pages
in the middle of the heap, glibc >= 2.8). It costs well under a millisecond per call on a
heap of this size. On other C libraries (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, looked up once; None on other platforms and C libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_free_memory() -> bool:
    """Return free heap pages to the OS; True when glibc's malloc_trim ran."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
