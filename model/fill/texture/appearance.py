"""Appearance of invented layout surfaces: per-plane textures in rectified plane space, and the sky.

Plane textures. Each layout plane gets a rectified texture space: ``u`` along one in-plane Manhattan axis, ``v``
along the other (for walls ``v`` is up), one texel per ``texel_m`` (the memory's voxel size: one texel per point
spacing). The plane's observed points are rasterised into it; the exemplar is the largest square window (up to
``max_exemplar_texels``) whose texels are (nearly) all observed, its few gaps inpainted. Any point of the plane is
coloured by mirror-repeating the exemplar from its anchor, so brick stays brick at the same scale and
orientation, and a region looks the same from every frame and after save/load: the texture is a function of the
observed points alone (which the snapshot keeps), and once shown it is folded into the memory. A plane with no
exemplar of its own borrows the most similar known surface's (floor from floor, wall from wall). Texture
synthesis proper (``model/fill/texture/synthesis.py``, engineer ``texture``) can replace the mirror-repeat per tile.

Regions of a floor's look (session 9). Two rules, each from the observed samples alone: (1) where they change
look at some distance from the observer (``_far_region``: the courtyard's paving near, grass from 24 m), the floor
beyond that distance, in every direction, continues the far look; (2) where the layout's observed walls cut the
floor into cells and a cell holds no observed samples (a room beyond a doorway, ``UnseenCells``), nothing says
what it looks like: the texture is shown at half contrast around the observed mean (a flat mean is the
least-squares guess; half keeps a floor's texture and the gradient ratio in range).

Sky. Outdoors, rays that reach no layout surface show the sky: an environment layer keyed by elevation above the
horizon (the mean colour of the observed sky pixels of the first image per 1 degree band, bands never seen take
the nearest seen one), plus the observed sky's detail (its clouds: the colours less their band's, on a grid of the
first view's pixel angle in elevation and azimuth), mirror-repeated around the horizon at the elevation it was seen
at. It is rendered behind everything and never becomes memory points (no sparse shell).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import structlog
from scipy import ndimage

from spatia.model.fill.geometry.layout import CEILING, FLOOR, WALL, Layout, Plane
from spatia.model.fill.texture.appearance_kernels import add_sky_detail, best_window, lower_unseen_contrast

log = structlog.get_logger(__name__)

_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luminance weights (RGB)


@dataclass(frozen=True)
class AppearanceConfig:
    texel_m: float = 0.01  # one texel per point spacing (the memory's voxel size)
    plane_tol_m: float = 0.015  # observed points within this of a plane are its samples (a picture frame 3 cm
    # proud of its wall is not)
    # ... outdoors a facade's within this: its windows, doors and sills, set a few cm in or out of its plane, are
    # its texture where they repeat in rows and columns (the exemplar's synthesis found a two-dimensional
    # lattice). At plane_tol_m every courtyard facade was continued without a window (their windows stand 6 cm
    # proud), as plain plaster or brick; without a lattice, quilting scattered pieces of the door and the windows
    # over the wall, and along a one-dimensional one it broke the windows into a jumble of blue blocks, so such a
    # facade keeps plane_tol_m (docs/RESULTS.md, session 28)
    facade_tol_m: float = 0.1
    max_exemplar_texels: int = 256
    min_exemplar_texels: int = 24
    min_coverage: float = 0.85  # share of a window's texels that must be observed to serve as exemplar
    # a plane seen too sparsely for that (a facade at a grazing angle, far away: its points lie in columns tens of
    # cm apart) still keeps its own look, from a coarse exemplar (texel up to 32 x texel_m, half its texels
    # observed, the rest inpainted), rather than borrowing another plane's: on the courtyard both side facades
    # (brick, pastel plaster) had none and showed the back facade's grey concrete
    coarse_scales: tuple[float, ...] = (12.0, 16.0, 24.0, 32.0)
    coarse_min_coverage: float = 0.5
    coarse_min_points: int = 64
    coarse_min_texels: int = 8  # ... and a window as small as this (a 0.7 m wide strip of a facade, 5 m tall)
    max_grid_texels: int = 1200  # rasterised extent per axis around the samples' median (bounds memory and time)
    sky_min_depth_m: float = 80.0  # observed pixels this far away (or with no depth) are sky candidates
    sky_band_deg: float = 1.0
    # the observed sky's detail (clouds) over the bands (``SkyModel.detail``), mirror-repeated around the horizon:
    # the bands alone drew a smooth gradient where the sky showed clouds (docs/BENCHMARKS.md, session 18)
    sky_detail: bool = True
    sky_min_texel_deg: float = 0.05  # the detail grid's cell, at least (the view's pixel angle otherwise)
    # the sky of an outdoor view that showed none (``unseen_sky``): a plain overcast gradient, light at the
    # horizon and a little bluer overhead. Nothing of the scene: a guess that reads as sky, where the colour fill
    # smeared whatever stood at the view's edge across it
    unseen_sky_horizon_rgb: tuple[int, int, int] = (206, 212, 218)
    unseen_sky_zenith_rgb: tuple[int, int, int] = (150, 172, 202)
    synthesis: bool = True  # continue textures with model.fill.texture.synthesis when it is installed (else mirror repeat)
    synthesis_window_texels: int = 256
    # distance regions (``_far_region``): where the observed samples of a plane of these kinds change look at some
    # distance from the observer (paving near, grass from ~20 m on the courtyard's first view), the plane beyond
    # that distance continues the far look instead of the near exemplar's
    region_kinds: tuple[str, ...] = (FLOOR,)
    region_min_colour: float = 40.0  # RGB distance between the two regions' mean colours (a paving's own shading
    # varies by 10-30 between distance rings)
    region_min_points: int = 64  # samples on each side
    # unseen cells (``_unseen_cells``): the layout's observed walls cut a plane of these kinds into cells (rooms);
    # a cell with fewer than ``region_min_points`` observed samples is one nothing observed says the look of (the
    # rooms beyond the house's doorways: carpet, wood, tiles where the first room has a checker floor). There the
    # texture keeps ``unseen_contrast`` of its contrast around the plane's observed mean colour: the least-squares
    # guess for an unknown look is the mean (flat: house demo floors' RMSE 68 -> 52), half the contrast keeps a
    # texture that a player sees as floor (RMSE 55) and the gradient ratio in 0.7-1.3 (flat put it at ~0.7)
    unseen_kinds: tuple[str, ...] = (FLOOR,)
    unseen_contrast: float = 0.5
    # objects on a plane (``_foreign_regions``): in an exemplar indoors, blocks of ``foreign_block_m`` whose mean
    # colour lies more than max(``foreign_min_levels``, ``foreign_spread`` x the blocks' median distance) from the
    # blocks' median colour, in connected regions of at least ``foreign_min_blocks``, covering with their edges
    # less than ``foreign_max_share`` of the observed blocks (at least 4 x foreign_min_blocks), are something
    # standing on the material (a doorway's view of the next room on a photo's wall, a rug on a floor), not the
    # material: the quilt does not copy them. At block scale a material's own contrast (plaster's mottle, wood
    # grain) averages out, and one whose blocks differ (a checker of large tiles) raises the threshold with its
    # own spread
    foreign_block_m: float = 0.16
    # a block with this share of its texels observed has a mean colour. Counted only when half observed, a floor
    # seen at a slant (its far part in columns, a quarter of the texels) had its densely seen rug near the camera
    # for its material, and room@pitched's unseen floor showed blue blotches (docs/RESULTS.md, session 38)
    foreign_block_share: float = 0.1
    foreign_min_levels: float = 24.0
    foreign_spread: float = 4.0
    foreign_min_blocks: int = 4
    foreign_max_share: float = 0.5
    # A wall nothing observed borrows a texture lit as its source wall was. Where walls of that material were seen
    # facing both ways across it (the walls at its two corners), it takes the mean of their tones instead: under
    # a light from an unknown side that is the least-squares guess, and a room's walls of one material differ by
    # their lighting alone (docs/RESULTS.md, "Session 36").
    # Same material: mean chromaticities (r, g, b over their sum) within this; a wall counts with this many samples
    tone_chroma_tol: float = 0.03
    tone_min_samples: int = 500
    tone_min_span_m: float = 1.0  # the two walls stand at least this far apart (one on each side)


def plane_basis(layout: Layout, plane: Plane) -> tuple[np.ndarray, np.ndarray]:
    """``(u [3], v [3])`` in-plane unit axes, world frame: walls (u horizontal, v up), floor/ceiling (a1, a2)."""
    others = [k for k in range(3) if k != plane.axis]
    if plane.axis == 0:
        return layout.axes[1], layout.axes[2]
    return layout.axes[others[1] if others[0] == 0 else others[0]], layout.axes[0]


@dataclass
class PlaneTexture:
    levels: list[np.ndarray]  # mip pyramid of the exemplar, [S, S, 3] uint8 RGB at level 0
    texel_m: float
    origin_uv: tuple[float, float]  # plane coordinates (metres) of the exemplar's texel (0, 0) corner
    # exemplar-based synthesis (``model.fill.texture.synthesis.TextureModel``) when available: continues the plane's
    # texture (periodic ones by their period, stochastic ones by quilting) in tiles keyed by (plane, tile, seed)
    synth: object | None = None
    synth_origin_uv: tuple[float, float] = (0.0, 0.0)  # plane metres of the synthesis exemplar's texel [0, 0]
    seed: int = 0
    # the plane's look beyond ``far_from_m`` from ``centre_uv`` (plane metres: the observer's foot), when the
    # observed samples there look different (``_far_region``); None: one look everywhere
    far: "PlaneTexture | None" = None
    far_from_m: float = math.inf
    centre_uv: tuple[float, float] = (0.0, 0.0)
    unseen: "UnseenCells | None" = None  # cells of the plane nothing observed (``_unseen_cells``)
    gain: float = 1.0  # every sample's brightness times this: a borrowed texture on a wall lit otherwise
    colour_only: bool = False  # its samples were too sparse for an exemplar: their median colour alone
    # another wall's texture borrowed by one seen too little (``PlaneTextures._detail_for``): each sample is this
    # colour [3] plus its luminance's departure from the source exemplar's mean luminance (``detail_mean``)
    detail_over: np.ndarray | None = None
    detail_mean: float = 0.0

    @functools.cached_property
    def contrast(self) -> float:
        """The spread of the exemplar's luminance (levels, 0-255): its 90th less its 10th percentile. Brick, stone
        and tiles score tens of levels; plaster and paint a few."""
        lum = self.levels[0].reshape(-1, 3).astype(np.float32) @ _LUMA.astype(np.float32)
        lo, hi = np.percentile(lum, (10.0, 90.0))
        return float(hi - lo)

    def sample(self, uv_m: np.ndarray, footprint_m: np.ndarray) -> np.ndarray:
        """``[M, 3]`` uint8 colours at plane coordinates ``uv_m`` [M, 2] (metres), seen with a pixel footprint of
        ``footprint_m`` [M] metres (chooses the mip level: no aliasing far away)."""
        out = self._sample_regions(uv_m, footprint_m)
        if self.unseen is not None:
            self.unseen.apply(uv_m, out)
        if self.gain != 1.0:
            out = np.clip(np.rint(out * self.gain), 0, 255).astype(np.uint8)
        if self.detail_over is not None:
            detail = out.astype(np.float32) @ _LUMA.astype(np.float32) - np.float32(self.detail_mean)
            out = np.clip(np.rint(self.detail_over.astype(np.float32) + detail[:, None]), 0, 255).astype(np.uint8)
        return out

    def far_points(self, uv_m: np.ndarray) -> np.ndarray | None:
        """``[M]`` bool: the points of ``uv_m`` [M, 2] (plane metres) read from the far look (``far``); None when
        none is (no far look, or every point nearer). The one rule of ``sample``'s dispatch; the fill's tile
        bookkeeping follows it too (``model.geometric._texture_reads``)."""
        if self.far is None:
            return None
        far = np.hypot(uv_m[:, 0] - self.centre_uv[0], uv_m[:, 1] - self.centre_uv[1]) >= self.far_from_m
        return far if far.any() else None

    def _sample_regions(self, uv_m: np.ndarray, footprint_m: np.ndarray) -> np.ndarray:
        far = self.far_points(uv_m)
        if far is not None:
            out = np.empty((len(uv_m), 3), np.uint8)
            out[far] = self.far.sample(uv_m[far], np.asarray(footprint_m)[far])
            if not far.all():
                out[~far] = self._sample_near(uv_m[~far], np.asarray(footprint_m)[~far])
            return out
        return self._sample_near(uv_m, footprint_m)

    def _sample_near(self, uv_m: np.ndarray, footprint_m: np.ndarray) -> np.ndarray:
        if self.synth is not None:
            from spatia.model.fill.texture.synthesis import sample_uv

            return sample_uv(self.synth, np.asarray(uv_m, np.float64) - np.asarray(self.synth_origin_uv),
                             np.asarray(footprint_m, np.float64), self.seed)
        out = np.empty((len(uv_m), 3), np.uint8)
        level = np.clip(np.floor(np.log2(np.maximum(footprint_m / self.texel_m, 1.0))), 0, len(self.levels) - 1)
        level = level.astype(np.int64)
        for L in np.unique(level):
            sel = level == L
            tex = self.levels[L]
            s = tex.shape[0]
            t = (uv_m[sel] - np.asarray(self.origin_uv)) / (self.texel_m * (1 << int(L)))
            i = np.floor(t).astype(np.int64)
            i = np.mod(i, 2 * s)
            i = np.where(i >= s, 2 * s - 1 - i, i)  # mirror repeat: no seams
            out[sel] = tex[i[:, 1], i[:, 0]]
        return out


@dataclass
class UnseenCells:
    """The cells a plane's observed walls cut it into (the cuts along its ``u`` and ``v`` axes, plane metres),
    which of them hold observed samples, and the look of the others: ``contrast`` of the texture's own around
    ``mean`` (module docstring, ``AppearanceConfig.unseen_kinds``)."""

    cuts_u: np.ndarray  # [A] sorted, plane metres along u
    cuts_v: np.ndarray  # [B] sorted, plane metres along v
    seen: np.ndarray  # [S] sorted int64 cell codes (``cell_codes``) holding observed samples
    mean: np.ndarray  # [3] float64, the plane's observed mean colour
    contrast: float

    def cell_codes(self, uv_m: np.ndarray) -> np.ndarray:
        """``[M]`` int64 cell code of plane points ``uv_m`` [M, 2] (metres)."""
        iu = np.searchsorted(self.cuts_u, uv_m[:, 0])
        iv = np.searchsorted(self.cuts_v, uv_m[:, 1])
        return iu.astype(np.int64) * (len(self.cuts_v) + 1) + iv

    def unseen_mask(self, uv_m: np.ndarray) -> np.ndarray:
        """``[M]`` bool: the point lies in a cell with no observed samples."""
        codes = self.cell_codes(uv_m)
        i = np.clip(np.searchsorted(self.seen, codes), 0, max(len(self.seen) - 1, 0))
        return ~((len(self.seen) > 0) & (self.seen[i] == codes)) if len(self.seen) else np.ones(len(codes), bool)

    def apply(self, uv_m: np.ndarray, colours: np.ndarray) -> None:
        """Lower the contrast of ``colours`` [M, 3] uint8 (in place) where ``uv_m`` [M, 2] lies in an unseen cell
        (compiled: this runs on every floor pixel of a frame)."""
        if not len(uv_m):
            return
        out = colours if colours.flags.c_contiguous else np.ascontiguousarray(colours)
        seen_cell = np.zeros((len(self.cuts_u) + 1) * (len(self.cuts_v) + 1), bool)
        seen_cell[self.seen] = True
        lower_unseen_contrast(np.ascontiguousarray(uv_m, np.float64), out, self.cuts_u, self.cuts_v, seen_cell,
                              self.mean, float(self.contrast))
        if out is not colours:
            colours[...] = out

    def reference_apply(self, uv_m: np.ndarray, colours: np.ndarray) -> None:
        """Slow numpy twin of ``apply``."""
        m = self.unseen_mask(uv_m)
        if m.any():
            c = self.mean + self.contrast * (colours[m].astype(np.float64) - self.mean)
            colours[m] = np.clip(np.floor(c + 0.5), 0, 255).astype(np.uint8)


def _unseen_cells(layout: Layout, plane: Plane, uv: np.ndarray, col: np.ndarray,
                  config: AppearanceConfig) -> UnseenCells | None:
    """The plane's cells cut by the layout's observed (not derived) room walls (``Layout.is_room_wall``, not
    furniture), with those holding at least
    ``region_min_points`` of its observed samples (``uv`` [N, 2] plane metres, ``col`` [N, 3]) marked seen;
    None when no wall cuts the plane."""
    u_ax, v_ax = plane_basis(layout, plane)
    cuts = []
    for ax in (u_ax, v_ax):
        offs = []
        for w in layout.planes:
            if w.kind != WALL or w.derived or w.axis == plane.axis or not layout.is_room_wall(w):
                # furniture fronts are not a room's walls: cutting there faded the room's own floor
                continue
            dot = float(layout.axes[w.axis] @ ax)
            if abs(abs(dot) - 1.0) < 1e-6:  # a wall across this plane axis: cuts it at offset * dot
                offs.append(w.offset_m * dot)
        cuts.append(np.unique(np.asarray(offs, np.float64)))
    if not len(cuts[0]) and not len(cuts[1]):
        return None
    cells = UnseenCells(cuts[0], cuts[1], np.zeros(0, np.int64), col.astype(np.float64).mean(0),
                        float(config.unseen_contrast))
    codes, counts = np.unique(cells.cell_codes(uv), return_counts=True)
    cells.seen = codes[counts >= config.region_min_points]
    return cells


def _reference_largest_window(coverage: np.ndarray, sizes: list[int], min_cov: float) -> tuple[int, int, int] | None:
    """Slow twin of ``_largest_window``: every window's count as a numpy array, ``np.argmax`` of it."""
    ii = np.pad(coverage.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    H, W = coverage.shape
    for s in sizes:
        if s > H or s > W:
            continue
        tot = ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]
        r, c = np.unravel_index(int(np.argmax(tot)), tot.shape)
        if tot[r, c] >= min_cov * s * s:
            return int(r), int(c), s
    return None


