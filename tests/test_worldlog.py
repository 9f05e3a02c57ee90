"""Incremental world snapshots (world/worldlog.py): exact round trip, only changed blocks written, tombstones, torn
and damaged records skipped (the newest intact commit wins), compaction, every memory array kept, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from spatia.model.geometric import GeometricGenerator
from spatia.world import worldlog
from spatia.world.actions import ClipConfig, out_and_back_path
from spatia.world.engine import Engine, EngineConfig
from spatia.world.errors import NotFoundError, SnapshotError
from spatia.world.memory import Sphere
from spatia.world.state import World
from spatia.world.worldlog import LOG_NAME, WorldLog, scan, split_memory

CLIPS = ClipConfig(first_clip_frames=8, clip_frames=10, preceding_frames=2)
ROOT = Path(__file__).resolve().parents[1]


def _played(frames: int = 21) -> World:
    world = World.from_scene("room", 0, 64, 48)
    engine = Engine(world, GeometricGenerator(), EngineConfig(clip=CLIPS, keyframe_stride=2))
    for _ in engine.generate(out_and_back_path(world.origin_c2w, frames)[1:]):
        pass
    return world


def _load_copy(directory: Path) -> World:
    """Load a copy of a world directory (loading cuts ``frames.bin`` back to the commit: not while a live world
    still appends to the original)."""
    import shutil

    copy = directory.parent / f"copy-{time.monotonic_ns()}"
    shutil.copytree(directory, copy)
    return WorldLog.load(copy)[0]


def _assert_same_world(a: World, b: World) -> None:
    ma, mb = a.memory.to_arrays(), b.memory.to_arrays()
    assert ma.keys() == mb.keys()
    oa, ob = np.argsort(ma["voxel_keys"]), np.argsort(mb["voxel_keys"])
    for name in ma:  # the same points (the order may differ: the loaded memory starts block-sorted)
        np.testing.assert_array_equal(ma[name][oa], mb[name][ob], err_msg=name)
    ha, hb = a.history.to_arrays(), b.history.to_arrays()
    for name in ha:
        if isinstance(ha[name], np.ndarray):
            np.testing.assert_array_equal(ha[name], hb[name], err_msg=name)
        else:
            assert ha[name] == hb[name], name
    assert a.info == b.info and a.intrinsics == b.intrinsics
    np.testing.assert_array_equal(a.current_c2w, b.current_c2w)
    np.testing.assert_array_equal(a.first_image, b.first_image)


def test_round_trip_after_play_is_exact_and_renders_the_same(tmp_path):
    world = _played(11)
    wlog = WorldLog(tmp_path / "w")
    wlog.write(wlog.prepare_save(world))
    back, _ = WorldLog.load(tmp_path / "w")
    _assert_same_world(world, back)
    K, T = world.intrinsics, world.history.get_pose(10)
    ra, rb = world.memory.render(K, T), back.memory.render(K, T)
    assert (ra.valid == rb.valid).mean() > 0.999 and np.abs(ra.depth_m - rb.depth_m).max() < 1e-6
    # the loaded world keeps playing and saving where it stopped
    back, wlog2 = WorldLog.load(tmp_path / "w")
    engine = Engine(back, GeometricGenerator(), EngineConfig(clip=CLIPS))
    n = len(back.history)
    for _ in engine.generate(out_and_back_path(back.current_c2w, 5)[1:]):
        pass
    wlog2.write(wlog2.prepare_save(back))
    again = _load_copy(tmp_path / "w")
    assert len(again.history) == n + 4
    _assert_same_world(back, again)


def test_a_save_writes_only_what_changed_with_tombstones_for_removed_blocks(tmp_path):
    world = _played()
    wlog = WorldLog(tmp_path / "w")
    first = wlog.write(wlog.prepare_save(world))
    assert first.blocks_written == len(split_memory(world.memory.to_arrays())) + 2  # + history chunk, first image
    nothing = wlog.write(wlog.prepare_save(world))
    # nothing changed: only a commit (its refs: ~30 bytes per block)
    assert nothing.blocks_written == 0 and nothing.blocks_removed == 0
    assert nothing.bytes_written < 40 * first.blocks_written + 1000
    # an edit in one corner: only the blocks it touches are written; blocks it empties get tombstones
    centre = world.memory.positions[np.argmin(world.memory.positions[:, 0])]
    removed = world.memory.remove(Sphere(centre, 0.5))
    assert removed > 0
    edit = wlog.write(wlog.prepare_save(world))
    assert 0 < edit.blocks_written < first.blocks_written / 4 and edit.blocks_removed > 0
    records, _, _ = scan((tmp_path / "w" / LOG_NAME).read_bytes())
    assert sum(r.kind == worldlog.TOMBSTONE for r in records) == edit.blocks_removed
    back, _ = WorldLog.load(tmp_path / "w")
    _assert_same_world(world, back)


def test_every_memory_array_is_kept_whatever_its_name():
    """A per-point array the memory may add (e.g. provenance) goes through blocks and back unchanged."""
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 1 << 62, 5000))
    arrays = {"voxel_keys": keys, "provenance": rng.integers(0, 3, keys.shape[0]).astype(np.uint8),
              "colors": rng.integers(0, 255, (keys.shape[0], 3)).astype(np.uint8)}
    blocks = split_memory(arrays)
    packed = [worldlog._unpack_arrays(worldlog._pack_arrays(b), k) for k, b in blocks.items()]
    back = worldlog._concat_memory(packed)
    order = np.argsort(back["voxel_keys"])
    for name in arrays:
        np.testing.assert_array_equal(back[name][order], arrays[name], err_msg=name)
    # digests follow content, not the order the points are held in
    perm = rng.permutation(keys.shape[0])
    shuffled = split_memory({k: v[perm] for k, v in arrays.items()})
    assert {k: worldlog._digest(v) for k, v in shuffled.items()} == {k: worldlog._digest(v) for k, v in blocks.items()}


def test_split_and_digests_match_the_reference():
    """The save's split (numba canonical keys, a stable sort, digests over row slices) gives the reference's blocks,
    arrays and digests, for points held in the memory's own block-major order and shuffled, across negative and
    positive coordinates."""
    from spatia.world import _memory_kernels as MK
    from spatia.world.geometry import pack_voxel_coords

    rng = np.random.default_rng(3)
    ijk = np.unique(rng.integers(-300, 300, (20000, 3)), axis=0)
    keys = pack_voxel_coords(ijk)
    held = np.argsort(MK.sort_keys(keys, 0, keys.shape[0]), kind="stable")  # how SpatialMemory holds them
    n = keys.shape[0]
    base = {"voxel_keys": keys, "voxel_offsets": rng.integers(0, 256, (n, 3)).astype(np.uint8),
            "colors": rng.integers(0, 256, (n, 3)).astype(np.uint8),
            "observation_count": rng.integers(0, 9, n).astype(np.uint16),
            "last_seen_frame": rng.integers(0, 99, n).astype(np.int32),
            "provenance": rng.integers(0, 3, n).astype(np.uint8)}
    np.testing.assert_array_equal(MK.log_block_keys(keys, worldlog.BLOCK_BITS), worldlog._canonical_keys(keys))
    for order in (held, rng.permutation(n)):
        arrays = {k: v[order] for k, v in base.items()}
        ref = worldlog.split_memory_reference(arrays)
        split = worldlog.MemoryBlocks.of(arrays)
        assert split.keys == list(ref) and len(ref) > 50
        for i, (key, digest) in enumerate(zip(split.keys, split.digests())):
            block = split.block(i)
            assert block.keys() == ref[key].keys()
            for name in block:
                np.testing.assert_array_equal(block[name], ref[key][name], err_msg=name)
            assert digest == worldlog._digest(ref[key]), key
        assert split_memory(arrays).keys() == ref.keys()
    empty = worldlog.MemoryBlocks.of({k: v[:0] for k, v in base.items()})
    assert empty.keys == [] and empty.digests() == [] and split_memory({k: v[:0] for k, v in base.items()}) == {}


def test_block_fingerprints_match_the_reference():
    """``MemoryBlocks.fingerprints`` (the compiled pass, words packed per row) equals its plain-Python twin, for the
    memory's arrays and for item sizes it does not use; another seed, a changed value, a value moved between two
    rows of a block or an array renamed changes a block's fingerprint and no other's."""
    rng = np.random.default_rng(5)
    n = 400
    arrays = {"voxel_keys": np.sort(rng.choice(2**40, n, replace=False)).astype(np.int64),
              "voxel_offsets": rng.integers(0, 256, (n, 3)).astype(np.uint8),
              "colors": rng.integers(0, 256, (n, 3)).astype(np.uint8),
              "observation_count": rng.integers(0, 9, n).astype(np.uint16),
              "last_seen_frame": rng.integers(-1, 99, n).astype(np.int32),
              "provenance": rng.integers(0, 3, n).astype(np.uint8),
              "odd": rng.integers(0, 256, (n, 5)).astype(np.uint8).view("V5").reshape(n)}  # item size 5: raw bytes
    starts = [0, 7, 150, 151, 390]
    split = worldlog.MemoryBlocks([f"m/{i}" for i in range(5)], starts, [*starts[1:], n], arrays)
    want = worldlog.reference_fingerprints(split, 123)
    got = split.fingerprints(123)
    np.testing.assert_array_equal(got, want)
    assert len({tuple(r) for r in got.tolist()}) == 5
    assert not (split.fingerprints(124) == got).all(axis=1).any()  # another seed: every block differs

    def changed(mutate) -> list[int]:
        copy = {k: v.copy() for k, v in arrays.items()}
        mutate(copy)
        other = worldlog.MemoryBlocks(split.keys, split.starts, split.stops, copy).fingerprints(123)
        return [i for i in range(5) if not (other[i] == got[i]).all()]

    assert changed(lambda a: a["colors"].__setitem__((100, 1), a["colors"][100, 1] ^ 1)) == [1]
    last = arrays["last_seen_frame"]
    assert changed(lambda a: a["last_seen_frame"].__setitem__([200, 201], last[[201, 200]] + [0, 1])) == [3]
    odd = arrays["odd"].view(np.uint8).reshape(n, 5)
    assert changed(lambda a: a["odd"].view(np.uint8).reshape(n, 5).__setitem__((150, 4), odd[150, 4] ^ 7)) == [2]
    swapped = {**arrays, "colors": arrays["colors"].copy()}
    swapped["colors"][[8, 9]] = arrays["colors"][[9, 8]]
    if not (arrays["colors"][8] == arrays["colors"][9]).all():
        assert changed(lambda a: a.__setitem__("colors", swapped["colors"])) == [1]
    renamed = {("hue" if k == "colors" else k): v for k, v in arrays.items()}
    other = worldlog.MemoryBlocks(split.keys, split.starts, split.stops, renamed).fingerprints(123)
    assert not (other == got).all(axis=1).any()


def test_a_save_digests_only_the_blocks_that_changed(tmp_path, monkeypatch):
    """A save whose blocks match the fingerprints of what the log holds digests none of them; a changed point gets
    its block digested and written, and the log loads the change; a log opened from disk digests every block once
    (its first save)."""
    world = _played()
    wlog = WorldLog(tmp_path / "w")
    wlog.write(wlog.prepare_save(world))
    digested = []
    digest = worldlog.MemoryBlocks.digest
    monkeypatch.setattr(worldlog.MemoryBlocks, "digest",
                        lambda self, i: digested.append(self.keys[i]) or digest(self, i))
    report = wlog.write(wlog.prepare_save(world))
    assert digested == [] and report.blocks_written == 0
    mem = world.memory
    point = np.flatnonzero(mem.provenance == 0)[:1]
    mem._colors[mem._rows_of_points(point)] ^= np.uint8(1)  # one observed point's colour, in place
    report = wlog.write(wlog.prepare_save(world))
    assert len(digested) == 1 and report.blocks_written == 1
    wlog.close()
    loaded, log2 = WorldLog.load(tmp_path / "w")
    _assert_same_world(world, loaded)
    digested.clear()
    log2.write(log2.prepare_save(loaded))
    assert len(digested) == len(worldlog.MemoryBlocks.of(loaded.memory.to_arrays()).keys) > 1
    log2.close()


def test_packing_with_a_reused_compressor_gives_the_same_bytes():
    """``_pack_arrays`` with one compressor for every block (and memoryviews into msgpack) writes the bytes a new
    compressor per block and copied raw bytes wrote."""
    import msgpack
    import zstandard

    def reference(arrays):
        doc = {n: [a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes()] for n, a in arrays.items()}
        return zstandard.ZstdCompressor(level=worldlog._ZSTD_LEVEL).compress(msgpack.packb(doc, use_bin_type=True))

    rng = np.random.default_rng(5)
    shared = zstandard.ZstdCompressor(level=worldlog._ZSTD_LEVEL)
    blocks = [{"voxel_keys": np.sort(rng.integers(0, 1 << 40, n)), "colors": rng.integers(0, 255, (n, 3), np.uint8),
               "flags": rng.integers(0, 2, n).astype(bool), "strided": rng.random((n, 4))[:, ::2]}
              for n in (0, 1, 700, 5000)]
    for arrays in blocks:
        assert worldlog._pack_arrays(arrays, shared) == reference(arrays) == worldlog._pack_arrays(arrays)


def _two_saves(tmp_path) -> tuple[World, World, int, int]:
    """A world saved, played on and saved again; returns (state at save 1, state at save 2, log end after save 1,
    log end after save 2)."""
    world = _played(11)
    wlog = WorldLog(tmp_path / "w")
    wlog.write(wlog.prepare_save(world))
    end1 = wlog.log_bytes
    snap1 = _load_copy(tmp_path / "w")
    engine = Engine(world, GeometricGenerator(), EngineConfig(clip=CLIPS))
    for _ in engine.generate(out_and_back_path(world.current_c2w, 5)[1:]):
        pass
    wlog.write(wlog.prepare_save(world))
    return snap1, world, end1, wlog.log_bytes


@pytest.mark.parametrize("cut", [0.3, 0.99])
def test_a_torn_append_is_skipped_and_the_previous_commit_loads(tmp_path, cut):
    snap1, world, end1, end2 = _two_saves(tmp_path)
    path = tmp_path / "w" / LOG_NAME
    os.truncate(path, end1 + int(cut * (end2 - end1)))  # the process died during the second save
    back, wlog = WorldLog.load(tmp_path / "w")
    _assert_same_world(snap1, back)
    # saving again cuts the torn tail off first, and the result loads
    engine = Engine(back, GeometricGenerator(), EngineConfig(clip=CLIPS))
    for _ in engine.generate(out_and_back_path(back.current_c2w, 5)[1:]):
        pass
    wlog.write(wlog.prepare_save(back))
    again = _load_copy(tmp_path / "w")
    _assert_same_world(back, again)


def test_a_damaged_record_is_skipped_and_an_older_complete_commit_wins(tmp_path):
    snap1, world, end1, end2 = _two_saves(tmp_path)
    path = tmp_path / "w" / LOG_NAME
    data = bytearray(path.read_bytes())
    data[end1 + 30] ^= 0xFF  # inside the first record of the second save
    path.write_bytes(bytes(data))
    records, _, skipped = scan(bytes(data))
    assert skipped == 1
    back, _ = WorldLog.load(tmp_path / "w")
    _assert_same_world(snap1, back)
    path.write_bytes(bytes(data[:50]))  # nothing complete left
    with pytest.raises(SnapshotError, match="no complete commit"):
        WorldLog.load(tmp_path / "w")
    with pytest.raises(NotFoundError):
        WorldLog.load(tmp_path / "nothing")


def test_the_log_is_compacted_and_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(worldlog, "COMPACT_MIN_BYTES", 0)
    world = _played(11)
    wlog = WorldLog(tmp_path / "w")
    compactions = 0
    for i in range(5):
        world.memory.recolor(Sphere(world.memory.positions[0], 100.0), (i * 25, 0, 0))  # every block changes
        report = wlog.write(wlog.prepare_save(world))
        compactions += report.compacted
        assert report.log_bytes <= 2 * report.live_bytes + 10_000
    assert compactions >= 1
    assert not list((tmp_path / "w").glob("*.tmp"))
    # a compaction a dead process left half-written is removed at load; one of a live process is not
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from spatia.world.snapshot import host_name

    stale = tmp_path / "w" / f".{LOG_NAME}.{host_name()}.{int(dead.stdout)}.compact.tmp"
    live = tmp_path / "w" / f".{LOG_NAME}.{host_name()}.{os.getppid()}.compact.tmp"
    legacy = tmp_path / "w" / f".{LOG_NAME}.{int(dead.stdout)}.compact.tmp"  # no host: kept until the lease ends
    stale.write_bytes(b"half")
    live.write_bytes(b"busy")
    legacy.write_bytes(b"old build")
    back, _ = WorldLog.load(tmp_path / "w")
    _assert_same_world(world, back)
    assert not stale.exists() and live.exists() and legacy.exists()


def test_an_older_plan_never_overwrites_a_newer_save(tmp_path):
    world = _played(11)
    wlog = WorldLog(tmp_path / "w")
    old = wlog.prepare_save(world)
    world.memory.remove(Sphere(world.memory.positions[0], 1.0))
    new = wlog.prepare_save(world)
    assert not wlog.write(new).skipped
    assert wlog.write(old).skipped
    back, _ = WorldLog.load(tmp_path / "w")
    _assert_same_world(world, back)


def test_a_world_from_an_old_single_file_snapshot_saves_incrementally(tmp_path):
    old, none = worldlog.open_world(ROOT / "tests" / "fixtures" / "v0" / "world_v0.spw")
    assert none is None
    wlog = WorldLog(tmp_path / "w")
    wlog.write(wlog.prepare_save(old))
    back, wlog2 = worldlog.open_world(tmp_path / "w")
    assert isinstance(wlog2, WorldLog)
    _assert_same_world(old, back)
    # and the single-file format (ExportWorld / ImportWorld) still round-trips a world loaded from a log
    back.save(tmp_path / "export.spw")
    _assert_same_world(old, World.load(tmp_path / "export.spw"))


_CHILD = textwrap.dedent("""
    import sys, time
    import structlog
    # the parent reads this process's stdout line by line: logs (fill threads log while a save is reported) go to
    # stderr, and each report is one write, so the two never interleave within a line
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from spatia.model.geometric import GeometricGenerator
    from spatia.world import worldlog
    from spatia.world.actions import ClipConfig, out_and_back_path
    from spatia.world.engine import Engine, EngineConfig
    from spatia.world.state import World

    directory, pause_in_write = sys.argv[1], sys.argv[2] == "1"
    if pause_in_write:  # the third save stops half-way through appending its records, until killed
        real = worldlog._pwrite_all
        def torn(fd, data, offset, calls=[0]):
            calls[0] += 1
            if calls[0] == 3:
                real(fd, data[: len(data) // 2], offset)
                sys.stdout.write("mid-write\\n"); sys.stdout.flush()
                time.sleep(60)
            real(fd, data, offset)
        worldlog._pwrite_all = torn
    world = World.from_scene("room", 0, 64, 48)
    wlog = worldlog.WorldLog(directory)
    engine = Engine(world, GeometricGenerator(), EngineConfig(clip=ClipConfig(8, 10, 2)))
    while True:
        wlog.write(wlog.prepare_save(world))
        sys.stdout.write(f"saved {len(world.history)}\\n"); sys.stdout.flush()
        for _ in engine.generate(out_and_back_path(world.current_c2w, 9)[1:]):
            pass
""")


@pytest.mark.parametrize("moment", ["after-first-save", "between-saves", "during-a-save"])
def test_kill_9_loses_at_most_what_came_after_the_last_complete_save(tmp_path, moment):
    """Loss bound: the loaded world is exactly the last save that completed (frames and memory) at any kill."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "w"), "1" if moment == "during-a-save"
                             else "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    saved: list[int] = []
    try:
        want = {"after-first-save": 1, "between-saves": 2, "during-a-save": None}[moment]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"child exited: {proc.stderr.read()[-2000:]}")
            if line.startswith("saved"):
                saved.append(int(line.split()[1]))
                if want is not None and len(saved) == want:
                    if moment == "between-saves":
                        time.sleep(0.2)  # while it plays the next clip
                    break
            elif line.startswith("mid-write"):
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        saved += [int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("saved")]
    finally:
        if proc.poll() is None:
            proc.kill()
    world, _ = WorldLog.load(tmp_path / "w")
    if moment == "during-a-save":
        assert len(world.history) == saved[-1]  # the last completed save, nothing of the torn one
    else:  # the last save reported, or one that completed just before the kill without getting to report
        assert len(world.history) in (saved[-1], saved[-1] + 8)
    for i in (0, len(world.history) - 1):
        assert world.history.get_rgb(i).shape == (48, 64, 3)  # frames readable up to the committed one
