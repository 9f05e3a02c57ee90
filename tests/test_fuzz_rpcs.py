"""Property / fuzz test over every RPC, Play streams included (issue 11 section 3).

Requests are built by ``hypothesis`` strategies derived from the message descriptors (every field, every oneof,
nested messages to a bounded depth) with hostile values mixed in: NaN, infinities, huge and negative numbers,
empty / unicode / path-like / over-long ids, garbage and oversized bytes, unknown enum values. Play streams are
sequences of starts, actions, prompt changes and half-closes. Every answer must be OK or one of the codes
docs/API.md lists for that RPC ("Codes per RPC"), and the server's own count of unexpected exceptions
(``errors.ERROR_COUNTS["unexpected"]``) must stay 0.

CI budget: derandomised, ``FUZZ_EXAMPLES`` examples per RPC (default 20: 240 in all; 20-47 s on the shared 2 cores);
``benchmarks/fuzz.py`` runs the same with many more.
"""

from __future__ import annotations

import contextlib

import os
import re
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.proto.spatia.v1 import world_pb2_grpc as pb_grpc
from spatia.server import errors
from spatia.server.config import Limits, ServerConfig
from spatia.server.testing import running_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
CALL_TIMEOUT_S = 30.0
WORLD_IDS = ["w0", "w1", "w2", "c0", "missing"]  # w0, w1 exist at start; the fuzz may delete / create the others
PLY = (b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
       b"property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
       b"0 0 1 255 0 0\n0.1 0 1 0 255 0\n0 0.1 1.2 0 0 255\n")

ALWAYS = {"OK", "UNAUTHENTICATED", "UNAVAILABLE"}  # any RPC (docs/API.md); RESOURCE_EXHAUSTED listed per RPC


def allowed_codes() -> dict[str, set[str]]:
    """The per-RPC table of docs/API.md ("Codes per RPC")."""
    text = (ROOT / "docs" / "API.md").read_text()
    section = text[text.index("### Codes per RPC"):]
    table = {}
    for m in re.finditer(r"^\| `(\w+)` \| ([A-Z_, ]+) \|$", section, re.M):
        table[m.group(1)] = {c.strip() for c in m.group(2).split(",")} | ALWAYS | {"RESOURCE_EXHAUSTED"}
    return table


# ---- strategies from descriptors -----------------------------------------------------------------------------

HOSTILE_TEXT = st.sampled_from([
    "", " ", "..", "../../etc/passwd", "/abs/path", "a/b", "C:\\x", "é漢字🙂", "\x00", "x" * 300, "w0/../w1",
    ".hidden", "-dash", "w0 ", "%s%n", "${HOME}",
])
HOSTILE_FLOAT = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 0.0, -0.0, 1e-320,
                                 -1.0, 1e9])
PNG_HEADER = b"\x89PNG\r\n\x1a\n"
HOSTILE_BYTES = st.sampled_from([b"", b"\x00", PNG_HEADER + b"garbage", b"ply\nformat ascii 1.0\nend_header\n",
                                 b"\x93NUMPY" + b"\x00" * 20, b"\xff\xd8\xff" + b"\x00" * 100, os.urandom(4096)])
INT_RANGES = {
    FD.TYPE_INT32: (-2**31, 2**31 - 1), FD.TYPE_SINT32: (-2**31, 2**31 - 1), FD.TYPE_SFIXED32: (-2**31, 2**31 - 1),
    FD.TYPE_INT64: (-2**63, 2**63 - 1), FD.TYPE_SINT64: (-2**63, 2**63 - 1), FD.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def _ints(lo: int, hi: int):
    edges = [v for v in (lo, hi, 0, 1, -1, 2, 16, 64, 100, 1000, 5000) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -100), min(hi, 100)), st.integers(lo, hi))


def _mostly(valid, hostile):
    """Three draws in four from ``valid``, one from ``hostile``: deep paths get reached, edges still hit."""
    return st.integers(0, 3).flatmap(lambda i: hostile if i == 0 else valid)


