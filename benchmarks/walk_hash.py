"""Determinism check of served play's walk: a sha256 of every frame (rgb + depth) and of the final memory's
``to_arrays``, with the real maintenance threads. Two runs of one tree must print the same hashes.

``fill_budget.py --walk``'s path in-process (play settings, one-frame clips, the untimed frames first).

    python benchmarks/walk_hash.py room layout 300 640 360 [beside] [FRAMES_DIR]

``beside``: with served play's ``commit_beside_next_clip`` (each clip's memory update beside the next clip);
``FRAMES_DIR``: every 20th frame written there as a PNG, to look at.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import fill_budget  # noqa: E402  (sets up _common's logging to stderr)
from spatia.model.geometric import GeometricConfig, GeometricGenerator  # noqa: E402
from spatia.server.config import ServerConfig  # noqa: E402
from spatia.world.actions import ClipConfig  # noqa: E402
from spatia.world.engine import Engine, EngineConfig  # noqa: E402
from spatia.world.state import World  # noqa: E402


def main() -> None:
    scene, fill, frames, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    beside = len(sys.argv) > 6 and sys.argv[6] == "beside"
    frames_dir = Path(sys.argv[7 if beside else 6]) if len(sys.argv) > (7 if beside else 6) else None
    world = World.from_scene(scene, 0, width, height)
    server = ServerConfig()
    cfg = EngineConfig(clip=ClipConfig(first_clip_frames=4, clip_frames=6, preceding_frames=2),
                       keyframe_stride=server.play_keyframe_stride,
                       reuse_references_within=server.play_reuse_references_within,
                       reuse_references_clips=server.play_reuse_references_clips, commit_beside_next_clip=beside)
    generator = GeometricGenerator(GeometricConfig(fill=fill))
    engine = Engine(world, generator, cfg)
    generator.wait_prepared(world.memory, 120.0)
    frame_hash = hashlib.sha256()
    count = 0
    for clip in fill_budget._walk(engine, world, frames):
        for frame in clip:
            for name in ("rgb", "depth_m"):
                a = getattr(frame, name, None)
                if a is not None:
                    frame_hash.update(np.ascontiguousarray(a).tobytes())
            if frames_dir is not None and count % 20 == 0:
                from PIL import Image

                frames_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame.rgb).save(frames_dir / f"frame_{count:04d}.png")
            count += 1
    engine.settle()
    memory_hash = hashlib.sha256()
    for name, a in sorted(world.memory.to_arrays().items()):
        memory_hash.update(name.encode())
        memory_hash.update(np.ascontiguousarray(a).tobytes())
    print(scene, fill, frames, "beside" if beside else "in turn", "frames", frame_hash.hexdigest()[:16],
          "memory", memory_hash.hexdigest()[:16],
          world.memory.num_points, "in_place", getattr(world.memory, "resorts_in_place", None), flush=True)


if __name__ == "__main__":
    main()
