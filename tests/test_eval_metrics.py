"""Evaluation metrics: LPIPS vs a plain reference (random weights in tmp files), Match Accuracy (ratio test vs a
brute-force reference, self / related / unrelated images), camera-control errors on exact procedural renders."""

import math

import numpy as np
import pytest

from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError, NotFoundError


def _images(h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    base = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
    a = np.kron(base, np.ones((8, 8, 1), np.uint8))  # blocky texture: real structure at every LPIPS tap
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    return a, b


@pytest.fixture(scope="module", params=["alex", "vgg"])
def lpips_files(request, tmp_path_factory):
    torch = pytest.importorskip("torch")
    from spatia.model.eval.lpips import LPIPSNet

    torch.manual_seed(0)
    net = LPIPSNet(request.param)
    state = net.state_dict()
    for k in state:
        if k.startswith("lin"):
            state[k] = state[k].abs()  # trained LPIPS heads are non-negative
    d = tmp_path_factory.mktemp(f"lpips_{request.param}")
    backbone = {k: v for k, v in state.items() if k.startswith("features.")}
    backbone["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision files carry a classifier: ignored
    heads = {k: v for k, v in state.items() if k.startswith("lin")}
    torch.save(backbone, d / "backbone.pth")
    torch.save(heads, d / "heads.pth")
    return request.param, [d / "backbone.pth", d / "heads.pth"], state


def test_lpips_matches_reference(lpips_files):
    from spatia.model.eval.lpips import load_lpips, reference_lpips

    net, paths, state = lpips_files
    model = load_lpips(paths, net=net)
    a, b = _images()
    fast = model.distance(a, b)
    ref = reference_lpips(state, net, a, b)
    assert fast > 0
    assert fast == pytest.approx(ref, rel=1e-4)
    assert model.distance(a, a) == pytest.approx(0.0, abs=1e-7)
    assert model.distance(b, a) == pytest.approx(fast, rel=1e-5)


def test_lpips_metric_reports_unavailable_without_weights():
    from spatia.model.eval.metrics import LpipsMetric

    m = LpipsMetric(None)
    a, b = _images()
    assert not m.available and m(a, b) is None
    assert "weights" in m.reason


def test_lpips_rejects_incomplete_or_missing_weights(lpips_files, tmp_path):
    from spatia.model.eval.lpips import load_lpips

    net, paths, _ = lpips_files
    with pytest.raises(InvalidInputError, match="lack"):
        load_lpips(paths[:1], net=net)  # backbone only: the heads are missing
    with pytest.raises(NotFoundError):
        load_lpips([tmp_path / "nope.pth"], net=net)
    with pytest.raises(InvalidInputError):
        load_lpips(paths, net="resnet")


def test_ratio_test_matches_reference():
    from spatia.model.eval.metrics import ratio_test_matches, reference_ratio_test_matches

    rng = np.random.default_rng(1)
    da = rng.random((120, 128)).astype(np.float32)
    db = np.concatenate([da[:60] + rng.normal(0, 0.01, (60, 128)), rng.random((80, 128))]).astype(np.float32)
    fast = ratio_test_matches(da, db, 0.8)
    ref = reference_ratio_test_matches(da, db, 0.8)
    np.testing.assert_array_equal(fast, ref)
    assert len(fast) >= 55 and np.all(fast[:, 0] == fast[:, 1])  # the perturbed copies are found


@pytest.fixture(scope="module")
def room():
    from spatia.world.scenes import make_scene

    scene = make_scene("room", 0)
    K = Intrinsics.from_fov(75.0, 160, 120)
    return scene, K


def _yawed(c2w, deg, shift=(0.0, 0.0, 0.0)):
    a = math.radians(deg)
    R = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    out = c2w.copy()
    out[:3, :3] = c2w[:3, :3] @ R
    out[:3, 3] += np.asarray(shift)
    return out


def test_match_accuracy_self_related_unrelated(room):
    from spatia.model.eval.metrics import MatchAccuracy

    scene, K = room
    start = scene.start_pose()
    first = scene.render(K, start)[0]
    near = scene.render(K, _yawed(start, 4.0, (0.05, 0, 0)))[0]
    away = scene.render(K, _yawed(start, 180.0))[0]
    m = MatchAccuracy()
    assert m.method == "sift-magsac"
    assert m(first, first) == pytest.approx(1.0)
    related, unrelated = m(first, near), m(first, away)
    assert related > 0.2
    assert unrelated < 0.05
    assert 0.0 <= unrelated < related <= 1.0


def test_match_accuracy_without_romatch_falls_back_and_says_so(tmp_path):
    pytest.importorskip("cv2")
    try:
        import romatch  # noqa: F401
        pytest.skip("romatch installed here")
    except ModuleNotFoundError:
        pass
    from spatia.model.eval.metrics import MatchAccuracy

    m = MatchAccuracy(roma_weights=tmp_path / "roma.pth")
    assert m.method == "sift-magsac" and "romatch is not installed" in m.note


def test_camera_control_recovers_known_offsets(room):
    from spatia.model.eval.metrics import camera_control_errors, summarize_pose_errors

    scene, K = room
    start = scene.start_pose()
    commanded = np.stack([start, _yawed(start, 10.0), _yawed(start, 10.0), start])
    actual = np.stack([start, _yawed(start, 10.0), _yawed(start, 12.0, (0.04, 0.0, 0.0)), start])
    frames = [scene.render(K, c)[0] for c in actual[:3]] + [np.zeros((K.height, K.width, 3), np.uint8)]

    def truth(c2w):
        rgb, depth = scene.render(K, c2w)
        return rgb, depth, depth > 0

    errs = camera_control_errors(frames, commanded, truth, K)
    assert errs[0].recovered and errs[0].rotation_deg < 1e-6 and errs[0].translation_cm < 1e-6
    assert errs[1].recovered and errs[1].rotation_deg < 1e-6
    # 2 deg / 4 cm off: recovered to well within the offset (photometric odometry at 160x120)
    assert errs[2].recovered
    assert 1.0 < errs[2].rotation_deg < 3.0 and 2.0 < errs[2].translation_cm < 7.0
    assert not errs[3].recovered  # a black frame anchors nothing
    s = summarize_pose_errors(errs)
    assert s["recovered_fraction"] == pytest.approx(0.75)
    assert s["rotation_deg_median"] <= s["rotation_deg_max"] and s["translation_cm_max"] > 2.0
    with pytest.raises(InvalidInputError):
        camera_control_errors(frames[:2], commanded, truth, K)


def test_match_accuracy_is_undefined_on_a_textureless_first_image():
    from spatia.model.eval.metrics import MatchAccuracy

    flat = np.full((64, 96, 3), 128, np.uint8)
    assert MatchAccuracy()(flat, flat) is None
