"""Benchmark: how long a Play's first frame takes, on a world just created and on the same world after a server
restart (the world's layout fit then starts with the session), with the geometric generator's default
``coarse_frames`` (0: the first frame waits for the fit and is final) against the baseline ``coarse_frames=8`` (the
first frames show the legacy fill at once while the fit runs) in the same run.

Each round and way: a loopback server (``server.testing.running_server``) on a fresh data directory creates a
``--scene`` world at ``--width`` x ``--height`` (CreateWorld waits for the fit), opens a Play with the default
``PlayStart`` (a first clip of 4 frames), sends the first clip's four actions at 30 Hz and times the first frame
from the fourth; then the server is stopped, a new one loads the saved world, and the same is timed again. The two
ways alternate (A B, B A, ...). Reported per way: CreateWorld's seconds and the first frame's (each round, and the
median) in both cases. One process, so the kernels are loaded once before the first round (an untimed warm-up
world).

    python benchmarks/first_frame.py [--rounds 3] [--width 640 --height 360] [--scene room]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit, load_average, log  # noqa: E402

WAYS = {"final": 0, "coarse": 8}  # way -> GeometricConfig.coarse_frames
FIRST_CLIP_FRAMES = 4  # PlayStart's default first clip


def _first_frame_s(client, world_id: str) -> float:
    """Seconds from the first clip's last action to its first frame."""
    session = client.play(world_id)
    try:
        for _ in range(FIRST_CLIP_FRAMES):
            session.send(move_forward=1.0, dt_s=1 / 30)
            time.sleep(1 / 30)
        t0 = time.perf_counter()
        if session.next_frame(timeout_s=120) is None:
            raise RuntimeError("the session ended before its first frame")
        return time.perf_counter() - t0
    finally:
        session.close(drain=False)


def _round(way: str, args) -> dict[str, float]:
    from spatia.client.api import WorldClient
    from spatia.proto.spatia.v1 import world_pb2 as pb
    from spatia.server.config import ServerConfig
    from spatia.server.testing import running_server

    with tempfile.TemporaryDirectory(prefix="first-frame-") as data_dir:
        config = ServerConfig(data_dir=data_dir, port=0, generator_kwargs=(("coarse_frames", WAYS[way]),))
        request = pb.CreateWorldRequest(world_id="w", scene=pb.SceneSource(
            name=args.scene, seed=0, resolution=pb.Resolution(width=args.width, height=args.height)))
        with running_server(config) as server, WorldClient(server.target) as client:
            t0 = time.perf_counter()
            client.create_world(request)
            create_s = time.perf_counter() - t0
            created = _first_frame_s(client, "w")
        with running_server(config) as server, WorldClient(server.target) as client:
            restarted = _first_frame_s(client, "w")
    return {"create_s": create_s, "created_s": created, "restarted_s": restarted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--scene", default="room")
    args = parser.parse_args()
    log("warm-up (kernels)")
    _round("final", argparse.Namespace(**{**vars(args), "width": 64, "height": 48}))
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    loads = []
    for r in range(args.rounds):
        for way in (list(WAYS) if r % 2 == 0 else list(WAYS)[::-1]):
            loads.append(load_average())
            runs[way].append(_round(way, args))
            log(f"round {r + 1} {way}: {runs[way][-1]}")
    result = {"name": "first_frame", "sizes": {"width": args.width, "height": args.height, "scene": args.scene,
                                               "rounds": args.rounds},
              "load": [min(loads), max(loads)]}
    for way, rows in runs.items():
        result[way] = {"coarse_frames": WAYS[way]}
        for key in ("create_s", "created_s", "restarted_s"):
            values = [row[key] for row in rows]
            result[way][key] = [round(v, 4) for v in values]
            result[way][key + "_median"] = round(statistics.median(values), 4)
    emit(result)


if __name__ == "__main__":
    main()
