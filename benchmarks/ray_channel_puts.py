"""Stress, not a timing: the world actor's crash during a Play graph's compile (docs/BENCHMARKS.md session 30).

A world actor is an async Ray actor; a compiled graph's compile has it make its channel buffers in a
``__ray_call__`` (a put). When other calls are in flight on the actor, Ray 2.60 often runs that call with the nil
task id, so every such buffer gets the object id ``ffff...ff02e1f505``; a second one while the first is still held
aborts the actor (``reference_counter.cc ... Check failed: AddOwnedObjectInternal``). ``server/ray_host.py``'s
``channel_puts_off_fibers`` (on in every world actor) puts the buffers on a thread of their own; ``--unpatched``
turns it off in this run's actor, to show the crash.

One world (the geometric generator) in a local Ray through a real front door (``running_server``), then:

- ``ids``: ``--id-rounds`` rounds of ``--concurrent`` channel-buffer puts made at once on the actor (each through
  ``__ray_call__``, as a compile makes them) while async calls (``where``) run beside: how many got the nil task
  id, how many distinct ids came back. The buffers are dropped at once, so nothing crashes here.
- ``graphs``: ``--trials`` times, what two Play graphs' compiles have the actor do, the first graph's channel still
  held while the second's is made (a session's graph not torn down yet while the next session's compiles, as in
  the Ray tests' crashes): Ray's ``do_allocate_channel`` through ``__ray_call__``, read by a plain actor (as the
  compile's proxy actor reads), while ``--hammer`` threads call the actor (async ``where`` calls and
  ``__ray_call__`` no-ops, as other graphs' compiles and teardowns do); then both are dropped. An actor that died
  is counted and started again from its snapshot. ``check_failed``: the ``Check failed: AddOwnedObjectInternal``
  lines in this run's Ray logs. ``--real-graphs`` compiles real graphs (``actor.play_step`` on an ``InputNode``,
  as ``_PlayGraph``) instead; unpatched, Ray 2.60 then also aborts this driver now and then, when it tears down
  the first graph after the actor died (``experimental_mutable_object_provider.cc:101`` in
  ``RegisterReaderChannel``), which is why the default makes only the channels.

    python benchmarks/ray_channel_puts.py [--unpatched] [--trials 30] [--id-rounds 40] [--real-graphs]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import emit, log  # noqa: E402

NIL_TASK = "f" * 48  # a put's object id: 24 bytes of task id, then the index


def _buffer_id(self) -> str:
    """On the actor: one channel buffer as a compile makes it (Ray's ``_create_channel_ref``, as the actor has it);
    its object id, the buffer dropped."""
    from ray.experimental.channel import shared_memory_channel as smc

    return smc._create_channel_ref(self, 1000).hex()


def _noop(self) -> int:
    return 0


def _set_fix(self, on: bool) -> bool:
    from spatia.server.ray_host import channel_puts_off_fibers

    return channel_puts_off_fibers(on)


def ids_round(ray, actor, concurrent: int) -> list[str]:
    beside = [actor.where.remote() for _ in range(4)]
    ids = ray.get([actor.__ray_call__.remote(_buffer_id) for _ in range(concurrent)])
    ray.get(beside)
    return ids


def hammer(ray, actor, stop: threading.Event, calls: list[int]) -> None:
    while not stop.is_set():
        try:
            ray.get([actor.where.remote(), actor.__ray_call__.remote(_noop), actor.where.remote()], timeout=30)
            calls[0] += 3
        except Exception:  # noqa: BLE001 -- the actor died: the trial sees it
            return


@__import__("ray").remote(num_cpus=0)
class _Reader:
    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def allocate_channel(ray, actor, reader, reader_node: str):
    """What a graph's compile has the actor do for its output channel (Ray's ``do_allocate_channel`` through
    ``__ray_call__``); the channel comes back holding its buffers, as the driver's graph holds them."""
    from ray.dag.compiled_dag_node import do_allocate_channel
    from ray.experimental.channel.shared_memory_channel import SharedMemoryType

    return ray.get(actor.__ray_call__.remote(do_allocate_channel, [(reader, reader_node)], SharedMemoryType()),
                   timeout=120)


