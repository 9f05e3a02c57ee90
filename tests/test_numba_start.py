"""numba's process-wide start is over once the kernel modules are imported (``world/numba_start.py``): a world's
first clips, with their fit, kernel-load and maintenance threads, no longer grow the ``typeof`` registry that a
``numba.typeof`` on another thread walks (the race failed a world actor's layout fit in CI, session 21). Each
check runs in a fresh interpreter: numba's start happens once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

FIRST_CLIPS = textwrap.dedent("""
    import json
    from numba.core.typing.typeof import typeof_impl

    from spatia.model import make_generator
    from spatia.world.actions import Action, ActionIntegrator, ControlConfig
    from spatia.world.engine import Engine, EngineConfig, prepare_generator
    from spatia.world.state import World

    started = sorted(map(repr, typeof_impl.registry))  # the kernel modules imported, no kernel called yet
    world = World.from_scene("room", 0, 64, 48)
    generator = make_generator("geometric")  # starts its kernel-load thread
    prepare_generator(world, generator)  # the layout fit, on its own thread
    engine = Engine(world, generator, EngineConfig())
    walk = ActionIntegrator(world.origin_c2w, ControlConfig(fps=16))
    step = Action(move_forward=1.0, yaw_rate_rad_s=0.5, dt_s=1 / 16)
    frames = sum(len(list(engine.generate_clip(walk.run([step] * 4)))) for _ in range(3))
    generator.wait_prepared(world.memory, 60.0)
    print(json.dumps({"started": started, "after": sorted(map(repr, typeof_impl.registry)), "frames": frames}))
""")

TYPEOF_RACE = textwrap.dedent("""
    import json
    import sys
    import threading

    import numpy as np

    sys.setswitchinterval(1e-6)  # a thread switch every few bytecodes: the window is wide open
    from spatia.world import _memory_kernels as K  # numba started here

    errors, walks, stop = [], [0], threading.Event()

    def typeof_new_types():
        import numba

        while not stop.is_set():
            try:  # a type singledispatch has not cached: it walks the registry
                numba.typeof(type(f"T{walks[0]}", (), {})())
            except RuntimeError as exc:
                errors.append(str(exc))
                return
            except ValueError:  # "Cannot determine Numba type": the answer for a plain object, after the walk
                walks[0] += 1

    thread = threading.Thread(target=typeof_new_types)
    thread.start()
    keys = np.zeros(4, np.int64)
    K.keys_in(keys, keys)  # this process's first call of a world kernel
    stop.set()
    thread.join()
    print(json.dumps({"errors": errors, "walks": walks[0]}))
""")


def _run(code: str, env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_worlds_first_clips_leave_the_typeof_registry_as_the_import_left_it():
    got = json.loads(_run(FIRST_CLIPS))
    assert got["frames"] == 12 and got["after"] == got["started"]


def test_a_first_kernel_call_beside_a_typeof_on_another_thread_does_not_break_it():
    """Without the start at import this failed in 4 of 5 fresh processes ("dictionary changed size during
    iteration" in ``functools.singledispatch``'s walk)."""
    got = json.loads(_run(TYPEOF_RACE))
    assert got["errors"] == [] and got["walks"] > 0


THREADS_AT_IMPORT = textwrap.dedent("""
    import json
    import os

    import numba

    import spatia.world.engine  # the core: numba started, its threads not (an embedder may still set OpenMP's env)

    try:
        numba.threading_layer()
        core = "started"
    except ValueError:  # "Threading layer is not initialized."
        core = "not started"
    os.environ.pop("OMP_WAIT_POLICY", None)
    import spatia.server.host  # noqa: F401

    print(json.dumps({"core": core, "server": numba.threading_layer(), "policy": os.environ["OMP_WAIT_POLICY"]}))
""")


def test_a_server_process_starts_numbas_threads_at_import_after_setting_openmps_policy():
    """``server.host`` launches the threading layer on the importing thread (``numba_start.start_threads``), after
    its ``OMP_WAIT_POLICY``: not a world's first clip beside its layout fit (a world actor's first clip failed with
    "dictionary changed size during iteration" once in a full run, session 26). The core alone leaves it unstarted."""
    got = json.loads(_run(THREADS_AT_IMPORT))
    assert got == {"core": "not started", "server": got["server"], "policy": "PASSIVE"}
    assert got["server"] in ("omp", "tbb", "workqueue")


BLAS_AT_IMPORT = textwrap.dedent("""
    import json
    import os

    import numpy  # noqa: F401  (loaded before the server's module, as a program embedding the server may)
    from threadpoolctl import threadpool_info

    def blas():
        return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})

    before = blas()
    import spatia.server.host  # noqa: F401

    print(json.dumps({"before": before, "after": blas(), "env": os.environ["OPENBLAS_NUM_THREADS"]}))
""")


def test_a_server_module_keeps_a_blas_loaded_before_it_to_one_thread_unless_told_otherwise():
    """OpenBLAS's threads spin between products (four sessions' p95 ~35 % worse, docs/BENCHMARKS.md session 27):
    ``server.host`` limits a BLAS that numpy loaded before it to one thread, and sets the environment for the
    ones loaded later; an explicit ``OPENBLAS_NUM_THREADS`` wins."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    two = min(2, os.cpu_count() or 1)
    got = json.loads(_run(BLAS_AT_IMPORT, {**env, "GOTO_NUM_THREADS": str(two)}))  # OpenBLAS's other variable
    assert got["before"] == [two] and got["after"] == [1] and got["env"] == "1"
    got = json.loads(_run(BLAS_AT_IMPORT, {**env, "OPENBLAS_NUM_THREADS": str(two)}))
    assert got["before"] == got["after"] == [two] and got["env"] == str(two)
