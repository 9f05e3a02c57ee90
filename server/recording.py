"""Play recordings as MCAP files with protobuf channels (``service_ecosystem.md`` section 4), so they open in
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

from mcap.exceptions import McapError
from mcap.records import Channel, Footer, Message, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from mcap_protobuf.schema import register_schema

from proto.spatia.v1 import world_pb2 as pb

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


def export_video(path: Path, out: Path, fps: float = 0.0, start_frame: int = 0) -> int:
    """Write the recorded frames (decoded) to a video with imageio-ffmpeg; returns the number of frames."""
    import imageio.v2 as imageio

    from proto.spatia.v1.convert import decode_frame
    from world.errors import InvalidInputError

    fps = fps or session_fps(path)
    n = 0
    writer = None
    try:
        for _, frame in recorded_frames(path, start_frame):
            rgb = decode_frame(frame)
            if writer is None:
                # H.264 in yuv420p needs even sizes: pad odd edges by one replicated pixel
                writer = imageio.get_writer(out, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                            ffmpeg_params=["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"])
            writer.append_data(rgb)
            n += 1
    finally:
        if writer is not None:
            writer.close()
    if n == 0:
        raise InvalidInputError(f"{path} holds no frames from frame {start_frame} on; nothing exported")
    return n
