"""``spatia eval novel-view`` (issue 10 sec. 1): metric functions on known inputs, item parsing, and a smoke run."""

import json
import math

import cv2
import numpy as np
import pytest

from spatia.model.eval import novel_view as nv
from spatia.world.errors import InvalidInputError
from spatia.world.metrics import ssim


def _image(seed: int = 0, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(base.astype(int) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def test_masked_psnr_ignores_pixels_outside_the_mask():
    truth = np.zeros((10, 10, 3), np.uint8)
    pred = np.full_like(truth, 200)  # wildly wrong outside the mask
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    pred[mask] = 10  # inside: off by 10 in every channel -> MSE 100
    assert nv.masked_psnr(pred, truth, mask) == pytest.approx(10 * math.log10(255**2 / 100))
    assert nv.masked_psnr(truth, truth, mask) == 100.0
    assert math.isnan(nv.masked_psnr(pred, truth, np.zeros_like(mask)))
    with pytest.raises(InvalidInputError, match="bool array"):
        nv.masked_psnr(pred, truth, mask.astype(np.uint8))


def test_masked_ssim_is_world_ssim_on_the_interior():
    a, b = _image(0), _image(1)
    mask = np.zeros(a.shape[:2], bool)
    mask[5:-5, 5:-5] = True  # world.metrics.ssim averages the interior 5 px away from the border
    assert nv.masked_ssim(a, b, mask) == pytest.approx(ssim(a, b), abs=1e-9)
    assert nv.masked_ssim(a, a, mask) == pytest.approx(1.0)


def _gmsd_reference(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """GMSD written out with explicit loops (Xue et al. 2014): the slow reference of ``nv.gmsd``."""
    def half(y):
        h, w = y.shape[0] // 2, y.shape[1] // 2
        return np.array([[y[2 * i:2 * i + 2, 2 * j:2 * j + 2].mean() for j in range(w)] for i in range(h)])

    def grad(y):
        p = np.pad(y, 1, mode="edge")
        gx, gy = np.zeros_like(y), np.zeros_like(y)
        for i in range(y.shape[0]):
            for j in range(y.shape[1]):
                win = p[i:i + 3, j:j + 3]
                gx[i, j] = (win[:, 0].sum() - win[:, 2].sum()) / 3.0
                gy[i, j] = (win[0, :].sum() - win[2, :].sum()) / 3.0
        return np.hypot(gx, gy)

    ya = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    yb = 0.299 * b[..., 0] + 0.587 * b[..., 1] + 0.114 * b[..., 2]
    ma, mb = grad(half(ya.astype(float))), grad(half(yb.astype(float)))
    m = half(mask.astype(float)) == 1.0
    gms = (2 * ma * mb + 170.0) / (ma**2 + mb**2 + 170.0)
    return float(np.std(gms[m]))


def test_gmsd_matches_its_reference_and_sees_structure():
    a, b = _image(2, 24, 32), _image(3, 24, 32)
    mask = np.ones(a.shape[:2], bool)
    mask[:, :9] = False  # odd boundary: half-resolution pixels straddling it are left out
    assert nv.gmsd(a, b, mask) == pytest.approx(_gmsd_reference(a, b, mask), rel=1e-9)
    assert nv.gmsd(a, a, mask) == pytest.approx(0.0, abs=1e-12)
    blurred = cv2.GaussianBlur(a, (7, 7), 2.0)
    assert nv.gmsd(blurred, a, mask) > 0.05


def test_gradient_ratio_known_values_and_noise_at_half_resolution():
    truth = _image(4)
    mask = np.ones(truth.shape[:2], bool)
    assert nv.gradient_ratio(truth, truth, mask) == pytest.approx(1.0)
    flat = np.full_like(truth, 128)
    assert nv.gradient_ratio(flat, truth, mask) == pytest.approx(0.0)
    # contrast doubled around grey, no clipping: gradients double exactly
    soft = (64 + truth.astype(int) // 2).astype(np.uint8)
    doubled = (2 * (soft.astype(int) - 64)).astype(np.uint8)
    assert nv.gradient_ratio(doubled, soft, mask) == pytest.approx(2.0, rel=1e-9)
    # a 1-pixel checkerboard on grey: lots of gradient at full resolution, none after 2x2 averaging
    checker = np.full_like(truth, 128)
    checker[(np.indices(mask.shape).sum(0) % 2) == 1] = 148
    smooth = cv2.GaussianBlur(truth, (0, 0), 3.0)
    assert nv.gradient_ratio(checker, smooth, mask) > 2.0
    assert nv.gradient_ratio(checker, smooth, mask, half=True) < 0.01


def test_depth_errors_count_missing_depth_as_errors():
    true = np.full((4, 5), 2.0, np.float32)
    pred = np.full_like(true, 2.2)  # 10% too far everywhere
    mask = np.ones(true.shape, bool)
    assert nv.depth_absrel(pred, true, mask) == pytest.approx(0.1, rel=1e-6)
    assert nv.depth_delta125(pred, true, mask) == 1.0
    pred[0] = 0.0  # 5 of 20 pixels without depth: AbsRel 1 and delta failed there
    pred[1, 0] = np.nan
    assert nv.depth_absrel(pred, true, mask) == pytest.approx((6 * 1.0 + 14 * 0.1) / 20, rel=1e-6)
    assert nv.depth_delta125(pred, true, mask) == pytest.approx(14 / 20)
    pred[2] = 4.0  # twice too far: AbsRel 1, delta failed
    assert nv.depth_delta125(pred, true, mask) == pytest.approx(9 / 20)
    true[3] = 0.0  # no truth there (not graded)
    assert nv.depth_error_sums(pred, true, mask)[2] == 15


def test_flicker_and_grader_on_a_known_sequence():
    truth = [_image(5), _image(6)]
    novel = np.ones(truth[0].shape[:2], bool)
    real = np.ones_like(novel)
    depth = np.full(novel.shape, 3.0, np.float32)
    g = nv.FrameGrader()
    for t in truth:  # a perfect generator
        assert g.add(t, depth, t, depth, real, novel)
    r = g.result()
    assert r["psnr"] == 100.0 and r["flicker"] == pytest.approx(1.0) and r["depth_absrel"] == 0.0
    assert r["grad_ratio"] == pytest.approx(1.0) and r["gmsd"] == pytest.approx(0.0, abs=1e-12)
    g = nv.FrameGrader()
    for i in range(2):  # a generator that redraws noise every frame: flicker far above the truth's
        g.add(_image(10 + i), depth * 0, truth[i], depth, real, novel)
    r = g.result()
    assert r["flicker"] > 1.0 and r["depth_absrel"] == 1.0 and r["depth_delta125"] == 0.0
    few = np.zeros_like(novel)
    few[:10] = True  # 10 of 48 rows novel: under 40%, not graded
    assert not g.add(truth[0], depth, truth[0], depth, real, few)
    assert g.result()["graded_frames"] == 2 and g.result()["frames"] == 3


def test_surface_accuracy_and_completeness_with_a_known_plane():
    # a 2 m square in the plane z = 0 (two triangles)
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32)
    t = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    truth = nv.SurfaceTruth(v, t)
    pts = np.array([[0, 0, 0.03], [0.5, 0.5, -0.049], [0, 0, 0.08], [3.0, 0, 0]])  # in, in, 8 cm off, 2 m beside
    assert truth.distance_m(pts) == pytest.approx([0.03, 0.049, 0.08, 2.0], abs=1e-5)
    assert nv.surface_accuracy(pts, truth) == pytest.approx(0.5)
    boxed = nv.SurfaceTruth(v, t, bounds=(np.array([-1, -1, 0.0]), np.array([0.2, 1, 0.0])))
    assert boxed.accurate(pts).tolist() == [True, False, False, False]  # (0.5, 0.5) lies outside the bounds
    samples = np.stack(np.meshgrid(np.linspace(-0.9, 0.9, 10), np.linspace(-0.9, 0.9, 10), [0.0]), -1).reshape(-1, 3)
    memory = samples[samples[:, 0] < 0] + [0, 0, 0.04]  # covers the left half, 4 cm off
    assert nv.completeness(samples, memory) == pytest.approx(0.5)
    assert nv.completeness(samples, memory + [0, 0, 0.02]) == 0.0
    assert nv.completeness(samples, np.zeros((0, 3))) == 0.0


def test_voxel_unique_and_backprojection():
    pts = np.array([[0.001, 0, 0], [0.015, 0.01, 0.005], [0.03, 0, 0], [-0.001, 0, 0]])
    assert nv.voxel_unique(pts, 0.02).tolist() == [pts[0].tolist(), pts[2].tolist(), pts[3].tolist()]
    K = nv.Intrinsics.from_fov(90.0, 4, 2)
    depth = np.full((2, 4), 2.0, np.float32)
    mask = np.zeros((2, 4), bool)
    mask[1, 3] = True
    c2w = np.eye(4)
    c2w[:3, 3] = [1, 2, 3]
    p = nv.backproject(depth, mask, K, c2w)
    # pixel centre (3.5, 1.5), f = 2, centre (2, 1): ray (0.75, 0.25, 1) * 2 m + camera position
    assert p.tolist() == [[2.5, 2.5, 5.0]]


def test_items_parse_and_sets():
    assert nv.NovelItem.parse("house:2@turned") == nv.NovelItem("house", 2, "turned")
    assert nv.NovelItem.parse("room").name == "room" and nv.NovelItem("room", 1, "photo").name == "room:1@photo"
    assert [i.item_set for i in nv.parse_items(["room,room:1", "house@photo"])] == ["default", "variants", "photo"]
    assert len(nv.parse_items(["all"])) == len(set(nv.ITEM_SETS["all"]))
    for bad, what in (("kitchen", "unknown scene"), ("room@upside", "unknown variant"), ("room:x", "not an integer")):
        with pytest.raises(InvalidInputError, match=what):
            nv.NovelItem.parse(bad)


def test_camera_offsets_turn_and_pitch_the_view():
    z = np.array([0, 0, 1.0])
    assert nv._camera_rotation(90, 0)[:3, :3] @ z == pytest.approx([1, 0, 0])  # yaw right
    assert nv._camera_rotation(0, 30)[:3, :3] @ z == pytest.approx([0, 0.5, math.sqrt(3) / 2])  # pitch down (+y)


def test_settings_are_the_demos_and_the_servers():
    from spatia.demo import DEMO_CLIP
    from spatia.server.config import ServerConfig

    assert nv.SETTINGS["demo"].clip == DEMO_CLIP and nv.SETTINGS["demo"].keyframe_stride == 1
    play, server = nv.SETTINGS["play"], ServerConfig()
    assert (play.clip.first_clip_frames, play.clip.clip_frames, play.clip.preceding_frames) == (4, 6, 2)
    assert play.keyframe_stride == server.play_keyframe_stride
    assert play.reuse_references_within == server.play_reuse_references_within
    assert play.reuse_references_clips == server.play_reuse_references_clips


def test_photo_item_uses_the_photo_paths_guessed_camera():
    p = nv.prepare_item(nv.NovelItem("room", 0, "photo"), 64, 36, frames=5)
    assert p.intrinsics != nv.Intrinsics.from_fov(nv.FOV_DEG, 64, 36)  # no intrinsics given: the default guess
    assert np.allclose(p.path_world[0], np.eye(4))  # world frame at the first camera
    assert not p.novel[0].any() or p.novel[0].mean() < 0.05  # the first view is (almost) all memory


@pytest.mark.timeout(600)  # generous: the shared machine runs 5-10x slower under load
def test_smoke_room_320x180(tmp_path):
    """The smoke subset: one item at 320x180 through the CLI, every fill method, the demo setting (a 41-frame loop
    keeps it inside the test budget)."""
    from spatia.cli import main

    out = tmp_path / "nv.json"
    code = main(["eval", "novel-view", "--smoke", "--frames", "41", "--settings", "demo", "--no-progress",
                 "--json", str(out), "--md", str(tmp_path / "novel_view_tables.markdown"), "--strips", str(tmp_path / "strips")])
    assert code == 0
    result = json.loads(out.read_text())
    methods = nv.fill_methods()
    assert {r["method"] for r in result["rows"]} == set(methods)
    for row in result["rows"]:
        assert row["baseline"] == (row["method"] == "legacy") and row["setting"] == "demo"
        assert set(nv.METRIC_KEYS) <= set(row) and list(row["per_item"]) == ["room"]
        v = row["per_item"]["room"]
        assert v["graded_frames"] >= 5 and v["frames"] == 40
        assert 0 < v["depth_absrel"] < 5 and 0 <= v["depth_delta125"] <= 1
        assert 0 < v["surface_5cm"] <= 1 and 0 < v["complete_5cm"] <= 1
        assert 5 < v["psnr"] < 60 and 0 < v["gmsd"] < 0.5 and -1 < v["ssim"] < 1
        assert 0 < v["grad_ratio"] and 0 < v["grad_ratio_2x"] and v["flicker"] > 0
        assert v["memory_points"] > v["initial_points"] > 0 and v["memory_bytes"] > 0
        assert v["depth_excluded_share"] == 0.0  # a room has no sky
    strip = cv2.imread(str(tmp_path / "strips" / "room.png"))
    assert strip is not None and strip.shape[1] > 160 * (1 + len(methods))
    assert "| default (1) | legacy (baseline) | demo |" in (tmp_path / "novel_view_tables.markdown").read_text()


@pytest.mark.timeout(600)  # generous: the shared machine runs 5-10x slower under load
def test_demo_summary_reports_novel_pixel_numbers(tmp_path):
    from spatia.demo import DemoOptions, run_demo

    summary = run_demo(DemoOptions(out=tmp_path, scene="room", width=160, height=96, frames=25))
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["novel_graded_frames"] >= 3
    assert 5 < written["novel_psnr"] < 60 and 0 < written["novel_depth_absrel"] < 5
    assert summary["novel_psnr"] == written["novel_psnr"]


def test_novel_detail_geometry_classes():
    """benchmarks/novel_detail.py's split of novel pixels by the generated depth against the truth's: a surface
    guessed more than 20 % nearer is "front" (a wall across a doorway), within it "match", 25 % farther "behind",
    a missing depth on either side "open"."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "novel_detail.py"
    spec = importlib.util.spec_from_file_location("novel_detail", path)
    nd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nd)
    truth = np.array([[2.0, 2.0, 2.0, 2.0, 0.0, 2.0]], np.float32)
    pred = np.array([[1.0, 1.7, 2.4, 2.6, 2.0, 0.0]], np.float32)
    got = [nd.GEOMS[g] for g in nd.geometry_class(pred, truth)[0]]
    assert got == ["front", "match", "match", "behind", "open", "open"]
    assert (nd.geometry_class(None, truth) == nd.GEOMS.index("open")).all()
