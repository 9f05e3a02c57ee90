"""CreateWorld / ImportWorld sources -> ``World``s (run off the event loop: decoding and integration are heavy)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np

from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.proto.spatia.v1.convert import pose_array, trajectory_array
from spatia.server.config import Limits
from spatia.world import snapshot
from spatia.world.camera import Intrinsics, invert_pose, validate_pose, validate_trajectory
from spatia.server.errors import invalid
from spatia.world.errors import ImageDecodeError, InvalidInputError, NotFoundError, SnapshotError
from spatia.world.state import SNAPSHOT_VERSION, World


def check_pixels(width: int, height: int, limits: Limits, what: str) -> None:
    if width < 1 or height < 1:
        raise InvalidInputError(f"{what} must be at least 1x1 pixels, got {width}x{height}")
    if width * height > limits.max_image_pixels:
        raise InvalidInputError(
            f"{what} {width}x{height} = {width * height} pixels exceeds the limit max_image_pixels="
            f"{limits.max_image_pixels}"
        )


def intrinsics_from_proto(k: pb.CameraIntrinsics, limits: Limits, what: str = "intrinsics") -> Intrinsics:
    check_pixels(k.width, k.height, limits, f"{what} size")
    return Intrinsics(k.fx, k.fy, k.cx, k.cy, int(k.width), int(k.height))


def intrinsics_to_proto(k: Intrinsics) -> pb.CameraIntrinsics:
    return pb.CameraIntrinsics(fx=k.fx, fy=k.fy, cx=k.cx, cy=k.cy, width=k.width, height=k.height)


def pose_from_proto(p: pb.Pose, what: str) -> np.ndarray:
    try:
        return validate_pose(pose_array(p, what), what)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def trajectory_from_proto(t: pb.Trajectory, what: str, limits: Limits) -> np.ndarray:
    if len(t.poses) > limits.max_trajectory_frames:
        raise InvalidInputError(
            f"{what} has {len(t.poses)} poses, over the limit max_trajectory_frames={limits.max_trajectory_frames}"
        )
    try:
        return validate_trajectory(trajectory_array(t, what), what)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def official_to_c2w(official: pb.OfficialTrajectory, origin_c2w: np.ndarray, limits: Limits) -> np.ndarray:
    """Official w2c (relative to its first camera) -> c2w in the world frame, re-based on ``origin_c2w``
    (as ``World.from_case`` does: the case's world frame is its first camera)."""
    w2c = trajectory_from_proto(pb.Trajectory(poses=official.w2c), "official.w2c", limits)
    c2w = invert_pose(w2c)
    return validate_trajectory(origin_c2w @ np.linalg.inv(c2w[0]) @ c2w, "official trajectory")


_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _decoded(load, data, *args, name: str):
    """``load(data, *args, name=name)`` with a decoding failure reported as INVALID_ARGUMENT naming the field
    ``name`` and the problem, never an object repr (``<_io.BytesIO object at 0x...>``) or a path."""
    try:
        return load(data, *args, name=name)
    except (ImageDecodeError, InvalidInputError, NotFoundError) as exc:
        text = _REPR.sub("the bytes", str(exc))
        if not text.startswith(name):
            text = f"{name}: {text}"
        raise invalid(name, text) from None


def build_world(request: pb.CreateWorldRequest, world_id: str, limits: Limits) -> tuple[World, np.ndarray | None]:
    """The world and, for an official case, its trajectory [N, 4, 4] c2w re-based on the world frame. Built once
    the server has loaded its numba kernels (``server.host.wait_for_kernel_load``: only in its first seconds):
    else the new world's first clips waited for that load, or loaded the kernels themselves."""
    from spatia.model.fill.geometry.photo import photo_depth_estimator
    from spatia.server.host import wait_for_kernel_load
    from spatia.world.images import load_depth, load_mask, load_rgb

    wait_for_kernel_load()
    kind = request.WhichOneof("source")
    common = {"world_id": world_id, "prompt": request.prompt}
    if kind == "scene":
        s = request.scene
        check_pixels(s.resolution.width, s.resolution.height, limits, "scene.resolution")
        return World.from_scene(s.name, int(s.seed), int(s.resolution.width), int(s.resolution.height),
                                fov_deg=s.fov_deg or 75.0, **common), None
    if kind == "image":
        s = request.image
        rgb = _decoded(load_rgb, s.image, name="image.image")
        h, w = rgb.shape[:2]
        check_pixels(w, h, limits, "image")
        K = intrinsics_from_proto(s.intrinsics, limits, "image.intrinsics") if s.HasField("intrinsics") else None
        if K is not None and (K.width, K.height) != (w, h):
            raise InvalidInputError(f"image.intrinsics are for {K.width}x{K.height} but the image is {w}x{h}")
        depth = _decoded(load_depth, s.depth, (w, h), name="image.depth") if s.depth else None
        dynamic = _decoded(load_mask, s.dynamic_mask, (w, h), name="image.dynamic_mask") if s.dynamic_mask else None
        estimator = photo_depth_estimator() if depth is None else None
        return World.from_image(rgb, K, depth_m=depth, depth_estimator=estimator, dynamic=dynamic, source="image",
                                **common), None
    if kind == "point_cloud":
        s = request.point_cloud
        if not s.HasField("intrinsics"):
            raise InvalidInputError("point_cloud.intrinsics is required (the camera frames are generated with)")
        K = intrinsics_from_proto(s.intrinsics, limits, "point_cloud.intrinsics")
        start = pose_from_proto(s.start, "point_cloud.start") if s.HasField("start") else np.eye(4)
        return world_from_ply(s.ply, K, start, **common), None
    if kind == "official_case":
        return world_from_case(request.official_case, limits, **common)
    raise InvalidInputError("CreateWorldRequest needs a source: scene, image, point_cloud or official_case")


def world_from_ply(ply: bytes, K: Intrinsics, start: np.ndarray, world_id: str, prompt: str = "") -> World:
    """The cloud becomes the memory; frame 0 of the history is the cloud rendered at ``start``."""
    from spatia.world.memory import SpatialMemory

    points, colors = read_ply_points(ply)
    memory = SpatialMemory()
    memory.insert(points, colors)
    render = memory.render(K, start)
    if not render.valid.any():
        raise InvalidInputError("no point of the cloud is visible from the start camera")
    world = World.from_rgbd(render.rgb, render.depth_m, K, start, world_id=world_id, prompt=prompt, source="ply")
    world.memory = memory  # the whole cloud, not only what frame 0 sees
    return world


def world_from_case(case: pb.CaseSource, limits: Limits, world_id: str, prompt: str = "") -> tuple[World, np.ndarray]:
    """Write the case's contents in the official layout and load it with ``World.from_case``."""
    if not case.image:
        raise InvalidInputError("official_case.image is empty")
    if not case.HasField("intrinsics"):
        raise InvalidInputError("official_case.intrinsics is required")
    if not case.trajectory.w2c:
        raise InvalidInputError("official_case.trajectory has no w2c poses")
    from spatia.model.fill.geometry.photo import photo_depth_estimator

    w2c = trajectory_from_proto(pb.Trajectory(poses=case.trajectory.w2c), "official_case.trajectory.w2c", limits)
    n = case.intrinsics
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "case"
        d.mkdir()
        (d / "img.jpg").write_bytes(case.image)
        (d / "intrinsics.txt").write_text(
            f"[{n.fx_over_width} {n.fy_over_height} {n.cx_over_width} {n.cy_over_height}]")
        (d / "w2c.txt").write_text("\n".join(json.dumps(m.tolist()) for m in w2c) + "\n")
        if prompt:
            (d / "prompt.txt").write_text(prompt)
        if case.dynamic_mask:
            (d / "mask.png").write_bytes(case.dynamic_mask)
        from spatia.world.images import load_rgb

        probe = _decoded(load_rgb, case.image, name="official_case.image")
        width = int(case.width) or probe.shape[1]
        height = int(round(probe.shape[0] * width / probe.shape[1]))
        check_pixels(width, height, limits, "official_case image")
        try:
            world, c2w = World.from_case(d, depth_estimator=photo_depth_estimator(), width=case.width or None,
                                         world_id=world_id)
        except (InvalidInputError, NotFoundError) as exc:  # the message must not show the temp dir
            raise invalid("official_case", "official_case: " + _REPR.sub("the bytes", str(exc)).replace(
                str(d), "case")) from None
    return world, c2w


def world_from_snapshot(data: bytes, world_id: str) -> World:
    try:
        world = World.from_payload(snapshot.loads(data, max_version=SNAPSHOT_VERSION))
    except SnapshotError as exc:
        raise InvalidInputError(f"imported snapshot is not readable: {exc}") from None
    if world_id:
        world.info.world_id = world_id
    return world


def read_ply_points(ply: bytes, field: str = "ply") -> tuple[np.ndarray, np.ndarray]:
    """PLY bytes -> (points [N, 3] float64 world frame, colours [N, 3] uint8), voxelized at the memory's size."""
    from spatia.world.memory import SpatialMemory

    if not ply:
        raise invalid(field, f"{field}: PLY bytes are empty")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cloud.ply"
        path.write_bytes(ply)
        try:
            mem = SpatialMemory.load_ply(path)
        except InvalidInputError:
            raise
        except Exception as exc:  # open3d reports unreadable files in many ways
            raise invalid(field, f"{field}: not a readable PLY file ({type(exc).__name__})") from None
    return np.asarray(mem.positions, dtype=np.float64), np.asarray(mem.colors, dtype=np.uint8)
