"""Keep glibc from holding on to the loader's freed row blocks.

The loader allocates and frees multi-megabyte arrays all the time (row blocks, standardised
pools, padded batches). glibc serves such sizes with mmap at first, but after the first large
free it raises its mmap threshold (up to 32 MiB) and serves them from the heap instead, where
freed blocks stay resident and fragment, so a run's peak memory grew with the corpus even
though the loader's working set does not (`bench/train.py` part (b) measures the peak at 1x
and 4x cache size; with glibc's default the 4x peak was ~15% above the 1x one, with the
threshold fixed within the 10% target).

Fixing the threshold at 1 MiB (what `MALLOC_MMAP_THRESHOLD_=1048576` does) keeps such blocks
on mmap, returned to the OS when freed. Smaller allocations are unaffected. A threshold the
user set in the environment is left alone, as are non-glibc platforms.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, <malloc.h>
_done = False


def keep_large_blocks_on_mmap() -> bool:
    """Fix glibc's mmap threshold once per process; True when this call or an earlier one did."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return _done
