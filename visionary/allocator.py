"""The C allocator: keep the pages of a freed picture for the next one.

A generation holds a few buffers of megabytes: the model's answer, its base64 text, the
picture. glibc gives every allocation over its mmap threshold pages of its own, hands them
back to the kernel when it is freed, and trims the heap once more than twice that threshold
lies free at its top. So each generation page-faulted its megabytes in anew: about 3 ms of
16 in `bench/generation_overhead.py`, on a virtual machine, where page faults are dear.
With both thresholds raised, freed buffers stay in the process for the next picture; what
it holds stays at its peak, and does not grow with the number of pictures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's ceiling for the mmap threshold on 64-bit, and above the base64 of the largest picture
# accepted (20 MB): no buffer of a generation gets pages of its own.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024


def keep_freed_pages(environ: Mapping[str, str] = os.environ) -> bool:
    """Raise glibc's thresholds for this process; False where there is no glibc, or an operator
    tuned malloc already (MALLOC_*_ or GLIBC_TUNABLES): theirs wins."""
    if any(name.startswith("MALLOC_") for name in environ) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (AttributeError, ValueError, OSError):  # not a glibc system (musl, macOS, Windows)
        return False
    try:  # an optimisation: whatever stops it must not stop a generation
        import ctypes  # 3 ms to import: once, at the first generation, not when the app starts

        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        )
    except (ImportError, OSError, AttributeError):  # no ctypes in this Python, or no mallopt
        return False
