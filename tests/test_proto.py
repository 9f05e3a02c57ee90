"""The committed generated modules match the .proto, and the contract keeps its documented shape."""

import filecmp

from spatia.proto import generate as gen
from spatia.proto.spatia.v1 import world_pb2


def test_generated_code_is_up_to_date(tmp_path):
    written = gen.generate(tmp_path)
    assert {p.name for p in written} == {"world_pb2.py", "world_pb2.pyi", "world_pb2_grpc.py"}
    for fresh in written:
        committed = gen.PROTO_DIR / fresh.name
        assert committed.is_file(), f"{committed} is not committed; run python -m spatia.proto.generate"
        assert filecmp.cmp(fresh, committed, shallow=False), f"{committed.name} is stale; run python -m spatia.proto.generate"


def test_service_has_every_rpc_of_the_issue():
    service = world_pb2.DESCRIPTOR.services_by_name["WorldService"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {
        "CreateWorld": (False, False), "GetWorld": (False, False), "ListWorlds": (False, False),
        "DeleteWorld": (False, False), "Play": (True, True), "Generate": (False, True), "Render": (False, False),
        "Edit": (False, False), "ExportWorld": (False, True), "ImportWorld": (True, False),
        "ListRecordings": (False, False), "Replay": (False, True),
    }

