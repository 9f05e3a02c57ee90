"""Named background threads of the world core, started on first use (so ``import world`` starts none).

Work that needs no answer before the next frame goes here: preparing a memory growth or re-sort
(``world.memory``), compressing a stored frame (``world.history``). One thread per name: the jobs of a name run
in submission order, and on the 2-core target more threads would only compete with the frame being made."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_pools: dict[str, ThreadPoolExecutor] = {}


def background(name: str) -> ThreadPoolExecutor:
    with _lock:
        if name not in _pools:
            _pools[name] = ThreadPoolExecutor(1, thread_name_prefix=name)
        return _pools[name]
