"""Play session pieces without a network: PlayStart validation, actions, resuming the camera where it stopped."""

import math

import numpy as np
import pytest

from spatia.proto.spatia.v1 import world_pb2 as pb
from spatia.server.config import ServerConfig
from spatia.server.session import PlayOptions, action_from_proto
from spatia.world.actions import Action, ActionIntegrator, ControlConfig
from spatia.world.camera import look_at
from spatia.world.errors import InvalidInputError

CONFIG = ServerConfig()


def test_play_options_defaults():
    o = PlayOptions.from_proto(pb.PlayStart(world_id="w"), CONFIG)
    assert (o.width, o.height, o.fps, o.encoding, o.jpeg_quality) == (None, None, 16.0, pb.FRAME_ENCODING_JPEG, 85)
    assert (o.clip.first_clip_frames, o.clip.clip_frames, o.clip.preceding_frames) == (4, 6, 2)
    assert o.record and o.heartbeat_interval_s == 1.0 and o.max_pending_frames == 0


@pytest.mark.parametrize("start, words", [
    (pb.PlayStart(), "world_id"),
    (pb.PlayStart(world_id="w", resolution=pb.Resolution(width=0, height=10)), "at least 1x1"),
    (pb.PlayStart(world_id="w", resolution=pb.Resolution(width=5000, height=5000)), "max_image_pixels"),
    (pb.PlayStart(world_id="w", fps=-1), "fps"),
    (pb.PlayStart(world_id="w", fps=float("nan")), "fps"),
    (pb.PlayStart(world_id="w", jpeg_quality=101), "jpeg_quality"),
    (pb.PlayStart(world_id="w", encoding=17), "encoding"),
    (pb.PlayStart(world_id="w", clip=pb.ClipLengths(first_clip_frames=0, clip_frames=6, preceding_frames=2)),
     "first_clip_frames"),
    (pb.PlayStart(world_id="w", clip=pb.ClipLengths(first_clip_frames=4, clip_frames=2, preceding_frames=2)),
     "clip_frames"),
    (pb.PlayStart(world_id="w", heartbeat_interval_s=-1), "heartbeat_interval_s"),
])
def test_play_options_reject_bad_values_by_name(start, words):
    with pytest.raises(InvalidInputError, match=words):
        PlayOptions.from_proto(start, CONFIG)


@pytest.mark.parametrize("field, value", [("move_forward", float("nan")), ("move_right", 1.5),
                                          ("yaw_rate_rad_s", float("inf")), ("dt_s", -0.1), ("dt_s", 11.0)])
def test_bad_actions_are_named(field, value):
    with pytest.raises(InvalidInputError, match=field):
        action_from_proto(pb.Action(**{field: value}))


def test_action_fields_map_one_to_one():
    a = action_from_proto(pb.Action(move_forward=0.5, move_right=-0.25, move_up=1.0, yaw_rate_rad_s=0.1,
                                    pitch_rate_rad_s=-0.2, yaw_delta_rad=0.3, pitch_delta_rad=0.05, sprint=True,
                                    dt_s=0.1, seq=7))
    assert a == Action(0.5, -0.25, 1.0, 0.1, -0.2, 0.3, 0.05, True, 0.1, 7)


def test_integrator_resumes_exactly_where_play_stopped():
    """Reference: one integrator running through all actions; resumed: a new integrator from the pose reached."""
    origin = look_at(np.array([0.3, -1.2, -2.0]), np.array([0.0, -1.0, 1.0]))
    config = ControlConfig(fps=10)
    first = [Action(move_forward=1, yaw_rate_rad_s=0.7, pitch_rate_rad_s=0.4, dt_s=0.5)]
    second = [Action(move_forward=1, move_right=0.5, yaw_rate_rad_s=-0.3, dt_s=0.5)]
    reference = ActionIntegrator(origin, config)
    reference.run(first)
    expected = reference.run(second)
    stopped = ActionIntegrator(origin, config)
    stopped.run(first)
    resumed = ActionIntegrator.resumed(origin, stopped.c2w, config)
    assert math.isclose(resumed.pitch_rad, stopped.pitch_rad, abs_tol=1e-9)
    np.testing.assert_allclose(resumed.run(second), expected, atol=1e-9)


def test_integrator_falls_back_when_the_pose_has_roll():
    origin = np.eye(4)
    rolled = np.eye(4)
    c, s = math.cos(0.3), math.sin(0.3)
    rolled[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]  # roll about the optical axis
    integ = ActionIntegrator.resumed(origin, rolled, ControlConfig())
    np.testing.assert_allclose(integ.c2w, rolled, atol=1e-12)


def test_select_poses_skips_intermediate_poses_never_the_newest():
    from collections import deque

    from spatia.server.session import select_poses

    def pending(k):
        return deque((np.eye(4) * (i + 1), i + 1) for i in range(k))

    chunk, skipped = select_poses(pending(10), 4, None, None, 1 / 30)  # nothing measured: the newest n
    assert [s for _, s in chunk] == [7, 8, 9, 10] and skipped == 6
    chunk, skipped = select_poses(pending(3), 4, None, None, 1 / 30)
    assert [s for _, s in chunk] == [1, 2, 3] and skipped == 0
    # 10 ms per clip + 14 ms per frame at 30 fps: the worst action (2 x 10 + (m + 1) x 14 ms) within two frame
    # periods (66.7 ms) for m = 2
    chunk, skipped = select_poses(pending(10), 4, 0.010, 0.014, 1 / 30)
    assert [s for _, s in chunk] == [9, 10] and skipped == 8
    # at 60 fps even one frame cannot: one-frame clips of the newest pose (the least latency)
    chunk, skipped = select_poses(pending(10), 4, 0.010, 0.014, 1 / 60)
    assert [s for _, s in chunk] == [10] and skipped == 9
    # overloaded by per-clip overhead: also the newest pose alone (latency first; the frame rate drops)
    chunk, skipped = select_poses(pending(10), 4, 0.100, 0.010, 1 / 30)
    assert [s for _, s in chunk] == [10] and skipped == 9
    # keeping up: nothing skipped
    chunk, skipped = select_poses(pending(2), 4, 0.010, 0.014, 1 / 30)
    assert [s for _, s in chunk] == [1, 2] and skipped == 0


def test_outbox_is_bounded_for_a_client_that_never_reads():
    from spatia.server.session import Outbox

    box = Outbox(frame_capacity=8)
    for i in range(1000):
        box.put(("stats", i))
        box.put(("frame", i), is_frame=True)
    assert box.frames_queued == 8 and len(box._items) == 8 + box.max_other
    assert box.dropped == 992 and box.others_dropped == 1000 - box.max_other
    kept = [item for item, _ in box._items]
    assert ("stats", 999) in kept and ("frame", 999) in kept  # the newest of each kind stay

    lossless = Outbox(frame_capacity=2, lossless=True)
    for i in range(5):
        lossless.put(("frame", i), is_frame=True)
    assert lossless.frames_queued == 5 and lossless.dropped == 0  # lock-step: the producer waits instead
