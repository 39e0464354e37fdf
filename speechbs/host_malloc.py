"""Keep glibc's malloc from returning tensor memory to the OS after every free (CPU runs).

PyTorch allocates CPU tensors with ``malloc``. glibc serves blocks of more than
128 KiB-32 MiB (its dynamic threshold) with a fresh ``mmap`` and unmaps them on
``free``, and it trims the top of the heap whenever more than 128 KiB is free
there. A training step allocates and frees tens of activations of several MB
each, so every one of them comes back as new, zero-filled pages: on the tiny
wav2vec 2.0 recipe the page faults were a quarter of a CPU step
(docs/benchmarks.md). PyTorch's CPU performance guide recommends jemalloc or
tcmalloc for the same reason; this does the part that needs no extra library:

- ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's maximum): blocks under it come from the
  heap, where a freed block is reused by the next allocation of that size;
- ``M_TRIM_THRESHOLD`` = 1 GiB: freed heap memory stays with the process.

The cost is resident memory that stays after a peak (at most the step's peak
activations), which a training process reuses at the next step anyway. It is
skipped where it does not apply or the user decided otherwise: not Linux/glibc,
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` already set, another
allocator in ``LD_PRELOAD``, or ``SPEECHBS_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30
OPT_OUT = "SPEECHBS_MALLOC_TUNING"


def reason_to_skip(environ: dict[str, str] | None = None, platform: str | None = None) -> str | None:
    """Why the tuning does not apply here, or None when it does."""
    env = os.environ if environ is None else environ
    if (platform or sys.platform) != "linux":
        return "not Linux"
    if env.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{OPT_OUT}={env[OPT_OUT]}"
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if name in env:
            return f"{name} is set"
    preload = env.get("LD_PRELOAD", "")
    if any(lib in preload for lib in ("jemalloc", "tcmalloc", "mimalloc")):
        return "another allocator is preloaded"
    return None


def tune_host_malloc() -> bool:
    """Apply the two settings to this process (and the workers it forks); True when applied."""
    if reason_to_skip() is not None:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
