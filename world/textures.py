"""Seeded procedural textures for the procedural scenes, and a mip-mapped texture atlas to sample them.

Every texture is a tileable ``[S, S, 3]`` float32 RGB image in [0, 1] that covers ``period_m`` x ``period_m`` metres
of a surface. Columns run along the surface's u axis and rows along its v axis (both in metres, see
``world.scenes``). Tileable means the left/right and top/bottom edges meet without a seam, so a wall of any size
is covered by repeating the tile.

Colour depends only on the surface point (material, uv in metres), never on the viewer, so a static scene
looks the same from every camera, which the memory's closed-loop tests rely on. The only view-dependent step
is the mip level: a surface far away is sampled from a box-filtered copy of its texture instead of aliasing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from spatia.world.errors import InvalidInputError

TEXTURE_SIZE_PX = 256  # S: texels per tile side; 256 keeps all of a scene's textures under 10 MB with mips

Colour = tuple[float, float, float]  # linear-ish RGB in [0, 1]


# ---------------------------------------------------------------------------------------------------------------
# Tileable noise
# ---------------------------------------------------------------------------------------------------------------


def value_noise(size_px: int, cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Tileable value noise ``[S, S]`` float32 in [0, 1]: random values on a ``cells_v x cells_u`` lattice that
    wraps around, smoothstep-interpolated between lattice points."""
    cells_u, cells_v = int(cells[0]), int(cells[1])
    if cells_u < 1 or cells_v < 1:
        raise InvalidInputError(f"noise needs at least one cell per axis, got {cells}")
    lattice = rng.random((cells_v, cells_u))

    def axis(cells_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(size_px) + 0.5) / size_px * cells_n
        i0 = np.floor(x).astype(np.int64)
        f = x - i0
        f = f * f * (3.0 - 2.0 * f)  # smoothstep: no visible lattice creases
        return i0 % cells_n, (i0 + 1) % cells_n, f

    u0, u1, fu = axis(cells_u)
    v0, v1, fv = axis(cells_v)
    top = lattice[v0][:, u0] * (1 - fu) + lattice[v0][:, u1] * fu
    bottom = lattice[v1][:, u0] * (1 - fu) + lattice[v1][:, u1] * fu
    return (top * (1 - fv)[:, None] + bottom * fv[:, None]).astype(np.float32)


def fbm(
    size_px: int,
    cells: tuple[int, int],
    rng: np.random.Generator,
    octaves: int = 4,
    gain: float = 0.5,
) -> np.ndarray:
    """Fractal sum of ``octaves`` value-noise layers (cells doubling each octave), rescaled to [0, 1]."""
    total = np.zeros((size_px, size_px), np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        c = (min(cells[0] << o, size_px), min(cells[1] << o, size_px))
        total += amp * value_noise(size_px, c, rng)
        norm += amp
        amp *= gain
    total /= norm
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-6)


def _mix(a: Colour, b: Colour, t: np.ndarray) -> np.ndarray:
    """``[S, S, 3]`` blend of two colours by ``t`` ``[S, S]`` in [0, 1]."""
    a_, b_ = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a_ + (b_ - a_) * t[..., None]


