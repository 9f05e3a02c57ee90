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

