"""A serving process freezes what it holds after its kernel load (``server.host.freeze_startup_objects``), so a
full garbage collection no longer pauses every thread for 75-130 ms; a world deleted later is still collected
(``world.resources.release_freed_memory``). Run in a child process: freezing the test process's objects would
keep whatever later tests leave in cycles."""

from __future__ import annotations

import subprocess
import sys

CHILD = r'''
import gc
import weakref

from spatia.server.host import freeze_startup_objects
from spatia.world.resources import release_freed_memory


class Node:
    """A world's objects that hold each other (threads, callbacks) and a large buffer."""


def world_in_a_cycle():
    node = Node()
    node.me = node
    node.payload = bytearray(20_000_000)
    return node


world = world_in_a_cycle()
frozen = freeze_startup_objects()
tracked = len(gc.get_objects())  # outside the permanent generation: what a full collection traverses
assert frozen > 10_000 and tracked < frozen // 10, (frozen, tracked)
gone = weakref.ref(world)
del world
gc.collect()
assert gone() is not None  # frozen: a collection does not see it
assert release_freed_memory() in (True, False)
assert gone() is None, "the deleted world's cycle was not collected"
assert gc.get_freeze_count() > 0  # what survived is frozen again
print("ok", frozen, tracked)
'''


def test_frozen_objects_skip_collections_and_a_deleted_world_is_still_collected():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