def _scalar(field: FD):
    name = field.name
    t = field.type
    if t == FD.TYPE_STRING:
        if name.endswith("_id"):
            return _mostly(st.sampled_from(WORLD_IDS), st.one_of(HOSTILE_TEXT, st.text(max_size=20)))
        if name == "name":
            return _mostly(st.sampled_from(["room", "house", "courtyard"]), st.one_of(HOSTILE_TEXT, st.just("nope")))
        return st.one_of(st.text(max_size=30), HOSTILE_TEXT)
    if t == FD.TYPE_BYTES:
        if name == "ply":
            return _mostly(st.just(PLY), st.one_of(HOSTILE_BYTES, st.binary(max_size=256)))
        return st.one_of(HOSTILE_BYTES, st.binary(max_size=256))
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        finite = st.floats(-3, 3, allow_nan=False, width=64 if t == FD.TYPE_DOUBLE else 32)
        hostile = HOSTILE_FLOAT if t == FD.TYPE_DOUBLE else HOSTILE_FLOAT.map(lambda v: 0.0 if abs(v) > 3e38 else v)
        return _mostly(finite, hostile)
    if t == FD.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return _mostly(st.sampled_from(values), st.sampled_from([-1, 99, 2**31 - 1]))
    if t in INT_RANGES:
        lo, hi = INT_RANGES[t]
        if name in ("width", "height"):
            return _mostly(st.sampled_from([16, 24, 32, 48]), st.one_of(st.sampled_from([0, 1, 5000]), _ints(lo, hi)))
        if name in ("first_clip_frames", "clip_frames", "preceding_frames", "max_pending_frames", "page_size",
                    "start_frame", "jpeg_quality", "r", "g", "b"):
            return _mostly(st.integers(0, 8), _ints(lo, hi))
        return _ints(lo, hi)
    raise AssertionError(f"unhandled field type {t} of {field.full_name}")


