"""The service-hardening fuzz tests (tests/test_fuzz_rpcs.py) against the Ray host (issue 12 section 3): the same
test functions, collected here with a ``fuzz_server`` whose worlds are Ray actors. Every answer must still be one
docs/API.md lists for its RPC, and no request may reach an unexpected exception in the front door or an actor (an
actor's unexpected exception would come back as INTERNAL).

One local Ray for the file (``ray.init(num_cpus=2, include_dashboard=False)``), shut down at the end; the flock
keeps it from running at the same time as the other Ray test files.
"""

from __future__ import annotations

import fcntl
import os
import tempfile

import grpc
import pytest

ray = pytest.importorskip("ray")

from spatia.proto.spatia.v1 import world_pb2 as pb  # noqa: E402
from spatia.proto.spatia.v1 import world_pb2_grpc as pb_grpc  # noqa: E402
from spatia.server import errors  # noqa: E402
from spatia.server.cluster import ClusterOptions  # noqa: E402
from spatia.server.config import Limits, ServerConfig  # noqa: E402
from spatia.server.testing import running_server  # noqa: E402
from test_fuzz_rpcs import (  # noqa: E402,F401 -- collected here, with this file's fuzz_server
    ANSWERS, test_fuzz_import, test_fuzz_play_streams, test_fuzz_server_streams, test_fuzz_unary,
)

pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    with open(os.path.join(tempfile.gettempdir(), "spatia-ray-tests.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        config = ServerConfig(data_dir=tmp_path_factory.mktemp("fuzz"), port=0, limits=Limits(
            max_worlds=16, max_sessions=4, max_image_pixels=64 * 48, max_trajectory_frames=8, frame_queue=4,
            max_import_bytes=1 << 20, max_message_bytes=4 << 20), cluster=ClusterOptions(
            world_cpus=0.1, lease_ttl_s=5.0, idle_exit_s=None, placement_timeout_s=60.0))
        try:
            with running_server(config) as st_:
                channel = grpc.insecure_channel(st_.target)
                stub = pb_grpc.WorldServiceStub(channel)
                for wid in ("w0", "w1"):
                    stub.CreateWorld(pb.CreateWorldRequest(world_id=wid, scene=pb.SceneSource(
                        name="room", resolution=pb.Resolution(width=32, height=24))))
                before = errors.ERROR_COUNTS["unexpected"]
                yield st_, stub
                channel.close()
                print("fuzz answers (ray):", ANSWERS)
                assert errors.ERROR_COUNTS["unexpected"] == before, "the server hit unexpected exceptions"
        finally:
            from spatia.server.ray_host import kill_world_actors

            kill_world_actors()
            ray.shutdown()
