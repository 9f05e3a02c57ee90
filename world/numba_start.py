"""numba, started: the world core's and the fill's kernel modules import numba from here, so that numba's
process-wide start is over before any thread can call a kernel.

A process's first kernel call (compiled, or loaded from numba's disk cache) starts numba's CPU target: it imports
some two hundred numba modules, and these register more ``typeof`` implementations. ``numba.typeof`` is a
``functools.singledispatch`` function, and for a type it has not cached it walks that registry; a ``typeof`` on
another thread while the registry grows (numba's dispatcher falls back to it for argument types its C fast path
does not know) fails with "RuntimeError: dictionary changed size during iteration". A world actor of
``spatia serve --ray`` makes its first kernel calls on several threads at once (the layout fit, the first clip,
the kernel loads); in CI (session 21) one world's every clip failed so until its actor restarted, as a failed
layout fit, which was then kept for the world, would make them. Started here, on the importing thread, the
registry no longer changes once threads run kernels: ``tests/test_numba_start.py`` checks that a world's whole
first clips leave it as the import left it.
"""

from __future__ import annotations

import numba
import numpy as np

nb = numba  # (the kernel modules' usual name for it)


@numba.njit(cache=True)
def _first_kernel(x):
    return x + 1


def _start() -> None:
    """The first kernel call of this process (a tiny one, from numba's disk cache after the first run)."""
    _first_kernel(np.int64(0))


_start()


@numba.njit(cache=True, parallel=True)
def _first_parallel_kernel(x):
    total = 0
    for i in numba.prange(x.shape[0]):
        total += x[i]
    return total


def start_threads() -> None:
    """Launch numba's threading layer now, on the calling thread: a process's first parallel kernel run does it
    otherwise, on whichever thread gets there first, and the launch imports modules (its thread pool, the
    multiprocessing lock it takes) and warns, beside threads that may be running kernels already (a world's first
    clip and its layout fit; CI's "dictionary changed size during iteration" in a world actor, session 26). Not at
    this module's import: libgomp reads ``OMP_WAIT_POLICY`` when it starts its threads, which a server sets first
    (``server.host``)."""
    _first_parallel_kernel(np.zeros(2, np.int64))
