"""Play recordings as MCAP files with protobuf channels (``docs/DESIGN.md``, "Recordings and the player"), so they open in
standard robotics tooling (Foxglove, the ``mcap`` CLI) and seek cheaply.

Topics (each message's log_time is the server's clock, Unix ns). Format version 2 (the file's
``spatia.session`` metadata); version 1 recordings (``/frame`` carrying its image bytes, no foxglove topics)
still read and replay the same way:

    /start              spatia.v1.PlayStart           once, first: world, resolution, fps, encoding, clip lengths
    /action             spatia.v1.Action              every action read, in order (seq and the client's clock)
    /camera/image       foxglove.CompressedImage      every generated frame's JPEG / PNG, stored once, frame "camera"
    /frame              spatia.v1.Frame               every frame's metadata: index, clip id, c2w pose, intrinsics,
                                                      seq; ``data`` empty (the image is the /camera/image message
                                                      just before it, same log_time) except for RAW frames
    /camera/transform   foxglove.FrameTransform       every frame: "world" -> "camera" (the c2w pose)
    /camera/calibration foxglove.CameraCalibration    first frame and whenever the intrinsics change
    /tf                 foxglove.FrameTransform       once, first: "map" -> "world" (see the frame tree)
    /memory             foxglove.PointCloud           the spatial memory at the start and the end of the session,
                                                      frame "world", randomly downsampled to <= 200k points
    /stats              spatia.v1.SessionStats        one per clip

Frame tree (Foxglove's 3D panel is z-up; our worlds are y-down, like OpenCV cameras):

    map (z-up: x = the first camera's forward, y = its left, z = up)
     └─ world (the world frame of the poses; up = -y of the first camera, DESIGN.md)
         └─ camera (optical frame: x right, y down, z forward; what CompressedImage / CameraCalibration use)

``map_from_world`` is the rotation taking world vectors to map vectors; ``tests/test_server_recording.py`` checks
numerically that the first camera's forward lands on map +x and its up on map +z.

The writer closes a chunk and flushes the file after every clip (``flush``), so a recording cut off by a crash
is readable up to its last flushed chunk; ``read_recording`` reads records sequentially and stops cleanly at a
truncated tail, and ``repair`` rewrites such a file with its summary and footer so indexed readers can seek.
Point clouds are serialised off the session's path: the start cloud on the recorder's own thread, the end cloud
and the summary / footer by the server's ``RecordingCloser`` after the session has released its world. World
snapshots stay msgpack (``world/snapshot.py``).
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from mcap.exceptions import McapError
from mcap.records import Channel, Footer, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from mcap_protobuf.schema import register_schema

from spatia.proto.spatia.v1 import world_pb2 as pb

log = structlog.get_logger("spatia.server.recording")

FORMAT_VERSION = "2"
MAX_CLOUD_POINTS = 200_000

try:  # the [web] extra; without it recordings keep the version-1 layout (frames with their bytes)
    from foxglove_schemas_protobuf.CameraCalibration_pb2 import CameraCalibration
    from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
    from foxglove_schemas_protobuf.FrameTransform_pb2 import FrameTransform
    from foxglove_schemas_protobuf.PackedElementField_pb2 import PackedElementField
    from foxglove_schemas_protobuf.PointCloud_pb2 import PointCloud

    HAVE_FOXGLOVE = True
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_FOXGLOVE = False

TOPICS: dict[str, type] = {
    "/start": pb.PlayStart,
    "/action": pb.Action,
    "/frame": pb.Frame,
    "/stats": pb.SessionStats,
}
if HAVE_FOXGLOVE:
    TOPICS.update({"/camera/image": CompressedImage, "/camera/transform": FrameTransform, "/tf": FrameTransform,
                   "/camera/calibration": CameraCalibration, "/memory": PointCloud})

_IMAGE_FORMAT = {pb.FRAME_ENCODING_JPEG: "jpeg", pb.FRAME_ENCODING_UNSPECIFIED: "jpeg", pb.FRAME_ENCODING_PNG: "png"}

# world -> map (z-up): map x = world +z (the first camera's forward for an identity origin), map y = world -x (left),
# map z = world -y (up). A proper rotation (det +1).
_MAP_FROM_CANONICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def map_from_world(origin_c2w: np.ndarray) -> np.ndarray:
    """[3, 3] rotation taking world vectors to the z-up "map" frame, levelled on the first camera
    ``origin_c2w`` [4, 4]: its level forward -> map +x, its up (-y) -> map +z."""
    up = -np.asarray(origin_c2w, dtype=np.float64)[:3, 1]
    up /= np.linalg.norm(up)
    fwd = origin_c2w[:3, 2] - up * float(origin_c2w[:3, 2] @ up)
    fwd /= np.linalg.norm(fwd)
    left = np.cross(up, fwd)
    return np.stack([fwd, left, up])  # rows: the map axes in world coordinates


def quaternion_xyzw(R: np.ndarray) -> np.ndarray:
    """[4] unit quaternion (x, y, z, w) of the rotation ``R`` [3, 3] (Shepperd's method, w >= 0)."""
    R = np.asarray(R, dtype=np.float64)
    t = np.trace(R)
    if t > 0:
        s = 2.0 * np.sqrt(1.0 + t)
        q = np.array([(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-300))
        q = np.empty(4)
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
        q[3] = (R[k, j] - R[j, k]) / s
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def _transform(parent: str, child: str, R: np.ndarray, t: np.ndarray, stamp_ns: int):
    q = quaternion_xyzw(R)
    msg = FrameTransform(parent_frame_id=parent, child_frame_id=child)
    msg.timestamp.FromNanoseconds(int(stamp_ns))
    msg.translation.x, msg.translation.y, msg.translation.z = (float(v) for v in t)
    msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w = (float(v) for v in q)
    return msg


def _calibration(K: pb.CameraIntrinsics, stamp_ns: int):
    msg = CameraCalibration(frame_id="camera", width=K.width, height=K.height, distortion_model="plumb_bob",
                            D=[0.0] * 5, K=[K.fx, 0, K.cx, 0, K.fy, K.cy, 0, 0, 1], R=[1, 0, 0, 0, 1, 0, 0, 0, 1],
                            P=[K.fx, 0, K.cx, 0, 0, K.fy, K.cy, 0, 0, 0, 1, 0])
    msg.timestamp.FromNanoseconds(int(stamp_ns))
    return msg


def point_cloud(points: np.ndarray, colors: np.ndarray, stamp_ns: int):
    """foxglove.PointCloud in frame "world": ``points`` [N, 3] float32 world metres, ``colors`` [N, 3] uint8.
    Packed as x, y, z float32 then red, green, blue, alpha uint8 (16 bytes a point)."""
    n = len(points)
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1"),
                             ("a", "u1")])
    rec["x"], rec["y"], rec["z"] = points[:, 0], points[:, 1], points[:, 2]
    rec["r"], rec["g"], rec["b"] = colors[:, 0], colors[:, 1], colors[:, 2]
    rec["a"] = 255
    F, U = PackedElementField.FLOAT32, PackedElementField.UINT8
    fields = [PackedElementField(name=name, offset=off, type=typ) for name, off, typ in
              (("x", 0, F), ("y", 4, F), ("z", 8, F), ("red", 12, U), ("green", 13, U), ("blue", 14, U),
               ("alpha", 15, U))]
    msg = PointCloud(frame_id="world", point_stride=16, fields=fields, data=rec.tobytes())
    msg.timestamp.FromNanoseconds(int(stamp_ns))
    msg.pose.orientation.w = 1.0
    return msg


