"""Giving memory back to the operating system once a world is gone.

A played world's arrays are freed when its last reference goes, but glibc's allocator keeps freed heap memory in
its arenas (one per thread that allocated: every world has worker and saver threads) and raises its mmap
threshold after large frees, so mid-sized numpy buffers come from those arenas too. Measured: a world played for
8 s at 320x180 (~32 MB of memory, index and cache) left the process RSS unchanged after ``del`` + ``gc.collect``;
``malloc_trim(0)`` returned it. The server calls ``release_freed_memory`` after deleting or unloading a world.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_freed_memory() -> bool:
    """Collect garbage cycles, then hand free heap pages back to the OS (glibc ``malloc_trim``). Returns whether
    a trim ran. Takes ~10-50 ms at a few GB of heap: call it after a world goes, not per frame.

    A process that froze its objects (``gc.freeze``: a server after its start, ``server.host``) never collects
    those: a world that was loaded before the freeze and is now gone would keep whatever of it lies in cycles. So
    the frozen objects are collected with the rest here, and what survives is frozen again (~0.1 s of the GIL at
    ~2 x 10^5 objects, once per world deleted or unloaded)."""
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
