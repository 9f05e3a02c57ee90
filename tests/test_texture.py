"""Texture synthesis for unseen plane regions (model/fill/texture/synthesis.py), on procedural textures with exact truth.

Exemplars are crops of a tiled procedural texture (``world.textures``, used here only: ``model/`` never imports
it), so the true continuation of every exemplar is known at every texture-space texel.
"""

from __future__ import annotations

import pickle
import warnings

import cv2
import numpy as np
import pytest
from scipy import ndimage

from spatia.model.fill.texture import synthesis as tx
from spatia.model.fill.texture.synthesis import InvalidInputError, Surface, TextureModel
from spatia.world.textures import TextureSpec

TEX_PX = 128  # one procedural tile, in texels
CROP = (5, 9)  # texture-space texel (0, 0) of the exemplar sits at this texel of the procedural plane


def plane(family: str, seed: int = 7, **params) -> np.ndarray:
    """A procedural plane [4 * TEX_PX, 4 * TEX_PX, 3] uint8, periodic with TEX_PX."""
    tex = TextureSpec(family, 1.0, tuple(params.items())).make(seed, size_px=TEX_PX)
    return (np.tile(tex, (4, 4, 1)) * 255).round().astype(np.uint8)


def truth_at(big: np.ndarray, top_left: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """The procedural plane's texels at texture-space rows/cols (wrapping with its period)."""
    rows = (np.arange(top_left[0], top_left[0] + shape[0]) + CROP[0]) % TEX_PX
    cols = (np.arange(top_left[1], top_left[1] + shape[1]) + CROP[1]) % TEX_PX
    return big[np.ix_(rows, cols)]


def exemplar(big: np.ndarray, shape=(96, 128), holes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A crop with an irregular outline and holes: a disc, a notch at the top right, a ragged left edge."""
    rgb = big[CROP[0] : CROP[0] + shape[0], CROP[1] : CROP[1] + shape[1]].copy()
    valid = np.ones(shape, bool)
    if holes:
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        valid &= (yy - 50) ** 2 + (xx - 70) ** 2 >= 18**2
        valid &= ~((xx > shape[1] - 26) & (yy < 30))
        valid &= xx >= (6 * np.abs(np.sin(yy / 7.0))).astype(int)
    return rgb, valid


def luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def mean_gradient(img: np.ndarray, mask: np.ndarray | None = None) -> float:
    gy, gx = np.gradient(luma(img))
    mag = np.hypot(gx, gy)
    if mask is None:
        return float(mag[1:-1, 1:-1].mean())
    return float(mag[ndimage.binary_erosion(mask, iterations=1)].mean())


def half(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)


def profile_period(profile: np.ndarray, lo: int = 4) -> float:
    """Period of a 1-D signal: the first autocorrelation peak at lag >= lo that is nearly as high as the highest
    (rasterised lines make multiples of the period slightly more alike), refined by a parabola."""
    p = profile - profile.mean()
    ac = np.correlate(p, p, "full")[len(p) - 1 :] / (np.arange(len(p), 0, -1))
    ac /= ac[0]
    lags = np.arange(lo, len(p) // 2)
    peaks = [k for k in lags if ac[k] >= ac[k - 1] and ac[k] >= ac[k + 1]]
    top = max(ac[k] for k in peaks)
    k = next(k for k in peaks if ac[k] >= 0.75 * top)
    den = ac[k - 1] - 2 * ac[k] + ac[k + 1]
    return k + (0.5 * (ac[k - 1] - ac[k + 1]) / den if den != 0 else 0.0)


@pytest.fixture(scope="module")
def brick():
    big = plane("brick")
    rgb, valid = exemplar(big)
    return big, rgb, valid, TextureModel.fit(rgb, valid, texel_m=0.02)


@pytest.fixture(scope="module")
def tiles():
    big = plane("tiles")
    rgb, valid = exemplar(big)
    return big, rgb, valid, TextureModel.fit(rgb, valid, texel_m=0.02)


@pytest.fixture(scope="module")
def noise():
    big = plane("noise", cells=8, contrast=1.5)
    rgb, valid = exemplar(big)
    return big, rgb, valid, TextureModel.fit(rgb, valid, texel_m=0.02)


# ---------------------------------------------------------------------------------------------------------------
# Periodic textures continue with their period, orientation and phase
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["brick", "tiles"])
def test_periodic_texture_continues_with_period_orientation_and_phase(name, request):
    big, rgb, valid, model = request.getfixturevalue(name)
    assert model.kind == "periodic"
    far = (5 * 64, -7 * 64)  # well away from the exemplar (rows 0-95, cols 0-127)
    out = tx.synthesize_region(model, far, (192, 192), seed=3)
    truth = truth_at(big, far, (192, 192))
    # period of the row profile (mean over columns): mortar courses / grout lines, measured on the output
    for axis in (1, 0) if name == "tiles" else (1,):  # brick's vertical joints are sub-texel thin: rows only
        p_out = profile_period(luma(out).mean(axis))
        p_true = profile_period(luma(truth).mean(axis))
        assert abs(p_out - p_true) < 0.35, (axis, p_out, p_true)
    # orientation: horizontal lines stay horizontal (row-profile contrast vs column-profile contrast as observed)
    rows_c, cols_c = luma(out).mean(1).std(), luma(out).mean(0).std()
    rows_t, cols_t = luma(truth).mean(1).std(), luma(truth).mean(0).std()
    if abs(np.log(rows_t / cols_t)) > 0.3:  # anisotropic (brick courses); square tiles have no orientation
        assert np.sign(np.log(rows_c / cols_c)) == np.sign(np.log(rows_t / cols_t))
    # phase: the lines sit where the true plane has them, 300+ texels from anything observed
    for axis in (1, 0) if name == "tiles" else (1,):
        corr = np.corrcoef(luma(out).mean(axis), luma(truth).mean(axis))[0, 1]
        assert corr > 0.8, (axis, corr)
    # the pattern itself: the output agrees with the truth texel by texel (courses, joints, checker), in phase
    assert np.corrcoef(luma(out).ravel(), luma(truth).ravel())[0, 1] > 0.7


def test_lattice_detection_measures_the_period():
    big = plane("brick")
    rgb, valid = exemplar(big, holes=False)
    model = TextureModel.fit(rgb, valid, texel_m=0.01)
    # 12 courses per 128 texels; a brick is 32 texels long (4 per row)
    vecs = model.lattice.vectors_px
    lattice = {tuple(np.round(v, 1)) for v in np.abs(vecs)}
    course = TEX_PX / 12
    assert any(abs(v[0] - k * course) < 0.15 and v[1] < 0.2 for v in lattice for k in (1, 2)), lattice
    assert model.periods_m and all(p > 0 for p in model.periods_m)
    stochastic = TextureModel.fit(*exemplar(plane("noise", cells=8)), texel_m=0.01)
    assert stochastic.kind == "stochastic" and stochastic.lattice.kind == "none"


def test_a_smooth_correlated_signal_has_no_lattice():
    """A random walk's autocorrelation is a ridge through its peaks: projecting the first peak off the ridge left
    a copy vector near zero (NaN phases and "invalid value encountered in divide" in the fit; this seed gave three
    such walks of 40). Such signals are stochastic; a 1-D lattice has a period of at least MIN_PERIOD_PX."""
    rng = np.random.default_rng(8)
    kinds = []
    for _ in range(40):
        h, w = rng.integers(16, 60, 2)
        walk = rng.normal(size=(h, w)).cumsum(int(rng.integers(0, 2)))
        walk += rng.normal(scale=rng.uniform(0, 1.5), size=(h, w))
        valid = rng.random((h, w)) > rng.uniform(0, 0.6)
        lattice = tx.detect_lattice(walk, valid)
        kinds.append(lattice.kind)
        if lattice.kind == "1d":
            assert np.all(np.isfinite(lattice.vectors_px[0])) and np.hypot(*lattice.vectors_px[0]) >= tx.MIN_PERIOD_PX
        rgb = np.clip(128 + 8 * (walk - walk.mean()), 0, 255).astype(np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = TextureModel.fit(np.repeat(rgb[..., None], 3, 2), valid, texel_m=0.02)
        assert model.kind == "stochastic" or np.hypot(*model._copy_basis[0]) >= tx.MIN_PERIOD_PX
    assert kinds.count("none") >= 35


def test_wood_grain_keeps_its_direction():
    big = plane("wood")
    rgb, valid = exemplar(big)
    model = TextureModel.fit(rgb, valid, texel_m=0.02)
    out = tx.synthesize_region(model, (-400, 250), (160, 160), seed=1)
    # grain and plank gaps run along u (columns): gradients are mostly vertical, in the output as in the truth
    gy, gx = np.gradient(luma(out))
    ty, tx_ = np.gradient(luma(truth_at(big, (-400, 250), (160, 160))))
    assert np.abs(gy).mean() / np.abs(gx).mean() > 0.5 * np.abs(ty).mean() / np.abs(tx_).mean()
    assert np.abs(gy).mean() > 2 * np.abs(gx).mean()
    # planks keep their width: the plank-gap period of the row profile
    assert abs(profile_period(luma(out).mean(1), lo=8) - TEX_PX / 4) < 1.0


# ---------------------------------------------------------------------------------------------------------------
# Stochastic textures keep their detail statistics
# ---------------------------------------------------------------------------------------------------------------


def test_stochastic_texture_keeps_gradient_statistics(noise):
    big, rgb, valid, model = noise
    assert model.kind == "stochastic"
    out = tx.synthesize_region(model, (250, -300), (192, 192), seed=5)
    full = mean_gradient(out) / mean_gradient(rgb, valid)
    halfres = mean_gradient(half(out)) / mean_gradient(half(rgb), half(valid.astype(np.uint8)) > 0)
    assert 0.7 <= full <= 1.3, full
    assert 0.7 <= halfres <= 1.3, halfres  # fine noise cannot fake detail at half resolution
    # same colours: mean and spread within a few levels of the exemplar's
    assert np.abs(out.reshape(-1, 3).mean(0) - rgb[valid].mean(0)).max() < 8
    assert 0.7 < out.reshape(-1, 3).std(0).mean() / rgb[valid].std(0).mean() < 1.3
    # the patchwork's cuts add little: gradient in the cut bands vs the cell cores
    s, h = model.step_px, model.overlap_px // 2
    dx = np.abs(np.diff(luma(out), axis=1))
    band = ((np.arange(-300, -300 + 191) + h) % s) < 2 * h - 1
    assert dx[:, band].mean() < 1.45 * dx[:, ~band].mean()


# ---------------------------------------------------------------------------------------------------------------
# Tiles: deterministic, order-free, seamless
# ---------------------------------------------------------------------------------------------------------------


def test_tiles_are_deterministic_order_independent_and_seamless(noise):
    big, rgb, valid, model = noise
    keys = [(i, j) for i in range(-1, 3) for j in range(-2, 2)]
    first = {k: tx.synthesize_tile(model, k, seed=11) for k in keys}
    other = TextureModel.fit(rgb, valid, texel_m=0.02)  # a fresh model (as after save/load), reverse order
    second = {k: tx.synthesize_tile(other, k, seed=11) for k in reversed(keys)}
    for k in keys:
        assert first[k].shape == (64, 64, 3) and first[k].dtype == np.uint8
        np.testing.assert_array_equal(first[k], second[k])
        np.testing.assert_array_equal(first[k], tx.synthesize_tile(model, k, seed=11))  # asked again
    assert not np.array_equal(first[(2, 1)], tx.synthesize_tile(model, (2, 1), seed=12))  # the seed matters
    thawed = pickle.loads(pickle.dumps(model))  # a model can travel (caches are dropped, texels the same)
    np.testing.assert_array_equal(tx.synthesize_tile(thawed, (0, 1), seed=11), first[(0, 1)])
    mosaic = np.concatenate([np.concatenate([first[(i, j)] for j in range(-2, 2)], 1) for i in range(-1, 3)], 0)
    np.testing.assert_array_equal(mosaic, tx.synthesize_region(model, (-64, -128), (256, 256), seed=11))
    # single texels (invented points at texel centres) read the same values, in any order
    rng = np.random.default_rng(4)
    rows, cols = rng.integers(-64, 192, 500), rng.integers(-128, 128, 500)
    np.testing.assert_array_equal(tx.texels_at(model, rows, cols, seed=11), mosaic[rows + 64, cols + 128])
    np.testing.assert_array_equal(
        tx.texels_at(other, rows[::-1], cols[::-1], seed=11), mosaic[rows + 64, cols + 128][::-1]
    )
    # plane metres with a pixel footprint: level 0 is the texel itself; a 2-texel footprint is the 2x2 box mean
    uv = np.stack([(cols + 0.5) * 0.02, (rows + 0.5) * 0.02], 1)
    near = tx.sample_uv(model, uv, np.full(len(uv), 0.01), seed=11)
    np.testing.assert_array_equal(near, mosaic[rows + 64, cols + 128])
    assert tx.FAR_LEVEL > 1
    coarse = tx.sample_uv(model, uv, np.full(len(uv), 0.04), seed=11).astype(np.float64)
    r2, c2 = (rows + 64) // 2 * 2, (cols + 128) // 2 * 2
    box = np.stack([mosaic[r2 + a, c2 + b] for a in range(2) for b in range(2)]).astype(np.float64).mean(0)
    assert np.abs(coarse - box).max() <= 1.0
    # seams: the step across a tile border is no larger than between interior neighbours
    g = luma(mosaic)
    dx, dy = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
    borders = [63, 127, 191]
    assert dx[:, borders].mean() <= 1.25 * np.delete(dx, borders, 1).mean()
    assert dy[borders, :].mean() <= 1.25 * np.delete(dy, borders, 0).mean()


def test_far_field_reads_no_tiles_and_keeps_the_colours(noise):
    """From FAR_LEVEL on, sample_uv reads the far-field texture: no tile is synthesised, its texels are a pure
    function of (model, seed, position), and over a wide area they keep the near texture's colour statistics."""
    big, rgb, valid, model = noise
    fresh = TextureModel.fit(rgb, valid, texel_m=0.02)
    rng = np.random.default_rng(8)
    uv = rng.uniform(-40.0, 40.0, (4000, 2))  # metres: thousands of 64-texel tiles
    footprint = np.full(len(uv), 0.02 * (1 << tx.FAR_LEVEL))
    far = tx.sample_uv(fresh, uv, footprint, seed=3)
    assert not fresh._tiles  # no tile synthesised for the far field
    np.testing.assert_array_equal(far, tx.sample_uv(TextureModel.fit(rgb, valid, texel_m=0.02), uv, footprint, 3))
    near = tx.sample_uv(fresh, uv[:300] * 0.05, np.full(300, 0.01), seed=3).astype(np.float64)
    assert np.abs(far.astype(np.float64).mean(0) - near.mean(0)).max() < 8  # same colour, far and near
    assert far.astype(np.float64).std(0).mean() > 0.2 * near.std(0).mean()  # not a flat fill either


def test_stochastic_far_field_is_the_tiles_seen_from_afar(noise):
    """A stochastic texture is one texture at every distance: its far field at mip ``FAR_LEVEL`` and above is the
    tiles' own mips there (the coarse band both share, ``COARSE_SPLIT_PX``), away from the exemplar and beside it.
    With the far field a mirror-repeated exemplar, the two were unrelated (4-5 grey levels apart, as far apart as
    two draws), and points invented far off showed stripes between the gaps textured near (docs/RESULTS.md,
    session 31)."""
    big, rgb, valid, model = noise
    assert model.kind == "stochastic" and model._coarse_box is not None  # its coarse band is the noise
    for top_left in ((640, -448), (-32, 96)):  # far from the box (rows 0-95, cols 0-127), and across its edge
        n = 256
        tiles = luma(tx.synthesize_region(model, top_left, (n, n), seed=5))
        for level in (tx.FAR_LEVEL, tx.FAR_LEVEL + 1):
            k = 1 << level
            mip = tiles.reshape(n // k, k, n // k, k).mean((1, 3))
            rows = np.repeat(np.arange(top_left[0], top_left[0] + n, k), n // k)
            cols = np.tile(np.arange(top_left[1], top_left[1] + n, k), n // k)
            far = luma(model._far_texels(rows, cols, level, seed=5)).reshape(n // k, n // k)
            rms = float(np.sqrt(np.mean(np.square(mip - far))))
            assert rms < 0.35 * mip.std(), (top_left, level, rms, mip.std())  # the same picture, not two draws


# ---------------------------------------------------------------------------------------------------------------
# The exemplar's own holes
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["brick", "noise"])
def test_masked_exemplar_holes_are_continued(name, request):
    big, rgb, valid, model = request.getfixturevalue(name)
    filled = tx.continue_exemplar(model, seed=2)
    assert filled.shape == rgb.shape and filled.dtype == np.uint8
    np.testing.assert_array_equal(filled[valid], rgb[valid])  # observed texels are kept
    hole = ~valid
    hole[:, :8] = False  # the ragged edge is only a few texels wide
    ratio = mean_gradient(filled, hole) / mean_gradient(rgb, valid)
    assert 0.7 <= ratio <= 1.3, ratio  # texture, not a smooth smear
    assert np.abs(filled[hole].mean(0) - rgb[valid].mean(0)).max() < 12
    # the same texels as the tiles that cover the box
    np.testing.assert_array_equal(filled, tx.synthesize_region(model, (0, 0), rgb.shape[:2], seed=2))
    if name == "brick":  # in phase with the true brickwork inside the hole
        truth = truth_at(big, (0, 0), rgb.shape[:2])
        disc = np.zeros_like(valid)
        disc[32:69, 52:89] = True
        disc &= ~valid
        def mortar(img):  # grey mortar, red brick
            red = img[..., 0].astype(np.float64) - img[..., 2]
            return red < 0.5 * red.mean()

        mortar_t, mortar_f = mortar(truth), mortar(filled)
        near = ndimage.binary_dilation(mortar_f)  # one texel of slack: the lines are one texel thin
        assert (mortar_t & near)[disc].sum() / mortar_t[disc].sum() > 0.75


def test_small_thin_flat_and_sparse_exemplars_work():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :80]
    cases = [
        (rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), np.ones((8, 8), bool)),  # the smallest allowed
        (rng.integers(0, 255, (10, 60, 3), dtype=np.uint8), np.ones((10, 60), bool)),  # a thin strip
        (np.full((40, 40, 3), 120, np.uint8), np.ones((40, 40), bool)),  # flat: no texture at all
        (rng.integers(0, 255, (80, 80, 3), dtype=np.uint8), np.abs(yy - xx) < 4),  # a diagonal band
        (rng.integers(0, 255, (60, 60, 3), dtype=np.uint8), rng.random((60, 60)) < 0.3),  # scattered texels
    ]
    for rgb, valid in cases:
        model = TextureModel.fit(rgb, valid, texel_m=0.05)
        tile = tx.synthesize_tile(model, (3, -2), seed=0)
        assert tile.shape == (64, 64, 3) and tile.dtype == np.uint8
        np.testing.assert_array_equal(tx.continue_exemplar(model, 0)[valid], rgb[valid])
        assert abs(float(tile.mean()) - float(rgb[valid].mean())) < 25
    flat = TextureModel.fit(cases[2][0], cases[2][1], texel_m=0.05)
    assert np.all(tx.synthesize_tile(flat, (5, 5), seed=1) == 120)


def test_shading_continues_smoothly():
    big = plane("noise", cells=8)
    rgb, valid = exemplar(big, holes=False)
    light = np.linspace(0.55, 1.15, rgb.shape[1])[None, :, None]  # a light gradient across the wall
    lit = np.clip(rgb * light, 0, 255).astype(np.uint8)
    valid[20:80, 40:90] = False
    model = TextureModel.fit(lit, valid, texel_m=0.02)
    filled = tx.continue_exemplar(model, seed=0).astype(np.float64)
    # inside the hole the column means follow the light, not the patches' places of origin
    cols = np.arange(40, 90)
    expected = (rgb.astype(np.float64) * light).mean((0, 2))[cols]
    got = filled[20:80, 40:90].mean((0, 2))
    assert np.corrcoef(got, expected)[0, 1] > 0.9
    assert np.abs(got - expected).max() < 15
    # just outside the box the brightness continues from the edge, far away it relaxes to the mean
    right = tx.synthesize_region(model, (0, rgb.shape[1]), (rgb.shape[0], 8), seed=0).astype(np.float64).mean()
    assert abs(right - lit[:, -8:].astype(np.float64).mean()) < 12
    far = tx.synthesize_region(model, (0, 2000), (64, 64), seed=0).astype(np.float64).mean()
    assert abs(far - lit[valid].astype(np.float64).mean()) < 12


# ---------------------------------------------------------------------------------------------------------------
# Kernels against their references
# ---------------------------------------------------------------------------------------------------------------


def test_seam_kernel_matches_exhaustive_search():
    rng = np.random.default_rng(0)
    for trial in range(20):
        err = rng.random((7, 6)) ** 3
        lo, hi = (0, 5) if trial % 2 else (1, 4)
        path = tx._pinned_seam(err, lo, hi)
        assert path[0] == path[-1] == 3
        assert np.all(np.abs(np.diff(path)) <= 1) and path.min() >= lo and path.max() <= hi
        assert np.isclose(err[np.arange(7), path].sum(), tx._reference_pinned_seam_cost(err, lo, hi))


def test_cost_kernel_matches_reference():
    rng = np.random.default_rng(1)
    detail = rng.normal(0, 20, (40, 50, 3)).astype(np.float32)
    canvas = rng.normal(0, 20, (12, 12, 3)).astype(np.float32)
    cand = rng.integers(0, 28, (9, 2)).astype(np.int64)
    pix = np.argwhere(rng.random((12, 12)) < 0.4).astype(np.int64)
    cost, offset = tx._ssd_costs(detail, cand, canvas, pix, 0.25)
    ref_cost, ref_offset = tx._reference_ssd_costs(detail, cand, canvas, pix, 0.25)
    np.testing.assert_allclose(cost, ref_cost, rtol=1e-6)
    np.testing.assert_allclose(offset, ref_offset, rtol=1e-6, atol=1e-6)


def test_compose_kernel_matches_reference():
    rng = np.random.default_rng(2)
    step, half = 6, 2
    detail = rng.normal(0, 20, (30, 30, 3)).astype(np.float32)
    src = rng.integers(0, 30 - step - 2 * half, (4, 4, 2)).astype(np.int64)
    off = rng.normal(0, 3, (4, 4, 3)).astype(np.float32)
    y0 = x0 = 7  # rows/cols 7..16: cores 1-2, owners 1-3 (rmin = cmin = 1, tables cover 1..4)
    hh = ww = 10
    core_r = (np.arange(y0, y0 + hh) // step)[:, None].repeat(ww, 1)
    core_c = (np.arange(x0, x0 + ww) // step)[None, :].repeat(hh, 0)
    r_w = np.clip(rng.random((hh, ww)) * 2 - 0.5, 0, 1).astype(np.float32)
    c_w = np.clip(rng.random((hh, ww)) * 2 - 0.5, 0, 1).astype(np.float32)
    args = (detail, src, off, 1, 1, core_r, core_r + 1, r_w, core_c, core_c + 1, c_w, y0, x0, step, half)
    np.testing.assert_allclose(tx._compose(*args), tx._reference_compose(*args), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family,lattice", [
    ("brick", None), ("wood", None), ("noise", None), ("fabric", None),
    ("noise", ("1d", [[0.0, 20.0], [0.0, 0.0]])),  # whole-texel period along the rows
    ("noise", ("1d", [[3.0, 20.4], [0.0, 0.0]])),  # a period with no whole-texel multiple in the exemplar
    ("noise", ("2d", [[21.33, 0.0], [5.1, 31.7]])),  # likewise, in 2-D
])
def test_compiled_regions_match_the_python_reference(monkeypatch, family, lattice):
    """``TextureModel.region`` (texture_kernels: cells, cuts and composition compiled) gives the texels of the
    plain-Python path, texel for texel: inside, across and far outside the exemplar's box, two seeds, any order."""
    if lattice is not None:  # the synthesis under a given lattice is under test here, not the detector
        kind, vectors = lattice
        monkeypatch.setattr(tx, "detect_lattice", lambda *a: tx.Lattice(kind, np.array(vectors), 0.9))
    rgb, valid = exemplar(plane(family))
    model = TextureModel.fit(rgb, valid, 0.01, origin_px=(7, -13))
    assert model.lattice.kind == (lattice[0] if lattice else model.lattice.kind)
    windows = [((-20, -30), (64, 64)), ((7, -13), (96, 128)), ((200, -300), (64, 64)), ((-500, 40), (37, 53))]
    for seed in (0, 5):
        for top_left, shape in windows + windows[::-1]:  # again, from the cache of cells
            fast = model.region(top_left, shape, seed)
            np.testing.assert_array_equal(fast, model.reference_region(top_left, shape, seed))


def test_push_pull_fill_keeps_known_and_fills_smoothly():
    values = np.zeros((16, 16, 1))
    values[:, :8] = 10.0
    values[:, 8:] = 30.0
    weight = np.ones((16, 16))
    weight[4:12, 4:12] = 0
    out = tx.push_pull_fill(values, weight)
    np.testing.assert_allclose(out[weight > 0], values[weight > 0])
    assert 10.0 <= out[4:12, 4:12].min() and out[4:12, 4:12].max() <= 30.0
    assert out[8, 4] < out[8, 11]  # nearer the dark side is darker


# ---------------------------------------------------------------------------------------------------------------
# Borrowing an exemplar
# ---------------------------------------------------------------------------------------------------------------


def test_pick_exemplar_borrows_from_the_most_similar_surface():
    up = (0.0, -1.0, 0.0)  # world frame with y down, as the cameras'
    floor = Surface(normal=(0.0, -1.0, 0.0), mean_rgb=(120, 80, 50), observed_texels=5000)
    wall = Surface(normal=(1.0, 0.0, 0.0), mean_rgb=(200, 200, 190), observed_texels=9000)
    wall2 = Surface(normal=(0.0, 0.0, 1.0), mean_rgb=(90, 90, 90), observed_texels=100)
    empty_floor = Surface(normal=(0.0, -1.0, 0.0), observed_texels=0)
    assert tx.pick_exemplar(Surface(normal=(0.02, -1.0, 0.0)), [wall, floor, wall2], up) == 1  # floor from floor
    assert tx.pick_exemplar(Surface(normal=(-1.0, 0.0, 0.0)), [floor, wall, wall2], up) == 1  # parallel wall
    assert tx.pick_exemplar(Surface(normal=(0.0, 0.0, -1.0), mean_rgb=(95, 90, 92)), [floor, wall, wall2], up) == 2
    assert tx.pick_exemplar(Surface(normal=(0.0, 1.0, 0.0)), [floor, wall], up) == 1  # ceiling: a wall, not floor
    assert tx.pick_exemplar(Surface(normal=(0.0, -1.0, 0.0)), [empty_floor], up) is None
    # the descriptors tell brick from plaster and from a differently coloured brick
    brick_a = TextureModel.fit(*exemplar(plane("brick", seed=1)), texel_m=0.02)
    brick_b = TextureModel.fit(*exemplar(plane("brick", seed=2)), texel_m=0.02)
    plaster = TextureModel.fit(*exemplar(plane("noise", cells=8)), texel_m=0.02)
    da, db, dp = tx.describe(brick_a), tx.describe(brick_b), tx.describe(plaster)
    assert tx.texture_distance(da, db) < tx.texture_distance(da, dp)


def test_rescale_exemplar_keeps_metres():
    big = plane("brick")
    rgb, valid = exemplar(big)
    small_rgb, small_valid = tx.rescale_exemplar(rgb, valid, from_texel_m=0.01, to_texel_m=0.02)
    assert small_rgb.shape == (48, 64, 3) and small_valid.shape == (48, 64) and small_rgb.dtype == np.uint8
    assert small_valid.sum() < valid.sum() / 4  # holes grow: a texel touching a hole is not observed
    model = TextureModel.fit(small_rgb, small_valid, texel_m=0.02)
    assert model.kind == "periodic"
    course_m = TEX_PX / 12 * 0.01  # brick courses are 10.67 cm, whatever the texel size
    rows_m = [abs(v[0]) * model.texel_m for v in model.lattice.vectors_px if abs(v[0]) > 0.5]
    assert rows_m and all(abs(r / course_m - round(r / course_m)) < 0.1 for r in rows_m), rows_m
    big_rgb, big_valid = tx.rescale_exemplar(rgb, valid, 0.01, 0.005)
    assert big_rgb.shape == (192, 256, 3)
    np.testing.assert_allclose(big_rgb[big_valid].mean(0), rgb[valid].mean(0), atol=3)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_bad_input_raises_naming_the_argument(noise):
    big, rgb, valid, model = noise
    cases = [
        (lambda: TextureModel.fit(rgb, np.zeros_like(valid), 0.02), "valid"),  # empty exemplar
        (lambda: TextureModel.fit(rgb.astype(np.float32), valid, 0.02), "rgb"),
        (lambda: TextureModel.fit(rgb[..., :2], valid, 0.02), "rgb"),
        (lambda: TextureModel.fit(rgb, valid[:-1], 0.02), "valid"),
        (lambda: TextureModel.fit(rgb, valid.astype(np.uint8), 0.02), "valid"),
        (lambda: TextureModel.fit(rgb[:4, :4], valid[:4, :4], 0.02), "rgb"),
        (lambda: TextureModel.fit(rgb, valid, 0.0), "texel_m"),
        (lambda: TextureModel.fit(rgb, valid, float("nan")), "texel_m"),
        (lambda: TextureModel.fit(rgb.tolist(), valid, 0.02), "rgb"),
        (lambda: tx.synthesize_tile(model, (1,), 0), "tile_ij"),
        (lambda: tx.synthesize_tile(model, (1.5, 0), 0), "tile_ij"),
        (lambda: tx.synthesize_tile(model, (0, 0), "x"), "seed"),
        (lambda: tx.synthesize_tile("model", (0, 0), 0), "model"),
        (lambda: tx.synthesize_region(model, (0, 0), (0, 5), 0), "shape_px"),
        (lambda: tx.rescale_exemplar(rgb, valid, 0.02, -1.0), "to_texel_m"),
        (lambda: tx.texels_at(model, np.zeros(3, int), np.zeros(2, int), 0), "rows and cols"),
        (lambda: tx.texels_at(model, np.zeros(3), np.zeros(3), 0), "rows and cols"),
        (lambda: tx.sample_uv(model, np.zeros((3, 3)), np.zeros(3), 0), "uv_m"),
        (lambda: tx.sample_uv(model, np.full((1, 2), np.nan), np.zeros(1), 0), "uv_m"),
    ]
    for call, name in cases:
        with pytest.raises(InvalidInputError, match=name):
            call()


def test_compiled_shading_matches_the_numpy_reference():
    """``texture_kernels.shade_region`` (shading continued off the box, observed edge faded in) against
    ``TextureModel.reference_shaded``: inside the box, across its edge, a few texels off it and far away."""
    rgb, valid = exemplar(plane("brick"))
    light = np.linspace(0.6, 1.2, rgb.shape[1])[None, :, None]
    model = TextureModel.fit(np.clip(rgb * light, 0, 255).astype(np.uint8), valid, 0.01, origin_px=(7, -13))
    rng = np.random.default_rng(3)
    for r0, c0 in ((7, -13), (-20, -40), (60, 100), (-9, 110), (3000, -3000)):
        detail = rng.normal(0, 20, (40, 56, 3)).astype(np.float32)
        ys, xs = np.arange(r0, r0 + 40), np.arange(c0, c0 + 56)
        want = model.reference_shaded(detail.copy(), ys, xs)
        got = detail.copy()
        tx.texture_kernels.shade_region(got, r0, c0, model.shading, model.shading_mean, model.shading_decay_px,
                                        model._edge_weight, model._edge_value, *model.origin_px, model._edge_feather)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)


def test_compiled_far_field_matches_the_numpy_reference():
    """``texture_kernels.far_texels`` (mirror-repeated far-field detail plus the continued shading; the model adds
    its far offset) against ``TextureModel.reference_far_texels`` at mip levels 2-4, inside, beside and far from
    the exemplar's box."""
    rgb, valid = exemplar(plane("wood"))
    model = TextureModel.fit(rgb, valid, 0.01, origin_px=(7, -13))
    rng = np.random.default_rng(8)
    rows = rng.integers(-3000, 3000, 4000)
    cols = rng.integers(-3000, 3000, 4000)
    for level in (2, 3, 4):
        want = model.reference_far_texels(rows, cols, level, seed=1)
        got = tx.texture_kernels.far_texels(model._far_pyramid(1)[level], rows, cols, level, *model.origin_px,
                                            model.shading, model.shading_mean, model.shading_decay_px)
        np.testing.assert_allclose(got + model._far_offset, want, rtol=0, atol=2e-3)  # the model adds its offset
        np.testing.assert_array_equal(model._far_texels(rows, cols, level, 1),
                                      np.clip(np.rint(got + model._far_offset), 0, 255).astype(np.uint8))


def test_compiled_periodic_copy_matches_the_numpy_reference():
    """``texture_kernels.periodic_copy`` (each missing texel from the first shift with an observed source) against
    ``texture._reference_periodic_copy`` (a numpy pass per shift): the same texels, marks and shifts, bit for bit,
    on a brick exemplar's lattice shifts and on random shifts with sources off the box."""
    rgb, valid = exemplar(plane("brick"))
    model = TextureModel.fit(rgb, valid, 0.01)
    h, w = valid.shape
    rng = np.random.default_rng(4)
    detail = rng.normal(0, 30, (h, w, 3)).astype(np.float32)
    observed = valid & (rng.random((h, w)) < 0.6)
    n = 2 if model.lattice.kind == "2d" else 1
    lattice_shifts = tx._lattice_shifts(model._copy_basis[:n], (h, w))
    for shifts in (lattice_shifts, rng.integers(-w, w, (40, 2)).astype(np.int64)):
        want = tx._reference_periodic_copy(detail, observed, shifts)
        got = (detail.copy(), observed.copy(), np.zeros((h, w, 2), np.int64))
        tx.texture_kernels.periodic_copy(detail, observed, shifts, *got)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        assert got[1].sum() > observed.sum()  # some texels were filled


# ---------------------------------------------------------------------------------------------------------------
# Invented texels keep the observed texel-scale contrast (``TextureModel._restore_contrast``)
# ---------------------------------------------------------------------------------------------------------------


def test_invented_texels_keep_the_observed_contrast_of_a_sparsely_observed_plane():
    """A plane seen at an angle is observed in columns with gaps (every third one here) and not at all in a corner:
    the gaps' smooth pre-fill went into the copied patches, and the invented texels stepped 0.77 as much as the
    observed ones (planks). With the fine band's gain they step as much, their spread stays the exemplar's, and
    the observed texels are shown as observed."""
    big = plane("wood")
    rgb, valid = exemplar(big, holes=False)
    valid[:, np.arange(valid.shape[1]) % 3 == 1] = False
    valid[:40, :50] = False
    model = TextureModel.fit(rgb, valid, texel_m=0.02)
    assert 1.0 < model.detail_gain <= tx.DETAIL_GAIN_MAX
    out = tx.synthesize_region(model, (250, -300), (160, 160), seed=5)
    observed = tx._mean_step(luma(rgb), valid)
    assert 0.85 <= tx._mean_step(luma(out), None) / observed <= 1.3
    assert 0.7 <= luma(out).std() / luma(rgb)[valid].std() <= 1.3
    box = tx.synthesize_region(model, model.origin_px, model.shape_px, seed=5)
    np.testing.assert_array_equal(box[valid], rgb[valid])
    # a pure function of the exemplar: a fresh fit (as after save/load) has the same gain and texels
    again = TextureModel.fit(rgb, valid, texel_m=0.02)
    assert again.detail_gain == model.detail_gain
    np.testing.assert_array_equal(tx.synthesize_region(again, (250, -300), (160, 160), seed=5), out)
    # a fully observed exemplar's invented texels already step as its own do: no gain to speak of
    full = TextureModel.fit(*exemplar(big, holes=False), texel_m=0.02)
    assert full.detail_gain < 1.1


def test_an_exemplar_seen_as_a_sparse_strip_continues_without_its_lines():
    # the house's ceiling, seen at a grazing angle above the far wall: a strip of it observed, holding lines along
    # its length (the wall's top row within the plane's tolerance, a bright row of the grazing view); no patch
    # window of the quilt was 3/4 observed, and every patch it copied carried those lines: streaks across the
    # whole ceiling (session 32). Such an exemplar is continued as noise in both bands: as much detail across the
    # strip as along it
    big = plane("noise", cells=8)
    rgb, _ = exemplar(big, shape=(120, 128), holes=False)
    rgb[:, 40:42] = (90, 80, 75)
    rgb[:, 48] = np.clip(rgb[:, 48].astype(int) + 30, 0, 255)
    xx = np.mgrid[:120, :128][1]
    for cols, sparse in (((40, 56), True), ((40, 100), False)):
        valid = (xx >= cols[0]) & (xx < cols[1])
        model = TextureModel.fit(rgb, valid, texel_m=0.04)
        region = luma(model.region((600, 600), (192, 192), seed=0))
        step_down = np.abs(np.diff(region, axis=0)).mean()  # along the lines
        step_across = np.abs(np.diff(region, axis=1)).mean()
        assert 0.75 < step_across / step_down < 1.33 if sparse else step_across / step_down < 1.33
        np.testing.assert_array_equal(tx.continue_exemplar(model, 0)[valid], rgb[valid])


def test_a_texture_reads_the_same_mean_colour_near_and_far():
    """The tiles (mip 0-1) quilt patches from the exemplar's fully observed windows, the far field (mip 2 on)
    mirrors the whole box: where the observed windows are darker than the sparsely seen rest, they differed in mean
    colour, and points invented far off stood as a lighter grid among the gaps seen near. The far field carries
    the tiles' offset (``_far_offset_on``)."""
    rng = np.random.default_rng(3)
    h, w = 96, 128
    rgb = np.clip(rng.normal(100, 6, (h, w, 1)) * np.ones((1, 1, 3)), 0, 255)
    valid = np.ones((h, w), bool)
    xx = np.mgrid[:h, :w][1]
    sparse = xx >= 64  # the right half seen sparsely (no patch window there), and lighter
    rgb[sparse] += 40
    valid &= ~(sparse & (rng.uniform(size=(h, w)) < 0.6))
    model = TextureModel.fit(rgb.astype(np.uint8), valid, texel_m=0.02)
    assert model.kind == "stochastic"
    rows = np.repeat(np.arange(400, 528, dtype=np.int64), 128)  # far from the box, both fields synthesised
    cols = np.tile(np.arange(600, 728, dtype=np.int64), 128)
    means = {}
    for lv in (0, 2):
        out = np.empty((len(rows), 3), np.uint8)
        tx.read_texels(model, rows, cols, np.full(len(rows), lv, np.int64), 5, None, out)
        means[lv] = out.astype(np.float64).mean(0)
    near_far = np.abs(means[0] - means[2]).max()
    model._far_offset = np.zeros(3, np.float32)
    plain = np.empty((len(rows), 3), np.uint8)
    tx.read_texels(model, rows, cols, np.full(len(rows), 2, np.int64), 5, None, plain)
    without = np.abs(plain.astype(np.float64).mean(0) - means[0]).max()  # what the far field alone is off by
    assert without > 0.5 and near_far < 0.25 * without, (near_far, without)
