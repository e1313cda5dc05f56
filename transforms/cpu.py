"""CPU capability checks for native code that is built for one instruction set.

A native library compiled with, say, AVX-512 does not fail to load on a CPU without it: it
loads, and the process dies with SIGILL (exit 132, no traceback, no Python exception) the first
time the code runs. So whoever loads such a library checks the CPU flags first and turns a
missing flag into an ordinary, catchable error with a clear message (the diarizer's:
`mmcurate.transforms.diarize.require_cpu_flags`).

Flags are the lower-case names of the Linux kernel's /proc/cpuinfo "flags" line (avx2,
avx512f, avx512bw, ...). On other operating systems `cpu_flags()` returns an empty set, i.e.
"nothing known to be supported", unless MMCURATE_ASSUME_CPU_FLAGS says otherwise.
"""

from __future__ import annotations

import os
import sys

# Comma- or space-separated flag names that replace the detected set (e.g. "avx2,avx512f" on
# an OS without /proc/cpuinfo, or "" to simulate a CPU with nothing). Set by the operator who
# knows the hardware; a wrong claim brings the SIGILL back.
ASSUME_ENV = "MMCURATE_ASSUME_CPU_FLAGS"


def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU (Linux: /proc/cpuinfo), or MMCURATE_ASSUME_CPU_FLAGS."""
    override = os.environ.get(ASSUME_ENV)
    if override is not None:
        return {f.lower() for f in override.replace(",", " ").split()}
    if not sys.platform.startswith("linux"):
        return set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":  # x86; the first CPU speaks for all
                    return set(value.split())
    except OSError:
        pass
    return set()

