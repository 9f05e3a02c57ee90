"""Exemplar-based texture synthesis in a plane's rectified texture space (issue 10, section 3).

A plane's texture space has one texel per point spacing: rows run along the plane's v axis, columns along u.
The exemplar is what the memory observed on that plane, rasterised there: ``rgb`` ``[H, W, 3]`` uint8 and
``valid`` ``[H, W]`` bool (irregular, with holes). Its texel ``[0, 0]`` sits at texture-space texel ``origin_px``.

Usage (the generator's side)::

    model = TextureModel.fit(rgb, valid, texel_m=0.02)           # once per plane; deterministic
    tile = synthesize_tile(model, (i, j), seed)                   # [T, T, 3] uint8, rows i*T.., cols j*T..
    filled = continue_exemplar(model, seed)                       # the exemplar's own box: holes continued
    k = pick_exemplar(target, candidates, up)                     # no exemplar of its own: borrow one
    rgb2, valid2 = rescale_exemplar(rgb, valid, 0.02, 0.05)       # ... at the borrower's texel size
    colours = texels_at(model, rows, cols, seed)                  # [N, 3] at texel (rows[n], cols[n])
    colours = sample_uv(model, uv_m, footprint_m, seed)           # [M, 3] at plane metres, mip by footprint

How it stays the same however it is asked for
---------------------------------------------
The whole infinite plane is covered by one global lattice of square *cells* (``step_px`` apart). Each cell copies a
``P x P`` patch (its core plus ``overlap_px / 2`` on every side) of the exemplar's shading-free *detail*; where two
cells meet, ownership of the overlap band is decided by a minimum-error boundary cut (image quilting, Efros and
Freeman 2001) whose ends are pinned to the lattice corners, so every cut depends on its two cells only. A cell's
patch is chosen to match only neighbours that come before it in a fixed, bounded order:

- level 0: cells whose patch covers observed texels: the identity copy when the patch is fully observed, else the
  candidate that best matches the observed texels (so invented texels join the seen ones);
- even rows: left to right in chunks of ``CHAIN_CELLS`` cells, each matching its left neighbour (a chunk's first
  cell is a keyed random choice), as the first row of raster-order quilting;
- odd rows: matching the even rows above and below and, within a chunk, the left neighbour;
- everyone also matches observed (level-0) neighbours.

Candidates and the pick among near-best ones come from a hash of ``(seed, cell)``, so a texel's value is a pure
function of (exemplar, seed, position): tiles are identical in any order, adjacent tiles are windows of one image
(no tile seams at all), and a region looks the same after save/load (store the exemplar, refit).

Periodic textures (brick, tiles, planks) keep their period: the autocorrelation of the observed detail is searched
for a 1-D or 2-D lattice of peaks; when its peaks are strong, every patch is taken only from exemplar positions
congruent to its target modulo that lattice, so mortar and grout lines continue in place across the whole plane.
Stochastic textures use unrestricted candidates (quilting), for their fine band only: their coarse band (a
Gaussian of ``COARSE_SPLIT_PX`` texels) is random-phase noise with the radial mean of the exemplar's coarse-band
spectrum, periodic over ``COARSE_NOISE_PX`` texels and blended into the exemplar's own coarse band where it was
observed (``TextureModel._coarse_at``). Patches are never rotated, so grain keeps its direction.

Shading (the low frequencies: a light gradient, a shadow) is split off before synthesis by a normalised Gaussian
blur of the observed texels and added back at the target position: inside the exemplar's box as observed and
smoothly filled, outside it continued from the nearest box texel and relaxing towards the mean with distance.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import structlog
from scipy import fft as sfft
from scipy import ndimage

from spatia.model.fill.texture import synthesis_kernels as texture_kernels
from spatia.world.errors import InvalidInputError

log = structlog.get_logger(__name__)

DEFAULT_TILE_PX = 64
DEFAULT_STEP_PX = 24  # cell pitch: large enough to carry structure, small enough for many candidates
DEFAULT_OVERLAP_PX = 8  # band width between cells in which the boundary cut runs
MIN_EXEMPLAR_PX = 8  # per side: below this there is no patch to copy
MIN_VALID_TEXELS = 32
PERIODIC_MIN_STRENGTH = 0.35  # normalised autocorrelation at the lattice vectors above which we keep the period
UNCHECKED_PERIOD_MIN_STRENGTH = 0.75  # the same, for a period whose double shift the exemplar is too small to show
MIN_PERIOD_PX = 3.0  # a period shorter than this many texels is noise correlation, not a pattern
PEAK_PROMINENCE = 0.15  # ac(d) - ac(d / 2): a period's half-shift must be clearly less alike than the period
CHAIN_CELLS = 4  # cells per left-to-right matching chain in a row (longer: fewer free cells, more work per tile)
NUM_CANDIDATES = 64
DC_WEIGHT = 0.25  # a patch's mean colour difference counts a quarter in its cost: it is corrected by an offset
PICK_TOLERANCE = 0.1  # any candidate within 10% of the best cost may be picked (keyed), as in image quilting
EDGE_FEATHER_PX = 3  # invented texels fade in over this many texels from the observed ones
SOURCE_VALID_FRACTION = 0.9  # a source window may have up to 10% unobserved (smoothly pre-filled) texels
LATTICE_WINDOW_PX = 320  # periodicity is measured on at most this many texels a side
# Contrast of the invented texels (``TextureModel._restore_contrast``): the synthesised detail's mean texel-to-texel
# step, measured on a probe region away from the exemplar's box, is brought up to the observed texels' own, by a
# gain on the detail's fine band of at most this much (never down). The copied patches carry the pre-filled holes'
# smooth texels (a wall seen at an angle is observed in every other column; push-pull fills the gaps) and the
# boundary cuts' cross-fades, and the least-error pick prefers the flattest candidates: the invented texels of
# sparsely observed stochastic planes stepped far less than the observed ones (docs/BENCHMARKS.md, session 18).
DETAIL_GAIN_MAX = 2.0
CONTRAST_PROBE_PX = 128  # side of the probe region (texels)
CONTRAST_BLUR_PX = 1.0  # sigma (texels) of the blur that splits the detail's fine band off
CONTRAST_PROBE_SEED = 0  # the probe's own key: the gain is a function of the exemplar alone, not of a world seed
_CACHE_LIMIT = 200_000
TILE_CACHE = 256  # tiles kept per model for texels_at (256 x 12 kB at 64 x 64)
# From this mip level on (a pixel covering 4 x 4 texels or more: beyond ~8 m at 640x360, 75 deg, 1 cm texels),
# ``sample_uv`` reads the far-field texture instead of tiles: a periodic texture's is the exemplar's box with its
# holes continued, its detail mirror-repeated, plus the shading continued there; a stochastic texture's is its coarse
# band's mips (below), the fine band's mirror-repeated and the shading: the tiles' own mips there, up to what the fine
# band leaves at that mip. Reading tiles there meant synthesising a whole 64 x 64 tile for one or a few pixels: far
# ground outdoors crosses thousands of tiles (a courtyard frame spent ~170 ms on them).
# At that distance a pixel averages 16+ texels, so quilted and mirror-repeated detail look alike (courtyard frames
# compared side by side at levels 2, 3 and without: no visible difference; docs/BENCHMARKS.md has the cost).
FAR_LEVEL = 2
# A stochastic texture's coarse band (what a Gaussian of COARSE_SPLIT_PX texels keeps of its detail) is not quilted:
# it is random-phase noise with the radial mean of the exemplar's own coarse-band spectrum (as spot noise: white
# noise keyed by the seed, filtered; Galerne, Gousseau and Morel 2011) along the material's principal colour axis
# (``TextureModel._coarse_noise``), periodic over COARSE_NOISE_PX texels (a multiple of every tile mip), blended into
# the exemplar's own coarse band within ~COARSE_BLEND_PX texels of its observed texels. Quilted whole, a low-contrast
# mottle showed its cells as blocks with brightness steps; and the far field (mirror-repeated, above) and the tiles
# held unrelated coarse content, so points invented far off and the gaps between them seen near differed by 4-5 grey
# levels: stripes (docs/RESULTS.md, session 31).
# Now the far field of a stochastic texture is this coarse band's mips: one texture at every distance. The spectrum's
# radial mean, since an exemplar seen at a grazing angle is blurred along the view: a ceiling's, taken as it was, made
# streaks converging on the horizon; the fine band, quilted, keeps a texture's direction (grain).
# Only an exemplar with a spectrum to measure: at least COARSE_MIN_SIDE_PX texels a side, COARSE_MIN_OBSERVED of it
# observed (a small one is quilted whole as before: its tapered spot spread its spectrum, a 37 x 79 texel one's
# noise stepped 3x as much as the exemplar; at 0.5 observed the house's ceiling, seen at a grazing angle, was left
# quilted and striped)
COARSE_SPLIT_PX = 2.0
COARSE_NOISE_PX = 256
COARSE_BLEND_PX = 8.0
COARSE_MIN_SIDE_PX = 48
COARSE_MIN_OBSERVED = 0.1
COARSE_OUTLIER_SIGMA = 3.0  # coarse colours this many robust sigmas off the median are not the material's
COARSE_TILT_MAX = 1.5  # the most the coarse noise's spectrum is tilted towards its upper end (``_coarse_noise``)
# ... and such an exemplar with no patch window this much observed is not quilted at all: its whole detail is that
# noise. The house's ceiling, seen at a grazing angle above the far wall, was a strip (best window 0.66 observed)
# holding lines along its length (the wall's top row within the plane's tolerance, bright rows of the grazing
# view), and every patch the quilt copied carried them: streaks across the whole ceiling (texel steps 3.8 across
# them, 0.95 along; as noise 0.98 and 0.98, its outliers clipped; docs/RESULTS.md, session 32). Well-observed
# exemplars (the default items' other stochastic ones: 0.81-1.0) keep their quilted fine band and its direction
QUILT_MIN_WINDOW_OBSERVED = 0.75
_COARSE_NOISE_TAG = 0x636F61727365  # the noise's own stream of a seed ("coarse")

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


# ---------------------------------------------------------------------------------------------------------------
# Keyed hashing (splitmix64): stable across numpy versions, unlike Generator streams
# ---------------------------------------------------------------------------------------------------------------


def _mix64(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _key_hash(*parts: int) -> int:
    h = _GOLDEN
    for p in parts:
        h = _mix64(h ^ (int(p) & _M64))
    return h


def _hash_stream(h: int, n: int) -> np.ndarray:
    """``[n]`` uint64 pseudo-random values derived from key hash ``h`` (splitmix64 over a counter)."""
    x = np.uint64(h) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# ---------------------------------------------------------------------------------------------------------------
# Kernels (numba) and their plain references
# ---------------------------------------------------------------------------------------------------------------


# the compiled kernels (and the compiled region path) live in texture_kernels; these names are the reference
# path's (and the tests') handles on them
_ssd_costs = texture_kernels.ssd_costs
_pinned_seam = texture_kernels.pinned_seam
_compose = texture_kernels.compose


def _reference_compose(detail, src, off, rmin, cmin, r_lo, r_hi, r_w, c_lo, c_hi, c_w, y0, x0, step, half):
    """Slow twin of ``_compose``: all four owner combinations gathered with numpy and blended."""
    hh, ww = r_lo.shape
    ys, xs = np.arange(y0, y0 + hh)[:, None], np.arange(x0, x0 + ww)[None, :]

    def fetch(row, col):
        owner = src[row - rmin, col - cmin]
        return detail[owner[..., 0] + ys - (row * step - half), owner[..., 1] + xs - (col * step - half)] + off[
            row - rmin, col - cmin
        ]

    a, b = c_w[..., None].astype(np.float64), r_w[..., None].astype(np.float64)
    return (1 - b) * ((1 - a) * fetch(r_lo, c_lo) + a * fetch(r_lo, c_hi)) + b * (
        (1 - a) * fetch(r_hi, c_lo) + a * fetch(r_hi, c_hi)
    )


def _reference_pinned_seam_cost(err: np.ndarray, lo: int, hi: int) -> float:
    """Slow twin of ``_pinned_seam``: the least total error over *all* admissible paths, by enumeration."""
    import itertools

    n_rows, width = err.shape
    mid = width // 2
    best = math.inf
    for steps in itertools.product((-1, 0, 1), repeat=n_rows - 1):
        x, total, ok = mid, float(err[0, mid]), True
        for y, dx in enumerate(steps, start=1):
            x += dx
            if not lo <= x <= hi:
                ok = False
                break
            total += float(err[y, x])
        if ok and x == mid:
            best = min(best, total)
    return best


def _reference_ssd_costs(detail, cand, canvas, pix, dc_weight) -> tuple[np.ndarray, np.ndarray]:
    """Slow twin of ``_ssd_costs`` in plain numpy."""
    costs, offsets = [], []
    for cy, cx in cand:
        d = canvas[pix[:, 0], pix[:, 1]].astype(np.float64) - detail[cy + pix[:, 0], cx + pix[:, 1]].astype(np.float64)
        mean = d.mean(0)
        costs.append(float((d.var(0) + dc_weight * mean**2).sum()))
        offsets.append(mean)
    return np.asarray(costs), np.asarray(offsets)


# ---------------------------------------------------------------------------------------------------------------
# Image helpers
# ---------------------------------------------------------------------------------------------------------------


def push_pull_fill(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Fill texels of zero weight smoothly from their surroundings (push-pull pyramid; Gortler et al. 1996).

    values [H, W, C] float; weight [H, W] float >= 0 (0 = missing). Texels with weight >= 1 keep their value.
    Also the benchmark's baseline fill. Returns float32 [H, W, C].
    """
    v = np.asarray(values, np.float32)
    w = np.clip(np.asarray(weight, np.float32), 0.0, 1.0)
    if v.ndim != 3 or w.shape != v.shape[:2]:
        raise InvalidInputError(f"push_pull_fill needs values [H, W, C] and weight [H, W], got {v.shape}, {w.shape}")
    if w.max(initial=0.0) <= 0:
        return np.zeros(v.shape, np.float32)
    levels = [(v * w[..., None], w)]
    while min(levels[-1][1].shape) > 1:
        pv, pw = levels[-1]
        h2, w2 = (pw.shape[0] + 1) // 2, (pw.shape[1] + 1) // 2
        pv = np.pad(pv, ((0, h2 * 2 - pv.shape[0]), (0, w2 * 2 - pv.shape[1]), (0, 0)))
        pw = np.pad(pw, ((0, h2 * 2 - pw.shape[0]), (0, w2 * 2 - pw.shape[1])))
        sv = pv.reshape(h2, 2, w2, 2, -1).sum((1, 3))
        sw = pw.reshape(h2, 2, w2, 2).sum((1, 3))
        levels.append((sv, sw))
    # pull: coarse-to-fine, each level's missing mass taken from the (already complete) coarser level
    cv_, cw = levels[-1]
    est = cv_ / np.maximum(cw, 1e-12)[..., None]
    for pv, pw in reversed(levels[:-1]):
        # bilinear, not nearest: a filled region must be smooth, not made of 2^k blocks
        h2, w2 = est.shape[:2]
        up = cv2.resize(est.astype(np.float32), (2 * w2, 2 * h2), interpolation=cv2.INTER_LINEAR)
        up = up.reshape(2 * h2, 2 * w2, -1)[: pw.shape[0], : pw.shape[1]]
        a = np.clip(pw, 0.0, 1.0)[..., None]
        est = np.where(pw[..., None] > 0, pv / np.maximum(pw, 1e-12)[..., None], up) * a + up * (1 - a)
    return est.astype(np.float32)


