"""Prometheus metrics (server/metrics.py): scraped over HTTP during a real Play session and after it."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spatia.client.api import WorldClient, WorldServiceError
from spatia.server.config import Limits, ServerConfig
from spatia.server.testing import running_server


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one /metrics scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), port=0, metrics_port=0,
                          limits=Limits(max_image_pixels=320 * 240))
    with running_server(config) as st:
        yield st


def test_metrics_during_and_after_a_play_session(server):
    port = server.server.metrics.port
    assert port
    with WorldClient(server.target) as c:
        info = c.create_scene("room", 0, 64, 48)
        with pytest.raises(WorldServiceError):
            c.get_world("no-such-world")
        # every pose kept (max_pending_frames): a slow first clip must not make the later ones skip poses
        session = c.play(info.world_id, clip=(2, 2, 1), fps=16.0, max_pending_frames=32)
        for _ in range(6):
            session.send(move_forward=1.0, dt_s=1 / 16)
        frames = [session.next_frame(timeout_s=60) for _ in range(4)]
        assert all(f is not None for f in frames)
        during = scrape(port)  # the session is still open
        rest = session.close()

    assert value(during, "spatia_play_sessions") == 1
    assert value(during, "spatia_live_sessions") == 1
    assert value(during, "spatia_world_controlled", world_id=info.world_id) == 1
    assert value(during, "spatia_world_memory_points", world_id=info.world_id) > 1000
    assert value(during, "spatia_world_history_frames", world_id=info.world_id) >= 1
    # the queue-depth gauges exist for the running session
    assert any(n == "spatia_session_outbox_frames" and dict(ls)["world_id"] == info.world_id for n, ls in during)
    assert any(n == "spatia_session_pending_actions" for n, _ in during)
    assert value(during, "spatia_frames_served_total", grpc_method="Play") >= 4
    assert value(during, "grpc_server_started_total", grpc_method="Play", grpc_type="bidi_stream") == 1

    after = scrape(port)
    assert value(after, "spatia_play_sessions") == 0 and value(after, "spatia_live_sessions") == 0
    assert value(after, "spatia_frames_served_total", grpc_method="Play") == 4 + len(rest) == 6  # one per pose
    assert value(after, "spatia_clip_generate_seconds_count") >= 2  # one stats message per clip
    assert value(after, "spatia_clip_update_seconds_sum") > 0
    assert value(after, "grpc_server_handled_total", grpc_method="CreateWorld", grpc_code="OK") == 1
    assert value(after, "grpc_server_handled_total", grpc_method="GetWorld", grpc_code="NOT_FOUND") == 1
    assert value(after, "grpc_server_handled_total", grpc_method="Play", grpc_code="OK") == 1
    assert value(after, "grpc_server_handling_seconds_count", grpc_method="Play") == 1
    assert value(after, "grpc_server_handling_seconds_sum", grpc_method="Play") > 0
    assert value(after, "spatia_world_last_save_seconds", world_id=info.world_id) > 0  # saved at session end
    if callable(getattr(server.server, "stats", None)):  # the counters a WorldServer keeps for metrics
        assert value(after, "spatia_sessions_started_total") == value(after, "spatia_sessions_ended_total") == 1
        assert value(after, "spatia_server_frames_served_total") == 6
        assert value(after, "spatia_world_saves_total", world_id=info.world_id) >= 1


def test_metrics_port_in_use_names_the_flag(tmp_path, server):
    from spatia.server.metrics import ServerMetrics
    from spatia.world.errors import InvalidInputError

    m = ServerMetrics(server.server)
    with pytest.raises(InvalidInputError, match="--metrics-port"):
        m.serve_http("127.0.0.1", server.server.metrics.port)
