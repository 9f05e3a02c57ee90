"""Play recordings as MCAP files with protobuf channels (``docs/DESIGN.md``, "Recordings and the player"), so they open in
standard robotics tooling (Foxglove, the ``mcap`` CLI) and seek cheaply.

Topics (each message's log_time is the server's clock, Unix ns):

    /start   spatia.v1.PlayStart     once, first: world, resolution, fps, encoding, clip lengths, seed
    /action  spatia.v1.Action        every action read, in order (seq and the client's clock inside)
    /frame   spatia.v1.Frame         every generated frame: index, clip id, c2w pose, intrinsics, seq, bytes
    /stats   spatia.v1.SessionStats  one per clip

The writer closes a chunk and flushes the file after every clip (``flush``), so a recording cut off by a crash
is readable up to its last flushed chunk; ``read_recording`` reads records sequentially and stops cleanly at a
truncated tail. World snapshots stay msgpack (``world/snapshot.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mcap.exceptions import McapError
from mcap.records import Channel, Footer, Message, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from mcap_protobuf.schema import register_schema

from spatia.proto.spatia.v1 import world_pb2 as pb

TOPICS: dict[str, type] = {
    "/start": pb.PlayStart,
    "/action": pb.Action,
    "/frame": pb.Frame,
    "/stats": pb.SessionStats,
}


class Recorder:
    """Appends one Play session to ``path``. Thread-safe: actions come from the event loop, frames from the
    world's worker thread."""

    def __init__(self, path: Path, world_id: str, session_id: str, start: pb.PlayStart, chunk_bytes: int = 256 * 1024):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._writer = McapWriter(self._file, chunk_size=chunk_bytes, compression=CompressionType.ZSTD)
        self._writer.start(profile="", library="spatia-world")
        self._writer.add_metadata("spatia.session", {"world_id": world_id, "session_id": session_id,
                                                      "format_version": "1"})
        self._channels: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.frames = 0
        self.write("/start", start)
        self.flush()

    def write(self, topic: str, message, log_time_ns: int | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            channel = self._channels.get(topic)
            if channel is None:
                schema_id = register_schema(self._writer, TOPICS[topic])
                channel = self._writer.register_channel(topic=topic, message_encoding="protobuf", schema_id=schema_id)
                self._channels[topic] = channel
            now = time.time_ns() if log_time_ns is None else log_time_ns
            self._writer.add_message(channel_id=channel, log_time=now, data=message.SerializeToString(),
                                     publish_time=now)
            if topic == "/frame":
                self.frames += 1

    def flush(self) -> None:
        """Close the chunk in progress and flush the file: everything so far survives a crash."""
        with self._lock:
            if not self._closed:
                self._writer.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.finish()  # summary + footer: the file is complete and indexed
            self._file.close()


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


def _read(path: Path):
    schemas: dict[int, str] = {}
    channels: dict[int, str] = {}
    with open(path, "rb") as f:
        reader = StreamReader(f, record_size_limit=1 << 30)
        try:
            for record in reader.records:
                if isinstance(record, Schema):
                    schemas[record.id] = record.name
                elif isinstance(record, Channel):
                    channels[record.id] = record.topic
                elif isinstance(record, Message):
                    topic = channels.get(record.channel_id)
                    cls = TOPICS.get(topic)
                    if cls is not None:
                        yield RecordedMessage(topic, record.log_time, cls.FromString(record.data))
                elif isinstance(record, Footer):
                    yield record
        except (McapError, EOFError, ValueError, OSError):
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
    for item in _read(path):
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