def _normalised_blur(rgb: np.ndarray, valid: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of the valid texels only (normalised convolution), filled by push-pull where no valid texel
    is within reach. rgb [H, W, 3] float32, valid [H, W] bool. Returns [H, W, 3] float32.

    The result is smooth on the scale of ``sigma_px``, so it is computed on a grid ``sigma / 4`` times coarser
    (area sums) and interpolated back: the same field at a fraction of the cost of a 6-sigma kernel."""
    h, w = valid.shape
    f = max(1, int(sigma_px // 4))
    hc, wc = -(-h // f), -(-w // f)
    m = np.pad(valid.astype(np.float32), ((0, hc * f - h), (0, wc * f - w)))
    v = np.pad(rgb * valid[..., None], ((0, hc * f - h), (0, wc * f - w), (0, 0)))
    m_c = m.reshape(hc, f, wc, f).sum((1, 3)) / (f * f)
    v_c = v.reshape(hc, f, wc, f, 3).sum((1, 3)) / (f * f)
    sc = sigma_px / f
    k = int(2 * math.ceil(3 * sc) + 1)
    num = cv2.GaussianBlur(v_c, (k, k), sc, borderType=cv2.BORDER_CONSTANT)
    den = cv2.GaussianBlur(m_c, (k, k), sc, borderType=cv2.BORDER_CONSTANT)
    ok = den > 0.05
    out = np.where(ok[..., None], num / np.maximum(den, 1e-6)[..., None], 0.0).astype(np.float32)
    if not ok.all():
        filled = push_pull_fill(out, ok.astype(np.float32))
        smooth = cv2.GaussianBlur(filled, (k, k), sc, borderType=cv2.BORDER_REPLICATE)
        out = np.where(ok[..., None], out, smooth)
    if f > 1:  # coarse cell centres sit at (i + 0.5) * f - 0.5 fine texels
        ys = np.clip((np.arange(h) + 0.5) / f - 0.5, 0, hc - 1).astype(np.float32)
        xs = np.clip((np.arange(w) + 0.5) / f - 0.5, 0, wc - 1).astype(np.float32)
        mx, my = np.meshgrid(xs, ys)
        out = cv2.remap(
            np.ascontiguousarray(out, np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
    return out.astype(np.float32)


def _best_window(valid: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """(row, col, height, width) of the window of at most ``size`` x ``size`` with the most valid texels (the
    whole exemplar when it is that small). Searched on a stride of size / 8."""
    h, w = valid.shape
    wh, ww = min(h, size), min(w, size)
    if (wh, ww) == (h, w):
        return 0, 0, h, w
    ii = np.pad(valid.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    stride = max(1, size // 8)
    ys = np.unique(np.r_[np.arange(0, h - wh + 1, stride), h - wh])
    xs = np.unique(np.r_[np.arange(0, w - ww + 1, stride), w - ww])
    tot = ii[np.ix_(ys + wh, xs + ww)] - ii[np.ix_(ys, xs + ww)] - ii[np.ix_(ys + wh, xs)] + ii[np.ix_(ys, xs)]
    a, b = np.unravel_index(int(np.argmax(tot)), tot.shape)
    return int(ys[a]), int(xs[b]), wh, ww


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _blur(y: np.ndarray) -> np.ndarray:
    """``y`` [H, W] float32 blurred by a Gaussian of ``CONTRAST_BLUR_PX`` (edges reflected)."""
    return cv2.GaussianBlur(np.ascontiguousarray(y, np.float32), (0, 0), CONTRAST_BLUR_PX,
                            borderType=cv2.BORDER_REFLECT)


def _mean_step(y: np.ndarray, valid: np.ndarray | None) -> float:
    """Mean absolute difference between 4-neighbour texels of ``y`` [H, W] (both in ``valid`` [H, W] bool when
    given): the texel-scale detail that ``TextureModel._restore_contrast`` matches."""
    dx, dy = np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0))
    if valid is None:
        return float((dx.sum() + dy.sum()) / max(dx.size + dy.size, 1))
    mx, my = valid[:, 1:] & valid[:, :-1], valid[1:] & valid[:-1]
    n = int(mx.sum() + my.sum())
    return float((dx[mx].sum() + dy[my].sum()) / n) if n else 0.0


def _tilted_noise(amplitude: np.ndarray, radius: np.ndarray, white: np.ndarray,
                  step_per_spread: float) -> tuple[np.ndarray, float]:
    """``(noise [n, n] float32, t)``: white noise (``white``, its rfft2 [n, n // 2 + 1]) filtered by ``amplitude``
    [R] per integer frequency radius (``radius`` [n, n // 2 + 1]) times (1 + radius)^t, the least t in [0,
    COARSE_TILT_MAX] (bisection: the step grows with t) at which its mean texel step over its spread reaches
    ``step_per_spread`` (0: t = 0)."""
    n = radius.shape[0]
    made: dict[float, np.ndarray] = {}  # t -> its noise: the bisection's ends are returned, not made again

    def tilted(t: float) -> np.ndarray:
        if t not in made:
            made[t] = sfft.irfft2((amplitude * np.power(1.0 + np.arange(len(amplitude)), t))[radius] * white, s=(n, n))
        return made[t]

    def step(t: float) -> float:
        x = tilted(t)
        return _mean_step(x, None) / max(float(x.std()), 1e-6)

    if step(0.0) >= step_per_spread:
        return tilted(0.0), 0.0
    lo, hi = 0.0, COARSE_TILT_MAX
    if step(hi) <= step_per_spread:
        return tilted(hi), hi
    for _ in range(6):  # to 0.02 of t: ~10 ms less of a model's first use than 12 steps
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if step(mid) < step_per_spread else (lo, mid)
    return tilted(0.5 * (lo + hi)), 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------------------------
# Periodicity
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lattice:
    """Detected periodicity of an exemplar. ``vectors_px`` rows are (d_row, d_col) in texels; ``kind`` is
    ``"2d"`` (both rows used), ``"1d"`` (row 0 only: repeats along it, free across it) or ``"none"``."""

    kind: str
    vectors_px: np.ndarray  # [2, 2] float64
    strength: float  # normalised autocorrelation at the weakest lattice vector (1 = perfect repeat)

    @property
    def periods_px(self) -> tuple[float, ...]:
        n = {"2d": 2, "1d": 1}.get(self.kind, 0)
        return tuple(float(np.hypot(*self.vectors_px[i])) for i in range(n))


def _masked_autocorrelation(signal: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised autocorrelation of ``signal`` over valid texels and the overlap count, both ``[2H-1, 2W-1]``
    with zero shift at the centre ``(H-1, W-1)``. signal [H, W] float, valid [H, W] bool."""
    h, w = signal.shape
    m = valid.astype(np.float64)
    g = np.where(valid, signal - signal[valid].mean(), 0.0)
    var = float((g * g).sum() / max(m.sum(), 1.0))
    shape = (sfft.next_fast_len(2 * h - 1), sfft.next_fast_len(2 * w - 1))
    fg, fm = sfft.rfft2(g, shape), sfft.rfft2(m, shape)
    num = sfft.irfft2(fg * np.conj(fg), shape)
    den = sfft.irfft2(fm * np.conj(fm), shape)
    rows = np.r_[shape[0] - (h - 1) : shape[0], 0:h]
    cols = np.r_[shape[1] - (w - 1) : shape[1], 0:w]
    num, den = num[np.ix_(rows, cols)], np.rint(den[np.ix_(rows, cols)])
    ac = num / np.maximum(den, 1.0) / max(var, 1e-9)
    return ac, den


def _subpixel_peak(ac: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    """Parabolic refinement of a peak at integer index (iy, ix)."""

    def offset(a: float, b: float, c: float) -> float:
        den = a - 2 * b + c
        return 0.0 if abs(den) < 1e-12 else float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))

    dy = offset(ac[iy - 1, ix], ac[iy, ix], ac[iy + 1, ix]) if 0 < iy < ac.shape[0] - 1 else 0.0
    dx = offset(ac[iy, ix - 1], ac[iy, ix], ac[iy, ix + 1]) if 0 < ix < ac.shape[1] - 1 else 0.0
    return iy + dy, ix + dx


def detect_lattice(signal: np.ndarray, valid: np.ndarray) -> Lattice:
    """Find the period lattice of ``signal`` [H, W] (e.g. luma of the detail) over ``valid`` [H, W] bool texels.

    Peaks of the masked autocorrelation (where at least 30% of the valid texels overlap) that are local maxima,
    at least 3 texels from zero shift, and clearly more alike than their half shift are candidates; the shortest
    strong one is the first lattice vector, the shortest strong one not parallel to it the second. Each is refined
    to sub-texel precision from its furthest visible multiple.
    """
    none = Lattice("none", np.zeros((2, 2)), 0.0)
    h, w = signal.shape
    if valid.sum() < MIN_VALID_TEXELS or min(h, w) < 8:
        return none
    ac, den = _masked_autocorrelation(signal.astype(np.float64), valid)
    cy, cx = h - 1, w - 1
    trusted = den >= 0.2 * valid.sum()
    acm = np.where(trusted, ac, -np.inf)
    n_valid = float(valid.sum())
    # multiples of a found period are looked for with less overlap: at a known place a peak is credible sooner
    acr = np.where(den >= 0.1 * n_valid, ac, -np.inf)
    local_max = acr == ndimage.maximum_filter(acr, size=3, mode="constant", cval=-np.inf)
    # a peak must be a maximum also among the less trusted shifts around it: at the edge of the trusted area a
    # slope would otherwise pass for a peak
    peaks = (acm == ndimage.maximum_filter(acr, size=5, mode="constant", cval=-np.inf)) & (acm >= PERIODIC_MIN_STRENGTH)
    ys, xs = np.nonzero(peaks)
    dy, dx = ys - cy, xs - cx
    keep = ((dy > 0) | ((dy == 0) & (dx > 0))) & (dy * dy + dx * dx >= MIN_PERIOD_PX**2)
    half_y, half_x = cy + np.rint(dy / 2).astype(np.int64), cx + np.rint(dx / 2).astype(np.int64)
    keep &= ac[ys, xs] - ac[half_y, half_x] >= PEAK_PROMINENCE
    ys, xs, dy, dx = ys[keep], xs[keep], dy[keep], dx[keep]
    if len(ys) == 0:
        return none
    vals = ac[ys, xs]

    def refine(i: int) -> np.ndarray:
        """Sub-texel lattice vector: least-squares slope through the peaks at its visible multiples (a thin
        mortar line gives one-texel-wide peaks, so one peak alone is only good to about a quarter texel)."""
        q1 = np.array(_subpixel_peak(ac, ys[i], xs[i])) - (cy, cx)
        num, den_k = q1.copy(), 1.0
        for k in range(2, 9):
            est = num / den_k
            py, px = int(round(cy + k * est[0])), int(round(cx + k * est[1]))
            if not (1 <= py < ac.shape[0] - 1 and 1 <= px < ac.shape[1] - 1):
                break
            win = acr[py - 1 : py + 2, px - 1 : px + 2]  # 3x3: along a ridge a wider window would drift sideways
            wy, wx = np.unravel_index(int(np.argmax(win)), win.shape)
            qy, qx = py - 1 + wy, px - 1 + wx
            if not np.isfinite(acr[qy, qx]) or ac[qy, qx] < 0.7 * vals[i] or not local_max[qy, qx]:
                break
            qk = np.array(_subpixel_peak(ac, qy, qx)) - (cy, cx)
            num, den_k = num + k * qk, den_k + k * k
        return num / den_k

    def repeats(i: int) -> bool:
        """A period repeats: twice the shift is alike too (checked where visible, else a stricter strength)."""
        py, px = cy + 2 * dy[i], cx + 2 * dx[i]
        if 1 <= py < ac.shape[0] - 1 and 1 <= px < ac.shape[1] - 1 and den[py, px] >= 0.15 * n_valid:
            return float(ac[py - 1 : py + 2, px - 1 : px + 2].max()) >= max(0.6 * vals[i], PERIODIC_MIN_STRENGTH)
        return bool(vals[i] >= UNCHECKED_PERIOD_MIN_STRENGTH)

    good = [i for i in range(len(ys)) if repeats(i)]
    if not good:
        return none
    top = max(vals[i] for i in good)
    # shortest first, stronger first among equals; only peaks nearly as alike as the best one
    order = [i for i in sorted(good, key=lambda i: (dy[i] ** 2 + dx[i] ** 2, -vals[i])) if vals[i] >= 0.7 * top]
    a_i = order[0]
    a = refine(a_i)
    b_i = None
    for i in order[1:]:
        d = np.array([dy[i], dx[i]], np.float64)
        sin = abs(a[0] * d[1] - a[1] * d[0]) / (np.linalg.norm(a) * np.linalg.norm(d))
        if sin > 0.5:
            b_i = i
            break
    if b_i is None:
        # 1-D: stripes repeat across, not along, themselves; the autocorrelation is a ridge through a along the
        # stripes and the peak may sit anywhere on it, so take the ridge's direction and keep a's normal part
        reach = max(4.0, min(h, w) / 4.0)
        lam = np.linspace(-reach, reach, 17)
        best_dir, best_mean = None, -np.inf
        for theta in np.deg2rad(np.arange(0.0, 180.0, 2.0)):
            t = np.array([math.sin(theta), math.cos(theta)])  # (d_row, d_col)
            py = np.rint(cy + a[0] + lam * t[0]).astype(np.int64)
            px = np.rint(cx + a[1] + lam * t[1]).astype(np.int64)
            ok = (py >= 0) & (py < ac.shape[0]) & (px >= 0) & (px < ac.shape[1])
            vals_t = np.where(ok, acm[np.clip(py, 0, ac.shape[0] - 1), np.clip(px, 0, ac.shape[1] - 1)], -np.inf)
            score = float(np.mean(np.where(np.isfinite(vals_t), vals_t, -1.0)))
            if score > best_mean:
                best_dir, best_mean = t, score
        if best_dir is not None and best_mean >= 0.8 * vals[a_i]:
            a = a - np.dot(a, best_dir) * best_dir
        if not np.all(np.isfinite(a)) or float(np.hypot(*a)) < MIN_PERIOD_PX:
            # the ridge runs along a itself (a smooth, strongly correlated signal such as a random walk): nothing
            # repeats across it, and a copy vector near zero would give no phase to keep
            return none
        return Lattice("1d", np.array([a, [0.0, 0.0]]), float(vals[a_i]))
    b = refine(b_i)
    # Lagrange-Gauss reduction: the shortest, most orthogonal basis of the same lattice
    for _ in range(16):
        if np.dot(b, b) < np.dot(a, a):
            a, b = b, a
        mu = round(float(np.dot(a, b) / np.dot(a, a)))
        if mu == 0:
            break
        b = b - mu * a
    return Lattice("2d", np.array([a, b]), float(min(vals[a_i], vals[b_i])))


def _integer_superlattice(lattice: Lattice, shape: tuple[int, int]) -> np.ndarray:
    """The densest sublattice of ``lattice`` whose vectors are (within 0.2 texel) whole texels, as a reduced basis
    [2, 2] float64 (rows as vectors_px; row 1 unused for 1-D). Brick courses of 21.33 texels with 32-texel
    half-bricks give (0, 64) and (64, 32). Vectors must fit in 3/4 of the exemplar; without such a sublattice
    the lattice itself is returned (copies then round, and may sit a texel apart)."""
    out = lattice.vectors_px.copy()
    if lattice.kind == "none":
        return out
    limit = 0.75 * max(shape)
    rng = np.arange(-8, 9)
    if lattice.kind == "1d":
        coefs = rng[rng > 0][:, None].astype(np.float64)
        vecs = coefs @ lattice.vectors_px[:1]
    else:
        mm, nn = np.meshgrid(rng, rng, indexing="ij")
        coefs = np.stack([mm.ravel(), nn.ravel()], 1).astype(np.float64)
        vecs = coefs @ lattice.vectors_px
    length = np.hypot(vecs[:, 0], vecs[:, 1])
    ok = (length > 0.5) & (length <= limit) & (np.abs(vecs - np.rint(vecs)).max(1) <= 0.2)
    cand = np.rint(vecs[ok])
    cand = cand[np.argsort(np.hypot(cand[:, 0], cand[:, 1]), kind="stable")]
    if len(cand) == 0:
        return out
    v1 = cand[0]
    if lattice.kind == "1d":
        out[0] = v1
        return out
    for v in cand[1:]:
        if abs(v1[0] * v[1] - v1[1] * v[0]) > 0.5 * np.hypot(*v1) * np.hypot(*v):  # clearly not parallel
            v2 = v
            break
    else:
        return out
    for _ in range(16):  # Lagrange-Gauss reduction
        if v2 @ v2 < v1 @ v1:
            v1, v2 = v2, v1
        mu = round(float(v1 @ v2) / float(v1 @ v1))
        if mu == 0:
            break
        v2 = v2 - mu * v1
    out[0], out[1] = v1, v2
    return out


def _lattice_shifts(vecs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Whole-texel shifts round(m * a + n * b) inside +-shape, nearest first. vecs [1 or 2, 2]."""
    h, w = shape
    reach = int(min(8, math.ceil(max(h, w) / max(min(np.hypot(*v) for v in vecs), 1.0))))
    rng = np.arange(-reach, reach + 1)
    coefs = np.stack(np.meshgrid(rng, rng, indexing="ij"), -1).reshape(-1, 2) if len(vecs) == 2 else rng[:, None]
    shifts = np.rint(coefs @ vecs).astype(np.int64)
    shifts = shifts[(shifts != 0).any(1) & (np.abs(shifts[:, 0]) < h) & (np.abs(shifts[:, 1]) < w)]
    return shifts[np.lexsort((shifts[:, 1], shifts[:, 0], (shifts**2).sum(1)))]


def _reference_periodic_copy(detail: np.ndarray, valid: np.ndarray, shifts: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slow twin of ``texture_kernels.periodic_copy``: shift after shift (in order), every texel still missing
    whose source is inside and observed takes it. Returns (out, have, shift_of)."""
    h, w = valid.shape
    out, have = detail.copy(), valid.copy()
    shift_of = np.zeros((h, w, 2), np.int64)
    my, mx = np.nonzero(~valid)  # still-missing texels: work shrinks as they are filled
    for dy, dx in shifts:
        if len(my) == 0:
            break
        sy, sx = my + dy, mx + dx
        take = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
        take[take] = valid[sy[take], sx[take]]
        if take.any():
            out[my[take], mx[take]] = detail[sy[take], sx[take]]
            shift_of[my[take], mx[take]] = (dy, dx)
            have[my[take], mx[take]] = True
            my, mx = my[~take], mx[~take]
    return out, have, shift_of


def _periodic_fill(
    detail: np.ndarray, valid: np.ndarray, lattice: Lattice, copy_basis: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fill unobserved texels of a periodic exemplar from the nearest observed texel one or more periods away:
    exact whole-texel periods (``copy_basis``) first, then the nearest rounded multiples of the lattice.

    detail [H, W, 3] float32, valid [H, W] bool. Returns (filled detail, filled-or-observed mask [H, W]). Texels
    with no observed copy at any lattice shift inside the box stay as they were and unmarked."""
    h, w = valid.shape
    n = 2 if lattice.kind == "2d" else 1
    shifts = np.concatenate([_lattice_shifts(copy_basis[:n], (h, w)), _lattice_shifts(lattice.vectors_px[:n], (h, w))])
    detail = np.ascontiguousarray(detail, np.float32)
    valid = np.ascontiguousarray(valid, bool)
    out, have = detail.copy(), valid.copy()
    shift_of = np.zeros((h, w, 2), np.int64)  # the shift each copied texel came from
    texture_kernels.periodic_copy(detail, valid, np.ascontiguousarray(shifts, np.int64), out, have, shift_of)
    # membrane correction (Farbman et al. 2009): the copied instance (a brick, a tile) may be lighter than the one
    # that was observed around the hole. On the hole's rim, compare each observed neighbour q with the texel the
    # copy took for q's place (q + the same shift): like with like, so mortar lines do not count as mismatch. The
    # rim mismatch, smoothly interpolated over the hole, removes the step and keeps the copy's detail.
    copied = have & ~valid
    if copied.any():
        py, px = np.nonzero(copied)
        sy, sx = shift_of[py, px, 0], shift_of[py, px, 1]
        acc = np.zeros((len(py), 3))
        cnt = np.zeros(len(py))
        for ny, nx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            qy, qx = py + ny, px + nx
            ry, rx = qy + sy, qx + sx
            ok = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w) & (ry >= 0) & (ry < h) & (rx >= 0) & (rx < w)
            ok[ok] &= valid[qy[ok], qx[ok]] & valid[ry[ok], rx[ok]]
            acc[ok] += detail[qy[ok], qx[ok]] - detail[ry[ok], rx[ok]]
            cnt[ok] += 1
        rim = cnt > 0
        if rim.any():  # solved on the copied texels' bounding box only (a hole is usually small)
            y0, y1, x0, x1 = py.min(), py.max() + 1, px.min(), px.max() + 1
            mismatch = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
            weight = np.zeros((y1 - y0, x1 - x0), np.float32)
            mismatch[py[rim] - y0, px[rim] - x0] = acc[rim] / cnt[rim, None]
            weight[py[rim] - y0, px[rim] - x0] = 1.0
            smooth = push_pull_fill(mismatch, weight)
            out[py, px] += smooth[py - y0, px - x0]
    return out, have


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------


def _check_exemplar(rgb: object, valid: object, texel_m: object) -> tuple[np.ndarray, np.ndarray, float]:
    if not isinstance(rgb, np.ndarray):
        raise InvalidInputError(f"rgb must be a numpy array [H, W, 3] uint8, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise InvalidInputError(f"rgb must be uint8, got dtype {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidInputError(f"rgb must have shape [H, W, 3], got {rgb.shape}")
    if not isinstance(valid, np.ndarray):
        raise InvalidInputError(f"valid must be a numpy array [H, W] bool, got {type(valid).__name__}")
    if valid.dtype != np.bool_:
        raise InvalidInputError(f"valid must be bool, got dtype {valid.dtype}")
    if valid.shape != rgb.shape[:2]:
        raise InvalidInputError(f"valid must have shape {rgb.shape[:2]} (rgb's [H, W]), got {valid.shape}")
    if min(rgb.shape[:2]) < MIN_EXEMPLAR_PX:
        raise InvalidInputError(
            f"rgb: exemplar must be at least {MIN_EXEMPLAR_PX} texels per side, got {rgb.shape[:2]}"
        )
    n_valid = int(valid.sum())
    if n_valid < MIN_VALID_TEXELS:
        raise InvalidInputError(f"valid: exemplar has {n_valid} observed texels, need at least {MIN_VALID_TEXELS}")
    try:
        t = float(texel_m)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"texel_m must be a positive number of metres, got {texel_m!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise InvalidInputError(f"texel_m must be a positive number of metres, got {texel_m!r}")
    return rgb, valid, t


class TextureModel:
    """One plane's texture: its exemplar split into shading and detail, its periodicity, and the cache of cell
    choices. Build with ``TextureModel.fit``; read-only afterwards except for the cache (whose content is a pure
    function of the key, so concurrent or repeated use gives the same texels)."""

    kind: str  # "periodic" or "stochastic"
    lattice: Lattice
    texel_m: float
    tile_px: int
    step_px: int
    overlap_px: int
    origin_px: tuple[int, int]

    @classmethod
    def fit(
        cls,
        rgb: np.ndarray,
        valid: np.ndarray,
        texel_m: float,
        *,
        tile_px: int = DEFAULT_TILE_PX,
        origin_px: tuple[int, int] = (0, 0),
        step_px: int | None = None,
    ) -> TextureModel:
        """Fit a plane's texture model from its exemplar.

        rgb [H, W, 3] uint8 and valid [H, W] bool (observed texels) in the plane's texture space, one texel per
        ``texel_m`` metres; ``origin_px`` is the texture-space (row, col) of exemplar texel [0, 0]; ``tile_px`` the
        side of ``synthesize_tile``'s tiles. Deterministic: the same inputs give the same model.
        """
        rgb, valid, texel = _check_exemplar(rgb, valid, texel_m)
        if int(tile_px) < 8:
            raise InvalidInputError(f"tile_px must be >= 8, got {tile_px}")
        if len(tuple(origin_px)) != 2:
            raise InvalidInputError(f"origin_px must be (row, col), got {origin_px!r}")
        self = cls.__new__(cls)
        self.texel_m = texel
        self.tile_px = int(tile_px)
        self.origin_px = (int(origin_px[0]), int(origin_px[1]))
        h, w = valid.shape
        self.rgb = np.ascontiguousarray(rgb)
        self.valid = np.ascontiguousarray(valid)
        side = min(h, w)
        overlap = DEFAULT_OVERLAP_PX if side >= 32 else 4 if side >= 16 else 2
        step = int(step_px) if step_px is not None else min(DEFAULT_STEP_PX, side - overlap)
        if step < 4 or step + overlap > side or step <= overlap:
            raise InvalidInputError(f"step_px={step} does not fit a {h}x{w} exemplar with {overlap} texels overlap")
        self.step_px, self.overlap_px = step, overlap
        half = overlap // 2
        patch = step + overlap

        rgbf = rgb.astype(np.float32)
        sigma = max(8.0, 0.25 * side)
        shading = _normalised_blur(rgbf, valid, sigma)
        # the lattice from the best-observed window of at most LATTICE_WINDOW_PX a side: enough periods to see
        # and it keeps the autocorrelation's cost bounded on a large plane
        wy, wx, wh, ww = _best_window(valid, LATTICE_WINDOW_PX)
        lattice = detect_lattice(_luma(rgbf - shading)[wy : wy + wh, wx : wx + ww], valid[wy : wy + wh, wx : wx + ww])
        if lattice.kind != "none" and max(lattice.periods_px) * 1.5 > sigma:
            # shading must be smoother than the pattern, or the pattern's own contrast leaks into it
            sigma = 1.5 * max(lattice.periods_px)
            shading = _normalised_blur(rgbf, valid, sigma)  # the lattice found already stands
        self.lattice = lattice
        self.kind = "periodic" if lattice.kind != "none" else "stochastic"
        # patches are copied by whole-texel shifts; rounding m*a + n*b differently in neighbouring cells would put
        # their mortar lines a texel apart, so copies use an integer super-lattice (e.g. 3 courses of 21.33
        # texels = 64 texels) when one exists within the exemplar
        self._copy_basis = _integer_superlattice(lattice, (h, w))
        self.shading = shading  # [H, W, 3] float32, low frequencies, filled smoothly into holes
        self.shading_mean = shading[valid].mean(0).astype(np.float32)  # [3]
        self.shading_decay_px = 2.0 * sigma
        detail = rgbf - shading
        usable = valid
        if lattice.kind != "none" and not valid.all():
            # holes of a periodic exemplar are copies of the same place one period away: sharp and in phase
            detail, usable = _periodic_fill(detail, valid, lattice, self._copy_basis)
        if not usable.all():
            detail = np.where(usable[..., None], detail, push_pull_fill(detail, usable.astype(np.float32)))
        # windows (patch origins) a patch may be copied from, and those that are observed in full
        self._valid_integral = np.pad(valid.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        integral = np.pad(usable.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        frac = (
            integral[patch:, patch:]
            - integral[:-patch, patch:]
            - integral[patch:, :-patch]
            + integral[:-patch, :-patch]
        ) / float(patch * patch)  # [H - P + 1, W - P + 1]
        vi = self._valid_integral
        self._full_window = (vi[patch:, patch:] - vi[:-patch, patch:] - vi[patch:, :-patch] + vi[:-patch, :-patch]) == (
            patch * patch
        )
        # [H, W, 3] float32, a stochastic exemplar's coarse band (COARSE_SPLIT_PX), None for a periodic one (or
        # one too small or sparse, COARSE_MIN_SIDE_PX): what the quilting does not copy (``_coarse_at``); all of
        # its detail when no patch window is QUILT_MIN_WINDOW_OBSERVED observed (then nothing is quilted)
        self._coarse_box = None
        if self.kind == "stochastic" and min(h, w) >= COARSE_MIN_SIDE_PX and valid.mean() >= COARSE_MIN_OBSERVED:
            if float(frac.max()) < QUILT_MIN_WINDOW_OBSERVED:
                self._coarse_box = np.ascontiguousarray(detail, np.float32)
            else:
                self._coarse_box = np.ascontiguousarray(np.stack(
                    [cv2.GaussianBlur(np.ascontiguousarray(detail[..., c], np.float32), (0, 0), COARSE_SPLIT_PX,
                                      borderType=cv2.BORDER_REFLECT) for c in range(3)], axis=-1), np.float32)
            detail = detail - self._coarse_box
            # [H, W] float32 texels from each box texel to the nearest observed one: the exemplar's own coarse band
            # holds where it was observed (in its holes it is the smooth pre-fill)
            self._coarse_obs_dist = ndimage.distance_transform_edt(~valid).astype(np.float32)
        self.detail = np.ascontiguousarray(detail, np.float32)  # [H, W, 3] shading-free, holes pre-filled

        source_ok = frac >= SOURCE_VALID_FRACTION
        if not source_ok.any():
            source_ok = frac >= min(0.5, float(frac.max()))
            log.debug("texture_sparse_exemplar", best_window_fraction=round(float(frac.max()), 3))
        self._source_ok = source_ok
        self._sources = np.argwhere(source_ok).astype(np.int64)  # [S, 2] (row, col), row-major order
        if lattice.kind == "1d":
            a = self._copy_basis[0]
            period = float(np.hypot(*a))
            phase = (self._sources @ (a / period)) % period
            order = np.argsort(phase, kind="stable")
            self._phase_sorted, self._phase_order, self._period_1d = phase[order], order, period
        # fade band at the observed edge: weight 1 on observed texels, falling to 0 over EDGE_FEATHER_PX texels;
        # the value faded from is the observed texel or, off it, the smooth pre-fill (edge-replicated off the box)
        f = EDGE_FEATHER_PX
        obs_pad = np.pad(valid, f)
        dist = ndimage.distance_transform_edt(~obs_pad)
        self._edge_feather = f
        self._edge_weight = np.clip(1.0 - dist / (f + 1.0), 0.0, 1.0).astype(np.float32)  # [H + 2f, W + 2f]
        ref = np.where(valid[..., None], rgbf, self._whole_detail() + shading)
        self._edge_value = np.pad(ref, ((f, f), (f, f), (0, 0)), mode="edge").astype(np.float32)
        self._feather = half // 2  # cut cross-fade half-width
        self._cells: dict[tuple[int, int, int], tuple[int, int, tuple[float, float, float]]] = {}
        self._seams: dict[tuple[int, int, int, int], np.ndarray] = {}
        self._tiles: dict[tuple[int, int, int], list[np.ndarray]] = {}
        self._pools: dict[tuple[int, int], np.ndarray] = {}  # congruent source windows per lattice coset
        self._far: dict[int, list[np.ndarray]] = {}  # seed -> far-field detail pyramid (``_far_pyramid``)
        self._noise: dict[int, list[np.ndarray]] = {}  # seed -> coarse-band noise mips (``_coarse_noise``)
        self._tables: dict[int, object] = {}  # seed -> texture_kernels cell table (the compiled path's cache)
        self._kernel_model: tuple | None = None  # the model's arrays as texture_kernels reads them
        self._lock = threading.RLock()  # the caches are shared: one synthesis per model at a time (planes in parallel)
        # (seed, thread id) -> the cell table of the tiles that thread makes off the frame's thread (``_warm_tile``)
        self._off_tables: dict[tuple[int, int], object] = {}
        self._half, self._patch = half, patch
        self._far_offset = np.zeros(3, np.float32)  # [3] the far field's colour offset (``_far_offset_on``)
        self.detail_gain = self._restore_contrast()
        log.debug(
            "texture_fit",
            shape=(h, w),
            kind=self.kind,
            lattice=lattice.kind,
            periods_px=[round(p, 2) for p in lattice.periods_px],
            strength=round(lattice.strength, 3),
            sources=len(self._sources),
            detail_gain=round(self.detail_gain, 3),
        )
        return self

    def _probe_origin(self) -> tuple[int, int]:
        """Texture-space (row, col) of the contrast probe: beyond the exemplar's box by more than the shading's
        reach (``_shading_at``: the observed mean there) and a patch, so no cell there copies or matches the box."""
        h, w = self.valid.shape
        away = int(math.ceil(8.0 * self.shading_decay_px)) + 2 * self._patch
        return self.origin_px[0] + h + away, self.origin_px[1] + w + away

    def _far_offset_on(self, probe: np.ndarray) -> np.ndarray:
        """``[3]`` float32: the tiles' mean colour less the far field's (``_far_float`` without an offset) over
        the probe region ``probe`` [P, P, 3] (synthesised at ``_probe_origin``, CONTRAST_PROBE_SEED). The tiles copy
        patches from the source windows, whose mean need not be the exemplar box's that the far field mirrors:
        house@pitched's walls came out up to 4.7 levels darker near than far, and their invented points (coloured
        from the far field where first seen) stood as a grid of light squares among the near texture's gaps when
        walked up to (docs/RESULTS.md, session 33). The far field adds this offset, so that a surface reads the
        same at every distance."""
        h, w = probe.shape[:2]
        r0, c0 = self._probe_origin()
        rows = np.repeat(np.arange(r0, r0 + h, dtype=np.int64), w)
        cols = np.tile(np.arange(c0, c0 + w, dtype=np.int64), h)
        self._far_offset = np.zeros(3, np.float32)  # the far field as it stands without one (the caller sets it)
        far = self._far_float(rows, cols, FAR_LEVEL, CONTRAST_PROBE_SEED)
        return (probe.reshape(-1, 3).astype(np.float64).mean(0) - far.astype(np.float64).mean(0)).astype(np.float32)

    def _restore_contrast(self) -> float:
        """Raise the fine band of the detail (what a ``CONTRAST_BLUR_PX`` blur removes) so that invented texels step
        from texel to texel as much as the observed ones do, at most by ``DETAIL_GAIN_MAX``; returns the gain (1:
        unchanged). The coarser band keeps its contrast: the invented texels' spread at the scale of cells was
        already the exemplar's, only their texel-scale steps were lost. Synthesises one probe region with the
        unscaled detail, finds the gain on it (bisection: the step grows monotonically with the gain), then drops
        every cache made from it."""
        observed = _mean_step(_luma(self._whole_detail()), self.valid)
        probe = self._region_locked(self._probe_origin(), (CONTRAST_PROBE_PX, CONTRAST_PROBE_PX), CONTRAST_PROBE_SEED)
        self._far_offset = self._far_offset_on(probe)
        self._cells.clear()
        self._seams.clear()
        self._tables.clear()
        self._far.clear()
        y = _luma(probe.astype(np.float32))
        coarse = _blur(y)
        fine = y - coarse
        if not observed > 0 or _mean_step(y, None) >= observed:
            return 1.0
        if _mean_step(coarse + DETAIL_GAIN_MAX * fine, None) <= observed:
            gain = DETAIL_GAIN_MAX
        else:
            lo, hi = 1.0, DETAIL_GAIN_MAX
            for _ in range(24):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if _mean_step(coarse + mid * fine, None) < observed else (lo, mid)
            gain = 0.5 * (lo + hi)
        smooth = np.stack([_blur(self.detail[..., c]) for c in range(3)], axis=-1)
        self.detail = np.ascontiguousarray(smooth + np.float32(gain) * (self.detail - smooth), np.float32)
        self._kernel_model = None  # holds the unscaled detail
        f = self._edge_feather
        ref = np.where(self.valid[..., None], self.rgb.astype(np.float32), self._whole_detail() + self.shading)
        self._edge_value = np.pad(ref, ((f, f), (f, f), (0, 0)), mode="edge").astype(np.float32)
        return gain

    def __getstate__(self) -> dict:
        """Pickle without the caches and the lock (they are rebuilt on demand; the texels are the same)."""
        state = self.__dict__.copy()
        for k in ("_cells", "_seams", "_tiles", "_pools", "_far", "_lock", "_tables", "_kernel_model", "_off_tables"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_far_offset", np.zeros(3, np.float32))  # pickled before session 33
        self._cells, self._seams, self._tiles, self._pools, self._far = {}, {}, {}, {}, {}
        self._tables, self._kernel_model = {}, None
        self._lock = threading.RLock()
        self._off_tables = {}

    # -- geometry of the exemplar ---------------------------------------------------------------------------

    @property
    def shape_px(self) -> tuple[int, int]:
        """(H, W) of the exemplar."""
        return self.valid.shape  # type: ignore[return-value]

    @property
    def periods_m(self) -> tuple[float, ...]:
        """Lengths of the detected lattice vectors in metres (empty for stochastic textures)."""
        return tuple(p * self.texel_m for p in self.lattice.periods_px)

    def _observed_count(self, y0: int, x0: int, size: int) -> int:
        """Observed texels in the exemplar window rows [y0, y0+size), cols [x0, x0+size) (clipped to the box)."""
        h, w = self.valid.shape
        ya, yb, xa, xb = max(y0, 0), min(y0 + size, h), max(x0, 0), min(x0 + size, w)
        if ya >= yb or xa >= xb:
            return 0
        s = self._valid_integral
        return int(s[yb, xb] - s[ya, xb] - s[yb, xa] + s[ya, xa])

    def _is_source(self, y: int, x: int) -> bool:
        ok = self._source_ok
        return 0 <= y < ok.shape[0] and 0 <= x < ok.shape[1] and bool(ok[y, x])

    # -- cells ----------------------------------------------------------------------------------------------

    def _cell_target(self, gi: int, gj: int) -> tuple[int, int]:
        """Exemplar-frame (row, col) of cell (gi, gj)'s patch origin."""
        s, h = self.step_px, self._half
        return gi * s - h - self.origin_px[0], gj * s - h - self.origin_px[1]

    def _level(self, gi: int, gj: int) -> int:
        """0: the cell's patch covers observed texels; 1: even row; 2: odd row."""
        ty, tx = self._cell_target(gi, gj)
        if self._observed_count(ty, tx, self._patch) > 0:
            return 0
        return 1 if gi % 2 == 0 else 2

    def _depends_on(self, gi: int, gj: int, level: int) -> list[tuple[int, int]]:
        """The neighbours (di, dj) whose patches cell (gi, gj) must match. Even rows run left to right in chunks
        of CHAIN_CELLS (a chunk's first cell is free); odd rows match the even rows above and below and, within
        a chunk, their left neighbour; observed (level-0) neighbours are matched by everyone. Every chain stops
        within CHAIN_CELLS cells, so a cell depends on a bounded neighbourhood only: order-free, and cheap."""
        deps = []
        chunk_start = gj % CHAIN_CELLS == 0
        for di, dj in ((0, -1), (0, 1), (-1, 0), (1, 0)):
            n_level = self._level(gi + di, gj + dj)
            if n_level == 0:
                deps.append((di, dj))
            elif (di, dj) == (0, -1) and not chunk_start and n_level == level:
                deps.append((di, dj))  # the chain along the row
            elif level == 2 and di != 0 and n_level == 1:
                deps.append((di, dj))  # odd rows sit between even rows
        return deps

    def _congruent(self, ty: int, tx: int, h: int) -> np.ndarray:
        """Source windows congruent to target origin (ty, tx) modulo the lattice (all of them when stochastic),
        at most ``NUM_CANDIDATES``, chosen by key hash ``h``. Returns [K, 2] int64."""
        src = self._sources
        lat = self.lattice
        if lat.kind == "2d":
            basis = self._copy_basis  # rows a, b
            inv = np.linalg.inv(basis.T)
            key = None
            if np.array_equal(basis, np.rint(basis)):
                # whole-texel lattice: all targets of one coset share their pool; key it by the coset's
                # representative (the target reduced into the lattice's base cell)
                c = np.floor(inv @ np.array([ty, tx], np.float64) + 1e-9)
                rep = np.rint(np.array([ty, tx], np.float64) - c @ basis).astype(np.int64)
                key = (int(rep[0]), int(rep[1]))
                ty, tx = key
            pool = self._pools.get(key) if key is not None else None
            if pool is None:
                hh, ww = self._source_ok.shape
                corners = np.array([[0, 0], [0, ww - 1], [hh - 1, 0], [hh - 1, ww - 1]], np.float64) - (ty, tx)
                coef = corners @ inv.T  # [4, 2] lattice coordinates of the box corners relative to the target
                lo, hi = np.floor(coef.min(0)).astype(int), np.ceil(coef.max(0)).astype(int)
                mm, nn = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
                pos = np.rint(np.stack([mm.ravel(), nn.ravel()], 1) @ basis + (ty, tx)).astype(np.int64)
                inside = (pos[:, 0] >= 0) & (pos[:, 0] < hh) & (pos[:, 1] >= 0) & (pos[:, 1] < ww)
                pos = pos[inside]
                pos = pos[np.lexsort((pos[:, 1], pos[:, 0]))]  # canonical order, whoever asked first
                pool = pos[self._source_ok[pos[:, 0], pos[:, 1]]]
                if len(pool) == 0:
                    pool = pos  # in phase but partly pre-filled beats out of phase
                if key is not None and len(self._pools) < _CACHE_LIMIT:
                    self._pools[key] = pool
        elif lat.kind == "1d":
            a = self._copy_basis[0]
            period = self._period_1d
            phase_t = float(np.dot((ty, tx), a / period) % period)
            lo, hi = phase_t - 0.5, phase_t + 0.5
            ph = self._phase_sorted
            idx = np.concatenate(
                [
                    np.arange(np.searchsorted(ph, max(lo, 0.0)), np.searchsorted(ph, min(hi, period))),
                    np.arange(np.searchsorted(ph, lo + period), len(ph)) if lo < 0 else np.zeros(0, np.int64),
                    np.arange(0, np.searchsorted(ph, hi - period)) if hi > period else np.zeros(0, np.int64),
                ]
            ).astype(np.int64)
            pool = src[np.sort(self._phase_order[idx])]
        else:
            pool = src
        if len(pool) == 0:  # exemplar too small to hold a congruent window: keep the texture, lose the phase
            pool = src
        if len(pool) <= NUM_CANDIDATES:
            return pool
        pick = _hash_stream(h, NUM_CANDIDATES) % np.uint64(len(pool))
        return pool[np.unique(pick.astype(np.int64))]

    def cell_source(self, gi: int, gj: int, seed: int) -> tuple[int, int, tuple[float, float, float]]:
        """Exemplar (row, col) of the patch that cell (gi, gj) copies and the colour offset added to it (so that
        its mean matches its constraints: patches of a smooth texture then join without steps); a pure function
        of (model, cell, seed)."""
        key = (int(seed), int(gi), int(gj))
        got = self._cells.get(key)
        if got is not None:
            return got
        with self._lock:
            return self._cell_source_locked(gi, gj, seed, key)

    def _cell_source_locked(self, gi: int, gj: int, seed: int, key: tuple[int, int, int]):
        got = self._cells.get(key)
        if got is not None:
            return got
        ty, tx = self._cell_target(gi, gj)
        level = self._level(gi, gj)
        p, s = self._patch, self.step_px
        if level == 0 and self._is_source(ty, tx) and self._full_window[ty, tx]:
            choice = (ty, tx, (0.0, 0.0, 0.0))  # fully observed: copy itself
        else:
            canvas = np.zeros((p, p, 3), np.float32)
            mask = np.zeros((p, p), bool)
            neighbours: list[tuple[int, int, tuple[int, int]]] = []
            if level == 0:
                h_ex, w_ex = self.valid.shape
                ya, yb, xa, xb = max(ty, 0), min(ty + p, h_ex), max(tx, 0), min(tx + p, w_ex)
                sub = self.valid[ya:yb, xa:xb]
                canvas[ya - ty : yb - ty, xa - tx : xb - tx][sub] = self.detail[ya:yb, xa:xb][sub]
                mask[ya - ty : yb - ty, xa - tx : xb - tx] = sub
            else:
                ov = self.overlap_px
                for di, dj in self._depends_on(gi, gj, level):
                    ni, nj = gi + di, gj + dj
                    sy, sx, n_off = self.cell_source(ni, nj, seed)
                    neighbours.append((ni, nj, (sy, sx)))
                    # the neighbour's patch, in our patch coordinates, starts at (di * s, dj * s)
                    if dj == -1:
                        ys, xs = slice(0, p), slice(0, ov)
                    elif dj == 1:
                        ys, xs = slice(0, p), slice(s, p)
                    elif di == -1:
                        ys, xs = slice(0, ov), slice(0, p)
                    else:
                        ys, xs = slice(s, p), slice(0, p)
                    oy, ox = sy - di * s, sx - dj * s  # neighbour's source, shifted into our patch frame
                    canvas[ys, xs] = self.detail[oy + ys.start : oy + ys.stop, ox + xs.start : ox + xs.stop] + n_off
                    mask[ys, xs] = True
            h = _key_hash(seed, gi, gj, 0x51)
            cands = [self._congruent(ty, tx, h)]
            coherent = [
                (sy + (gi - ni) * s, sx + (gj - nj) * s)
                for ni, nj, (sy, sx) in neighbours
                if self._is_source(sy + (gi - ni) * s, sx + (gj - nj) * s)
            ]
            if coherent:
                cands.append(np.asarray(coherent, np.int64))
            both = np.concatenate(cands)
            width = self._source_ok.shape[1] + 1
            flat = np.unique(both[:, 0] * width + both[:, 1])  # sorted: order-free; 1-D unique is much cheaper
            cand = np.stack([flat // width, flat % width], 1)
            offset = (0.0, 0.0, 0.0)
            if not mask.any():
                pick = int(_hash_stream(_key_hash(seed, gi, gj, 0x77), 1)[0] % np.uint64(len(cand)))
            else:
                pix = np.argwhere(mask).astype(np.int64)
                # periodic: in-phase copies need no offset, and one would show as a block on a flat tile
                periodic = self.kind == "periodic"
                costs, offsets = _ssd_costs(self.detail, cand, canvas, pix, 1.0 if periodic else DC_WEIGHT)
                near = np.flatnonzero(costs <= costs.min() * (1.0 + PICK_TOLERANCE) + 1.0)
                pick = int(near[int(_hash_stream(_key_hash(seed, gi, gj, 0x77), 1)[0] % np.uint64(len(near)))])
                if not periodic:
                    offset = tuple(float(v) for v in offsets[pick])
            choice = (int(cand[pick, 0]), int(cand[pick, 1]), offset)
        if len(self._cells) > _CACHE_LIMIT:
            self._cells.clear()
        self._cells[key] = choice
        return choice

    # -- seams ----------------------------------------------------------------------------------------------

    def _seam(self, seed: int, vertical: bool, i: int, j: int) -> np.ndarray:
        """Cut through the band between two cells; [step] int64 positions in [0, overlap).

        vertical: between cells (i, j-1) | (i, j), one column per row of core row i, band columns x in
        [j*s - h, j*s + h); texels left of the cut belong to (i, j-1). Otherwise: between (i-1, j) above and
        (i, j), one row per column of core column j, band rows y in [i*s - h, i*s + h)."""
        key = (int(seed), int(vertical), int(i), int(j))
        got = self._seams.get(key)
        if got is not None:
            return got
        s, h, ov = self.step_px, self._half, self.overlap_px
        if vertical:
            ay, ax, a_off = self.cell_source(i, j - 1, seed)
            by, bx, b_off = self.cell_source(i, j, seed)
            a = self.detail[ay + h : ay + h + s, ax + s : ax + s + ov] + np.float32(a_off)
            b = self.detail[by + h : by + h + s, bx : bx + ov] + np.float32(b_off)
            err = ((a - b) ** 2).sum(-1)  # [s rows, ov]
        else:
            ay, ax, a_off = self.cell_source(i - 1, j, seed)
            by, bx, b_off = self.cell_source(i, j, seed)
            a = self.detail[ay + s : ay + s + ov, ax + h : ax + h + s] + np.float32(a_off)
            b = self.detail[by : by + ov, bx + h : bx + h + s] + np.float32(b_off)
            err = ((a - b) ** 2).sum(-1).T  # [s columns, ov]
        q = self._feather
        path = _pinned_seam(np.ascontiguousarray(err, np.float64), q, min(ov - q, ov - 1))
        if len(self._seams) > _CACHE_LIMIT:
            self._seams.clear()
        self._seams[key] = path
        return path

    # -- composition ----------------------------------------------------------------------------------------

    def reference_shaded(self, out: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Slow twin of ``texture_kernels.shade_region`` (what ``_shaded`` adds before rounding), in numpy:
        [H, W, 3] float32."""
        out = out + self._shading_at(ys, xs)
        eh, ew = self.valid.shape
        f = self._edge_feather
        py, px = ys - self.origin_px[0] + f, xs - self.origin_px[1] + f
        iy = np.flatnonzero((py >= 0) & (py < eh + 2 * f))
        ix = np.flatnonzero((px >= 0) & (px < ew + 2 * f))
        if len(iy) and len(ix):
            w_obs = self._edge_weight[np.ix_(py[iy], px[ix])][..., None]
            block = out[iy[0] : iy[-1] + 1, ix[0] : ix[-1] + 1]
            block[:] = w_obs * self._edge_value[np.ix_(py[iy], px[ix])] + (1 - w_obs) * block
        return out

    def _shading_at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Shading [len(ys), len(xs), 3] at texture-space rows ``ys`` and columns ``xs``."""
        h, w = self.valid.shape
        py, px = ys - self.origin_px[0], xs - self.origin_px[1]
        cy, cx = np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)
        near = min(np.abs(py - cy).min(), np.abs(px - cx).min())
        if near > 8.0 * self.shading_decay_px:  # far from the box: the observed mean (exp(-8) of it left)
            return np.broadcast_to(self.shading_mean, (len(ys), len(xs), 3))
        out = self.shading[np.ix_(cy, cx)]
        dist = np.hypot((py - cy).astype(np.float32)[:, None], (px - cx).astype(np.float32)[None, :])
        if dist.any():
            keep = np.exp(-dist / self.shading_decay_px)[..., None]
            out = self.shading_mean + (out - self.shading_mean) * keep
        return out

    def _shading_points(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Shading [N, 3] at texture-space texels (rows ``ys`` [N], cols ``xs`` [N]): ``_shading_at`` per point."""
        h, w = self.valid.shape
        py, px = ys - self.origin_px[0], xs - self.origin_px[1]
        cy, cx = np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)
        keep = np.exp(-np.hypot(py - cy, px - cx).astype(np.float32) / self.shading_decay_px)[:, None]
        return self.shading_mean + (self.shading[cy, cx] - self.shading_mean) * keep

    def _whole_detail(self) -> np.ndarray:
        """The exemplar's shading-free detail [H, W, 3] float32, both bands (the quilted one and the coarse one)."""
        return self.detail if self._coarse_box is None else self.detail + self._coarse_box

    def _coarse_noise(self, seed: int) -> list[np.ndarray]:
        """A stochastic model's coarse-band noise for ``seed``: mips [COARSE_NOISE_PX >> l, ..., 3] float32, level 0
        first, each the 2x2 box mean of the one before (the tiles' mips), down to one texel per tile. Periodic:
        texel (r, c) of level l is ``[(r >> l) % n, (c >> l) % n]``. Made once per seed."""
        with self._lock:
            got = self._noise.get(seed)
            if got is not None:
                return got
            n = COARSE_NOISE_PX
            # along the coarse band's principal colour axis only: a filter per channel decorrelated the channels
            # (pink and green blotches on a wood floor, room:1), and what varies across it is mostly something
            # else lying on the plane (a rug's colour), which the quilted fine band and the observed texels keep
            # ... and of the material alone: texels whose coarse colour lies off the plane's usual one (a rug, a
            # chair's foot, a shadow) would spread as blotches over the whole plane; they are left out of the mean,
            # the axis and the spread, and clipped to the usual range in the spectrum (quilting copies them only
            # where their patch lands)
            observed = self._coarse_box[self.valid]
            median = np.median(observed, axis=0)
            spread = 1.4826 * np.median(np.abs(observed - median), axis=0) + 1.0  # robust sigma, + 1 grey level
            usual = np.all(np.abs(self._coarse_box - median) <= COARSE_OUTLIER_SIGMA * spread, axis=-1) & self.valid
            if usual.sum() < 0.5 * self.valid.sum():
                usual = self.valid
            mean = self._coarse_box[usual].mean(0)
            axis = np.linalg.eigh(np.cov((self._coarse_box[usual] - mean).T))[1][:, -1].astype(np.float32)  # [3] unit
            along = (self._coarse_box - mean) @ axis  # [H, W]
            # clipped to the usual range there, not cut out: holes in the spot would add their edges' spectrum
            along = np.clip(along, along[usual].min(), along[usual].max()).astype(np.float32)
            h, w = min(along.shape[0], n), min(along.shape[1], n)
            y0, x0 = (along.shape[0] - h) // 2, (along.shape[1] - w) // 2
            # a taper, so that the spot's box edges add no cross to the spectrum
            taper = np.outer(np.hanning(h + 2)[1:-1], np.hanning(w + 2)[1:-1]).astype(np.float32)
            canvas = np.zeros((n, n), np.float32)
            canvas[:h, :w] = along[y0 : y0 + h, x0 : x0 + w] * taper
            # the spectrum's radial mean (COARSE_SPLIT_PX's comment: why)
            power = np.square(np.abs(sfft.rfft2(canvas)))  # [n, n // 2 + 1]
            radius = np.rint(np.hypot(np.fft.fftfreq(n)[:, None] * n, np.arange(n // 2 + 1)[None, :])).astype(np.int64)
            amplitude = np.sqrt(np.bincount(radius.ravel(), power.ravel()) / np.maximum(np.bincount(radius.ravel()), 1))
            rng = np.random.default_rng([seed & _M64, _COARSE_NOISE_TAG])
            white = sfft.rfft2(rng.standard_normal((n, n)).astype(np.float32))
            # the spot's spectrum under-counts the band's upper end (its holes are smooth pre-fills, the taper
            # widens its peaks): tilted until the noise steps from texel to texel as much, for its spread, as the
            # observed texels do
            inner = usual & ndimage.binary_erosion(self.valid, iterations=2)
            observed_step = _mean_step(along, inner) / max(float(along[inner].std()), 1e-6) if inner.sum() > 64 else 0.0
            noise, tilt = _tilted_noise(amplitude, radius, white, observed_step)
            log.debug("texture_coarse_noise", shape=self.valid.shape, tilt=round(tilt, 3),
                      usual=round(float(usual.mean()), 3))
            # one period's spread is the exemplar's along that axis (the taper and one draw leave it ~10 % low)
            noise = (noise - noise.mean()) * (float(along[usual].std()) / max(float(noise.std()), 1e-6))
            noise = noise[..., None] * axis  # [n, n, 3]
            got = [np.ascontiguousarray(noise, np.float32)]
            _add_mips(got, int(math.log2(self.tile_px & -self.tile_px)), keep_float=True)
            self._noise[seed] = got
            return got

    def _coarse_at(self, ys: np.ndarray, xs: np.ndarray, level: int, seed: int) -> np.ndarray:
        """The coarse band [N, 3] float32 of a stochastic model at texture-space texels (rows ``ys`` [N], cols ``xs``
        [N]) at mip ``level`` (ys, xs: the level's texel centres in level-0 texels): the exemplar's own on its
        observed texels, noise away from them, blended with the distance to the nearest (``COARSE_BLEND_PX``)."""
        noise = self._coarse_noise(seed)[level]
        n = noise.shape[0]
        out = noise[(ys >> level) % n, (xs >> level) % n]
        box = self._coarse_box
        h, w = box.shape[:2]
        py, px = ys - self.origin_px[0], xs - self.origin_px[1]
        cy, cx = np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)
        # (off the box: its distance plus the edge texel's own from an observed one; an upper bound)
        dist = np.hypot(py - cy, px - cx).astype(np.float32) + self._coarse_obs_dist[cy, cx]
        keep = np.exp(-dist / np.float32(COARSE_BLEND_PX))
        near = np.flatnonzero(keep > 1e-3)
        if len(near):
            k = keep[near, None]
            out[near] = k * box[cy[near], cx[near]] + (1.0 - k) * out[near]
        return out

    def _with_coarse(self, detail: np.ndarray, r0: int, c0: int, seed: int) -> np.ndarray:
        """A region's quilted detail [H, W, 3] float32 at texture-space rows r0.., cols c0.. with a stochastic
        model's coarse band added (a new array; a periodic model's detail as it is)."""
        if self._coarse_box is None:
            return detail
        hh, ww = detail.shape[:2]
        ys = np.repeat(np.arange(r0, r0 + hh, dtype=np.int64), ww)
        xs = np.tile(np.arange(c0, c0 + ww, dtype=np.int64), hh)
        out = np.array(detail, np.float32, copy=True)
        out += self._coarse_at(ys, xs, 0, seed).reshape(hh, ww, 3)
        return out

    def _far_pyramid(self, seed: int) -> list[np.ndarray]:
        """Per mip level, the shading-free detail of the exemplar's box with its holes continued (the synthesised
        texels there), box-filtered: [h >> level, w >> level, 3] float32 (at least 1 x 1); a stochastic model's, of
        the fine band alone (its coarse band is ``_coarse_at``'s). Made once per seed."""
        with self._lock:
            got = self._far.get(seed)
            if got is None:
                box = self._region_locked(self.origin_px, self.shape_px, seed).astype(np.float32) - self.shading
                h, w = self.shape_px
                if self._coarse_box is not None:
                    ys = np.repeat(np.arange(self.origin_px[0], self.origin_px[0] + h, dtype=np.int64), w)
                    xs = np.tile(np.arange(self.origin_px[1], self.origin_px[1] + w, dtype=np.int64), h)
                    box -= self._coarse_at(ys, xs, 0, seed).reshape(h, w, 3)
                got = [box]
                for level in range(1, int(math.log2(self.tile_px & -self.tile_px)) + 1):
                    size = (max(1, w >> level), max(1, h >> level))
                    got.append(cv2.resize(box, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], 3))
                self._far[seed] = got
            return got

    def _far_texels(self, rows: np.ndarray, cols: np.ndarray, level: int, seed: int) -> np.ndarray:
        """Colours [N, 3] uint8 of the far-field texture (``FAR_LEVEL``) at mip ``level`` for the level-0 texels
        (rows [N], cols [N]): the box's detail mirror-repeated from the box, plus the shading continued there; a
        stochastic model's: its coarse band at that mip (``_coarse_at``), plus the shading."""
        return np.clip(np.rint(self._far_float(rows, cols, level, seed)), 0, 255).astype(np.uint8)

    def _far_float(self, rows: np.ndarray, cols: np.ndarray, level: int, seed: int) -> np.ndarray:
        """``_far_texels`` before rounding: [N, 3] float32, the far field's offset (``_far_offset_on``) added."""
        if self._coarse_box is not None:
            return self._coarse_far_texels(rows, cols, level, seed) + self._far_offset
        out = texture_kernels.far_texels(self._far_pyramid(seed)[level], np.ascontiguousarray(rows, np.int64),
                                         np.ascontiguousarray(cols, np.int64), int(level), int(self.origin_px[0]),
                                         int(self.origin_px[1]), self.shading, self.shading_mean,
                                         float(self.shading_decay_px))
        return out + self._far_offset

    def _coarse_far_texels(self, rows: np.ndarray, cols: np.ndarray, level: int, seed: int) -> np.ndarray:
        """A stochastic model's far field [N, 3] float32 (before rounding) at mip ``level`` for level-0 texels rows,
        cols [N] int64: the coarse band (the tiles' own, ``_coarse_at``), the fine band's mip mirror-repeated from
        the exemplar's box (what the tiles' fine band leaves at that mip: texture, though not the tiles' own) and
        the shading, at the level's texel centres. Numpy gathers: the same function for ``_far_texels`` and its
        twin."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        half = (1 << level) // 2  # the level's texel centre, in level-0 texels
        ys, xs = (rows >> level << level) + half, (cols >> level << level) + half
        out = self._coarse_at(ys, xs, level, seed) + self._shading_points(ys, xs)
        return out + self._mirrored(self._far_pyramid(seed)[level], rows, cols, level)

    def _mirrored(self, detail: np.ndarray, rows: np.ndarray, cols: np.ndarray, level: int) -> np.ndarray:
        """``detail`` [h, w, 3] (a far pyramid's mip ``level``) mirror-repeated from the exemplar's box, at
        level-0 texels rows, cols [N] int64: [N, 3] float32."""
        idx = []
        for coord, origin, size in ((rows, self.origin_px[0], detail.shape[0]), (cols, self.origin_px[1],
                                                                                  detail.shape[1])):
            i = np.mod((coord - origin) >> level, 2 * size)
            idx.append(np.where(i >= size, 2 * size - 1 - i, i))  # mirror repeat: no seams
        return detail[idx[0], idx[1]].astype(np.float32)

    def reference_far_texels(self, rows: np.ndarray, cols: np.ndarray, level: int, seed: int) -> np.ndarray:
        """Slow twin of ``_far_texels`` in numpy (before rounding: [N, 3] float32)."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        if self._coarse_box is not None:
            return self._coarse_far_texels(rows, cols, level, seed) + self._far_offset
        half = (1 << level) // 2  # the level's texel centre, in level-0 texels
        out = self._mirrored(self._far_pyramid(seed)[level], rows, cols, level)
        out += self._shading_points((rows >> level << level) + half, (cols >> level << level) + half)
        return out + self._far_offset

    def _tile(self, i: int, j: int, seed: int, level: int = 0) -> np.ndarray:
        """Tile (i, j) at mip ``level``, from a small LRU cache (dict order is insertion order: re-insert on use)."""
        with self._lock:
            return self._tile_locked(i, j, seed, level)

    def _tile_locked(self, i: int, j: int, seed: int, level: int = 0) -> np.ndarray:
        key = (seed, i, j)
        mips = self._tiles.pop(key, None)
        if mips is None:
            t = self.tile_px
            mips = [self._region_locked((i * t, j * t), (t, t), seed)]
        _add_mips(mips, level)
        self._cache_tile(key, mips)
        return mips[level]

    def _cache_tile(self, key: tuple[int, int, int], mips: list[np.ndarray]) -> None:
        """Keep ``mips`` as the most recently used tile (the caller holds the lock)."""
        self._tiles[key] = mips
        while len(self._tiles) > TILE_CACHE:
            self._tiles.pop(next(iter(self._tiles)))

    def _warm_tile(self, i: int, j: int, seed: int, level: int) -> bool:
        """Put tile (i, j) with its mips up to ``level`` in the cache unless it is there; synthesised outside the
        model's lock, which is held only to look the tile up and to store it: a frame that needs another tile of
        this model meanwhile does not wait for this one (a maintenance thread at a low priority could hold the lock
        for as long as the scheduler leaves it off the CPU). With the calling thread's own cell table for this
        model and seed (``_off_tables``: no lock, so a low-priority warm-up never holds up a tile job a frame is
        waiting for), kept across its tiles as the frames' own is: a tile's cells at its borders are its
        neighbours' too, and a table of its own per tile chose them again (a stochastic tile cost ~1.8x the
        frames' path so: docs/BENCHMARKS.md, session 22). A texel is a function of (model, seed, position) alone,
        whatever the cell table held (``synthesize_region``), so the tile is the one ``_tile_locked`` makes.
        Returns whether it was synthesised here."""
        key = (seed, i, j)
        t = self.tile_px
        with self._lock:
            if key in self._tiles:
                return False
            view = self._kernel_view()
            table = self._off_tables.get((seed, threading.get_ident()))
            if table is None:  # cleared by the kernel when half full, as the frames' tables are
                table = self._off_tables[(seed, threading.get_ident())] = texture_kernels.new_cell_table(
                    texture_kernels.cell_table_slots_for(t, t, self.step_px))
        detail = self._with_coarse(texture_kernels.region_detail(view, table, seed, i * t, j * t, t, t), i * t, j * t,
                                   seed)
        mips = [self._shaded(detail, np.arange(i * t, i * t + t), np.arange(j * t, j * t + t))]
        _add_mips(mips, level)
        with self._lock:
            if key in self._tiles:  # a frame made it meanwhile (the same texels)
                return False
            self._cache_tile(key, mips)
        return True

    def region(self, top_left_px: tuple[int, int], shape_px: tuple[int, int], seed: int) -> np.ndarray:
        """Texels of texture-space rows [r0, r0+H) and cols [c0, c0+W): [H, W, 3] uint8 (see ``synthesize_region``)."""
        with self._lock:
            return self._region_locked(top_left_px, shape_px, seed)

    def reference_region(self, top_left_px: tuple[int, int], shape_px: tuple[int, int], seed: int) -> np.ndarray:
        """``region`` made by the slow, plain-Python path (cell by cell, with numpy): the reference the compiled
        path (``texture_kernels.region_detail``) is tested against."""
        with self._lock:
            return self._reference_region_locked(top_left_px, shape_px, seed)

    def _kernel_view(self) -> tuple:
        """The model's arrays and constants in the order of ``texture_kernels``' ``M_*`` indices."""
        if self._kernel_model is None:
            kind = {"none": texture_kernels.KIND_NONE, "1d": texture_kernels.KIND_1D, "2d": texture_kernels.KIND_2D}
            basis = np.ascontiguousarray(self._copy_basis, np.float64)
            lattice_kind = self.lattice.kind
            inv = np.linalg.inv(basis.T) if lattice_kind == "2d" else np.zeros((2, 2))
            one_d = lattice_kind == "1d"
            self._kernel_model = (
                self.detail, self.valid, self._valid_integral, self._source_ok, self._full_window, self._sources,
                kind[lattice_kind], basis, np.ascontiguousarray(inv, np.float64),
                bool(np.array_equal(basis, np.rint(basis))),
                np.ascontiguousarray(self._phase_sorted if one_d else np.zeros(0), np.float64),
                np.ascontiguousarray(self._phase_order if one_d else np.zeros(0, np.int64), np.int64),
                float(self._period_1d) if one_d else 1.0,
                int(self.origin_px[0]), int(self.origin_px[1]), int(self.step_px), int(self._half), int(self._patch),
                int(self.overlap_px), int(self._feather),
            )  # fmt: skip
            assert len(self._kernel_model) == texture_kernels.M_FIELDS
        return self._kernel_model

    def _region_locked(self, top_left_px: tuple[int, int], shape_px: tuple[int, int], seed: int) -> np.ndarray:
        r0, c0 = int(top_left_px[0]), int(top_left_px[1])
        hh, ww = int(shape_px[0]), int(shape_px[1])
        table = self._tables.get(seed)
        slots = texture_kernels.cell_table_slots_for(hh, ww, self.step_px)
        if table is None or len(table[0]) < slots:  # (a region larger than the table holds: a larger one)
            table = self._tables[seed] = texture_kernels.new_cell_table(slots)
        out = self._with_coarse(texture_kernels.region_detail(self._kernel_view(), table, seed, r0, c0, hh, ww), r0, c0,
                                seed)
        return self._shaded(out, np.arange(r0, r0 + hh), np.arange(c0, c0 + ww))

    def _reference_region_locked(self, top_left_px: tuple[int, int], shape_px: tuple[int, int], seed: int):
        r0, c0 = int(top_left_px[0]), int(top_left_px[1])
        hh, ww = int(shape_px[0]), int(shape_px[1])
        s, h, q = self.step_px, self._half, self._feather
        ys, xs = np.arange(r0, r0 + hh), np.arange(c0, c0 + ww)
        ry, cx = ys // s, xs // s  # core cell of each row / column

        def split(coords: np.ndarray, other_core: np.ndarray, other_pos: np.ndarray, vertical: bool):
            """Owner cells (lower, upper) and the upper's weight along one axis: [len(other_pos), len(coords)]."""
            core = coords // s
            k = (coords + h) // s  # nearest cell boundary line
            lo = np.broadcast_to(core[None, :], (len(other_pos), len(coords))).copy()
            hi = lo.copy()
            wt = np.zeros(lo.shape, np.float32)
            band = np.flatnonzero((coords - k * s) < h)
            if len(band):
                o_u, k_u = np.unique(other_core), np.unique(k[band])
                cuts = np.empty((len(o_u), len(k_u), s), np.int64)
                for a, i in enumerate(o_u):
                    for b, j in enumerate(k_u):
                        cuts[a, b] = self._seam(seed, vertical, int(i), int(j)) if vertical else self._seam(
                            seed, False, int(j), int(i)
                        )
                cut = cuts[
                    np.searchsorted(o_u, other_core)[:, None],
                    np.searchsorted(k_u, k[band])[None, :],
                    (other_pos - other_core * s)[:, None],
                ]  # [M, nb] cut position in band coordinates
                u = (coords[band] - (k[band] * s - h))[None, :]  # [1, nb] position in the band
                lo[:, band] = k[band] - 1
                hi[:, band] = k[band]
                # texels p-q .. p+q-1 around the cut p cross-fade; the DP keeps p in [q, 2h - q]
                wt[:, band] = np.clip((u - cut + q + 0.5) / (2 * q), 0.0, 1.0) if q > 0 else (u >= cut)
            return lo, hi, wt

        c_lo, c_hi, c_w = split(xs, ry, ys, True)  # [H, W]: columns decided by vertical cuts in core row ry
        r_lo, r_hi, r_w = split(ys, cx, xs, False)  # [W, H]: rows decided by horizontal cuts in core col cx
        r_lo, r_hi, r_w = r_lo.T, r_hi.T, r_w.T
        rmin, cmin = int(r_lo.min()), int(c_lo.min())
        nr, nc = int(r_hi.max()) - rmin + 1, int(c_hi.max()) - cmin + 1
        src = np.empty((nr, nc, 2), np.int64)
        off = np.empty((nr, nc, 3), np.float32)
        for a in range(nr):
            for b in range(nc):
                sy, sx, o = self.cell_source(rmin + a, cmin + b, seed)
                src[a, b], off[a, b] = (sy, sx), o

        out = _compose(
            self.detail, src, off, rmin, cmin,
            np.ascontiguousarray(r_lo), np.ascontiguousarray(r_hi), np.ascontiguousarray(r_w, dtype=np.float32),
            c_lo, c_hi, c_w.astype(np.float32), r0, c0, s, h,
        )  # fmt: skip
        return self._shaded(self._with_coarse(out, r0, c0, seed), ys, xs)

    def _shaded(self, out: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Shading-free texels ``out`` [H, W, 3] float32 at texture-space rows ``ys`` [H], cols ``xs`` [W] with
        the shading added and the observed texels faded in: [H, W, 3] uint8."""
        out = np.ascontiguousarray(out, np.float32)
        texture_kernels.shade_region(out, int(ys[0]), int(xs[0]), self.shading, self.shading_mean,
                                     float(self.shading_decay_px), self._edge_weight, self._edge_value,
                                     int(self.origin_px[0]), int(self.origin_px[1]), int(self._edge_feather))
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------------------------


def _add_mips(mips: list[np.ndarray], level: int, keep_float: bool = False) -> None:
    """Append box-filtered 2x2 levels to a tile's ``mips`` (level 0 first) up to ``level``: level l texel = mean
    of its 2^l x 2^l level-0 texels (uint8, rounded per level; ``keep_float``: float32, unrounded)."""
    while len(mips) <= level:
        prev = mips[-1].astype(np.float32)
        n = prev.shape[0] // 2
        mean = prev[: 2 * n, : 2 * n].reshape(n, 2, n, 2, 3).mean((1, 3))
        mips.append(np.ascontiguousarray(mean, np.float32) if keep_float else np.rint(mean).astype(np.uint8))


def _check_model(model: object) -> TextureModel:
    if not isinstance(model, TextureModel):
        raise InvalidInputError(f"model must be a TextureModel (from TextureModel.fit), got {type(model).__name__}")
    return model


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    return int(value)


def synthesize_region(
    model: TextureModel, top_left_px: tuple[int, int], shape_px: tuple[int, int], seed: int
) -> np.ndarray:
    """The plane's texels at texture-space rows [r0, r0+H), cols [c0, c0+W): [H, W, 3] uint8.

    Observed texels come back as observed; everything else is synthesised. The value of a texel depends only on
    (model's exemplar, seed, texel position), never on the window asked for or on earlier calls.
    """
    model = _check_model(model)
    seed = _check_int("seed", seed)
    if len(tuple(top_left_px)) != 2 or len(tuple(shape_px)) != 2:
        raise InvalidInputError(f"top_left_px and shape_px must be (row, col) pairs, got {top_left_px}, {shape_px}")
    r0, c0 = (_check_int("top_left_px", v) for v in top_left_px)
    hh, ww = (_check_int("shape_px", v) for v in shape_px)
    if hh < 1 or ww < 1:
        raise InvalidInputError(f"shape_px must be positive, got {shape_px}")
    return model.region((r0, c0), (hh, ww), seed)


def synthesize_tile(model: TextureModel, tile_ij: tuple[int, int], seed: int) -> np.ndarray:
    """Tile ``(i, j)`` of the plane: texture-space rows [i*T, (i+1)*T), cols [j*T, (j+1)*T), T = model.tile_px.

    Returns [T, T, 3] uint8. Tiles of one model and seed are windows of one image: identical whenever and in
    whatever order they are asked for, and adjacent tiles join without a seam.
    """
    model = _check_model(model)
    if not isinstance(tile_ij, (tuple, list)) or len(tile_ij) != 2:
        raise InvalidInputError(f"tile_ij must be a (row, col) pair of ints, got {tile_ij!r}")
    i, j = _check_int("tile_ij", tile_ij[0]), _check_int("tile_ij", tile_ij[1])
    t = model.tile_px
    return synthesize_region(model, (i * t, j * t), (t, t), seed)


def texels_at(model: TextureModel, rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """Colours [N, 3] uint8 of texture-space texels (rows [N], cols [N] int): e.g. invented points placed at texel
    centres. Reads through the tiles that hold them (the same values as ``synthesize_tile``), keeping the last
    ``TILE_CACHE`` tiles of each seed, so points of a tile asked for again cost a gather."""
    model = _check_model(model)
    seed = _check_int("seed", seed)
    r = np.asarray(rows)
    c = np.asarray(cols)
    integer = np.issubdtype(r.dtype, np.integer) and np.issubdtype(c.dtype, np.integer)
    if r.shape != c.shape or r.ndim != 1 or not integer:
        raise InvalidInputError(
            f"rows and cols must be 1-D integer arrays of one length, got {r.shape} {r.dtype}, {c.shape} {c.dtype}"
        )
    t = model.tile_px
    ti, tj = np.floor_divide(r, t), np.floor_divide(c, t)
    out = np.empty((len(r), 3), np.uint8)
    if len(r) == 0:
        return out
    for (i, j), sel in _groups(ti, tj):
        tile = model._tile(i, j, seed)
        out[sel] = tile[r[sel] - i * t, c[sel] - j * t]
    return out


def sample_uv(model: TextureModel, uv_m: np.ndarray, footprint_m: np.ndarray, seed: int) -> np.ndarray:
    """Colours [M, 3] uint8 at plane coordinates ``uv_m`` [M, 2] (metres; u along columns, v along rows, (0, 0)
    at the corner of exemplar texel [0, 0]) seen with a pixel footprint of ``footprint_m`` [M] metres.

    The mip level is ``floor(log2(footprint / texel))`` (box-filtered tiles, up to one texel per tile), so a
    far-away invented wall does not alias; level 0 gives exactly ``texels_at``'s texels. From ``FAR_LEVEL`` on, the
    far-field texture (no tiles synthesised)."""
    model = _check_model(model)
    seed = _check_int("seed", seed)
    uv = np.asarray(uv_m, np.float64)
    fp = np.asarray(footprint_m, np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2 or fp.shape != (len(uv),):
        raise InvalidInputError(f"uv_m must be [M, 2] and footprint_m [M], got {uv.shape} and {fp.shape}")
    if not (np.isfinite(uv).all() and np.isfinite(fp).all()):
        raise InvalidInputError("uv_m and footprint_m must be finite")
    rows, cols, level = texel_indices(model, uv, fp)
    out = np.empty((len(uv), 3), np.uint8)
    if len(uv) == 0:
        return out
    read_texels(model, rows, cols, level, seed, None, out)
    return out


def texel_indices(model: TextureModel, uv_m: np.ndarray, footprint_m: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, level)`` (each [M] int64) that ``sample_uv`` reads for plane coordinates ``uv_m`` [M, 2]
    float64 seen with footprints ``footprint_m`` [M] float64 (checked by the caller): the texture-space texel and
    its mip level (``read_texels``'s inputs)."""
    t = model.tile_px
    max_level = int(math.log2(t & -t))  # halve while the tile side stays whole
    level = np.clip(np.floor(np.log2(np.maximum(footprint_m / model.texel_m, 1.0))), 0, max_level).astype(np.int64)
    rows = np.floor(uv_m[:, 1] / model.texel_m).astype(np.int64) + model.origin_px[0]
    cols = np.floor(uv_m[:, 0] / model.texel_m).astype(np.int64) + model.origin_px[1]
    return rows, cols, level


def tiles_read(model: TextureModel, rows: np.ndarray, cols: np.ndarray, level: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tiles ``read_texels`` reads for texels ``rows``, ``cols`` at mip ``level`` (each [N] int64):
    ``(tiles, top, tile)``: ``tiles`` [T, 2] int64 (tile row, tile col), sorted; ``top`` [T] int64 the largest mip
    level read of each; ``tile`` [N] int64 each texel's index into ``tiles``, -1 for a texel read from the
    far-field texture (``FAR_LEVEL`` and beyond: no tile)."""
    from spatia.model.fill.texture.texel_kernels import texel_tiles

    tiles, top, tile, dense = texel_tiles(np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(cols, np.int64),
                                          np.ascontiguousarray(level, np.int64), model.tile_px, FAR_LEVEL)
    if dense:
        return tiles, top, tile
    return _tiles_read_sorted(model, rows, cols, level)


def _tiles_read_sorted(model: TextureModel, rows: np.ndarray, cols: np.ndarray, level: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tiles_read`` by a sort (``np.unique``): its definition, and its way where the texels' tiles are
    scattered over a box too large for ``texel_kernels.texel_tiles``' table."""
    tile = np.full(len(rows), -1, np.int64)
    near = np.flatnonzero(level < FAR_LEVEL)
    if len(near) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64), tile
    t = model.tile_px
    ij = np.stack([np.floor_divide(rows[near], t), np.floor_divide(cols[near], t)], 1)
    tiles, inverse = np.unique(ij, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    top = np.zeros(len(tiles), np.int64)
    np.maximum.at(top, inverse, level[near])
    tile[near] = inverse
    return tiles.astype(np.int64), top, tile


def read_texels(model: TextureModel, rows: np.ndarray, cols: np.ndarray, level: np.ndarray, seed: int,
                dst: np.ndarray | None, out: np.ndarray) -> None:
    """``out[dst[n]]`` = the texel of texture-space row ``rows[n]``, column ``cols[n]`` at mip ``level[n]`` (each
    [N] int64, level clipped to the tiles' levels as ``sample_uv`` does), ``dst`` [N] int64 rows of ``out``
    ([*, 3] uint8; None: ``out``'s first N rows): ``sample_uv``'s reads, for callers that computed the texel
    indices themselves (the layout fill's compiled pass) and write straight into a frame. Which tiles to read is
    planned in one compiled pass (``texel_kernels.plan_texels``); ``_read_texels_reference`` is the numpy twin."""
    from spatia.model.fill.texture.texel_kernels import plan_texels

    if len(rows) == 0:
        return
    t = model.tile_px
    n_levels = max(int(level.max()) + 1, FAR_LEVEL)
    s_rows, s_cols, s_ti, s_tj, s_dst, level_start, slot, tile_i, tile_j, tile_start = plan_texels(
        np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(cols, np.int64),
        np.ascontiguousarray(level, np.int64), np.arange(len(rows)) if dst is None else np.ascontiguousarray(
            dst, np.int64), t, FAR_LEVEL, n_levels)
    for lv in range(n_levels):
        a, b = int(level_start[lv]), int(level_start[lv + 1])
        if a == b:
            continue
        if lv >= FAR_LEVEL:
            out[s_dst[a:b]] = model._far_texels(s_rows[a:b], s_cols[a:b], lv, seed)
            continue
        t0, t1 = int(tile_start[lv]), int(tile_start[lv + 1])
        _make_missing_tiles(model, tile_i[t0:t1], tile_j[t0:t1], seed, lv)
        stack = np.stack([model._tile(int(i), int(j), seed, lv) for i, j in zip(tile_i[t0:t1], tile_j[t0:t1])])
        texture_kernels.gather_tiles(stack, slot[a:b], s_rows[a:b], s_cols[a:b], s_ti[a:b], s_tj[a:b], t, lv,
                                     s_dst[a:b], out)


# A read that misses at least this many tiles shares them with a helper thread (a turn towards a wall no frame
# showed misses 25-46 tiles in one frame, ~1 ms each): the frame's own thread is alone on its core there (the
# layout fill's serial part), so on a machine with a core to spare the frame makes about half of them; where no
# core is free the helper's share is taken back unless it has started. Texels are a function of (model, seed,
# position) alone, so who makes a tile does not change it. Measured in docs/BENCHMARKS.md, session 23
# (benchmarks/tile_spikes.py).
SHARED_TILES_FROM = 2
_tile_helper: ThreadPoolExecutor | None = None
_tile_helper_lock = threading.Lock()


def _helper_pool() -> ThreadPoolExecutor:
    global _tile_helper
    with _tile_helper_lock:
        if _tile_helper is None:
            _tile_helper = ThreadPoolExecutor(1, thread_name_prefix="spatia-tile-helper")
        return _tile_helper


def _make_missing_tiles(model: TextureModel, tile_i: np.ndarray, tile_j: np.ndarray, seed: int, level: int) -> None:
    """Synthesise the tiles (``tile_i``, ``tile_j``: [T] int64) of ``model`` not cached yet before a read gathers
    them, the second half on the helper thread when there are ``SHARED_TILES_FROM`` or more. The helper's half is
    taken back when it has not started by the time the caller's is done (a helper behind another world's tiles
    would only make this frame wait)."""
    if len(tile_i) < SHARED_TILES_FROM:
        return
    with model._lock:
        missing = [(i, j) for i, j in zip(tile_i.tolist(), tile_j.tolist()) if (seed, i, j) not in model._tiles]
    if len(missing) < SHARED_TILES_FROM:
        return
    mine, theirs = missing[: len(missing) // 2], missing[len(missing) // 2 :]
    try:
        job = _helper_pool().submit(warm_tiles, model, [(i, j, level) for i, j in theirs], seed)
    except RuntimeError:  # shut down (interpreter exit): the read makes them
        return
    # through ``_warm_tile`` here too: ``_tile`` holds the model's lock while it synthesises, and the helper waits
    # for that lock to look each of its tiles up and to store it
    warm_tiles(model, [(i, j, level) for i, j in mine], seed)
    if job.cancel():
        return  # not started: the read's own loop makes them
    job.result()


def _read_texels_reference(model: TextureModel, rows: np.ndarray, cols: np.ndarray, level: np.ndarray, seed: int,
                dst: np.ndarray | None, out: np.ndarray) -> None:
    """Slow twin of ``read_texels`` in numpy (the version before its compiled plan)."""
    t = model.tile_px
    ti, tj = np.floor_divide(rows, t), np.floor_divide(cols, t)
    if len(rows) == 0:
        return
    far = level >= FAR_LEVEL
    for lv in np.unique(level[far]):
        sel = np.flatnonzero(level == lv)
        out[sel if dst is None else dst[sel]] = model._far_texels(rows[sel], cols[sel], int(lv), seed)
    near = np.flatnonzero(~far)  # [K] indices into rows of the texels read through tiles
    if len(near) == 0:
        return
    target = near if dst is None else dst[near]  # [K] rows of out
    r, c, lvl, ti, tj = rows[near], cols[near], level[near], ti[near], tj[near]
    # one gather per mip level from the tiles it reads, stacked; each texel's tile found through a dense table of
    # the tiles in reach (no sort, no boolean mask per tile over all texels: those cost more than the gather)
    i0, j0 = int(ti.min()), int(tj.min())
    span_j = int(tj.max()) - j0 + 1
    key = (ti - i0) * span_j + (tj - j0)  # [K] tile of each texel
    span = (int(ti.max()) - i0 + 1) * span_j
    for lv in np.flatnonzero(np.bincount(lvl, minlength=FAR_LEVEL)):
        sel = np.flatnonzero(lvl == lv) if lvl.min() != lvl.max() else np.arange(len(lvl))
        k = key[sel]
        if span <= 4 * len(k) + 4096:
            present = np.zeros(span, bool)
            present[k] = True
            tiles = np.flatnonzero(present)
            slot = (np.cumsum(present) - 1)[k]
        else:  # tiles scattered over a wide range: sort instead of a table that large
            tiles, slot = np.unique(k, return_inverse=True)
        stack = np.stack([model._tile(i0 + int(q) // span_j, j0 + int(q) % span_j, seed, int(lv)) for q in tiles])
        texture_kernels.gather_tiles(stack, slot, r[sel], c[sel], ti[sel], tj[sel], t, int(lv), target[sel], out)


def _groups(*columns: np.ndarray):
    """``((c0, c1, ...), indices)`` for each distinct row of the integer ``columns`` (each [M]), in sorted order:
    one sort of a packed key instead of a boolean mask per group (which costs M x groups)."""
    lo = [int(c.min()) for c in columns]
    spans = [int(c.max()) - m + 1 for c, m in zip(columns, lo)]
    key = np.zeros(len(columns[0]), np.int64)
    for c, m, span in zip(columns, lo, spans):
        key = key * span + (c - m)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for a, b in zip(starts, ends):
        idx = order[a:b]
        first = idx[0]
        yield tuple(int(c[first]) for c in columns), idx


def tiles_covering(model: TextureModel, uv_lo_m: Sequence[float], uv_hi_m: Sequence[float]) -> list[tuple[int, int]]:
    """The (row, col) indices of the tiles that ``sample_uv`` reads for plane coordinates in the rectangle
    [uv_lo_m, uv_hi_m] (metres, u then v, the same frame as ``sample_uv``'s ``uv_m``)."""
    model = _check_model(model)
    t = model.tile_px
    r0, r1 = (int(math.floor(v / model.texel_m)) + model.origin_px[0] for v in (uv_lo_m[1], uv_hi_m[1]))
    c0, c1 = (int(math.floor(u / model.texel_m)) + model.origin_px[1] for u in (uv_lo_m[0], uv_hi_m[0]))
    return [(i, j) for i in range(r0 // t, r1 // t + 1) for j in range(c0 // t, c1 // t + 1)]


def warm_tiles(model: TextureModel, tiles: Sequence[tuple[int, int]], seed: int,
               pause: Callable[[], None] | None = None) -> int:
    """Synthesise the tiles ``tiles`` [(row, col) or (row, col, mip level)] into the model's tile cache ahead of
    ``sample_uv`` (tiles are pure functions of model, index and seed: when they are made changes nothing), each
    outside the model's lock (``TextureModel._warm_tile``). At most ``TILE_CACHE`` of them (the cache would drop
    the first ones again); ``pause`` runs between tiles (a maintenance thread lets the frame thread in). Returns
    how many were synthesised."""
    model = _check_model(model)
    seed = _check_int("seed", seed)
    done = 0
    for tile in list(tiles)[:TILE_CACHE]:
        i, j = int(tile[0]), int(tile[1])
        level = int(tile[2]) if len(tile) > 2 else 0
        if not model._warm_tile(i, j, seed, level):
            continue
        done += 1
        if pause is not None:
            pause()
    return done


def continue_exemplar(model: TextureModel, seed: int) -> np.ndarray:
    """The exemplar's own box with its missing texels continued: [H, W, 3] uint8; observed texels unchanged.

    The same texels as the tiles covering that box (one texture, however it is read)."""
    model = _check_model(model)
    return synthesize_region(model, model.origin_px, model.shape_px, seed)


# ---------------------------------------------------------------------------------------------------------------
# Comparing exemplars and borrowing one
# ---------------------------------------------------------------------------------------------------------------


def describe(model: TextureModel) -> np.ndarray:
    """A small appearance descriptor [16] float64 of a fitted model: mean and spread of the colour (/255),
    gradient-orientation energy in 8 bins (sums to 1; says which way grain and lines run), and log10 of the
    lattice periods in metres (0 when absent)."""
    model = _check_model(model)
    v = model.valid
    rgbf = model.rgb.astype(np.float32)
    mean, std = rgbf[v].mean(0) / 255.0, rgbf[v].std(0) / 255.0
    g = _luma(model.detail)
    gy, gx = np.gradient(g)
    inner = ndimage.binary_erosion(v, iterations=1)
    mag = np.hypot(gx, gy)[inner]
    ang = np.mod(np.arctan2(gy, gx)[inner], np.pi)  # orientation: a line and its reverse are the same
    hist = np.bincount(np.minimum((ang / np.pi * 8).astype(int), 7), weights=mag, minlength=8)
    hist = hist / max(hist.sum(), 1e-9)
    periods = [math.log10(p) for p in model.periods_m[:2]] + [0.0] * (2 - len(model.periods_m[:2]))
    return np.concatenate([mean, std, hist, periods]).astype(np.float64)


def texture_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between two ``describe`` vectors: 0 for the same look; colour counts most, then orientation."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != (16,) or b.shape != (16,):
        raise InvalidInputError(f"descriptors must have shape (16,), got {a.shape} and {b.shape}")
    w = np.array([2.0] * 3 + [1.0] * 3 + [0.5] * 8 + [0.25] * 2)
    return float(np.sqrt((w * (a - b) ** 2).sum()))


def rescale_exemplar(
    rgb: np.ndarray, valid: np.ndarray, from_texel_m: float, to_texel_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resample an exemplar to another plane's texel size (a borrowed exemplar must keep its size in metres).

    rgb [H, W, 3] uint8 and valid [H, W] bool at ``from_texel_m``; returns them at ``to_texel_m``: area averaging
    of the observed texels when shrinking, bilinear when enlarging; a texel stays valid only if what it covers was
    all observed."""
    rgb, valid, src = _check_exemplar(rgb, valid, from_texel_m)
    try:
        dst = float(to_texel_m)
    except (TypeError, ValueError):
        raise InvalidInputError(f"to_texel_m must be a positive number of metres, got {to_texel_m!r}") from None
    if not math.isfinite(dst) or dst <= 0:
        raise InvalidInputError(f"to_texel_m must be a positive number of metres, got {to_texel_m!r}")
    scale = src / dst
    h, w = valid.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (width, height)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    m = valid.astype(np.float32)
    num = cv2.resize(rgb.astype(np.float32) * m[..., None], size, interpolation=interp)
    den = cv2.resize(m, size, interpolation=interp)
    out = np.clip(np.rint(num / np.maximum(den, 1e-6)[..., None]), 0, 255).astype(np.uint8)
    return out, den >= 0.999


@dataclass(frozen=True)
class Surface:
    """What the caller knows about a plane when choosing whose exemplar to borrow.

    normal: world-frame unit normal [3] (pointing to the side the camera sees); mean_rgb: its average colour in
    0-255 when anything is known (e.g. the coarse fill), else None; observed_texels: exemplar size (0 = none)."""

    normal: tuple[float, float, float]
    mean_rgb: tuple[float, float, float] | None = None
    observed_texels: int = 0


def surface_class(normal: Sequence[float], up: Sequence[float]) -> str:
    """"floor", "ceiling" or "wall" from the angle between a plane's normal and world up (both [3])."""
    n, u = np.asarray(normal, np.float64), np.asarray(up, np.float64)
    if n.shape != (3,) or u.shape != (3,) or not np.isfinite(n).all() or not np.isfinite(u).all():
        raise InvalidInputError(f"normal and up must be finite [3] vectors, got {n.shape} and {u.shape}")
    nn, nu = np.linalg.norm(n), np.linalg.norm(u)
    if nn < 1e-9 or nu < 1e-9:
        raise InvalidInputError("normal and up must be non-zero")
    c = float(n @ u / (nn * nu))
    return "floor" if c > 0.8 else "ceiling" if c < -0.8 else "wall"


def pick_exemplar(target: Surface, candidates: Sequence[Surface], up: Sequence[float]) -> int | None:
    """Index of the candidate whose exemplar a plane without one should borrow, or None if no candidate has one.

    Same kind of surface first (floor from floor, wall from wall, ceiling from ceiling, then wall for a ceiling),
    then the most parallel normal, then the closest known colour, then the larger exemplar."""
    t_cls = surface_class(target.normal, up)
    order = {
        "floor": ("floor", "wall", "ceiling"),
        "wall": ("wall", "floor", "ceiling"),
        "ceiling": ("ceiling", "wall", "floor"),
    }
    tn = np.asarray(target.normal, np.float64) / np.linalg.norm(target.normal)
    best, best_key = None, None
    for idx, c in enumerate(candidates):
        if c.observed_texels <= 0:
            continue
        cls_rank = order[t_cls].index(surface_class(c.normal, up))
        cn = np.asarray(c.normal, np.float64) / np.linalg.norm(c.normal)
        angle = 1.0 - abs(float(tn @ cn))
        colour = 0.0
        if target.mean_rgb is not None and c.mean_rgb is not None:
            colour = float(np.linalg.norm(np.subtract(target.mean_rgb, c.mean_rgb))) / 255.0
        key = (cls_rank, round(colour + 0.5 * angle, 6), -int(c.observed_texels), idx)
        if best_key is None or key < best_key:
            best, best_key = idx, key
    return best