WINDOW_BLOCK = 8  # ``_window_bounds``' block side (texels)


def _window_bounds(coverage: np.ndarray, sizes: list[int]) -> list[int]:
    """Per size ``s`` in ``sizes`` (each fitting ``coverage`` [H, W] bool): an upper bound of the largest covered
    count of any ``s`` x ``s`` window. A window spans at most ``(s - 1) // B + 2`` blocks of ``B`` x ``B`` texels
    per axis, so the largest count of that many blocks bounds it; on a block grid 64 times smaller."""
    H, W = coverage.shape
    b = WINDOW_BLOCK
    hb, wb = -(-H // b), -(-W // b)
    r, c = np.divmod(np.flatnonzero(coverage), W)  # the covered texels (a bincount of them: ~2x a blocked sum)
    blocks = np.bincount((r // b) * wb + c // b, minlength=hb * wb).reshape(hb, wb)
    ii = np.pad(blocks.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    out = []
    for s in sizes:
        k = (s - 1) // b + 2
        out.append(int(best_window(ii, min(k, hb), min(k, wb))[2]))
    return out


def _largest_window(coverage: np.ndarray, sizes: list[int], min_cov: float) -> tuple[int, int, int] | None:
    """(row, col, size) of the best-covered square window of the largest size in ``sizes`` reaching
    ``min_cov`` coverage; None when none does. Sizes whose ``_window_bounds`` is below ``min_cov`` are not
    searched (no window of theirs can reach it): on a plane's sparse fine-texel grids (a failed texel scale of
    ``_exemplar``) that skips the whole search."""
    H, W = coverage.shape
    sizes = [s for s in sizes if s <= H and s <= W]
    sizes = [s for s, most in zip(sizes, _window_bounds(coverage, sizes)) if most >= min_cov * s * s]
    if not sizes:
        return None
    ii = np.pad(coverage.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    for s in sizes:
        r, c, total = best_window(ii, s, s)
        if total >= min_cov * s * s:
            return int(r), int(c), s
    return None


def plane_texture(
    layout: Layout, plane: Plane, points: np.ndarray, colors: np.ndarray, config: AppearanceConfig,
    heights: np.ndarray | None = None,
) -> PlaneTexture | None:
    """The plane's exemplar from observed ``points`` [N, 3] (world frame) with ``colors`` [N, 3] uint8, or None.
    ``heights`` [N]: ``points @ layout.axes[plane.axis]`` if the caller has it (``PlaneTextures`` keeps one per
    axis for all its planes: a world's 5-12 planes each projected every point, ~15 % of its texture fits' CPU).

    The texel is the finest of 1, 1.5, 2, 3, 4, 6, 8 x ``texel_m`` at which an exemplar window is covered: the
    observed point spacing on that plane (far surfaces are seen with fewer points than the voxel grid holds)."""
    a = layout.axes[plane.axis]
    h = points @ a if heights is None else heights
    u_ax, v_ax = plane_basis(layout, plane)
    seed = 1000003 * (plane.axis + 1) + int(round(plane.offset_m / 0.01))  # keyed by the plane (stable on reload)
    tex = None
    if plane.kind == WALL and not layout.indoor and config.facade_tol_m > config.plane_tol_m:
        on = np.abs(h - plane.offset_m) <= config.facade_tol_m
        if on.sum() >= config.coarse_min_points:
            tex = _own_exemplar(np.stack([points[on] @ u_ax, points[on] @ v_ax], axis=1),
                                colors[on].astype(np.float32), config, seed)
            if tex is not None and (tex.synth is None or len(tex.synth.periods_m) < 2):
                tex = None  # no lattice of rows and columns of windows: the wall's own surface alone, below
    on = np.abs(h - plane.offset_m) <= config.plane_tol_m
    if on.sum() < config.coarse_min_points:
        return tex
    on[on] = ~_on_junction(layout, plane, points[on], config.plane_tol_m)
    uv = np.stack([points[on] @ u_ax, points[on] @ v_ax], axis=1)
    col = colors[on].astype(np.float32)
    if tex is None:
        # indoors an exemplar's objects are left out of its synthesis (``_foreign_regions``); a facade's windows
        # are its texture, however they are laid out
        tex = _own_exemplar(uv, col, config, seed, without_objects=layout.indoor)
    if tex is not None and plane.kind in config.region_kinds and layout.observer is not None:
        region = _far_region(layout, plane, points, colors, on, config, h)
        if region is not None:
            tex.far, tex.far_from_m, tex.centre_uv = region
    if tex is not None and plane.kind in config.unseen_kinds and config.unseen_contrast != 1.0:
        tex.unseen = _unseen_cells(layout, plane, uv, col, config)
    return tex


def _on_junction(layout: Layout, plane: Plane, points: np.ndarray, tol_m: float) -> np.ndarray:
    """``[N]`` bool: which of ``plane``'s samples ``points`` [N, 3] (world frame) lie within ``tol_m`` of another
    observed layout plane across it (a ceiling's samples along the top of a brick wall). They are the edge of two
    surfaces: the synthesis spread a junction's few brick-red texels over house@turned's ceiling, and quilted a
    bookcase standing in a corner of room@photo over its unseen walls (docs/RESULTS.md, session 38)."""
    out = np.zeros(len(points), bool)
    for other in layout.planes:
        if other.axis != plane.axis and not other.derived and other.plane_id >= 0:
            out |= np.abs(points @ layout.axes[other.axis] - other.offset_m) <= tol_m
    return out


def _own_exemplar(uv: np.ndarray, col: np.ndarray, config: AppearanceConfig, seed: int,
                  without_objects: bool = False) -> PlaneTexture | None:
    """The exemplar of plane samples at ``uv`` [N, 2] (plane metres) with colours ``col`` [N, 3] float32: the
    finest texel scale whose window is covered, else a coarse one, else their median colour (``plane_texture``)."""
    if len(uv) >= config.min_exemplar_texels**2:
        for scale in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0):
            tex = _exemplar(uv, col, config.texel_m * scale, config, seed, config.min_coverage,
                            config.min_exemplar_texels, without_objects=without_objects)
            if tex is not None:
                return tex
    for scale in (8.0,) + tuple(config.coarse_scales):
        texel_m = config.texel_m * scale
        tex = _exemplar(uv, col, texel_m, config, seed, config.coarse_min_coverage, config.coarse_min_texels,
                        without_objects=without_objects)
        if tex is not None and tex.levels[0].shape[0] >= config.min_exemplar_texels:
            return tex
        if tex is not None:
            # a window smaller than min_exemplar_texels: its colour only (a texture continued from a window this
            # small and coarse repeats its shading in bands a metre wide: seen on the courtyard's side facade)
            flat = np.empty((config.coarse_min_texels, config.coarse_min_texels, 3), np.uint8)
            flat[:] = np.clip(np.rint(np.median(col, axis=0)), 0, 255).astype(np.uint8)
            return PlaneTexture([flat], texel_m, (0.0, 0.0), colour_only=True)
    return None


def _split_by_distance(r_m: np.ndarray, col: np.ndarray, min_points: int) -> tuple[int, float] | None:
    """``(k, separation)``: with samples sorted by distance ``r_m`` [N] (ascending) and colours ``col`` [N, 3],
    the split into the first ``k`` and the rest that maximises ``k (N - k) / N * |mean_1 - mean_2|^2`` (Otsu's
    between-class variance along distance), both sides at least ``min_points``; None when N is too small."""
    n = len(r_m)
    if n < 2 * min_points:
        return None
    cs = np.cumsum(col.astype(np.float64), axis=0)  # [N, 3]
    k = np.arange(min_points, n - min_points + 1)
    m1 = cs[k - 1] / k[:, None]
    m2 = (cs[-1] - cs[k - 1]) / (n - k)[:, None]
    score = k * (n - k) / n * np.sum((m1 - m2) ** 2, axis=1)
    # a split only between samples at different distances (equal ones cannot be told apart by distance)
    score[r_m[k - 1] == r_m[k]] = -1.0
    best = int(np.argmax(score))
    return int(k[best]), float(score[best])


def _reference_split_by_distance(r_m: np.ndarray, col: np.ndarray, min_points: int) -> tuple[int, float] | None:
    """Slow twin of ``_split_by_distance``: every split's two means computed afresh."""
    n = len(r_m)
    if n < 2 * min_points:
        return None
    best = (-1, -math.inf)
    for k in range(min_points, n - min_points + 1):
        if r_m[k - 1] == r_m[k]:
            s = -1.0
        else:
            d = col[:k].astype(np.float64).mean(0) - col[k:].astype(np.float64).mean(0)
            s = k * (n - k) / n * float(d @ d)
        if s > best[1]:
            best = (k, s)
    return best


def _far_region(layout: Layout, plane: Plane, points: np.ndarray, colors: np.ndarray, on: np.ndarray,
                config: AppearanceConfig, heights: np.ndarray | None = None,
                ) -> tuple[PlaneTexture, float, tuple[float, float]] | None:
    """``(far texture, distance m, observer's foot (u, v) m)`` when the plane's observed samples change look
    at some distance from the observer, else None.

    The samples are taken again against the plane's own least-squares fit (``on`` [N] bool: the samples within
    ``plane_tol_m`` of the Manhattan plane): the layout's up is fitted on all planes, and a tilt of 0.1 degree
    (measured on the courtyard) puts ground 25 m away 5 cm off the plane, out of tolerance. Sorted by distance
    from the observer's foot on the plane, they split where their mean colour changes most
    (``_split_by_distance``); a split whose two means differ by less than ``region_min_colour`` is the near
    look's own shading, not a second region; nor is one whose far side holds more samples than the near."""
    a = layout.axes[plane.axis]
    u_ax, v_ax = plane_basis(layout, plane)
    h = points @ a if heights is None else heights
    uv_all = np.stack([points @ u_ax, points @ v_ax], axis=1)
    design = np.concatenate([uv_all[on], np.ones((int(on.sum()), 1))], axis=1)
    coef = np.linalg.lstsq(design, h[on], rcond=None)[0]
    on = np.abs(h - uv_all @ coef[:2] - coef[2]) <= config.plane_tol_m
    centre = np.array([layout.observer @ u_ax, layout.observer @ v_ax])
    r = np.hypot(uv_all[on, 0] - centre[0], uv_all[on, 1] - centre[1])
    order = np.argsort(r, kind="stable")
    r, uv, col = r[order], uv_all[on][order], colors[on][order]
    split = _split_by_distance(r, col, config.region_min_points)
    if split is None:
        return None
    k = split[0]
    diff = float(np.linalg.norm(col[:k].astype(np.float64).mean(0) - col[k:].astype(np.float64).mean(0)))
    if diff < config.region_min_colour or k < len(r) - k:
        # the near side must be the plane's main look (its exemplar is taken from all samples, most of them near):
        # a rug or a sunlit patch indoors splits a floor into a small near part and a larger far one (the room
        # items' first views: 177 / 5324 samples), a region the distance rule does not describe
        return None
    far_m = 0.5 * float(r[k - 1] + r[k])
    far_col = col[k:].astype(np.float32)
    tex = None
    for scale in (8.0,) + tuple(config.coarse_scales):
        # the far samples are sparse (a pixel row covers metres of ground at a grazing angle): a coarse exemplar
        # or their median colour; no synthesis model (it would continue texels nobody resolves at that distance)
        tex = _exemplar(uv[k:], far_col, config.texel_m * scale, config, 0, config.coarse_min_coverage,
                        config.min_exemplar_texels, synthesis=False)
        if tex is not None:
            break
    if tex is None:
        flat = np.empty((config.coarse_min_texels, config.coarse_min_texels, 3), np.uint8)
        flat[:] = np.clip(np.rint(np.median(far_col, axis=0)), 0, 255).astype(np.uint8)
        tex = PlaneTexture([flat], config.texel_m * config.coarse_scales[-1], (0.0, 0.0))
    log.debug("plane far region", plane=plane.plane_id, far_from_m=round(far_m, 2), colour_diff=round(diff, 1),
              near_samples=k, far_samples=len(r) - k)
    return tex, far_m, (float(centre[0]), float(centre[1]))


def _exemplar(uv: np.ndarray, col: np.ndarray, texel_m: float, config: AppearanceConfig, seed: int,
              min_coverage: float, min_texels: int, synthesis: bool = True,
              without_objects: bool = False) -> PlaneTexture | None:
    half = config.max_grid_texels * texel_m / 2
    centre = np.median(uv, axis=0)
    keep = (np.abs(uv[:, 0] - centre[0]) <= half) & (np.abs(uv[:, 1] - centre[1]) <= half)  # np.all(axis=1)'s
    uv, col = uv[keep], col[keep]
    lo = uv.min(axis=0)
    ij = np.floor((uv - lo) / texel_m).astype(np.int64)  # [:, 0] = u -> column, [:, 1] = v -> row
    W, H = int(ij[:, 0].max()) + 1, int(ij[:, 1].max()) + 1
    flat = ij[:, 1] * W + ij[:, 0]
    cnt = np.bincount(flat, minlength=H * W).reshape(H, W)
    covered = cnt > 0
    sizes = [s for s in (256, 224, 192, 160, 128, 96, 80, 64, 48, 32, 24, 16, 12, 8)
             if min_texels <= s <= config.max_exemplar_texels]
    win = _largest_window(covered, sizes, min_coverage)
    if win is None:
        return None
    # the colour sums only for a scale that has a window (most scales tried fail, and these three full-grid
    # passes were most of a failed scale's cost)
    acc = np.stack([np.bincount(flat, weights=col[:, c], minlength=H * W) for c in range(3)], axis=1).reshape(H, W, 3)
    r, c, s = win
    mean = acc[r : r + s, c : c + s] / np.maximum(cnt[r : r + s, c : c + s], 1)[..., None]
    ex = np.clip(mean, 0, 255).astype(np.uint8)
    holes = ~covered[r : r + s, c : c + s]
    if holes.any():
        ex = cv2.inpaint(ex, holes.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    levels = [ex]
    while levels[-1].shape[0] >= 8:
        levels.append(cv2.pyrDown(levels[-1]))
    origin = (float(lo[0] + c * texel_m), float(lo[1] + r * texel_m))
    tex = PlaneTexture(levels, texel_m, origin)
    if config.synthesis and synthesis:
        _attach_synthesis(tex, acc, cnt, lo, texel_m, seed, config, without_objects)
    return tex


def _attach_synthesis(tex: PlaneTexture, acc: np.ndarray, cnt: np.ndarray, lo: np.ndarray, texel_m: float,
                      seed: int, config: AppearanceConfig, without_objects: bool = False) -> None:
    """Fit the texture library's model on the best-covered window (up to ``synthesis_window_texels`` a side) of
    the plane's rasterised observations (``without_objects``: on its material alone, ``_foreign_regions``);
    without the library (or when it declines the exemplar) the plane keeps the mirror-repeated exemplar."""
    try:
        from spatia.model.fill.texture.synthesis import TextureModel
    except ImportError:
        return
    from spatia.world.errors import InvalidInputError

    H, W = cnt.shape
    s_r, s_c = min(H, config.synthesis_window_texels), min(W, config.synthesis_window_texels)
    covered = (cnt > 0).astype(np.int32)
    ii = np.pad(covered.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r, c, _ = best_window(ii, s_r, s_c)
    win = (slice(r, r + s_r), slice(c, c + s_c))
    rgb = np.clip(acc[win] / np.maximum(cnt[win], 1)[..., None], 0, 255).astype(np.uint8)
    valid = cnt[win] > 0
    model = None
    foreign = _foreign_regions(rgb, valid, texel_m, config) if without_objects else None
    if foreign is not None:
        # the material alone: the objects' texels count as unobserved (the memory shows them where they were seen;
        # a periodic exemplar's holes are copies of its pattern one period away)
        try:
            model = TextureModel.fit(rgb, valid & ~foreign, texel_m)
            log.debug("texture objects left out", share=round(float((foreign & valid).sum() / valid.sum()), 3))
        except InvalidInputError:  # too little material left for a model of its own: the whole exemplar's
            log.debug("texture objects kept: too little material without them")
    if model is None:
        try:
            model = TextureModel.fit(rgb, valid, texel_m)
        except InvalidInputError as exc:
            log.info("texture synthesis declined the exemplar; mirror repeat", reason=str(exc))
            return
    tex.synth = model
    tex.synth_origin_uv = (float(lo[0] + c * texel_m), float(lo[1] + r * texel_m))
    tex.seed = int(seed)


def _foreign_regions(rgb: np.ndarray, valid: np.ndarray, texel_m: float,
                     config: AppearanceConfig) -> np.ndarray | None:
    """``[H, W]`` bool: the texels of an exemplar (``rgb`` [H, W, 3] uint8, ``valid`` [H, W] bool observed, one
    texel per ``texel_m`` metres) that belong to objects standing on the plane's material rather than to it
    (``AppearanceConfig.foreign_block_m``'s rule, the regions grown by one block over their mixed edges); None when
    there are none. ``_foreign_regions_reference`` is the block-by-block definition."""
    H, W = valid.shape
    b = max(2, int(round(config.foreign_block_m / texel_m)))
    hb, wb = -(-H // b), -(-W // b)
    pad = ((0, hb * b - H), (0, wb * b - W))
    v = np.pad(valid, pad).astype(np.float64)
    cnt = v.reshape(hb, b, wb, b).sum(axis=(1, 3))  # [hb, wb] observed texels per block
    sums = np.stack([(np.pad(rgb[..., c].astype(np.float64), pad) * v).reshape(hb, b, wb, b).sum(axis=(1, 3))
                     for c in range(3)], axis=-1)  # [hb, wb, 3]
    return _foreign_from_blocks(sums, cnt, b, (H, W), config)


def _foreign_from_blocks(sums: np.ndarray, cnt: np.ndarray, b: int, shape: tuple[int, int],
                         config: AppearanceConfig) -> np.ndarray | None:
    """The rule of ``_foreign_regions`` on block sums ``sums`` [hb, wb, 3] of observed colours and counts ``cnt``
    [hb, wb] of ``b`` x ``b`` texel blocks; the texel mask cut to ``shape``."""
    obs = cnt >= config.foreign_block_share * b * b
    if obs.sum() < 4 * config.foreign_min_blocks:  # too few blocks to tell a material from what stands on it
        return None
    means = sums / np.maximum(cnt, 1)[..., None]
    ref = np.median(means[obs], axis=0)
    dist = np.linalg.norm(means - ref, axis=-1)
    threshold = max(config.foreign_min_levels, config.foreign_spread * float(np.median(dist[obs])))
    foreign = obs & (dist > threshold)
    labels, n = ndimage.label(foreign, structure=np.ones((3, 3), bool))
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        foreign = (sizes >= config.foreign_min_blocks)[labels] & (labels > 0)
    if not foreign.any():
        return None
    grown = ndimage.binary_dilation(foreign, structure=np.ones((3, 3), bool))
    if (obs & grown).sum() >= config.foreign_max_share * obs.sum():
        return None
    return np.repeat(np.repeat(grown, b, axis=0), b, axis=1)[: shape[0], : shape[1]]


def _foreign_regions_reference(rgb: np.ndarray, valid: np.ndarray, texel_m: float,
                               config: AppearanceConfig) -> np.ndarray | None:
    """Slow twin of ``_foreign_regions``: each block's sums by a loop over its texels."""
    H, W = valid.shape
    b = max(2, int(round(config.foreign_block_m / texel_m)))
    hb, wb = -(-H // b), -(-W // b)
    sums, cnt = np.zeros((hb, wb, 3)), np.zeros((hb, wb))
    for y in range(H):
        for x in range(W):
            if valid[y, x]:
                sums[y // b, x // b] += rgb[y, x]
                cnt[y // b, x // b] += 1
    return _foreign_from_blocks(sums, cnt, b, (H, W), config)


class PlaneTextures:
    """Textures of all planes of a layout (computed on first use per plane), with borrowing."""

    def __init__(self, layout: Layout, points: np.ndarray, colors: np.ndarray, config: AppearanceConfig = AppearanceConfig()) -> None:
        self.layout, self.config = layout, config
        self._points, self._colors = points, colors
        self._own: dict[int, PlaneTexture | None] = {}
        # planes are fitted on first use by whichever thread asks first (a frame, or the fill's maintenance thread
        # fitting them ahead, nearest first); one lock per plane, so the others wait instead of fitting it twice
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._heights: dict[int, np.ndarray] = {}  # layout axis -> every point's coordinate along it [N]
        self._means: dict[int, np.ndarray | None] = {}  # plane id -> its samples' mean colour [3] (None: too few)
        self._toned: dict[tuple, PlaneTexture] = {}  # (source plane id, wall axis) -> the borrowed texture toned
        self._detailed: dict[int, PlaneTexture] = {}  # plane id -> a wall's texture borrowed in its own colour

    def _axis_heights(self, axis: int) -> np.ndarray:
        """``points @ layout.axes[axis]``, computed once per axis (``plane_texture``'s ``heights``)."""
        with self._locks_guard:
            if axis not in self._heights:
                self._heights[axis] = self._points @ self.layout.axes[axis]
            return self._heights[axis]

    def _get_own(self, plane_id: int) -> PlaneTexture | None:
        if plane_id in self._own:
            return self._own[plane_id]
        with self._locks_guard:
            lock = self._locks.setdefault(plane_id, threading.Lock())
        with lock:
            if plane_id not in self._own:
                plane = self.layout.planes[plane_id]
                self._own[plane_id] = plane_texture(self.layout, plane, self._points, self._colors, self.config,
                                                    self._axis_heights(plane.axis))
            return self._own[plane_id]

    def _plainest_wall(self) -> PlaneTexture | None:
        """The look of a ceiling nothing observed (``layout.close_unseen_ceiling``): the observed wall texture
        with the least contrast (``PlaneTexture.contrast``; the rooms' walls before furniture fronts; a wall seen
        too little for an exemplar is its colour alone, contrast 0). Ceilings are plainer than walls (plaster,
        paint): the best-supported wall, the rule for a seen ceiling without an exemplar, put room@pitched's stone
        accent wall over its whole ceiling (320x180, play: -0.8 dB against this rule; docs/RESULTS.md, session
        33). Every candidate wall is fitted (a ceiling shows after the first frames anyway); first in layout order
        among equals."""
        walls = [p for p in self.layout.planes if p.kind == WALL and not p.derived and p.plane_id >= 0]
        for group in ([p for p in walls if self.layout.is_room_wall(p)], walls):
            found = [t for t in (self._get_own(p.plane_id) for p in group) if t is not None]
            if found:
                return min(found, key=lambda t: t.contrast)
        return None

    def for_plane(self, plane: Plane) -> PlaneTexture | None:
        """The plane's own exemplar, else the best-supported plane of the same kind with one (walls for a
        ceiling that has none; the plainest wall for one nothing observed), else None."""
        if plane.plane_id >= 0:  # (a closing wall, ``derived``, continues the wall it derives from)
            own = self._get_own(plane.plane_id)
            if own is not None:
                return self._detail_for(self.layout.planes[plane.plane_id], own) if own.colour_only else own
        if plane.kind == CEILING and not any(p.kind == CEILING and not p.derived for p in self.layout.planes):
            return self._plainest_wall()
        kinds = {FLOOR: (FLOOR,), CEILING: (CEILING, WALL), WALL: (WALL,)}[plane.kind]
        for kind in kinds:
            # an unseen wall continues the walls it meets at its corners (those perpendicular to it; the opposite
            # wall is often the accent wall a room is photographed towards), then the best-supported: the first
            # in that ranking with a texture of its own (a stable sort: among equals the first in layout order,
            # as a max over all of them). Fitted in that order until one has one, not all of them: a frame
            # showing such a plane waited for every wall's fit.
            ranked = sorted((p for p in self.layout.planes if p.kind == kind), reverse=True,
                            key=lambda p: (plane.kind == WALL and p.axis != plane.axis, p.support))
            for p in ranked:
                own = self._get_own(p.plane_id)
                if own is not None:
                    own = self._detail_for(p, own) if own.colour_only else own
                    return self._toned_for(plane.axis, p, own) if plane.kind == WALL else own
        return None

    def _detail_for(self, plane: Plane, own: PlaneTexture) -> PlaneTexture:
        """A wall seen too little for an exemplar of its own (``own.colour_only``) with another wall's texture as
        luminance detail over its own colour: outdoors, a facade (a wall rising more than a room above the floor)
        takes the window lattice of the observed facade nearest its colour (a synthesis model with a
        two-dimensional lattice, ``AppearanceConfig.facade_tol_m``): buildings have windows in rows, and the
        courtyard's side facades, seen at a grazing angle, were flat slabs of colour. Indoors a room's wall takes
        the texture of the observed wall of its material (chromaticity within ``tone_chroma_tol``) nearest its
        colour: house@photo's side walls, seen as strips at the photo's edges, were flat plaster. ``own`` where
        there is no such wall. Choosing fits every observed wall's texture once (the first frame showing such a
        wall waits for them; the maintenance thread fits them nearest first anyway)."""
        floor = self.layout.floor()
        if plane.kind != WALL or floor is None:
            return own
        if self.layout.indoor:
            if not self.layout.is_room_wall(plane):
                return own
        elif plane.top_m - floor.offset_m <= self.layout.config.max_room_height_m:
            return own
        with self._locks_guard:
            if plane.plane_id in self._detailed:
                return self._detailed[plane.plane_id]
        colour = own.levels[0][0, 0].astype(np.float32)
        best, best_d = None, math.inf
        for p in self.layout.planes:
            if p.kind != WALL or p.derived or p.plane_id < 0 or p.plane_id == plane.plane_id:
                continue
            tex = self._get_own(p.plane_id)
            if tex is None or tex.colour_only:
                continue
            mean = tex.levels[-1].reshape(-1, 3).astype(np.float32).mean(axis=0)
            if self.layout.indoor:
                if not self._same_material(mean, colour):
                    continue
            elif tex.synth is None or len(tex.synth.periods_m) < 2:
                continue
            d = float(np.linalg.norm(mean - colour))
            if d < best_d:
                best, best_d = tex, d
        found = own
        if best is not None:
            mean = float(best.levels[-1].reshape(-1, 3).astype(np.float64).mean(axis=0) @ _LUMA)
            found = dataclasses.replace(best, detail_over=colour, detail_mean=mean, far=None, unseen=None, gain=1.0)
        with self._locks_guard:
            return self._detailed.setdefault(plane.plane_id, found)

    def _mean_colour(self, plane: Plane) -> np.ndarray | None:
        """``[3]`` float64 mean colour of the observed points within ``plane_tol_m`` of ``plane`` (None: fewer than
        ``tone_min_samples``). From the points, not a fitted texture: what a frame shows must not depend on which
        fits the maintenance thread has finished."""
        with self._locks_guard:
            if plane.plane_id in self._means:
                return self._means[plane.plane_id]
        on = np.abs(self._axis_heights(plane.axis) - plane.offset_m) <= self.config.plane_tol_m
        mean = self._colors[on].astype(np.float64).mean(axis=0) if on.sum() >= self.config.tone_min_samples else None
        with self._locks_guard:
            self._means[plane.plane_id] = mean
        return mean

    def _same_material(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether mean colours ``a`` and ``b`` [3] are of one material: chromaticities (r, g, b over their sum)
        within ``AppearanceConfig.tone_chroma_tol`` (a material's walls differ by their lighting alone)."""
        sa, sb = float(np.sum(a)), float(np.sum(b))
        if sa <= 0 or sb <= 0:
            return False
        return float(np.abs(np.asarray(a) / sa - np.asarray(b) / sb).max()) <= self.config.tone_chroma_tol

    def _toned_for(self, axis: int, source: Plane, tex: PlaneTexture) -> PlaneTexture:
        """``tex`` (``source``'s texture, borrowed by a wall along layout ``axis`` nothing observed) with the mean tone
        of the walls of its material seen facing both ways across that wall (``AppearanceConfig.tone_chroma_tol``):
        the nearest and the farthest of them along the other horizontal axis. ``tex`` itself without two such."""
        key = (source.plane_id, axis)
        with self._locks_guard:
            if key in self._toned:
                return self._toned[key]
        cfg = self.config
        src = self._mean_colour(source)
        toned = tex
        if src is not None and src.sum() > 0:
            same = []  # (offset m, luminance) of the walls across it of the source's material
            for p in self.layout.planes:
                if p.kind != WALL or p.axis == axis or p.derived or p.plane_id < 0:
                    continue
                m = self._mean_colour(p)
                if m is not None and self._same_material(m, src):
                    same.append((p.offset_m, float(m @ _LUMA)))
            same.sort()
            if len(same) >= 2 and same[-1][0] - same[0][0] >= cfg.tone_min_span_m:
                gain = 0.5 * (same[0][1] + same[-1][1]) / float(src @ _LUMA)
                toned = dataclasses.replace(tex, gain=gain)
        with self._locks_guard:
            return self._toned.setdefault(key, toned)


@dataclass
class SkyModel:
    """Sky colour by elevation above the horizon (an environment layer; module docstring), plus the observed sky's
    detail (clouds) continued around the horizon when ``detail`` is given."""

    up: np.ndarray  # [3] world frame
    band_deg: float
    colours: np.ndarray  # [B, 3] uint8, band b covers elevations [-90 + b * band_deg, ...)
    # the observed sky's detail: its colours less their band's, in an (elevation, azimuth) grid of ``texel_deg``
    # cells, row 0 at elevation ``top_deg`` (rows downwards), column 0 at azimuth ``left_deg`` (measured from
    # ``forward`` towards ``right``, both horizontal unit vectors); unobserved cells hold 0. Read at any azimuth by
    # mirror-repeating the columns (each elevation keeps its own detail: clouds shrink towards the horizon); at
    # elevations outside the rows the bands alone
    detail: np.ndarray | None = None  # [R, C, 3] int16
    texel_deg: float = 1.0
    top_deg: float = 0.0
    left_deg: float = 0.0
    forward: np.ndarray | None = None  # [3] world frame
    right: np.ndarray | None = None  # [3] world frame

    def band(self, elev_deg: np.ndarray) -> np.ndarray:
        """``[M]`` int64: the band of each elevation ``elev_deg`` [M] (degrees above the horizon)."""
        return np.clip(((elev_deg + 90.0) / self.band_deg).astype(np.int64), 0, len(self.colours) - 1)

    def colour(self, dirs_world: np.ndarray) -> np.ndarray:
        """``[M, 3]`` uint8 for ray directions ``[M, 3]`` (world frame, any length)."""
        d = np.asarray(dirs_world)
        # by columns: the same bits as np.linalg.norm(d, axis=1) (a 3-long sum adds in order) at a third of its CPU
        # (~4 ms for the sky of a 640x360 courtyard frame)
        n = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])
        elev = np.degrees(np.arcsin(np.clip((dirs_world @ self.up) / np.maximum(n, 1e-12), -1, 1)))
        if self.detail is None:
            return self.colours[self.band(elev)]
        out = self.colours[self.band(elev)]  # a copy (fancy indexing), written in place
        add_sky_detail(d, elev, out, self.detail, self.forward, self.right, float(self.top_deg),
                       float(self.left_deg), float(self.texel_deg))
        return out

    def reference_colour(self, dirs_world: np.ndarray) -> np.ndarray:
        """Slow twin of ``colour`` (whose detail lookup is compiled: ``add_sky_detail``): ray by ray, the band's
        colour plus the detail cell's."""
        out = np.empty((len(dirs_world), 3), np.uint8)
        for i, d in enumerate(np.asarray(dirs_world, np.float64)):
            elev = math.degrees(math.asin(max(-1.0, min(1.0, float(d @ self.up) / max(math.sqrt(float(d @ d)),
                                                                                          1e-12)))))
            c = self.colours[min(max(int((elev + 90.0) / self.band_deg), 0), len(self.colours) - 1)].astype(int)
            if self.detail is not None:
                row = math.floor((self.top_deg - elev) / self.texel_deg)
                az = math.degrees(math.atan2(float(d @ self.right), float(d @ self.forward)))
                col = math.floor(((az - self.left_deg) % 360.0) / self.texel_deg) % (2 * self.detail.shape[1])
                if col >= self.detail.shape[1]:
                    col = 2 * self.detail.shape[1] - 1 - col
                if 0 <= row < self.detail.shape[0]:
                    c = c + self.detail[row, col]
            out[i] = np.clip(c, 0, 255)
        return out


def sky_pixels(depth_m: np.ndarray, config: AppearanceConfig = AppearanceConfig()) -> np.ndarray:
    """``[H, W]`` bool: the pixels of an observed view (``depth_m`` [H, W] z-depth) that are sky candidates: no
    depth, or at least ``sky_min_depth_m`` away."""
    return (depth_m <= 0) | (depth_m >= config.sky_min_depth_m)


def sky_model(up: np.ndarray, rgb: np.ndarray, depth_m: np.ndarray, rays_cam: np.ndarray, c2w: np.ndarray,
              config: AppearanceConfig = AppearanceConfig()) -> SkyModel | None:
    """The sky of an observed view (``rgb`` [H, W, 3], ``depth_m`` [H, W], its rays [H, W, 3] camera frame and
    pose), or None when it shows no sky. Pixels without depth are sky only above the horizon and in a region that
    reaches the image's top row or meets far pixels (``sky_min_depth_m``): else they are a dynamic entity kept out
    of the memory (its history depth is 0: official case 3's grazing cow, standing against a hillside above the
    horizon, gave its sky the cow's colours) or a sensor's hole. Far pixels below the horizon are the far ground the
    sky's lowest bands continue."""
    sky = sky_pixels(depth_m, config)
    no_depth = sky & (depth_m <= 0)
    if no_depth.any():
        rise = np.zeros(depth_m.shape)  # [H, W] the ray's component along up (world frame), where no depth
        rise[no_depth] = (rays_cam[no_depth] @ c2w[:3, :3].T) @ np.asarray(up, np.float64)
        candidate = no_depth & (rise >= 0.0)
        labels, count = ndimage.label(candidate)
        if count:
            far = ndimage.binary_dilation(sky & ~no_depth)  # far pixels and their neighbours
            open_to_sky = np.zeros(count + 1, bool)
            open_to_sky[np.unique(labels[0])] = True
            open_to_sky[np.unique(labels[far])] = True
            open_to_sky[0] = False
            candidate = open_to_sky[labels]
        sky &= ~no_depth | candidate
    if sky.sum() < 64:
        return None
    dirs = rays_cam[sky] @ c2w[:3, :3].T
    nb = int(round(180.0 / config.sky_band_deg))
    elev = np.degrees(np.arcsin(np.clip((dirs @ up) / np.linalg.norm(dirs, axis=1), -1, 1)))
    b = np.clip(((elev + 90.0) / config.sky_band_deg).astype(np.int64), 0, nb - 1)
    cnt = np.bincount(b, minlength=nb)
    cols = np.stack([np.bincount(b, weights=rgb[sky][:, c].astype(np.float64), minlength=nb) for c in range(3)], 1)
    seen = np.flatnonzero(cnt > 0)
    mean = cols[seen] / cnt[seen, None]
    nearest = seen[np.clip(np.searchsorted(seen, np.arange(nb)), 0, len(seen) - 1)]
    prev = seen[np.clip(np.searchsorted(seen, np.arange(nb)) - 1, 0, len(seen) - 1)]
    pick = np.where(np.abs(prev - np.arange(nb)) < np.abs(nearest - np.arange(nb)), prev, nearest)
    out = np.empty((nb, 3), np.float64)
    out[:] = mean[np.searchsorted(seen, pick)]
    model = SkyModel(np.asarray(up, np.float64), config.sky_band_deg, np.clip(np.rint(out), 0, 255).astype(np.uint8))
    if config.sky_detail:
        _add_sky_detail(model, rgb[sky], dirs, elev, rays_cam, config)
    return model


def unseen_sky(up: np.ndarray, config: AppearanceConfig = AppearanceConfig()) -> SkyModel:
    """The sky of an outdoor space whose views showed none: bands from ``unseen_sky_horizon_rgb`` at and below the
    horizon to ``unseen_sky_zenith_rgb`` straight up (linear in the sine of the elevation), no detail."""
    nb = int(round(180.0 / config.sky_band_deg))
    elev = -90.0 + (np.arange(nb) + 0.5) * config.sky_band_deg  # [B] band centres, degrees
    t = np.clip(np.sin(np.radians(elev)), 0.0, 1.0)[:, None]
    horizon = np.asarray(config.unseen_sky_horizon_rgb, np.float64)
    zenith = np.asarray(config.unseen_sky_zenith_rgb, np.float64)
    colours = np.clip(np.rint(horizon + t * (zenith - horizon)), 0, 255).astype(np.uint8)
    return SkyModel(np.asarray(up, np.float64), config.sky_band_deg, colours)


def _add_sky_detail(model: SkyModel, rgb: np.ndarray, dirs: np.ndarray, elev: np.ndarray, rays_cam: np.ndarray,
                    config: AppearanceConfig) -> None:
    """Give ``model`` the observed sky's detail: the sky pixels' colours ``rgb`` [N, 3] less their band's, at
    directions ``dirs`` [N, 3] (world frame; elevations ``elev`` [N] degrees), averaged per cell of the view's own
    pixel angle (``rays_cam`` [H, W, 3]: the angle between its two central columns). Azimuth is measured from the
    horizontal part of the observed sky's mean direction, so the grid sits around what was seen."""
    up = model.up
    mean_dir = dirs.mean(0) - (dirs.mean(0) @ up) * up
    if np.linalg.norm(mean_dir) < 1e-9:  # a sky seen straight up only: nothing to continue around the horizon
        return
    forward = mean_dir / np.linalg.norm(mean_dir)
    right = np.cross(up, forward)
    h, w = rays_cam.shape[:2]
    a, c = rays_cam[h // 2, w // 2 - 1].astype(np.float64), rays_cam[h // 2, w // 2].astype(np.float64)
    texel = max(math.degrees(math.acos(min(1.0, float(a @ c) / (np.linalg.norm(a) * np.linalg.norm(c))))),
                config.sky_min_texel_deg)
    base = model.colours[model.band(elev)]
    resid = rgb.astype(np.float64) - base
    az = np.degrees(np.arctan2(dirs @ right, dirs @ forward))
    top, left = float(elev.max()), float(az.min())
    rows = np.floor((top - elev) / texel).astype(np.int64)
    cols = np.floor((az - left) / texel).astype(np.int64)
    R, C = int(rows.max()) + 1, int(cols.max()) + 1
    if R < 2 or C < 2:
        return
    flat = rows * C + cols
    cnt = np.bincount(flat, minlength=R * C).reshape(R, C)
    acc = np.stack([np.bincount(flat, weights=resid[:, k], minlength=R * C) for k in range(3)], 1).reshape(R, C, 3)
    # the grid is the main observed patch only: the longest run of columns observed in at least half as many cells
    # as the best one, and the rows observed there. Sky pixels far off it (through a gap, beside a tree) spread the
    # grid over azimuths it holds nothing for: mirror-repeated, that showed a cloudy rectangle in a plain sky (the
    # courtyard at 640x360)
    per_col = (cnt > 0).sum(0)
    keep = per_col >= 0.5 * per_col.max()
    edges = np.flatnonzero(np.diff(np.r_[0, keep.astype(np.int8), 0]))  # run starts and ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    k = int(np.argmax(ends - starts))
    c0, c1 = int(starts[k]), int(ends[k])
    seen_rows = np.flatnonzero((cnt[:, c0:c1] > 0).any(1))
    r0, r1 = int(seen_rows[0]), int(seen_rows[-1]) + 1
    if r1 - r0 < 2 or c1 - c0 < 2:
        return
    cnt, acc = cnt[r0:r1, c0:c1], acc[r0:r1, c0:c1]
    detail = np.zeros(acc.shape, np.int16)
    ok = cnt > 0
    detail[ok] = np.rint(acc[ok] / cnt[ok, None]).astype(np.int16)
    model.detail = detail
    model.texel_deg, model.top_deg, model.left_deg = texel, top - r0 * texel, left + c0 * texel
    model.forward, model.right = forward, right
    # the compiled lookup loaded (or compiled) here, on the fill's thread, for the types frames call it with
    # (float64 directions), not inside the first frame that shows the sky
    model.colour(np.ascontiguousarray(dirs[:1], np.float64))