def _valid_pose():
    return st.sampled_from([[1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
                            [1.0, 0, 0, 0.1, 0, 1, 0, 0, 0, 0, 1, 0.2, 0, 0, 0, 1]])


def message_strategy(descriptor, depth: int = 0):
    """A strategy for ``descriptor``'s messages: each field set or not; one member per oneof at most."""

    @st.composite
    def build(draw):
        msg = _class_of(descriptor)()
        oneof_fields = {f.name for o in descriptor.oneofs for f in o.fields}
        for o in descriptor.oneofs:
            choice = draw(st.sampled_from([None] + [f.name for f in o.fields]))
            if choice is not None:
                _set(draw, msg, descriptor.fields_by_name[choice], depth)
        for field in descriptor.fields:
            if field.name in oneof_fields:
                continue
            if draw(st.integers(0, 3)) == 0 and not field.name.endswith("world_id"):  # mostly set
                continue
            _set(draw, msg, field, depth)
        return msg

    return build()


def _class_of(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def _set(draw, msg, field: FD, depth: int) -> None:
    repeated = field.is_repeated
    if field.type == FD.TYPE_MESSAGE:
        if depth >= 4:
            return
        if repeated:
            n = draw(st.integers(0, 3))
            for _ in range(n):
                getattr(msg, field.name).add().CopyFrom(draw(message_strategy(field.message_type, depth + 1)))
        else:
            getattr(msg, field.name).CopyFrom(draw(message_strategy(field.message_type, depth + 1)))
        return
    if repeated:
        if field.name in ("c2w",):
            values = draw(_mostly(_valid_pose(), st.lists(_scalar(field), max_size=17)))
        else:
            values = draw(st.lists(_scalar(field), max_size=10))
        getattr(msg, field.name).extend(values)
        return
    setattr(msg, field.name, draw(_scalar(field)))


def _valid_baselines():
    """Well-formed requests (fuzzed ids and sizes) so that the paths past validation run too."""
    pose = pb.Pose(c2w=[1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1])
    wid = st.sampled_from(WORLD_IDS)
    return {
        "CreateWorldRequest": st.builds(lambda w, n, seed, wh: pb.CreateWorldRequest(world_id=w, scene=pb.SceneSource(
            name=n, seed=seed, resolution=pb.Resolution(width=wh[0], height=wh[1]))),
            st.sampled_from(["w2", "c0", ""]), st.sampled_from(["room", "house", "courtyard"]), st.integers(0, 3),
            st.sampled_from([(16, 12), (32, 24), (64, 48)])),
        "RenderRequest": st.builds(lambda w: pb.RenderRequest(world_id=w, pose=pose), wid),
        "GenerateRequest": st.builds(lambda w, n, c: pb.GenerateRequest(
            world_id=w, trajectory=pb.Trajectory(poses=[pose] * n),
            clip=pb.ClipLengths(first_clip_frames=c[0], clip_frames=c[1], preceding_frames=c[2])),
            wid, st.integers(1, 4), st.sampled_from([(1, 2, 1), (2, 3, 1), (4, 6, 2)])),
    }


BASELINES = _valid_baselines()


def strategy(name: str):
    fuzzed = message_strategy(pb.DESCRIPTOR.message_types_by_name[name])
    return st.one_of(fuzzed, BASELINES[name]) if name in BASELINES else fuzzed


# ---- the server ----------------------------------------------------------------------------------------------

FUZZ_LIMITS = Limits(max_worlds=16, max_sessions=4, max_image_pixels=64 * 48, max_trajectory_frames=8, frame_queue=4,
                     max_import_bytes=1 << 20, max_message_bytes=4 << 20)


@contextlib.contextmanager
def serving_for_fuzz(config: ServerConfig, label: str):
    """A real server with two small worlds; on exit, checks that no fuzzed request hit an unexpected exception."""
    with running_server(config) as st_:
        channel = grpc.insecure_channel(st_.target)
        stub = pb_grpc.WorldServiceStub(channel)
        for wid in ("w0", "w1"):
            stub.CreateWorld(pb.CreateWorldRequest(world_id=wid, scene=pb.SceneSource(
                name="room", resolution=pb.Resolution(width=32, height=24))))
        before = errors.ERROR_COUNTS["unexpected"]
        yield st_, stub
        channel.close()
        print(f"fuzz answers{label}:", ANSWERS)
        assert errors.ERROR_COUNTS["unexpected"] == before, "the server hit unexpected exceptions"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("fuzz"), port=0, limits=FUZZ_LIMITS)
    with serving_for_fuzz(config, "") as s:
        yield s


CODES = allowed_codes()
FUZZ = settings(max_examples=EXAMPLES, derandomize=not os.environ.get("FUZZ_RANDOM"), deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


ANSWERS: dict[str, dict[str, int]] = {}  # rpc -> code name -> count (benchmarks/fuzz.py reports it)


def _check(rpc: str, code: grpc.StatusCode, details: str = "") -> None:
    counts = ANSWERS.setdefault(rpc, {})
    counts[code.name] = counts.get(code.name, 0) + 1
    assert code.name in CODES[rpc], f"{rpc} answered {code.name} ({details[:200]}), not in docs/API.md"
    assert code is not grpc.StatusCode.INTERNAL, f"{rpc}: INTERNAL {details}"


def _unary(stub, rpc: str, request) -> None:
    before = errors.ERROR_COUNTS["unexpected"]
    try:
        getattr(stub, rpc)(request, timeout=CALL_TIMEOUT_S)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    _check(rpc, code, details)
    assert errors.ERROR_COUNTS["unexpected"] == before, f"{rpc}: unexpected exception for {request!r:.300}"


def _server_stream(stub, rpc: str, request, max_items: int = 50) -> None:
    before = errors.ERROR_COUNTS["unexpected"]
    call = getattr(stub, rpc)(request, timeout=CALL_TIMEOUT_S)
    code, details = grpc.StatusCode.OK, ""
    try:
        for i, _ in enumerate(call):
            if i >= max_items:
                call.cancel()
                break
    except grpc.RpcError as exc:
        if exc.code() is not grpc.StatusCode.CANCELLED:
            code, details = exc.code(), exc.details() or ""
    _check(rpc, code, details)
    assert errors.ERROR_COUNTS["unexpected"] == before, f"{rpc}: unexpected exception for {request!r:.300}"


@pytest.mark.parametrize("rpc, message", [
    ("CreateWorld", "CreateWorldRequest"), ("GetWorld", "GetWorldRequest"), ("ListWorlds", "ListWorldsRequest"),
    ("Render", "RenderRequest"), ("Edit", "EditRequest"), ("ListRecordings", "ListRecordingsRequest"),
    ("DeleteWorld", "DeleteWorldRequest"),
])
def test_fuzz_unary(fuzz_server, rpc, message):
    _, stub = fuzz_server

    @FUZZ
    @given(strategy(message))
    def run(request):
        if rpc == "DeleteWorld" and request.world_id in ("w0", "w1"):
            return  # keep the shared worlds for the other RPCs (deleting them is fuzzed on w2)
        _unary(stub, rpc, request)

    run()


@pytest.mark.parametrize("rpc, message", [("Generate", "GenerateRequest"), ("ExportWorld", "ExportWorldRequest"),
                                          ("Replay", "ReplayRequest")])
def test_fuzz_server_streams(fuzz_server, rpc, message):
    _, stub = fuzz_server

    @FUZZ
    @given(strategy(message))
    def run(request):
        _server_stream(stub, rpc, request)

    run()


def test_fuzz_import(fuzz_server):
    _, stub = fuzz_server
    good = b"".join(c.data for c in stub.ExportWorld(pb.ExportWorldRequest(world_id="w0")))

    @FUZZ
    @given(strategy("ImportHeader"), st.lists(st.one_of(strategy("DataChunk"), st.just(None)), max_size=4),
           st.booleans(), st.booleans())
    def run(header, chunks, header_first, use_good):
        msgs = [pb.ImportWorldRequest(header=header)] if header_first else []
        if use_good:
            msgs.append(pb.ImportWorldRequest(chunk=pb.DataChunk(data=good, offset=0, total_bytes=len(good))))
        for c in chunks:
            msgs.append(pb.ImportWorldRequest(header=header) if c is None else pb.ImportWorldRequest(chunk=c))
        before = errors.ERROR_COUNTS["unexpected"]
        try:
            info = stub.ImportWorld(iter(msgs), timeout=CALL_TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
            if info.world_id not in ("w0", "w1"):
                stub.DeleteWorld(pb.DeleteWorldRequest(world_id=info.world_id))  # keep max_worlds from filling
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        _check("ImportWorld", code, details)
        assert errors.ERROR_COUNTS["unexpected"] == before

    run()


def _play_messages():
    start = _mostly(st.builds(lambda w, lock, rec: pb.PlayStart(
        world_id=w, lockstep=lock, no_recording=not rec, resolution=pb.Resolution(width=32, height=24)),
        st.sampled_from(["w0", "w1", "w0", "missing"]), st.booleans(), st.booleans()), strategy("PlayStart"))
    valid_action = st.builds(
        lambda f, y, dt, s: pb.PlayRequest(action=pb.Action(move_forward=f, yaw_rate_rad_s=y, dt_s=dt, seq=s)),
        st.floats(-1, 1), st.floats(-2, 2), st.sampled_from([0.0, 0.02, 0.1, 0.5]), st.integers(0, 50))
    item = _mostly(st.one_of(valid_action, strategy("PromptChange").map(lambda p: pb.PlayRequest(prompt=p))),
                   st.one_of(strategy("Action").map(lambda a: pb.PlayRequest(action=a)),
                             strategy("PlayStart").map(lambda s: pb.PlayRequest(start=s)),
                             st.just(pb.PlayRequest())))
    return st.tuples(_mostly(st.just(True), st.just(False)), start, st.lists(item, max_size=6), st.booleans())


def test_fuzz_play_streams(fuzz_server):
    """Sequences of start / actions / prompts / stray starts / empty requests, then a half-close or a cancel."""
    _, stub = fuzz_server

    @FUZZ
    @given(_play_messages())
    def run(case):
        with_start, start, items, half_close = case
        msgs = ([pb.PlayRequest(start=start)] if with_start else []) + items
        done = threading.Event()

        def requests():
            yield from msgs
            if not half_close:
                done.wait(2.0)  # keep the stream open: the client cancels below

        before = errors.ERROR_COUNTS["unexpected"]
        call = stub.Play(requests(), timeout=CALL_TIMEOUT_S)
        code, details = grpc.StatusCode.OK, ""
        t0 = time.monotonic()
        try:
            for _ in call:
                if time.monotonic() - t0 > 1.5:
                    call.cancel()
                    break
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                code, details = exc.code(), exc.details() or ""
        finally:
            done.set()
        _check("Play", code, details)
        assert errors.ERROR_COUNTS["unexpected"] == before

    run()