def cloud_points(msg) -> tuple[np.ndarray, np.ndarray]:
    """A ``point_cloud`` message back to ([N, 3] float32 positions, [N, 3] uint8 colours)."""
    rec = np.frombuffer(msg.data, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"),
                                         ("b", "u1"), ("a", "u1")])
    return (np.stack([rec["x"], rec["y"], rec["z"]], 1), np.stack([rec["r"], rec["g"], rec["b"]], 1))


def downsample_memory(memory, max_points: int = MAX_CLOUD_POINTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """([M, 3] float32 world positions, [M, 3] uint8 colours), M <= ``max_points``: every (N / M)-th point of a
    ``SpatialMemory`` from a random offset; copies, so the caller's memory may change afterwards. A stride, not
    ``rng.choice``: O(M) instead of O(N) (this runs on the session's finish path; choice without replacement over
    1.5 M points took ~0.2-0.9 s on the shared machine), and the memory's order is its insertion order, so a
    stride samples every part of the explored space evenly."""
    positions = memory.positions  # a new array
    colors = np.asarray(memory.colors)
    n = len(positions)
    if n > max_points:
        step = n / max_points
        offset = float(np.random.default_rng(seed).random()) * step
        idx = np.minimum((offset + np.arange(max_points) * step).astype(np.int64), n - 1)
        positions, colors = positions[idx], colors[idx]
    return np.ascontiguousarray(positions, np.float32), np.array(colors, dtype=np.uint8, copy=True)


class Recorder:
    """Appends one Play session to ``path``. Thread-safe: actions come from the event loop, frames from the
    world's worker thread, point clouds are serialised on the recorder's own thread."""

    def __init__(self, path: Path, world_id: str, session_id: str, start: pb.PlayStart, chunk_bytes: int = 256 * 1024,
                 origin_c2w: np.ndarray | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._writer = McapWriter(self._file, chunk_size=chunk_bytes, compression=CompressionType.ZSTD)
        self._writer.start(profile="", library="spatia-world")
        self.foxglove = HAVE_FOXGLOVE
        self._writer.add_metadata("spatia.session", {"world_id": world_id, "session_id": session_id,
                                                      "format_version": FORMAT_VERSION if self.foxglove else "1"})
        self._channels: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._calibration: tuple | None = None
        self._clouds: queue.Queue | None = None
        self._cloud_thread: threading.Thread | None = None
        self.frames = 0
        self.write("/start", start)
        if self.foxglove and origin_c2w is not None:
            self.write("/tf", _transform("map", "world", map_from_world(origin_c2w), np.zeros(3), time.time_ns()))
        self.flush()

    def _add(self, topic: str, message, now: int) -> None:
        channel = self._channels.get(topic)
        if channel is None:
            schema_id = register_schema(self._writer, TOPICS[topic])
            channel = self._writer.register_channel(topic=topic, message_encoding="protobuf", schema_id=schema_id)
            self._channels[topic] = channel
        self._writer.add_message(channel_id=channel, log_time=now, data=message.SerializeToString(), publish_time=now)

    def write(self, topic: str, message, log_time_ns: int | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            now = time.time_ns() if log_time_ns is None else log_time_ns
            if topic == "/frame":
                self._write_frame(message, now)
                self.frames += 1
            else:
                self._add(topic, message, now)

    def _write_frame(self, frame: pb.Frame, now: int) -> None:
        fmt = _IMAGE_FORMAT.get(frame.encoding)
        if not self.foxglove or fmt is None:  # RAW frames keep their bytes in /frame (CompressedImage can't)
            self._add("/frame", frame, now)
            return
        stamp = frame.server_time_ns or now
        image = CompressedImage(frame_id="camera", format=fmt, data=frame.data)
        image.timestamp.FromNanoseconds(stamp)
        self._add("/camera/image", image, now)
        meta = pb.Frame()
        meta.CopyFrom(frame)
        meta.ClearField("data")
        self._add("/frame", meta, now)
        c2w = np.asarray(frame.pose.c2w, dtype=np.float64).reshape(4, 4)
        self._add("/camera/transform", _transform("world", "camera", c2w[:3, :3], c2w[:3, 3], stamp), now)
        K = frame.intrinsics
        key = (K.fx, K.fy, K.cx, K.cy, K.width, K.height)
        if key != self._calibration:
            self._calibration = key
            self._add("/camera/calibration", _calibration(K, stamp), now)

    def write_memory(self, points: np.ndarray, colors: np.ndarray, log_time_ns: int | None = None) -> None:
        """Queue a /memory point cloud (``points`` [N, 3] float32 world metres, ``colors`` [N, 3] uint8; copies,
        e.g. from ``downsample_memory``): packed, compressed and written on the recorder's thread."""
        if not self.foxglove or self._closed:
            return
        if self._clouds is None:
            self._clouds = queue.Queue()
            self._cloud_thread = threading.Thread(target=self._cloud_loop, daemon=True, name="recording-clouds")
            self._cloud_thread.start()
        self._clouds.put((points, colors, time.time_ns() if log_time_ns is None else log_time_ns))

    def snapshot_memory(self, memory) -> None:
        """``write_memory`` of a ``SpatialMemory``, downsampled to <= 200k points (only this copy is taken on the
        caller's thread)."""
        if self.foxglove and not self._closed:
            self.write_memory(*downsample_memory(memory))

    def _cloud_loop(self) -> None:
        while True:
            item = self._clouds.get()
            if item is None:
                return
            points, colors, stamp = item
            msg = point_cloud(points, colors, stamp)  # packing runs here, not under the writer's lock
            with self._lock:  # log time = when written, so log times stay in file order; the message keeps stamp
                if not self._closed:
                    self._add("/memory", msg, time.time_ns())

    def write_memory_now(self, points: np.ndarray, colors: np.ndarray, log_time_ns: int | None = None) -> None:
        """``write_memory`` on the calling thread (the closer's): packed, compressed and written before returning."""
        if not self.foxglove or self._closed:
            return
        msg = point_cloud(points, colors, time.time_ns() if log_time_ns is None else log_time_ns)
        with self._lock:
            if not self._closed:
                self._add("/memory", msg, time.time_ns())

    def flush(self) -> None:
        """Close the chunk in progress and flush the file: everything so far survives a crash."""
        with self._lock:
            if not self._closed:
                self._writer.flush()

    def close(self) -> None:
        if self._cloud_thread is not None:  # the clouds queued so far go in before the summary
            self._clouds.put(None)
            self._cloud_thread.join(timeout=60)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.finish()  # summary + footer: the file is complete and indexed
            self._file.close()


class RecordingCloser:
    """Finishes recordings off the sessions' finish paths: the end-of-session point cloud (a downsampled copy the
    session took while it still held the world) is packed and written, then the summary and footer, on one
    background thread, so a session's world and slot are released without waiting for them.

    Bounded: at most ``max_pending`` recordings are closing or waiting (each holds its cloud copy, <= 200k points,
    3.2 MB); a session ending beyond that waits in ``submit`` for room (backpressure instead of growth).
    ``wait(path)`` / ``wait_all`` let ListRecordings and Replay see a recording whose close is in flight as
    complete; ``shutdown`` drains what is queued at server stop. After ``shutdown``, ``submit`` closes inline.
    A failing close is logged (the file stays readable up to its last flushed chunk; ``spatia replay --repair``).
    """

    def __init__(self, max_pending: int = 4) -> None:
        self.max_pending = max_pending
        self._room = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._pending: dict[Path, Future] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="recording-closer")
        self._shut = False
        self.closed = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def submit(self, recorder: Recorder, cloud: tuple[np.ndarray, np.ndarray] | None = None) -> Future:
        """Queue ``recorder``'s close (blocks while ``max_pending`` closes are in flight: call it off the event
        loop). ``cloud``: ([N, 3] float32 world positions, [N, 3] uint8 colours) to write first, or None."""
        self._room.acquire()
        with self._lock:
            if self._shut:
                self._room.release()
                done: Future = Future()
                try:
                    self._close(recorder, cloud)
                    done.set_result(None)
                except Exception as exc:  # noqa: BLE001 -- logged in _close
                    done.set_exception(exc)
                return done
            fut = self._executor.submit(self._close, recorder, cloud)
            self._pending[recorder.path] = fut
        fut.add_done_callback(lambda f, path=recorder.path: self._done(path, f))
        return fut

    def _done(self, path: Path, fut: Future) -> None:
        with self._lock:
            if self._pending.get(path) is fut:
                del self._pending[path]
        self._room.release()

    def _close(self, recorder: Recorder, cloud) -> None:
        try:
            if cloud is not None:
                recorder.write_memory_now(*cloud)
            recorder.close()
            self.closed += 1
        except Exception as exc:
            self.failed += 1
            log.error("recording close failed; readable up to its last chunk", recording=recorder.path.stem,
                      error_type=type(exc).__name__, error=str(exc)[:200])
            raise

    def wait(self, path: Path, timeout_s: float = 30.0) -> bool:
        """Wait for ``path``'s close if one is in flight; True when none is left."""
        with self._lock:
            fut = self._pending.get(Path(path))
        if fut is None:
            return True
        try:
            fut.result(timeout=timeout_s)
        except FutureTimeout:
            return False
        except Exception:  # noqa: BLE001 -- logged by _close; the file is what it is
            pass
        return True

    def wait_all(self, timeout_s: float = 30.0) -> bool:
        """Wait for every close in flight now (at most ``timeout_s`` in all); True when all finished."""
        with self._lock:
            futs = list(self._pending.values())
        done, not_done = futures_wait(futs, timeout=timeout_s)
        return not not_done

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Server stop: finish what is queued (at most ``timeout_s``); later submits close inline."""
        with self._lock:
            self._shut = True
        ok = self.wait_all(timeout_s)
        self._executor.shutdown(wait=ok)
        return ok


@dataclass
class RecordedMessage:
    topic: str
    log_time_ns: int
    message: object  # the decoded protobuf


def read_recording(path: Path) -> Iterator[RecordedMessage]:
    """Messages in file order. A truncated file ends the iteration at its last whole record (no exception);
    ``RecordingSummary.complete`` says whether the footer was reached."""
    for item in _read(path):
        if isinstance(item, RecordedMessage):
            yield item


def _read(path: Path, images: bool = True):
    """Records in file order; a version-2 ``/frame`` gets its image back from the ``/camera/image`` written just
    before it (``images=False`` skips that: metadata only, nothing copied)."""
    channels: dict[int, str] = {}
    last_image: tuple[int, bytes] | None = None  # (log_time, bytes) of the latest /camera/image
    with open(path, "rb") as f:
        reader = StreamReader(f, record_size_limit=1 << 30)
        try:
            for record in reader.records:
                if isinstance(record, Channel):
                    channels[record.id] = record.topic
                elif isinstance(record, Message):
                    topic = channels.get(record.channel_id)
                    if topic == "/camera/image":
                        if images and HAVE_FOXGLOVE:
                            last_image = (record.log_time, CompressedImage.FromString(record.data).data)
                        continue
                    cls = TOPICS.get(topic)
                    if cls is None:
                        continue
                    message = cls.FromString(record.data)
                    if topic == "/frame" and not message.data and last_image is not None \
                            and last_image[0] == record.log_time:
                        message.data = last_image[1]
                        last_image = None
                    yield RecordedMessage(topic, record.log_time, message)
                elif isinstance(record, Footer):
                    yield record
        except (McapError, EOFError, ValueError, OSError, struct.error):
            return  # cut off mid-record: everything before it was yielded


@dataclass
class RecordingSummary:
    recording_id: str
    world_id: str
    session_id: str
    start_ns: int
    end_ns: int
    frames: int
    actions: int
    size_bytes: int
    complete: bool

    def to_proto(self) -> pb.RecordingInfo:
        return pb.RecordingInfo(
            recording_id=self.recording_id, world_id=self.world_id, session_id=self.session_id,
            start_unix_ns=self.start_ns, end_unix_ns=self.end_ns, frames=self.frames, actions=self.actions,
            size_bytes=self.size_bytes, complete=self.complete,
        )


def summarize(path: Path) -> RecordingSummary:
    """One pass over the file (frames are decoded as protobuf but images are not decoded)."""
    path = Path(path)
    world_id = session_id = ""
    start = end = 0
    frames = actions = 0
    complete = False
    for item in _read(path, images=False):
        if isinstance(item, Footer):
            complete = True
            continue
        start = start or item.log_time_ns
        end = item.log_time_ns
        if item.topic == "/start":
            world_id = item.message.world_id
        elif item.topic == "/frame":
            frames += 1
        elif item.topic == "/action":
            actions += 1
    stem = path.stem
    session_id = stem[len(world_id) + 1:] if world_id and stem.startswith(world_id + ".") else ""
    return RecordingSummary(stem, world_id, session_id, start, end, frames, actions, path.stat().st_size, complete)


def recorded_frames(path: Path, start_frame: int = 0) -> Iterator[tuple[int, pb.Frame]]:
    """(log_time_ns, Frame) for the recording's frames from ``start_frame`` (0-based) on."""
    count = 0
    for item in read_recording(path):
        if item.topic == "/frame":
            if count >= start_frame:
                yield item.log_time_ns, item.message
            count += 1


def session_fps(path: Path) -> float:
    """The fps the session was played at (its PlayStart; 16 when unset)."""
    for item in read_recording(path):
        if item.topic == "/start":
            return item.message.fps or 16.0
    return 16.0


def action_keys(action: pb.Action) -> tuple[str, ...]:
    """The controls an action says were held, as key labels (W A S D, SPACE / C, SHIFT, arrows for look).
    The recording holds actions, not raw keys; this is the default keymap's reading of them."""
    keys = []
    for value, pos, neg in ((action.move_forward, "W", "S"), (action.move_right, "D", "A"),
                            (action.move_up, "SPACE", "C")):
        if value > 1e-6:
            keys.append(pos)
        elif value < -1e-6:
            keys.append(neg)
    if action.sprint:
        keys.append("SHIFT")
    yaw = action.yaw_rate_rad_s + action.yaw_delta_rad
    pitch = action.pitch_rate_rad_s + action.pitch_delta_rad
    if abs(yaw) > 1e-9:
        keys.append("LOOK-R" if yaw > 0 else "LOOK-L")
    if abs(pitch) > 1e-9:
        keys.append("LOOK-UP" if pitch > 0 else "LOOK-DOWN")
    return tuple(keys)


def _path_map(xy: np.ndarray, current: int, size_px: int) -> np.ndarray:
    """``[size, size, 3]`` uint8 map of the camera path ``xy`` ``[N, 2]`` (ground plane, metres, fitted to the
    box): the whole path dim, the part walked bright, the camera now as a red dot."""
    import cv2

    img = np.full((size_px, size_px, 3), 30, np.uint8)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = max(float((hi - lo).max()), 0.5)  # at least 0.5 m across: standing still is a dot, not a zoom
    margin = 6
    scale = (size_px - 2 * margin) / span
    centre = (lo + hi) / 2
    px = np.stack([size_px / 2 + (xy[:, 0] - centre[0]) * scale, size_px / 2 - (xy[:, 1] - centre[1]) * scale], 1)
    px = np.round(px).astype(np.int32)
    cv2.polylines(img, [px.reshape(-1, 1, 2)], False, (90, 90, 90), 1)
    cv2.polylines(img, [px[: current + 1].reshape(-1, 1, 2)], False, (255, 210, 0), 1)
    cv2.circle(img, tuple(int(v) for v in px[current]), 3, (255, 40, 40), -1)
    return img


def overlay_frame(rgb: np.ndarray, keys: tuple[str, ...], path_xy: np.ndarray, index: int,
                  min_width: int = 480) -> np.ndarray:
    """The frame (nearest-upscaled by an integer factor to at least ``min_width`` px, so text stays legible)
    with the keys held bottom-left and a small map of the camera path top-right."""
    import cv2

    factor = max(1, -(-min_width // rgb.shape[1]))
    img = np.ascontiguousarray(np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1))
    h, w = img.shape[:2]
    side = max(48, min(h, w) // 4)
    img[6:6 + side, w - side - 6:w - 6] = _path_map(path_xy, index, side)
    text = "keys: " + (" ".join(keys) if keys else "-")
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(img, (4, h - th - base - 10), (12 + tw, h - 4), (0, 0, 0), -1)
    cv2.putText(img, text, (8, h - base - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _ground_path(poses: list[np.ndarray]) -> np.ndarray:
    """Camera centres on the ground plane of the first recorded camera: (right, level forward), metres."""
    first = poses[0]
    up = -first[:3, 1]  # docs/DESIGN.md: up = -y of the first camera
    fwd = first[:3, 2] - up * float(first[:3, 2] @ up)
    fwd /= max(np.linalg.norm(fwd), 1e-12)
    right = np.cross(fwd, up)
    d = np.stack([p[:3, 3] for p in poses]) - first[:3, 3]
    return np.stack([d @ right, d @ fwd], axis=1)


def export_video(path: Path, out: Path, fps: float = 0.0, start_frame: int = 0, overlay: bool = False) -> int:
    """Write the recorded frames (decoded) to a video with imageio-ffmpeg; returns the number of frames.
    ``overlay``: draw the keys held (from the action each frame applied) and a map of the camera path on it."""
    import imageio.v2 as imageio

    # imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp unless told not to: a fork that runs Python in the
    # child, unsafe beside other threads (a server's gRPC threads: the child died before its exec, once in a full
    # test run, and the export failed with a broken pipe and no ffmpeg output). Its own switch turns that off.
    os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")

    from spatia.proto.spatia.v1.convert import decode_frame, pose_array
    from spatia.world.errors import InvalidInputError

    fps = fps or session_fps(path)
    keys_of_seq: dict[int, tuple[str, ...]] = {}
    path_xy = None
    if overlay:  # a first light pass: the actions and the poses (no image decoding)
        poses = []
        for item in read_recording(path):
            if item.topic == "/action":
                keys_of_seq[int(item.message.seq)] = action_keys(item.message)
            elif item.topic == "/frame":
                poses.append(pose_array(item.message.pose))
        path_xy = _ground_path(poses) if poses else None
    n = 0
    writer = None
    try:
        for _, frame in recorded_frames(path, start_frame):
            rgb = decode_frame(frame)
            if overlay:
                rgb = overlay_frame(rgb, keys_of_seq.get(int(frame.last_action_seq), ()), path_xy, start_frame + n)
            if writer is None:
                # H.264 in yuv420p needs even sizes: pad odd edges by one replicated pixel
                writer = imageio.get_writer(out, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                            ffmpeg_params=["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                                                           "-movflags", "+faststart"])  # browsers stream it
            writer.append_data(rgb)
            n += 1
    finally:
        if writer is not None:
            writer.close()
    if n == 0:
        raise InvalidInputError(f"{path} holds no frames from frame {start_frame} on; nothing exported")
    return n


@dataclass
class RepairResult:
    messages: int
    frames: int
    was_complete: bool
    bytes_before: int
    bytes_after: int


def repair(path: Path, out: Path | None = None) -> RepairResult:
    """Rewrite a recording cut off by a crash (no summary / footer) as a complete, indexed MCAP: every record up
    to the last whole one is kept (schemas, channels, metadata, messages); the rest is lost. Writes ``out``, or
    replaces ``path`` atomically (a temporary file, then rename). A complete file is rewritten all the same."""
    path = Path(path)
    if not path.is_file():
        from spatia.world.errors import NotFoundError

        raise NotFoundError(f"recording not found: {path}")
    target = Path(out) if out is not None else path
    tmp = target.with_name(target.name + ".repair-tmp")
    before = path.stat().st_size
    messages = frames = 0
    complete = False
    schema_ids: dict[int, int] = {}
    channel_ids: dict[int, int] = {}
    frame_channels: set[int] = set()
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        writer = McapWriter(dst, chunk_size=256 * 1024, compression=CompressionType.ZSTD)
        writer.start(profile="", library="spatia-world repair")
        try:
            for record in StreamReader(src, record_size_limit=1 << 30).records:
                if isinstance(record, Schema):
                    if record.id not in schema_ids:
                        schema_ids[record.id] = writer.register_schema(record.name, record.encoding, record.data)
                elif isinstance(record, Channel):
                    if record.id not in channel_ids:
                        channel_ids[record.id] = writer.register_channel(
                            record.topic, record.message_encoding, schema_ids.get(record.schema_id, 0),
                            dict(record.metadata))
                        if record.topic == "/frame":
                            frame_channels.add(record.id)
                elif isinstance(record, Message):
                    if record.channel_id in channel_ids:
                        writer.add_message(channel_ids[record.channel_id], record.log_time, record.data,
                                           record.publish_time, record.sequence)
                        messages += 1
                        frames += record.channel_id in frame_channels
                elif isinstance(record, Metadata):
                    writer.add_metadata(record.name, dict(record.metadata))
                elif isinstance(record, Footer):
                    complete = True
        except (McapError, EOFError, ValueError, OSError, struct.error):
            pass  # the cut: keep what came before it
        writer.finish()
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    return RepairResult(messages, frames, complete, before, target.stat().st_size)
