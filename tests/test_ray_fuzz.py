"""The service-hardening fuzz tests (tests/test_fuzz_rpcs.py) against the Ray host (issue 12 section 3): the same
test functions, collected here with a ``fuzz_server`` whose worlds are Ray actors. Every answer must still be one
docs/API.md lists for its RPC, and no request may reach an unexpected exception in the front door or an actor (an
actor's unexpected exception would come back as INTERNAL).

One local Ray for the file (``ray.init(num_cpus=2, include_dashboard=False)``), shut down at the end; the Ray
tests' lock (tests/conftest.py) keeps it from running at the same time as the other Ray test files.
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from spatia.server.cluster import ClusterOptions  # noqa: E402
from spatia.server.config import ServerConfig  # noqa: E402
from test_fuzz_rpcs import (  # noqa: E402,F401 -- collected here, with this file's fuzz_server
    FUZZ_LIMITS, serving_for_fuzz, test_fuzz_import, test_fuzz_play_streams, test_fuzz_server_streams,
    test_fuzz_unary,
)

pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, ray_tests_lock):
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("fuzz"), port=0, limits=FUZZ_LIMITS, cluster=ClusterOptions(
        world_cpus=0.1, lease_ttl_s=5.0, idle_exit_s=None, placement_timeout_s=60.0))
    try:
        with serving_for_fuzz(config, " (ray)") as s:
            yield s
    finally:  # the server closed first (its Play graphs torn down), then the world actors, then Ray
        from spatia.server.ray_host import kill_world_actors

        try:
            kill_world_actors()
        finally:  # nothing of this process may call into Ray after this: Ray ends a process that does
            ray.shutdown()
