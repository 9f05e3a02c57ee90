"""``spatia replay FILE``: summarise a Play recording (MCAP), ``--export out.mp4`` its frames as a video, ``--play``
it in a window, or ``--repair`` one cut off by a crash (summary + footer written, so seeking works)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="summarise a Play recording (.mcap) or export it as a video")
    p.add_argument("file", type=Path, help="a recording: <data-dir>/recordings/<id>.mcap")
    p.add_argument("--export", type=Path, help="write the recorded frames to this video file (.mp4)")
    p.add_argument("--fps", type=float, default=0.0, help="video frame rate; 0 = the session's fps")
    p.add_argument("--start-frame", type=int, default=0, help="first recorded frame to export (0-based)")
    p.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the keys held and a map of the camera path on the exported video (upscaled to at least "
                        "480 px wide; default on); --no-overlay exports the recorded frames as they are")
    p.add_argument("--play", action="store_true", help="watch it in a window (pause, seek, speed, step)")
    p.add_argument("--repair", action="store_true",
                   help="rewrite a recording cut off by a crash with its summary and footer (in place), so that "
                        "indexed readers can seek in it; everything up to the cut is kept")


def run(args: argparse.Namespace) -> int:
    import json

    from spatia.server.recording import export_video, summarize
    from spatia.world.errors import NotFoundError

    if not args.file.is_file():
        raise NotFoundError(f"recording not found: {args.file}")
    with open(args.file, "rb") as f:  # MCAP's magic: b"\x89MCAP0\r\n"; anything else is not a recording
        if f.read(8) != b"\x89MCAP0\r\n":
            from spatia.world.errors import InvalidInputError

            raise InvalidInputError(f"{args.file} is not an MCAP recording (expected <data-dir>/recordings/<id>.mcap)")
    repaired = None
    if args.repair:
        from spatia.server.recording import repair

        r = repair(args.file)
        repaired = {"messages": r.messages, "frames": r.frames, "was_complete": r.was_complete,
                    "bytes_before": r.bytes_before, "bytes_after": r.bytes_after}
    summary = summarize(args.file)
    out = {"recording_id": summary.recording_id, "world_id": summary.world_id, "frames": summary.frames,
           "actions": summary.actions, "duration_s": (summary.end_ns - summary.start_ns) / 1e9,
           "complete": summary.complete, "size_bytes": summary.size_bytes}
    if repaired is not None:
        out["repaired"] = repaired
    if args.export is not None:
        out["exported_frames"] = export_video(args.file, args.export, fps=args.fps, start_frame=args.start_frame,
                                              overlay=args.overlay)
        out["video"] = str(args.export)
    print(json.dumps(out, indent=2))
    if args.play:
        watch(args.file, summary.world_id, fps=args.fps)
    return 0


def load_frames(path: Path) -> list:
    """The recording's frames (still encoded) with the keys of the action each applied (client.replay)."""
    from spatia.client.replay import RecordedFrame
    from spatia.server.recording import action_keys, read_recording

    keys: dict[int, tuple[str, ...]] = {}
    frames = []
    for item in read_recording(path):
        if item.topic == "/action":
            keys[int(item.message.seq)] = action_keys(item.message)
        elif item.topic == "/frame":
            frames.append(RecordedFrame(item.message, keys.get(int(item.message.last_action_seq), ())))
    return frames


def watch(path: Path, world_id: str, fps: float = 0.0) -> None:
    import pygame

    from spatia.client.replay import ReplayViewer
    from spatia.server.recording import session_fps

    try:
        ReplayViewer(load_frames(path), fps or session_fps(path), world_id).run()
    finally:
        pygame.quit()
