"""``spatia export-rerun WORLD_OR_RECORDING out.rrd``: a world snapshot or a Play recording as a Rerun file
(rerun-sdk, the ``[web]`` extra), to open with ``rerun out.rrd``.

Entities (timeline ``frame`` = the frame's index in the world's history; recordings also get ``log_time``):

    world                 view coordinates RIGHT_HAND_Y_DOWN (our worlds are y-down, DESIGN.md), static
    world/memory          Points3D: the spatial memory (a world: at the end; a recording: its /memory clouds,
                          start and end), randomly downsampled to ``--max-points``
    world/camera_path     LineStrips3D: the camera centres in order, static
    world/camera          Transform3D (c2w) + Pinhole (intrinsics, RDF optical frame) per frame
    world/camera/image    the frame: EncodedImage (JPEG / PNG bytes as recorded), or Image (decoded)

A world snapshot is ``<data-dir>/worlds/<id>.msgpack`` (or any ``spatia`` snapshot); a recording is ``.mcap``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-rerun", help="write a world snapshot or a Play recording as a Rerun .rrd file")
    p.add_argument("source", type=Path, help="a world snapshot (.msgpack) or a Play recording (.mcap)")
    p.add_argument("out", type=Path, help="the .rrd file to write")
    p.add_argument("--max-points", type=int, default=1_000_000, help="memory points at most (random subset)")
    p.add_argument("--max-frames", type=int, default=0, help="frames at most (evenly spaced); 0 = all")


def run(args: argparse.Namespace) -> int:
    import json

    from spatia.world.errors import InvalidInputError, NotFoundError

    if not args.source.is_file():
        raise NotFoundError(f"not found: {args.source}")
    if args.max_points < 1 or args.max_frames < 0:
        raise InvalidInputError("--max-points must be >= 1 and --max-frames >= 0")
    if args.source.suffix == ".mcap":
        stats = export_recording(args.source, args.out, args.max_points, args.max_frames)
    else:
        stats = export_world(args.source, args.out, args.max_points, args.max_frames)
    print(json.dumps({"out": str(args.out), **stats}, indent=2))
    return 0


def _stream(out: Path, name: str):
    import rerun as rr

    out.parent.mkdir(parents=True, exist_ok=True)
    rec = rr.RecordingStream(application_id="spatia-world", recording_id=name)
    rec.save(str(out))
    rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Y_DOWN, static=True)
    return rec


def _subset(n: int, k: int, seed: int = 0) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _frames_subset(n: int, max_frames: int) -> np.ndarray:
    if not max_frames or n <= max_frames:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_frames)).astype(int))


def _log_camera(rec, c2w: np.ndarray, fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> None:
    import rerun as rr

    rec.log("world/camera", rr.Transform3D(translation=c2w[:3, 3], mat3x3=c2w[:3, :3]))
    rec.log("world/camera", rr.Pinhole(image_from_camera=[[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
                                       resolution=[width, height], camera_xyz=rr.ViewCoordinates.RDF))


def export_world(path: Path, out: Path, max_points: int = 1_000_000, max_frames: int = 0) -> dict:
    """A world snapshot: memory, camera path, each history frame with its camera."""
    import rerun as rr
    from tqdm import tqdm

    from spatia.world.state import World

    world = World.load(path)
    rec = _stream(out, world.world_id)
    poses = world.history.poses()  # [N, 4, 4] c2w, world frame
    K = world.intrinsics
    rec.log("world/camera_path", rr.LineStrips3D([poses[:, :3, 3]]), static=True)
    picked = _frames_subset(len(poses), max_frames)
    for i in tqdm(picked, desc="frames", unit="frame", leave=False):
        rec.set_time("frame", sequence=int(i))
        _log_camera(rec, poses[i], K.fx, K.fy, K.cx, K.cy, K.width, K.height)
        rec.log("world/camera/image", rr.Image(world.history.get_rgb(int(i))))
    positions = world.memory.positions
    idx = _subset(len(positions), max_points)
    rec.set_time("frame", sequence=int(len(poses) - 1))
    rec.log("world/memory", rr.Points3D(positions[idx], colors=np.asarray(world.memory.colors)[idx]))
    rec.flush()
    del rec
    return {"source": "world", "world_id": world.world_id, "frames": int(len(picked)), "points": int(len(idx))}


def export_recording(path: Path, out: Path, max_points: int = 1_000_000, max_frames: int = 0) -> dict:
    """A Play recording (read as far as it goes if cut off): cameras, frames (as recorded), memory clouds."""
    import rerun as rr

    from spatia.proto.spatia.v1 import world_pb2 as pb
    from spatia.proto.spatia.v1.convert import decode_frame, pose_array
    from spatia.server.recording import cloud_points, read_recording, summarize
    from spatia.world.errors import InvalidInputError

    summary = summarize(path)
    if summary.frames == 0:
        raise InvalidInputError(f"{path} holds no frames; nothing to export")
    rec = _stream(out, summary.recording_id or path.stem)
    picked = set(_frames_subset(summary.frames, max_frames).tolist())
    centres, n, clouds, last_index = [], 0, 0, 0
    media = {pb.FRAME_ENCODING_JPEG: "image/jpeg", pb.FRAME_ENCODING_UNSPECIFIED: "image/jpeg",
             pb.FRAME_ENCODING_PNG: "image/png"}
    from tqdm import tqdm

    progress = tqdm(total=summary.frames, desc="frames", unit="frame", leave=False)
    for item in read_recording(path):
        if item.topic == "/frame":
            progress.update(1)
            f = item.message
            c2w = pose_array(f.pose)
            centres.append(c2w[:3, 3])
            last_index = int(f.frame_index)
            if n in picked:
                rec.set_time("frame", sequence=last_index)
                rec.set_time("log_time", timestamp=np.datetime64(item.log_time_ns, "ns"))
                K = f.intrinsics
                _log_camera(rec, c2w, K.fx, K.fy, K.cx, K.cy, f.width, f.height)
                if f.encoding in media:
                    rec.log("world/camera/image", rr.EncodedImage(contents=bytes(f.data),
                                                                  media_type=media[f.encoding]))
                else:
                    rec.log("world/camera/image", rr.Image(decode_frame(f)))
            n += 1
        elif item.topic == "/memory":
            points, colors = cloud_points(item.message)
            idx = _subset(len(points), max_points)
            rec.set_time("frame", sequence=last_index)
            rec.set_time("log_time", timestamp=np.datetime64(item.log_time_ns, "ns"))
            rec.log("world/memory", rr.Points3D(points[idx], colors=colors[idx]))
            clouds += 1
    progress.close()
    rec.log("world/camera_path", rr.LineStrips3D([np.stack(centres)]), static=True)
    rec.flush()
    del rec
    return {"source": "recording", "recording_id": summary.recording_id, "frames": len(picked),
            "memory_clouds": clouds, "complete": summary.complete}
