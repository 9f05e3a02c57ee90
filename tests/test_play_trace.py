"""benchmarks/play.py --trace: the summary splits a session's start-up from its steady play, and reads a trace
file only once the server has finished writing it."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _play():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import play

    return play


def _rows(clip_starts: list[float], gen_ms: float) -> list[dict]:
    rows = []
    for t in clip_starts:
        rows.append({"kind": "clip", "start": t, "end": t + gen_ms / 1e3, "generate_s": gen_ms / 1e3, "update_s": 0.001,
                     "frames": 1, "skipped": 0})
    for k, t in enumerate(clip_starts):
        g = t + gen_ms / 1e3
        rows.append({"kind": "frame", "seq": k, "clip": k, "received": t - 0.001, "integrated": t, "clip_start": t,
                     "generated": g, "encoded": g + 0.002, "queued": g + 0.002, "sent": g + 0.003})
    return rows


def test_the_trace_summary_splits_start_up_and_steady_play(tmp_path):
    play = _play()
    # a slow start (frames of 400 ms until 2 s) then 20 ms frames: the split puts each in its own part
    starts = [0.0, 0.4, 0.8, 1.2, 1.6] + [2.0 + 0.05 * i for i in range(100)]
    rows = _rows(starts[:5], 400.0) + _rows(starts[5:], 20.0)
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = play._trace_summary([path])
    first, after = out[f"first_{play.STEADY_S:g}s"], out[f"after_{play.STEADY_S:g}s"]
    assert out["frames"] == 105 and first["frames"] + after["frames"] == 105
    assert first["clip"]["generate"]["p95"] == 400.0  # ms
    assert after["clip"]["generate"]["p95"] == 20.0
    assert after["frames"] == sum(1 for t in starts if t + 0.02 >= play.STEADY_S)


def test_a_trace_is_read_once_its_writer_is_done(tmp_path):
    """A file that is still growing when it appears (the server writes it after the session) is read whole."""
    play = _play()
    rows = _rows([0.1 * i for i in range(50)], 20.0)
    path = tmp_path / "trace" / "a.jsonl"
    path.parent.mkdir()

    def write_slowly():
        with open(path, "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                time.sleep(0.01)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    while not path.exists():
        time.sleep(0.001)
    keep = tmp_path / "kept"
    got = play._collect_traces(path.parent, set(), 1, str(keep), "layout-r0")
    writer.join()
    assert got == [path]
    # the copy taken when it returned holds every row the writer wrote
    assert len((keep / "layout-r0-a.jsonl").read_text().splitlines()) == len(rows)