def compile_graph(actor):
    from ray.dag import InputNode

    from spatia.server.ray_host import channels_without_torch

    channels_without_torch()
    with InputNode() as inp:
        node = actor.play_step.bind(inp)
    return node.experimental_compile()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--unpatched", action="store_true", help="Ray's own channel-buffer puts in the world actor")
    p.add_argument("--trials", type=int, default=30, help="graph pairs compiled (graphs part)")
    p.add_argument("--id-rounds", type=int, default=40, help="rounds of concurrent buffer puts (ids part)")
    p.add_argument("--concurrent", type=int, default=4, help="buffer puts made at once per round (ids part)")
    p.add_argument("--real-graphs", action="store_true",
                   help="compile real graphs instead (unpatched, Ray may take this driver down too: see above)")
    p.add_argument("--hammer", type=int, default=2, help="threads calling the actor during the compiles")
    p.add_argument("--ray-cpus", type=int, default=2)
    args = p.parse_args()

    import ray
    from ray.exceptions import RayActorError

    from spatia.client.api import WorldClient
    from spatia.server.cluster import ClusterOptions
    from spatia.server.config import Limits, ServerConfig
    from spatia.server.ray_host import _retire, kill_world_actors
    from spatia.server.testing import running_server

    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    logs_dir = ray._private.worker._global_node.get_logs_dir_path()
    data_dir = Path(tempfile.mkdtemp(prefix="spatia-channel-puts-"))
    cluster = ClusterOptions(world_cpus=0.25, idle_exit_s=None, lease_ttl_s=30.0, local_cpus=args.ray_cpus)
    out: dict = {"mode": "unpatched" if args.unpatched else "patched", "ray_version": ray.__version__,
                 "load_before": [round(x, 2) for x in os.getloadavg()]}
    t_start = time.time()
    try:
        with running_server(ServerConfig(data_dir=data_dir, port=0, limits=Limits(max_sessions=4),
                                         cluster=cluster, save_interval_s=0.0)) as st:
            with WorldClient(st.target, timeout_s=300) as c:
                c.create_scene("room", seed=0, width=64, height=48, world_id="a")
            store = st.server.store

            def actor_now(died: bool = False):
                a = (store._attach("a") if died else store.get("a")).actor  # a dead one: started again

                ray.get(a.__ray_call__.remote(_set_fix, not args.unpatched))
                return a

            actor = actor_now()
            # ids: buffers dropped at once (no crash)
            ids: list[str] = []
            for _ in range(args.id_rounds):
                ids += ids_round(ray, actor, args.concurrent)
            out["ids"] = {"puts": len(ids), "nil_task_id": sum(i.startswith(NIL_TASK) for i in ids),
                          "distinct": len(set(ids))}
            log(f"ids: {out['ids']}")
            # graphs: two graphs' channels held at once, made under other calls
            reader = _Reader.remote()  # the channels' reader: a plain actor, as the compile's proxy actor
            reader_node = ray.get(reader.node.remote())
            crashes = made = 0
            hammer_calls = [0]
            for trial in range(args.trials):
                stop = threading.Event()
                threads = [threading.Thread(target=hammer, args=(ray, actor, stop, hammer_calls), daemon=True)
                           for _ in range(args.hammer)]
                for t in threads:
                    t.start()
                held = []
                try:
                    for _ in range(2):
                        held.append(compile_graph(actor) if args.real_graphs
                                    else allocate_channel(ray, actor, reader, reader_node))
                        made += 1
                except Exception as exc:  # noqa: BLE001 -- the actor died under it (or Ray said so)
                    log(f"trial {trial}: failed: {type(exc).__name__}: {str(exc)[:120]}")
                stop.set()
                for t in threads:
                    t.join()
                if args.real_graphs:
                    for dag in held:  # the first first: the second's loop waits for the first's on the actor
                        _retire(dag)
                del held
                try:
                    ray.get(actor.where.remote(), timeout=60)
                except RayActorError:
                    crashes += 1
                    log(f"trial {trial}: the world actor died")
                    actor = actor_now(died=True)
            out["graphs"] = {"what": "real graphs" if args.real_graphs else "do_allocate_channel",
                             "trials": args.trials, "made": made, "actor_died": crashes,
                             "hammer_calls": hammer_calls[0]}
    finally:
        try:
            kill_world_actors(["a"])
        finally:
            ray.shutdown()
    check_failed = 0
    for path in glob.glob(os.path.join(logs_dir, "worker-*.err")):
        with open(path, errors="replace") as f:
            check_failed += sum("Check failed: AddOwnedObjectInternal" in line for line in f)
    out["graphs"]["check_failed"] = check_failed
    out["wall_s"] = round(time.time() - t_start, 1)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    emit(out)


if __name__ == "__main__":
    main()