def _grid(size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Texel-centre coordinates in tile units [0, 1): (u ``[S, S]`` along columns, v ``[S, S]`` along rows)."""
    c = (np.arange(size_px, dtype=np.float32) + 0.5) / size_px
    return np.meshgrid(c, c)


# ---------------------------------------------------------------------------------------------------------------
# Texture families
# ---------------------------------------------------------------------------------------------------------------


def wood_texture(
    rng: np.random.Generator,
    size_px: int = TEXTURE_SIZE_PX,
    light: Colour = (0.62, 0.42, 0.24),
    dark: Colour = (0.36, 0.21, 0.11),
    planks: int = 4,
) -> np.ndarray:
    """Planks running along u, each with its own tone, wavy grain rings and one butt joint."""
    u, v = _grid(size_px)
    grain = fbm(size_px, (2, 24), rng, octaves=3)  # stretched along u: grain lines follow the plank
    plank = np.minimum((v * planks).astype(np.int64), planks - 1)
    tone = rng.uniform(-0.12, 0.12, planks)[plank]
    ring_freq = rng.uniform(10.0, 18.0, planks)[plank]
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (ring_freq * (v * planks % 1.0) + 3.0 * grain))
    t = np.clip(0.55 * rings + 0.45 * grain + tone, 0.0, 1.0)
    img = _mix(light, dark, t)
    # dark gaps between planks and one joint across each plank at a random u
    v_in = v * planks % 1.0
    gap = (v_in < 0.02) | (v_in > 0.98)
    joint_u = rng.random(planks)[plank]
    joint = np.abs(((u - joint_u + 0.5) % 1.0) - 0.5) < 0.004
    img[gap | joint] *= 0.45
    return img


def brick_texture(
    rng: np.random.Generator,
    size_px: int = TEXTURE_SIZE_PX,
    brick: Colour = (0.58, 0.25, 0.17),
    mortar: Colour = (0.72, 0.70, 0.66),
    rows: int = 12,
    bricks_per_row: int = 4,
) -> np.ndarray:
    """Running-bond brickwork: ``rows`` courses per tile, odd courses offset by half a brick, per-brick tones."""
    u, v = _grid(size_px)
    row = np.minimum((v * rows).astype(np.int64), rows - 1)
    uu = u * bricks_per_row + 0.5 * (row % 2)
    col = np.floor(uu).astype(np.int64) % bricks_per_row
    tones = rng.uniform(-0.18, 0.18, (rows, bricks_per_row))
    speckle = fbm(size_px, (16, 16), rng, octaves=3)
    base = np.asarray(brick, np.float32) * (1.0 + tones[row, col])[..., None]
    img = base * (0.8 + 0.4 * speckle)[..., None]
    v_in, u_in = v * rows % 1.0, uu % 1.0
    is_mortar = (v_in < 0.1) | (u_in < 0.025)
    img[is_mortar] = np.asarray(mortar, np.float32) * (0.85 + 0.3 * speckle[is_mortar])[:, None]
    return np.clip(img, 0.0, 1.0)


def tile_texture(
    rng: np.random.Generator,
    size_px: int = TEXTURE_SIZE_PX,
    colour_a: Colour = (0.85, 0.84, 0.80),
    colour_b: Colour = (0.30, 0.34, 0.40),
    grout: Colour = (0.50, 0.48, 0.45),
    tiles: int = 4,
    checker: bool = True,
) -> np.ndarray:
    """Square tiles with grout lines; a checkerboard of two colours (or random mixes), each tile varied."""
    u, v = _grid(size_px)
    i, j = (u * tiles).astype(np.int64), (v * tiles).astype(np.int64)
    if checker:
        pick = ((i + j) % 2).astype(np.float32)
    else:
        pick = rng.random((tiles, tiles)).astype(np.float32)[j, i]
    img = _mix(colour_a, colour_b, pick)
    img *= (1.0 + rng.uniform(-0.06, 0.06, (tiles, tiles))[j, i])[..., None]
    img *= (0.93 + 0.14 * fbm(size_px, (8, 8), rng, octaves=3))[..., None]
    u_in, v_in = u * tiles % 1.0, v * tiles % 1.0
    edge = (u_in < 0.03) | (u_in > 0.97) | (v_in < 0.03) | (v_in > 0.97)
    img[edge] = grout
    return np.clip(img, 0.0, 1.0)


def noise_texture(
    rng: np.random.Generator,
    size_px: int = TEXTURE_SIZE_PX,
    colour_a: Colour = (0.80, 0.78, 0.74),
    colour_b: Colour = (0.62, 0.60, 0.56),
    cells: int = 4,
    octaves: int = 5,
    contrast: float = 1.0,
) -> np.ndarray:
    """Two colours blended by fractal noise: plaster, concrete, grass, foliage, gravel, water (by colours)."""
    t = fbm(size_px, (cells, cells), rng, octaves=octaves)
    t = np.clip(0.5 + contrast * (t - 0.5), 0.0, 1.0)
    return _mix(colour_a, colour_b, t)


def fabric_texture(
    rng: np.random.Generator,
    size_px: int = TEXTURE_SIZE_PX,
    colour: Colour = (0.45, 0.20, 0.22),
    threads: int = 64,
) -> np.ndarray:
    """A woven look: crossing thread stripes plus large soft blotches."""
    u, v = _grid(size_px)
    weave = 0.5 + 0.25 * (np.sin(2 * np.pi * threads * u) + np.sin(2 * np.pi * threads * v))
    blotch = fbm(size_px, (3, 3), rng, octaves=3)
    shade = 0.75 + 0.15 * weave + 0.2 * blotch
    return np.clip(np.asarray(colour, np.float32) * shade[..., None], 0.0, 1.0)


def painting_texture(rng: np.random.Generator, size_px: int = TEXTURE_SIZE_PX) -> np.ndarray:
    """An abstract painting: three random colours mixed by two noise fields (distinctive landmarks on walls)."""
    colours = rng.uniform(0.1, 0.95, (3, 3)).astype(np.float32)
    a = fbm(size_px, (2, 2), rng, octaves=4)
    b = fbm(size_px, (3, 3), rng, octaves=3)
    img = _mix(tuple(colours[0]), tuple(colours[1]), a)
    return np.clip(img * (1 - b[..., None]) + colours[2] * b[..., None], 0.0, 1.0)


def cloud_texture(rng: np.random.Generator, size_px: int = TEXTURE_SIZE_PX) -> np.ndarray:
    """Cloud cover in [0, 1] (all three channels equal), sparse: mostly clear with soft cumulus."""
    t = fbm(size_px, (4, 4), rng, octaves=5)
    cover = np.clip((t - 0.5) * 2.5, 0.0, 1.0)
    return np.repeat(cover[..., None], 3, axis=2).astype(np.float32)


TEXTURE_FAMILIES: dict[str, Callable[..., np.ndarray]] = {
    "wood": wood_texture,
    "brick": brick_texture,
    "tiles": tile_texture,
    "noise": noise_texture,
    "fabric": fabric_texture,
    "painting": painting_texture,
    "clouds": cloud_texture,
}


@dataclass(frozen=True)
class TextureSpec:
    """A texture family, its parameters and the surface size one tile covers."""

    family: str  # a key of TEXTURE_FAMILIES
    period_m: float  # metres of surface covered by one tile along u and v
    params: tuple[tuple[str, object], ...] = ()  # keyword arguments of the family function

    def make(self, seed: int, size_px: int = TEXTURE_SIZE_PX) -> np.ndarray:
        """``[S, S, 3]`` float32 in [0, 1]; the same ``seed`` gives the same texture."""
        if self.family not in TEXTURE_FAMILIES:
            raise InvalidInputError(f"unknown texture family {self.family!r}; known: {sorted(TEXTURE_FAMILIES)}")
        if self.period_m <= 0:
            raise InvalidInputError(f"period_m must be positive, got {self.period_m}")
        rng = np.random.default_rng(seed)
        img = TEXTURE_FAMILIES[self.family](rng, size_px=size_px, **dict(self.params))
        return np.ascontiguousarray(img, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Atlas with mip levels
# ---------------------------------------------------------------------------------------------------------------


class TextureAtlas:
    """All textures of a scene with their mip pyramids, flattened into one texel array for vectorised sampling.

    Level ``l`` of every texture is ``S >> l`` texels square (box-filtered 2x2 from level ``l - 1``) down to 1x1.
    ``sample`` picks, per point, the level whose texel best matches the pixel footprint on the surface, then
    samples it bilinearly with wrap-around (the tiles are periodic).
    """

    def __init__(self, textures: list[np.ndarray], periods_m: list[float]):
        if not textures or len(textures) != len(periods_m):
            raise InvalidInputError("need one period per texture and at least one texture")
        size = textures[0].shape[0]
        if size & (size - 1) or any(t.shape != (size, size, 3) for t in textures):
            raise InvalidInputError(f"textures must all be [S, S, 3] with S a power of two, got {textures[0].shape}")
        self.size_px = size
        self.num_levels = size.bit_length()  # S, S/2, ..., 1
        self.periods_m = np.asarray(periods_m, np.float64)  # [T]
        chunks, offsets, cursor = [], np.zeros((len(textures), self.num_levels), np.int64), 0
        for t_id, tex in enumerate(textures):
            level = tex.astype(np.float32)
            for lvl in range(self.num_levels):
                offsets[t_id, lvl] = cursor
                chunks.append(level.reshape(-1, 3))
                cursor += level.shape[0] * level.shape[1]
                if level.shape[0] > 1:
                    level = 0.25 * (level[0::2, 0::2] + level[1::2, 0::2] + level[0::2, 1::2] + level[1::2, 1::2])
        self.texels = np.ascontiguousarray(np.concatenate(chunks))  # [sum of all levels, 3] float32
        self.offsets = offsets  # [T, L] first texel of each level
        self.textures = [np.ascontiguousarray(t, np.float32) for t in textures]

    def level_image(self, texture_id: int, level: int) -> np.ndarray:
        """Mip level ``level`` of texture ``texture_id`` as ``[S >> level, S >> level, 3]``."""
        n = self.size_px >> level
        start = self.offsets[texture_id, level]
        return self.texels[start : start + n * n].reshape(n, n, 3)

    def choose_level(self, texture_ids: np.ndarray, footprint_m: np.ndarray) -> np.ndarray:
        """Mip level per point: ``round(log2(footprint / texel size))`` clamped to the pyramid."""
        inv_texel = (self.size_px / self.periods_m).astype(np.float32)[texture_ids]  # texels per metre at level 0
        ratio = np.maximum(np.asarray(footprint_m, np.float32) * inv_texel, 1.0)
        return np.minimum(np.floor(np.log2(ratio) + 0.5).astype(np.int64), self.num_levels - 1)

    def sample(
        self,
        texture_ids: np.ndarray,  # [N] int, index into the atlas
        uv_m: np.ndarray,  # [N, 2] surface coordinates in metres
        footprint_m: np.ndarray,  # [N] metres of surface one pixel covers (0 = finest level)
    ) -> np.ndarray:
        """``[N, 3]`` float32 colours, bilinear within the chosen mip level, wrapping at tile edges.

        float32 throughout: uv up to a few hundred metres times a few hundred texels per metre stays well
        inside float32's 24-bit mantissa (errors < 1e-3 texel).
        """
        tid = np.asarray(texture_ids, np.int64)
        level = self.choose_level(tid, footprint_m)
        n = self.size_px >> level  # [N] texels per side at that level
        texels_per_m = (self.size_px / self.periods_m).astype(np.float32)[tid] / (1 << level).astype(np.float32)
        # texel centres sit at (i + 0.5) / n of the tile, so subtract 0.5 before splitting integer/fraction
        x = np.asarray(uv_m[:, 0], np.float32) * texels_per_m - 0.5
        y = np.asarray(uv_m[:, 1], np.float32) * texels_per_m - 0.5
        x0f, y0f = np.floor(x), np.floor(y)
        fx, fy = (x - x0f)[:, None], (y - y0f)[:, None]
        x0 = x0f.astype(np.int64) % n
        y0 = y0f.astype(np.int64) % n
        x1 = x0 + 1
        x1[x1 == n] = 0  # wrap; cheaper than a second modulo
        y1 = y0 + 1
        y1[y1 == n] = 0
        base = self.offsets[tid, level]
        row0, row1 = base + y0 * n, base + y1 * n
        g = self.texels[np.stack([row0 + x0, row0 + x1, row1 + x0, row1 + x1])]  # [4, N, 3], one gather
        top = g[0] + (g[1] - g[0]) * fx
        bottom = g[2] + (g[3] - g[2]) * fx
        return top + (bottom - top) * fy


def _reference_sample(atlas: TextureAtlas, texture_id: int, u_m: float, v_m: float, footprint_m: float) -> np.ndarray:
    """One point, written out plainly: pick the level, find the four surrounding texel centres, blend them."""
    import math

    texel_m = atlas.periods_m[texture_id] / atlas.size_px
    lod = math.log2(max(footprint_m / texel_m, 1.0))
    level = min(max(int(math.floor(lod + 0.5)), 0), atlas.num_levels - 1)
    img = atlas.level_image(texture_id, level)
    n = img.shape[0]
    x = u_m / atlas.periods_m[texture_id] * n - 0.5
    y = v_m / atlas.periods_m[texture_id] * n - 0.5
    i, j = math.floor(x), math.floor(y)
    a, b = x - i, y - j
    out = np.zeros(3)
    for dj, wy in ((0, 1 - b), (1, b)):
        for di, wx in ((0, 1 - a), (1, a)):
            out += wx * wy * img[(j + dj) % n, (i + di) % n]
    return out
