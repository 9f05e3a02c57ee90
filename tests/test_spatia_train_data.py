"""Training-sample construction (paper Sec. 3.1) and the dataset readers, on tiny real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatia.model.spatia.data import (
    ArrayVideo,
    FolderVideo,
    LatentCache,
    SampleBuilder,
    SampleConfig,
    SceneVideo,
    encode_sample,
    read_realestate10k,
    read_realestate10k_cameras,
    read_spatialvid,
    write_folder_video,
)
from spatia.model.spatia.text import tiny_prompt_encoder
from spatia.model.spatia.vae import SpatiaVAE, tiny_vae
from tests.conftest import render_box_room
from spatia.world.camera import Intrinsics, invert_pose, look_at, rotation_matrix_to_quaternion
from spatia.world.errors import InvalidInputError
from spatia.world.memory import MemoryConfig, SpatialMemory

SIZE = 32


def orbit_poses(n: int, radius_m: float = 0.6, turn_rad: float = 2.5) -> np.ndarray:
    """[n, 4, 4] c2w inside the box room: a slow walk on a circle, looking outwards at the walls."""
    poses = []
    for a in np.linspace(0.0, turn_rad, n):
        eye = np.array([radius_m * np.sin(a), 0.0, radius_m * np.cos(a)])
        poses.append(look_at(eye, eye * 3.0))
    return np.stack(poses)


def box_video(n: int = 24, dynamic: np.ndarray | None = None, with_depth: bool = True) -> ArrayVideo:
    K = Intrinsics.from_fov(70.0, SIZE, SIZE)
    c2w = orbit_poses(n)
    renders = [render_box_room(K, T) for T in c2w]
    frames = np.stack([r[0] for r in renders])
    depth = np.stack([r[1] for r in renders]) if with_depth else None
    return ArrayVideo("box", frames, c2w, K, "a painted box", depth, dynamic)


SMALL = SampleConfig(target_frames=4, preceding_frames=5, num_references=2, voxel_size_m=0.05)


def test_sample_splits_target_preceding_candidates():
    video = box_video()
    sample = SampleBuilder(SMALL).build(video, np.random.default_rng(3))
    t0 = sample.target_start
    assert sample.target_frames.shape == (4, SIZE, SIZE, 3) and sample.preceding_frames.shape == (5, SIZE, SIZE, 3)
    np.testing.assert_array_equal(sample.target_frames, video.frames[t0:t0 + 4])
    np.testing.assert_array_equal(sample.preceding_frames, video.frames[t0 - 5:t0])  # the clip right before
    clip = set(range(t0 - 5, t0 + 4))
    assert not clip & set(sample.cloud_frame_indices)  # S comes from a candidate frame
    assert 1 <= len(sample.references) <= 2
    for ref in sample.references:
        assert ref.frame_index not in clip  # references come from the candidates only
        assert ref.score > 0
        np.testing.assert_array_equal(ref.rgb, video.frames[ref.frame_index])
    assert len(sample.projection) == 9 and sample.projection.valid.any()


def test_projection_is_the_cloud_frame_rendered_along_the_clip():
    video = box_video()
    sample = SampleBuilder(SMALL).build(video, np.random.default_rng(5))
    # Reference: integrate the cloud frame by hand and render the P + T poses.
    memory = SpatialMemory(MemoryConfig(voxel_size_m=0.05))
    (c,) = sample.cloud_frame_indices
    memory.integrate(video.frames[c], video.depth_m[c], video.intrinsics, video.c2w[c], frame_index=c)
    t0 = sample.target_start
    ref = memory.render_trajectory(video.intrinsics, video.c2w[t0 - 5:t0 + 4])
    np.testing.assert_array_equal(sample.projection.rgb, ref.rgb)
    np.testing.assert_array_equal(sample.projection.valid, ref.valid)


def test_references_are_the_best_overlapping_candidates():
    """Paper Algorithm 1 (IoU of view-specific voxel sets): the reference is the highest-IoU candidate of a target
    view (checked with plain Python sets)."""
    video = box_video()
    config = SampleConfig(target_frames=4, preceding_frames=5, num_references=1, voxel_size_m=0.05)
    sample = SampleBuilder(config).build(video, np.random.default_rng(7))
    memory = SpatialMemory(MemoryConfig(voxel_size_m=0.05))
    (c,) = sample.cloud_frame_indices
    memory.integrate(video.frames[c], video.depth_m[c], video.intrinsics, video.c2w[c], frame_index=c)
    t0 = sample.target_start
    views = {i: set(memory.visible_voxel_keys(video.intrinsics, video.c2w[i]).tolist()) for i in range(len(video))}
    best = {}  # (target, candidate) -> IoU
    for t in range(t0, t0 + 4):
        for i in range(len(video)):
            if not t0 - 5 <= i < t0 + 4:
                best[t, i] = len(views[t] & views[i]) / max(len(views[t] | views[i]), 1)
    (ref,) = sample.references
    # The reference is the best candidate of one target view, with that view's IoU as its score.
    view_best = {t: max(v for (tt, _), v in best.items() if tt == t) for t in range(t0, t0 + 4)}
    assert any(best[t, ref.frame_index] == pytest.approx(view_best[t]) == pytest.approx(ref.score)
               for t in range(t0, t0 + 4))
    assert ref.score > 0.2


def test_official_retrieval_and_candidate_stride():
    video = box_video()
    config = SampleConfig(target_frames=4, preceding_frames=5, num_references=2, voxel_size_m=0.05,
                          retrieval_method="official", candidate_stride=2)
    sample = SampleBuilder(config).build(video, np.random.default_rng(3))
    clip = set(range(sample.target_start - 5, sample.target_start + 4))
    assert sample.references  # one target view (official stride 12 > 4 frames): one reference
    for ref in sample.references:
        assert ref.frame_index % 2 == 0 and ref.frame_index not in clip and ref.score > 0


def test_dynamic_regions_stay_out_of_the_point_cloud():
    n = 24
    everything = np.ones((n, SIZE, SIZE), bool)
    sample = SampleBuilder(SMALL).build(box_video(n, dynamic=everything), np.random.default_rng(3))
    assert not sample.projection.valid.any()  # every pixel dynamic: S is empty, the projection is all holes
    half = np.zeros((n, SIZE, SIZE), bool)
    half[:, :, : SIZE // 2] = True
    full = SampleBuilder(SMALL).build(box_video(n), np.random.default_rng(3))
    masked = SampleBuilder(SMALL).build(box_video(n, dynamic=half), np.random.default_rng(3))
    assert 0 < masked.projection.valid.sum() < full.projection.valid.sum()


def test_first_clip_sample_and_errors():
    video = box_video()
    config = SampleConfig(target_frames=4, preceding_frames=5, first_clip_prob=1.0, first_clip_frames=5,
                          num_references=2, voxel_size_m=0.05)
    sample = SampleBuilder(config).build(video, np.random.default_rng(0))
    assert sample.first_clip and sample.preceding_frames.shape[0] == 0 and sample.target_frames.shape[0] == 5
    with pytest.raises(InvalidInputError, match="candidate"):
        SampleBuilder(SMALL).build(box_video(9), np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="no depth"):
        SampleBuilder(SMALL).build(box_video(with_depth=False), np.random.default_rng(0))
    with pytest.raises(InvalidInputError):
        SampleConfig(preceding_frames=4)
    with pytest.raises(InvalidInputError):
        SampleConfig(target_frames=6)


def test_procedural_scene_sample():
    video = SceneVideo("room", 0, 24, 32, 32, loop_fraction=0.2)
    sample = SampleBuilder(SMALL).build(video, np.random.default_rng(1))
    assert sample.projection.valid.mean() > 0.2  # consecutive views of a room overlap
    assert sample.references and sample.prompt == "a walk through a room"
    rgb, depth = video.scene.render(video.intrinsics, video.c2w[sample.target_start])
    np.testing.assert_array_equal(sample.target_frames[0], rgb)


def test_encode_sample_and_latent_cache(tmp_path):
    video = box_video()
    sample = SampleBuilder(SMALL).build(video, np.random.default_rng(3))
    vae = SpatiaVAE(tiny_vae(0))
    latent = encode_sample(sample, vae, tiny_prompt_encoder(32))
    assert latent.latents.shape == (1, 48, 3, 2, 2)  # 9 frames -> 3 latent frames at 32 x 32 / 16
    assert latent.control.shape == (1, 96, 3, 2, 2)
    assert latent.references.shape == (1, 48, len(sample.references), 2, 2)
    assert latent.num_preceding == 2 and latent.num_known == 2  # 5 preceding frames -> 2 latent frames
    # The causal VAE: the preceding clip's own latents are the first latents of the joint video.
    torch.testing.assert_close(latent.latents[:, :, :2], vae.encode_video(sample.preceding_frames))
    cache = LatentCache(tmp_path)
    cache.put("k", latent)
    back = cache.get("k")
    assert "k" in cache and back.shape_key() == latent.shape_key() and back.meta == latent.meta
    for name in ("latents", "control", "references", "text"):
        torch.testing.assert_close(getattr(back, name), getattr(latent, name), rtol=0, atol=0)


def test_folder_format_round_trip(tmp_path):
    dynamic = np.zeros((24, SIZE, SIZE), bool)
    dynamic[3, 4:9, 5:20] = True
    video = box_video(dynamic=dynamic)
    root = write_folder_video(tmp_path / "v", video)
    back = FolderVideo(root)
    assert len(back) == 24 and back.prompt == "a painted box" and back.intrinsics == video.intrinsics
    np.testing.assert_allclose(back.c2w, video.c2w, atol=1e-12)
    np.testing.assert_array_equal(back.rgb(5), video.frames[5])
    np.testing.assert_allclose(back.depth(5), video.depth_m[5], atol=6e-4)  # 16-bit PNG millimetres
    np.testing.assert_array_equal(back.dynamic(3), dynamic[3])
    (root / "frames" / "000000.png").unlink()
    with pytest.raises(InvalidInputError, match="23 frames but 24 poses"):
        FolderVideo(root)


def _write_re10k(path, c2w: np.ndarray, normalized: list[float], timestamps: list[int]) -> None:
    lines = ["https://www.youtube.com/watch?v=abc"]
    for t, T in zip(timestamps, c2w):
        w2c = invert_pose(T)[:3, :4].reshape(-1)
        lines.append(" ".join([str(t), *map(str, normalized), "0", "0", *(f"{v:.12f}" for v in w2c)]))
    path.write_text("\n".join(lines) + "\n")


def test_realestate10k_camera_file(tmp_path):
    video = box_video(6)
    normalized = [0.7, 1.25, 0.5, 0.5]
    stamps = [1001, 34367, 67734, 101100, 134467, 167834]
    _write_re10k(tmp_path / "abc.txt", video.c2w, normalized, stamps)
    cams = read_realestate10k_cameras(tmp_path / "abc.txt")
    assert cams.url.endswith("abc") and cams.timestamps_us.tolist() == stamps
    np.testing.assert_allclose(cams.c2w, video.c2w, atol=1e-9)
    frames = tmp_path / "frames"
    frames.mkdir()
    from spatia.world.images import encode_png

    for t, rgb in zip(reversed(stamps), reversed(list(video.frames))):  # written out of order, named by timestamp
        (frames / f"{t}.png").write_bytes(encode_png(rgb))
    clip = read_realestate10k(tmp_path / "abc.txt", frames, prompt="a box")
    np.testing.assert_array_equal(clip.frames, video.frames)
    assert clip.intrinsics.fx == pytest.approx(0.7 * SIZE) and clip.intrinsics.fy == pytest.approx(1.25 * SIZE)
    (tmp_path / "bad.txt").write_text("url\n1 2 3\n")
    with pytest.raises(InvalidInputError, match="19 numbers"):
        read_realestate10k_cameras(tmp_path / "bad.txt")


def test_spatialvid_annotations(tmp_path):
    video = box_video(5)
    ann = tmp_path / "clip"
    ann.mkdir()
    poses = []
    for T in video.c2w:
        w2c = invert_pose(T)
        q = rotation_matrix_to_quaternion(w2c[:3, :3])  # (w, x, y, z)
        poses.append([*w2c[:3, 3], q[1], q[2], q[3], q[0]])  # lietorch order: t, then (x, y, z, w)
    np.save(ann / "poses.npy", np.array(poses))
    np.save(ann / "intrinsics.npy", np.tile([0.8, 0.8, 0.5, 0.5], (5, 1)))
    (ann / "caption.txt").write_text("a box\n")
    frames = tmp_path / "frames"
    frames.mkdir()
    from spatia.world.images import encode_png

    for i, rgb in enumerate(video.frames):
        (frames / f"{i:04d}.png").write_bytes(encode_png(rgb))
    np.save(tmp_path / "depth.npy", video.depth_m[:, ::2, ::2])  # SpatialVID depth is at a lower resolution
    clip = read_spatialvid(ann, frames, tmp_path / "depth.npy")
    np.testing.assert_allclose(clip.c2w, video.c2w, atol=1e-9)
    assert clip.prompt == "a box" and clip.depth_m.shape == (5, SIZE, SIZE)
    assert clip.intrinsics.fx == pytest.approx(0.8 * SIZE)
