"""The committed generated modules match the .proto, and the contract keeps its documented shape."""

import filecmp
import re
import tomllib
from pathlib import Path

from spatia.proto import generate as gen
from spatia.proto.spatia.v1 import world_pb2


def test_generated_code_is_up_to_date(tmp_path):
    written = gen.generate(tmp_path)
    assert {p.name for p in written} == {"world_pb2.py", "world_pb2.pyi", "world_pb2_grpc.py"}
    for fresh in written:
        committed = gen.PROTO_DIR / fresh.name
        assert committed.is_file(), f"{committed} is not committed; run python -m spatia.proto.generate"
        assert filecmp.cmp(fresh, committed, shallow=False), f"{committed.name} is stale; run python -m spatia.proto.generate"


def _requirement(requirements: list[str], name: str) -> str:
    """The version spec of ``name`` in a pyproject requirement list (``"grpcio>=1.85.1"`` -> ``">=1.85.1"``)."""
    specs = [r.split("#")[0].strip() for r in requirements if re.match(rf"{re.escape(name)}\b(?![-.\w])", r)]
    assert len(specs) == 1, f"{name} is listed {len(specs)} times"
    return specs[0][len(name):]


def test_declared_versions_are_what_the_generated_code_demands():
    """The generated modules refuse to import under an older grpcio / protobuf than the generator's, so the
    runtime floors must be at least those, and the generator pin must be what wrote the committed modules."""
    pyproject = tomllib.loads((Path(gen.ROOT) / "pyproject.toml").read_text())
    core, extras = pyproject["project"]["dependencies"], pyproject["project"]["optional-dependencies"]
    grpc_src = (gen.PROTO_DIR / "world_pb2_grpc.py").read_text()
    grpc_generated = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_src).group(1)
    pb_src = (gen.PROTO_DIR / "world_pb2.py").read_text()
    major, minor, patch = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
        pb_src).groups()
    assert _requirement(extras["test"], "grpcio-tools") == f"=={grpc_generated}"
    for name in ("grpcio", "grpcio-status", "grpcio-health-checking"):
        assert _requirement(core, name) == f">={grpc_generated}", name
    assert _requirement(extras["server"], "grpcio-reflection") == f">={grpc_generated}"
    assert _requirement(core, "protobuf") == f">={major}.{minor}.{patch}"


def test_service_has_every_rpc_of_the_issue():
    service = world_pb2.DESCRIPTOR.services_by_name["WorldService"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {
        "CreateWorld": (False, False), "GetWorld": (False, False), "ListWorlds": (False, False),
        "DeleteWorld": (False, False), "Play": (True, True), "Generate": (False, True), "Render": (False, False),
        "Edit": (False, False), "ExportWorld": (False, True), "ImportWorld": (True, False),
        "ListRecordings": (False, False), "Replay": (False, True),
    }



def test_frames_decode_as_encoded_and_bad_bytes_name_the_problem():
    """``decode_frame`` (the clients' frame path, OpenCV) reads what ``encode_image`` (the server, PIL) wrote: PNG and
    raw exactly, JPEG as PIL reads it; bytes that are no image raise a ValueError that says so."""
    import io

    import numpy as np
    import pytest
    from PIL import Image

    from spatia.proto.spatia.v1.convert import decode_frame, encode_image

    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8), 4, 0), 4, 1)  # [48, 80, 3]
    for encoding in (world_pb2.FRAME_ENCODING_PNG, world_pb2.FRAME_ENCODING_RAW, world_pb2.FRAME_ENCODING_JPEG):
        data = encode_image(rgb, encoding, 85)
        frame = world_pb2.Frame(encoding=encoding, width=80, height=48, data=data)
        got = decode_frame(frame)
        want = rgb if encoding != world_pb2.FRAME_ENCODING_JPEG else np.asarray(Image.open(io.BytesIO(data)))
        assert got.dtype == np.uint8 and got.shape == (48, 80, 3)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="not a JPEG or PNG image"):
        decode_frame(world_pb2.Frame(encoding=world_pb2.FRAME_ENCODING_JPEG, width=80, height=48, data=b"\xff\xd8junk"))
