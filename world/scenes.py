"""Seeded procedural scenes with exact depth: a furnished room, a four-room house, an outdoor courtyard.

They stand in for the real world wherever the project needs ground truth: the demo, tests, the evaluation
harness (many seeded items per family) and training data. Geometry is a triangle soup of boxes, prisms and
spheres; ``render`` casts one ray per pixel centre with open3d's ``RaycastingScene`` (Embree), so depth is exact
up to float32, and colours come from procedural textures (``world.textures``) with fixed Lambert shading.

Frames and units (``docs/DESIGN.md``):
- The scene's world frame is y-down to match an OpenCV camera standing level in it: the floor is the plane
  ``y = 0``, a point ``h`` metres above the floor has ``y = -h``, and "up" is ``-y``. x and z span the floor.
- ``start_pose()`` is a level camera at eye height (1.6 m, so ``y = -1.6``) looking along world ``+z``; its
  rotation is the identity, so its camera axes are the world axes.
- Depth is z-depth in metres along the camera's +z (``t_hit`` of a ray whose camera-frame direction has z = 1),
  0 where a ray misses. The courtyard's sky is a dome 150 m away, so outdoor views have far depth, not holes.
- Colour is view-independent: texture at the hit point (material, uv in metres on the surface) times a
  per-triangle Lambert factor from a fixed directional light. Only the mip level depends on distance.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import numpy as np

from spatia.world.camera import Intrinsics, validate_pose
from spatia.world.errors import InvalidInputError
from spatia.world.geometry import pixel_rays
from spatia.world.textures import TextureAtlas, TextureSpec

SCENE_NAMES = ("room", "house", "courtyard")
EYE_HEIGHT_M = 1.6  # camera height above the floor for start poses and demo paths
PATH_CLEARANCE_M = 0.35  # furniture is kept at least this far from the demo path (a walker's radius + margin)
OBSTACLE_HEIGHTS_M = (0.05, 2.0)  # things between these heights block walking; rugs and lintels do not
SKY_RADIUS_M = 150.0
LIGHT_DIR = np.array([0.35, -1.0, 0.25]) / np.linalg.norm([0.35, -1.0, 0.25])  # towards the light, world frame
CEILING_TINT = (1.3, 1.3, 1.3)  # ceilings face away from the light; brighten them so they read as white
AMBIENT = 0.55  # shade = AMBIENT + (1 - AMBIENT) * max(0, n . LIGHT_DIR)
UP = np.array([0.0, -1.0, 0.0])


def _noise(period_m: float, a: tuple, b: tuple, cells: int = 4, contrast: float = 1.0) -> TextureSpec:
    return TextureSpec("noise", period_m, (("colour_a", a), ("colour_b", b), ("cells", cells), ("contrast", contrast)))


# Material name -> texture. Textures are regenerated per scene seed, so two seeds differ in grain and tones.
MATERIALS: dict[str, TextureSpec] = {
    "plaster": _noise(3.0, (0.88, 0.86, 0.82), (0.70, 0.68, 0.64)),
    "wood_floor": TextureSpec("wood", 1.6, (("planks", 8),)),
    "wood": TextureSpec("wood", 1.0, (("planks", 4), ("light", (0.72, 0.52, 0.32)), ("dark", (0.48, 0.30, 0.16)))),
    "wood_dark": TextureSpec("wood", 1.0, (("planks", 3), ("light", (0.40, 0.25, 0.15)), ("dark", (0.20, 0.11, 0.06)))),
    "tiles": TextureSpec("tiles", 1.2),
    "tiles_warm": TextureSpec("tiles", 0.8, (("colour_a", (0.80, 0.62, 0.45)), ("colour_b", (0.55, 0.30, 0.20)))),
    "brick": TextureSpec("brick", 1.0),
    "brick_yellow": TextureSpec("brick", 1.0, (("brick", (0.78, 0.66, 0.42)), ("mortar", (0.55, 0.53, 0.50)))),
    "fabric": TextureSpec("fabric", 0.5),
    "carpet": TextureSpec("fabric", 1.0, (("colour", (0.30, 0.38, 0.55)), ("threads", 96))),
    "paper": _noise(0.4, (0.92, 0.90, 0.85), (0.70, 0.68, 0.62), cells=8),
    "painting": TextureSpec("painting", 1.0),
    "concrete": _noise(4.0, (0.62, 0.61, 0.58), (0.42, 0.41, 0.40), cells=6),
    "paving": TextureSpec(
        "tiles", 2.0, (("colour_a", (0.66, 0.63, 0.58)), ("colour_b", (0.50, 0.48, 0.46)), ("checker", False))
    ),
    "grass": _noise(4.0, (0.30, 0.50, 0.18), (0.18, 0.32, 0.10), cells=8, contrast=1.4),
    "foliage": _noise(2.0, (0.20, 0.45, 0.15), (0.08, 0.22, 0.06), cells=6, contrast=1.8),
    "bark": _noise(1.0, (0.40, 0.30, 0.22), (0.22, 0.15, 0.10), cells=12, contrast=1.5),
    "glass": _noise(2.0, (0.30, 0.40, 0.50), (0.12, 0.16, 0.22), cells=3, contrast=1.3),
    "water": _noise(3.0, (0.25, 0.45, 0.60), (0.10, 0.25, 0.40), cells=5, contrast=1.3),
    "stone": _noise(1.5, (0.78, 0.76, 0.70), (0.55, 0.53, 0.50), cells=10, contrast=1.2),
    "metal": _noise(1.0, (0.55, 0.56, 0.58), (0.35, 0.36, 0.38), cells=20),
    "sky": TextureSpec("clouds", 400.0),  # cloud cover, sampled on a plane above the dome centre (see _sky_uv)
}
UNLIT = frozenset({"sky"})  # emissive: no Lambert factor


@dataclass(frozen=True)
class SceneObject:
    """One named part of a scene: its material, triangles and whether it blocks walking."""

    name: str
    material: str
    triangle_range: tuple[int, int]  # [first, last) triangle index in the scene's mesh
    lower_m: tuple[float, float, float]  # AABB min, world frame
    upper_m: tuple[float, float, float]  # AABB max, world frame
    solid: bool  # True: a walker cannot pass through it (used for clearance when it spans OBSTACLE_HEIGHTS_M)
    background: bool  # True: sky dome / far ground, left out of ``bounds``

    @property
    def is_obstacle(self) -> bool:
        height_lo, height_hi = -self.upper_m[1], -self.lower_m[1]  # y-down: height = -y
        return self.solid and height_hi > OBSTACLE_HEIGHTS_M[0] and height_lo < OBSTACLE_HEIGHTS_M[1]


@dataclass(frozen=True)
class SceneHits:
    """Per-pixel ray-cast result for one camera."""

    depth_m: np.ndarray  # [H, W] float32, z-depth, 0 = miss
    object_id: np.ndarray  # [H, W] int32, index into ProceduralScene.objects, -1 = miss
    triangle_id: np.ndarray  # [H, W] int64, -1 = miss
    t_hit: np.ndarray  # [H*W] float32 ray parameter (= z-depth), inf = miss
    rays: np.ndarray  # [H*W, 6] float32 world-frame origin + direction (camera-frame z of direction = 1)


# ---------------------------------------------------------------------------------------------------------------
# Mesh building
# ---------------------------------------------------------------------------------------------------------------


class _MeshBuilder:
    """Accumulates named parts (boxes, prisms, spheres) with per-triangle normals, materials and tints."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.vertices: list[np.ndarray] = []
        self.triangles: list[np.ndarray] = []
        self.normals: list[np.ndarray] = []
        self.tri_tint: list[np.ndarray] = []
        self.tri_uv_offset: list[np.ndarray] = []
        self.tri_material: list[str] = []
        self.objects: list[SceneObject] = []
        self._num_vertices = 0
        self._num_triangles = 0

    def _add(self, name, material, verts, tris, normals, tint, solid, background) -> None:
        if material not in MATERIALS:
            raise InvalidInputError(f"unknown material {material!r}")
        tris = np.asarray(tris, np.int64)
        n = len(tris)
        self.vertices.append(np.asarray(verts, np.float64))
        self.triangles.append(tris + self._num_vertices)
        self.normals.append(np.asarray(normals, np.float64))
        self.tri_tint.append(np.tile(np.asarray(tint, np.float64), (n, 1)))
        # A random uv shift per object: two tables of the same wood do not show the same grain.
        self.tri_uv_offset.append(np.tile(self.rng.uniform(0.0, 10.0, 2), (n, 1)))
        self.tri_material.extend([material] * n)
        lo, hi = np.min(verts, axis=0), np.max(verts, axis=0)
        self.objects.append(
            SceneObject(
                name, material, (self._num_triangles, self._num_triangles + n),
                tuple(float(v) for v in lo), tuple(float(v) for v in hi), solid, background,
            )
        )
        self._num_vertices += len(verts)
        self._num_triangles += n

    def box(
        self, name: str, x: tuple[float, float], height: tuple[float, float], z: tuple[float, float],
        material: str, tint=(1.0, 1.0, 1.0), solid: bool = True, background: bool = False,
    ) -> None:
        """An axis-aligned box spanning ``x``, ``z`` (metres) and ``height`` above the floor (y = -height)."""
        (x0, x1), (h0, h1), (z0, z1) = sorted(x), sorted(height), sorted(z)
        if x1 - x0 <= 0 or h1 - h0 <= 0 or z1 - z0 <= 0:
            raise InvalidInputError(f"box {name!r} has an empty extent")
        ys = (-h0, -h1)
        corners = np.array([[(x0, x1)[i >> 2], ys[(i >> 1) & 1], (z0, z1)[i & 1]] for i in range(8)])
        # corner index = 4*xbit + 2*ybit + zbit; faces listed as (x-bit fixed ...) below
        faces = (
            ((0, 1, 3, 2), (-1.0, 0.0, 0.0)),  # x = x0
            ((4, 5, 7, 6), (1.0, 0.0, 0.0)),  # x = x1
            ((0, 1, 5, 4), (0.0, 1.0, 0.0)),  # y = -h0 (bottom, faces down = +y)
            ((2, 3, 7, 6), (0.0, -1.0, 0.0)),  # y = -h1 (top, faces up = -y)
            ((0, 2, 6, 4), (0.0, 0.0, -1.0)),  # z = z0
            ((1, 3, 7, 5), (0.0, 0.0, 1.0)),  # z = z1
        )
        tris, normals = [], []
        for (a, b, c, d), normal in faces:
            tris += [(a, b, c), (a, c, d)]
            normals += [normal, normal]
        self._add(name, material, corners, tris, normals, tint, solid, background)

    def prism(
        self, name: str, centre_xz: tuple[float, float], radius: float, height: tuple[float, float],
        material: str, sides: int = 8, tint=(1.0, 1.0, 1.0), solid: bool = True,
    ) -> None:
        """A vertical regular prism (a faceted column/pot/trunk) with caps."""
        cx, cz = centre_xz
        h0, h1 = sorted(height)
        ang = (np.arange(sides) + 0.5) * (2 * np.pi / sides)
        ring = np.stack([cx + radius * np.cos(ang), cz + radius * np.sin(ang)], axis=1)
        verts = [[p[0], -h0, p[1]] for p in ring] + [[p[0], -h1, p[1]] for p in ring]
        verts += [[cx, -h0, cz], [cx, -h1, cz]]
        bottom_c, top_c = 2 * sides, 2 * sides + 1
        tris, normals = [], []
        for i in range(sides):
            j = (i + 1) % sides
            mid = 0.5 * (ang[i] + ang[j] + (2 * np.pi if j == 0 else 0.0))
            n_side = (math.cos(mid), 0.0, math.sin(mid))
            tris += [(i, j, sides + j), (i, sides + j, sides + i)]
            normals += [n_side, n_side]
            tris += [(bottom_c, j, i), (top_c, sides + i, sides + j)]
            normals += [(0.0, 1.0, 0.0), (0.0, -1.0, 0.0)]
        self._add(name, material, np.array(verts), tris, normals, tint, solid, False)

    def sphere(
        self, name: str, centre: tuple[float, float, float], radius: float, material: str,
        rings: int = 8, segments: int = 12, tint=(1.0, 1.0, 1.0), solid: bool = True, background: bool = False,
        inward: bool = False,
    ) -> None:
        """A UV sphere; ``centre`` is (x, height above floor, z). ``inward`` flips normals (a sky dome)."""
        cx, ch, cz = centre
        theta = np.linspace(0.0, np.pi, rings + 1)  # polar angle from "up"
        phi = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
        verts = []
        for t in theta:
            for p in phi:
                verts.append([cx + radius * math.sin(t) * math.cos(p), -ch - radius * math.cos(t),
                              cz + radius * math.sin(t) * math.sin(p)])
        verts = np.array(verts)
        centre_world = np.array([cx, -ch, cz])
        tris, normals = [], []
        for r in range(rings):
            for s in range(segments):
                a, b = r * segments + s, r * segments + (s + 1) % segments
                c, d = a + segments, b + segments
                for tri in ((a, b, d), (a, d, c)):
                    if len({tuple(verts[k]) for k in tri}) < 3:
                        continue  # degenerate at a pole
                    n = verts[list(tri)].mean(axis=0) - centre_world
                    n /= np.linalg.norm(n)
                    tris.append(tri)
                    normals.append(-n if inward else n)
        self._add(name, material, verts, tris, normals, tint, solid, background)


def _surface_axes(normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-triangle texture axes ``[T, 3]`` (u, v) in the surface plane.

    Horizontal surfaces (floors, table tops) use world x and z. Other surfaces use the horizontal direction
    ``up x n`` as u and ``n x u`` (up the wall) as v, so brick courses and wall plaster run level.
    """
    n = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    u = np.cross(np.broadcast_to(UP, n.shape), n)
    horizontal = np.linalg.norm(u, axis=1) < 0.3
    u[horizontal] = (1.0, 0.0, 0.0)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(n, u)
    v[horizontal] = (0.0, 0.0, 1.0)
    return u, v


# ---------------------------------------------------------------------------------------------------------------
# The scene
# ---------------------------------------------------------------------------------------------------------------


class ProceduralScene:
    """A built scene: geometry, materials, a start pose and a demo loop. Create with ``make_scene``."""

    def __init__(
        self,
        name: str,
        seed: int,
        builder: _MeshBuilder,
        loop_xz: np.ndarray,  # [K, 2] demo-loop waypoints on the floor (x, z), first = last = start position
        sky_centre: np.ndarray | None = None,  # [3] world frame, when the scene has a sky dome
    ):
        self.name = name
        self.seed = int(seed)
        self.objects: tuple[SceneObject, ...] = tuple(builder.objects)
        self.vertices = np.concatenate(builder.vertices).astype(np.float32)  # [V, 3] world frame
        self.triangles = np.concatenate(builder.triangles).astype(np.uint32)  # [T, 3]
        normals = np.concatenate(builder.normals)
        self.tri_normals = normals / np.linalg.norm(normals, axis=1, keepdims=True)  # [T, 3] outward, world frame
        self.tri_object = np.concatenate(
            [np.full(o.triangle_range[1] - o.triangle_range[0], i, np.int32) for i, o in enumerate(self.objects)]
        )  # [T]
        self.material_names = tuple(sorted(set(builder.tri_material)))
        mat_index = {m: i for i, m in enumerate(self.material_names)}
        self.tri_material = np.array([mat_index[m] for m in builder.tri_material], np.int64)  # [T]
        u_axis, v_axis = _surface_axes(self.tri_normals)
        # uv = [u_axis . p + off_u, v_axis . p + off_v]: an affine map from the hit point, per triangle
        self._tri_uv = np.zeros((len(self.triangles), 2, 4), np.float32)
        self._tri_uv[:, 0, :3], self._tri_uv[:, 1, :3] = u_axis, v_axis
        self._tri_uv[:, :, 3] = np.concatenate(builder.tri_uv_offset)
        lambert = AMBIENT + (1.0 - AMBIENT) * np.clip(self.tri_normals @ LIGHT_DIR, 0.0, None)
        unlit = np.isin(self.tri_material, [mat_index[m] for m in UNLIT if m in mat_index])
        lambert[unlit] = 1.0
        self._tri_colour_scale = (np.concatenate(builder.tri_tint) * lambert[:, None]).astype(np.float32)  # [T, 3]
        # Textures: seeded by (scene seed, material name) so they are stable under adding materials.
        self._atlas = TextureAtlas(
            [MATERIALS[m].make(_stable_seed(seed, name, m)) for m in self.material_names],
            [MATERIALS[m].period_m for m in self.material_names],
        )
        self._sky_material = mat_index.get("sky", -1)
        self._sky_centre = sky_centre
        self.loop_xz = np.asarray(loop_xz, np.float64)
        fg = [o for o in self.objects if not o.background]
        self.bounds = (
            np.min([o.lower_m for o in fg], axis=0),
            np.max([o.upper_m for o in fg], axis=0),
        )  # ([3], [3]) world frame AABB of everything but the sky dome / far ground
        obstacles = [o for o in self.objects if o.is_obstacle]
        self._obstacle_rects = np.array(
            [[o.lower_m[0], o.lower_m[2], o.upper_m[0], o.upper_m[2]] for o in obstacles]
        ).reshape(-1, 4)  # [M, 4] (x0, z0, x1, z1) floor footprints
        self._raycaster = None
        self._ray_cache: dict[Intrinsics, np.ndarray] = {}

    def __repr__(self) -> str:
        return (f"ProceduralScene(name={self.name!r}, seed={self.seed}, objects={len(self.objects)}, "
                f"triangles={len(self.triangles)})")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_raycaster"] = None  # Embree scenes do not pickle; rebuilt on first use
        state["_ray_cache"] = {}
        return state

    # --- poses ---------------------------------------------------------------------------------------------------

    def start_pose(self) -> np.ndarray:
        """``c2w`` 4x4: a level camera at eye height over the loop's first waypoint, looking along world +z."""
        return _pose_xz_yaw(self.loop_xz[0], 0.0)

    def demo_path(self, num_frames: int) -> np.ndarray:
        """``[num_frames, 4, 4]`` c2w along the demo loop: starts and ends exactly at ``start_pose()``.

        The camera walks the waypoint polygon at eye height, level; at each waypoint it already faces the next
        leg, turning while it walks (yaw interpolated linearly between waypoints, taking the short way round).
        Frames are spaced evenly in "effort" = metres walked + 0.5 m per radian turned, so turns get frames too.
        The loop goes once round the scene (a full 360 degree turn) and keeps PATH_CLEARANCE_M from furniture.
        """
        if int(num_frames) < 2:
            raise InvalidInputError(f"num_frames must be >= 2, got {num_frames}")
        pts = self.loop_xz
        headings = [math.atan2(b[0] - a[0], b[1] - a[1]) for a, b in zip(pts[:-1], pts[1:])]
        yaws = [0.0]
        for h in headings[1:]:  # yaw at waypoint i = heading of leg i, unwrapped to turn the short way
            yaws.append(yaws[-1] + _wrap(h - yaws[-1]))
        yaws.append(yaws[-1] + _wrap(0.0 - yaws[-1]))  # arrive facing the start direction again
        yaws = np.array(yaws)
        seg_len = np.linalg.norm(np.diff(pts, axis=0), axis=1) + 0.5 * np.abs(np.diff(yaws))
        cum = np.concatenate([[0.0], np.cumsum(seg_len)])
        s = np.linspace(0.0, cum[-1], int(num_frames))
        seg = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg_len) - 1)
        t = (s - cum[seg]) / seg_len[seg]
        xz = pts[seg] + (pts[seg + 1] - pts[seg]) * t[:, None]
        yaw = yaws[seg] + (yaws[seg + 1] - yaws[seg]) * t
        poses = np.stack([_pose_xz_yaw(p, y) for p, y in zip(xz, yaw)])
        poses[0] = poses[-1] = self.start_pose()
        return poses

    def clearance_m(self, xz: np.ndarray) -> np.ndarray:
        """``[P]`` distance from floor points ``xz`` ``[P, 2]`` to the nearest obstacle footprint (0 inside one)."""
        p = np.asarray(xz, np.float64).reshape(-1, 2)
        r = self._obstacle_rects
        dx = np.maximum(np.maximum(r[None, :, 0] - p[:, None, 0], p[:, None, 0] - r[None, :, 2]), 0.0)
        dz = np.maximum(np.maximum(r[None, :, 1] - p[:, None, 1], p[:, None, 1] - r[None, :, 3]), 0.0)
        return np.hypot(dx, dz).min(axis=1)

    # --- rendering -----------------------------------------------------------------------------------------------

    def _scene(self):
        if self._raycaster is None:
            import open3d as o3d

            rc = o3d.t.geometry.RaycastingScene()
            rc.add_triangles(o3d.core.Tensor(self.vertices), o3d.core.Tensor(self.triangles))
            self._raycaster = rc
        return self._raycaster

    def _camera_rays(self, intrinsics: Intrinsics) -> np.ndarray:
        rays = self._ray_cache.get(intrinsics)
        if rays is None:
            if len(self._ray_cache) > 8:
                self._ray_cache.clear()
            rays = pixel_rays(intrinsics).astype(np.float32)  # [H, W, 3] camera frame, z = 1
            self._ray_cache[intrinsics] = rays
        return rays

    def cast(self, intrinsics: Intrinsics, c2w: np.ndarray) -> SceneHits:
        """Cast one ray through every pixel centre (integer + 0.5, as ``world.geometry.pixel_rays``)."""
        import open3d as o3d

        T = validate_pose(c2w, "c2w")
        d_cam = self._camera_rays(intrinsics)
        h, w = d_cam.shape[:2]
        rays = np.empty((h, w, 6), np.float32)
        rays[..., :3] = T[:3, 3]
        rays[..., 3:] = d_cam @ T[:3, :3].T.astype(np.float32)
        # Directions keep camera-frame z = 1, so the ray parameter t_hit IS the z-depth.
        ans = self._scene().cast_rays(o3d.core.Tensor(rays))
        t_hit = ans["t_hit"].numpy()
        hit = np.isfinite(t_hit)
        tri = np.where(hit, ans["primitive_ids"].numpy().astype(np.int64), -1)
        depth = np.where(hit, t_hit, 0.0).astype(np.float32)
        obj = np.where(hit, self.tri_object[np.maximum(tri, 0)], -1).astype(np.int32)
        return SceneHits(depth, obj, tri, t_hit.reshape(-1), rays.reshape(-1, 6))

    def render(self, intrinsics: Intrinsics, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Render ``(rgb [H, W, 3] uint8, depth_m [H, W] float32 z-depth, 0 = miss)`` for an OpenCV camera.

        Shading runs in one compiled pass over the pixels (``_shade_pixels``); ``render_reference`` is the
        plain numpy version of the same computation, which the tests compare it with.
        """
        hits = self.cast(intrinsics, c2w)
        h, w = hits.depth_m.shape
        a = self._atlas
        sky_centre = self._sky_centre if self._sky_centre is not None else np.zeros(3)
        rgb = np.zeros((h * w, 3), np.uint8)
        _shade_kernel()(
            hits.t_hit, hits.triangle_id.reshape(-1), hits.rays, self._tri_uv, self.tri_material,
            self._tri_colour_scale, self._sky_material, np.asarray(sky_centre, np.float64),
            (a.size_px / a.periods_m).astype(np.float64), a.offsets, a.texels, a.size_px, a.num_levels,
            1.0 / intrinsics.fx, rgb,
        )
        return rgb.reshape(h, w, 3), hits.depth_m

    def render_reference(self, intrinsics: Intrinsics, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``render`` written with vectorised numpy (slower); the reference the compiled path is tested against."""
        hits = self.cast(intrinsics, c2w)
        h, w = hits.depth_m.shape
        rgb = np.zeros((h * w, 3), np.float32)
        idx = np.flatnonzero(hits.depth_m.reshape(-1) > 0)
        tri = hits.triangle_id.reshape(-1)[idx]
        ray = hits.rays[idx].astype(np.float64)
        p = ray[:, :3] + ray[:, 3:] * hits.t_hit[idx, None].astype(np.float64)  # [N, 3] world frame
        A = self._tri_uv[tri].astype(np.float64)  # [N, 2, 4]
        uv = np.einsum("nij,nj->ni", A[:, :, :3], p) + A[:, :, 3]  # [N, 2] metres on the surface
        material = self.tri_material[tri]
        footprint = hits.t_hit[idx].astype(np.float64) / intrinsics.fx  # metres per pixel at that depth
        sky = material == self._sky_material
        if sky.any():
            uv[sky] = self._sky_uv(p[sky])
            footprint[sky] = 0.0
        colour = self._atlas.sample(material, uv, footprint) * self._tri_colour_scale[tri]
        if sky.any():
            colour[sky] = self._sky_colour(p[sky], colour[sky, 0])
        rgb[idx] = colour
        rgb8 = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(h, w, 3)
        return rgb8, hits.depth_m

    def _sky_uv(self, p: np.ndarray) -> np.ndarray:
        """Clouds live on a virtual plane 1 km up: project the dome point's direction onto it (metres)."""
        d = p - self._sky_centre
        elevation = np.maximum(-d[:, 1], 0.0) / np.linalg.norm(d, axis=1)
        scale = 1000.0 / np.maximum(elevation, 0.08) / np.linalg.norm(d, axis=1)
        return np.stack([d[:, 0] * scale, d[:, 2] * scale], axis=1)

    def _sky_colour(self, p: np.ndarray, cloud_cover: np.ndarray) -> np.ndarray:
        """Blue gradient by elevation, whitened by cloud cover that fades out towards the horizon haze."""
        d = p - self._sky_centre
        elevation = np.clip(-d[:, 1] / np.linalg.norm(d, axis=1), 0.0, 1.0)[:, None]
        horizon, zenith = np.array(SKY_HORIZON), np.array(SKY_ZENITH)
        sky = horizon + (zenith - horizon) * np.sqrt(elevation)
        cover = cloud_cover[:, None] * np.clip(elevation * 5.0, 0.0, 1.0)
        return sky + (0.97 - sky) * cover


SKY_HORIZON = (0.82, 0.87, 0.93)
SKY_ZENITH = (0.30, 0.50, 0.85)


@functools.cache
def _shade_kernel():
    """Compile (once; cached on disk by numba) the per-pixel texture + shading pass used by ``render``."""
    from spatia.world.numba_start import numba

    hr, hg, hb = SKY_HORIZON
    zr, zg, zb = SKY_ZENITH

    @numba.njit(cache=True, nogil=True)
    def shade(t_hit, tri_id, rays, tri_uv, tri_material, tri_scale, sky_material, sky_centre,
              texels_per_m, offsets, texels, size_px, num_levels, inv_fx, out):
        # Per pixel, exactly what render_reference does with arrays: hit point -> uv (metres) -> mip level ->
        # bilinear texel blend -> per-triangle tint*Lambert, or the sky gradient with clouds.
        for i in range(t_hit.shape[0]):
            t = np.float64(t_hit[i])
            if not t < np.inf:
                continue
            tri = tri_id[i]
            px = rays[i, 0] + rays[i, 3] * t
            py = rays[i, 1] + rays[i, 4] * t
            pz = rays[i, 2] + rays[i, 5] * t
            m = tri_material[tri]
            is_sky = m == sky_material
            if is_sky:
                dx, dy, dz = px - sky_centre[0], py - sky_centre[1], pz - sky_centre[2]
                r = np.sqrt(dx * dx + dy * dy + dz * dz)
                elev = max(-dy, 0.0) / r
                k = 1000.0 / max(elev, 0.08) / r
                u, v, footprint = dx * k, dz * k, 0.0
            else:
                u = tri_uv[tri, 0, 0] * px + tri_uv[tri, 0, 1] * py + tri_uv[tri, 0, 2] * pz + tri_uv[tri, 0, 3]
                v = tri_uv[tri, 1, 0] * px + tri_uv[tri, 1, 1] * py + tri_uv[tri, 1, 2] * pz + tri_uv[tri, 1, 3]
                footprint = t * inv_fx
            tpm = texels_per_m[m]
            ratio = max(footprint * tpm, 1.0)
            level = min(int(np.floor(np.log2(ratio) + 0.5)), num_levels - 1)
            n = size_px >> level
            s = tpm / (1 << level)
            x = u * s - 0.5
            y = v * s - 0.5
            x0f, y0f = np.floor(x), np.floor(y)
            fx, fy = x - x0f, y - y0f
            x0, y0 = int(x0f) % n, int(y0f) % n
            x1, y1 = (x0 + 1) % n, (y0 + 1) % n
            base = offsets[m, level]
            a, b = base + y0 * n, base + y1 * n
            w00, w01, w10, w11 = (1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy
            c0 = w00 * texels[a + x0, 0] + w01 * texels[a + x1, 0] + w10 * texels[b + x0, 0] + w11 * texels[b + x1, 0]
            c1 = w00 * texels[a + x0, 1] + w01 * texels[a + x1, 1] + w10 * texels[b + x0, 1] + w11 * texels[b + x1, 1]
            c2 = w00 * texels[a + x0, 2] + w01 * texels[a + x1, 2] + w10 * texels[b + x0, 2] + w11 * texels[b + x1, 2]
            if is_sky:
                e = min(max(-dy / r, 0.0), 1.0)
                g = np.sqrt(e)
                cover = c0 * min(max(e * 5.0, 0.0), 1.0)
                c0 = hr + (zr - hr) * g
                c1 = hg + (zg - hg) * g
                c2 = hb + (zb - hb) * g
                c0, c1, c2 = c0 + (0.97 - c0) * cover, c1 + (0.97 - c1) * cover, c2 + (0.97 - c2) * cover
            else:
                c0, c1, c2 = c0 * tri_scale[tri, 0], c1 * tri_scale[tri, 1], c2 * tri_scale[tri, 2]
            out[i, 0] = np.uint8(min(max(c0, 0.0), 1.0) * 255.0 + 0.5)
            out[i, 1] = np.uint8(min(max(c1, 0.0), 1.0) * 255.0 + 0.5)
            out[i, 2] = np.uint8(min(max(c2, 0.0), 1.0) * 255.0 + 0.5)

    return shade


def _wrap(angle: float) -> float:
    """Angle wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _pose_xz_yaw(xz: np.ndarray, yaw: float) -> np.ndarray:
    """Level camera at eye height over floor point ``xz``; yaw 0 looks along +z, positive yaw turns to +x."""
    c, s = math.cos(yaw), math.sin(yaw)
    T = np.eye(4)
    T[:3, 0] = (c, 0.0, -s)  # camera x (right)
    T[:3, 1] = (0.0, 1.0, 0.0)  # camera y (down) = world y (down)
    T[:3, 2] = (s, 0.0, c)  # camera z (forward)
    T[:3, 3] = (xz[0], -EYE_HEIGHT_M, xz[1])
    return T


def _stable_seed(seed: int, *names: str) -> list[int]:
    """A SeedSequence entropy list from a scene seed and names (crc32 is stable across runs and platforms)."""
    return [int(seed)] + [zlib.crc32(n.encode()) for n in names]


# ---------------------------------------------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------------------------------------------


class _Placer:
    """Accepts furniture footprints that keep PATH_CLEARANCE_M from the demo path and do not overlap each other."""

    def __init__(self, path_xz: np.ndarray):
        samples = []
        for a, b in zip(path_xz[:-1], path_xz[1:]):
            n = max(2, int(np.linalg.norm(b - a) / 0.05) + 1)
            samples.append(a + (b - a) * np.linspace(0.0, 1.0, n)[:, None])
        self.path = np.concatenate(samples)  # [P, 2] dense samples of the loop
        self.rects: list[tuple[float, float, float, float]] = []

    def fits(self, rect: tuple[float, float, float, float]) -> bool:
        x0, z0, x1, z1 = rect
        p = self.path
        dx = np.maximum(np.maximum(x0 - p[:, 0], p[:, 0] - x1), 0.0)
        dz = np.maximum(np.maximum(z0 - p[:, 1], p[:, 1] - z1), 0.0)
        if np.hypot(dx, dz).min() < PATH_CLEARANCE_M:
            return False
        gap = 0.05
        return all(
            x1 + gap <= a0 or a1 + gap <= x0 or z1 + gap <= b0 or b1 + gap <= z0 for a0, b0, a1, b1 in self.rects
        )

    def place(self, rect: tuple[float, float, float, float]) -> bool:
        if self.fits(rect):
            self.rects.append(rect)
            return True
        return False


def _pastel(rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(float(v) for v in 0.85 + 0.15 * rng.random(3))


def _shell(
    b: _MeshBuilder, x: tuple[float, float], z: tuple[float, float], height_m: float, floor: str,
    walls: dict[str, tuple[str, tuple]], prefix: str = "",
) -> None:
    """Floor and ceiling slabs plus four 0.2 m thick walls around the interior ``x`` x ``z``."""
    (x0, x1), (z0, z1), t = x, z, 0.2
    b.box(f"{prefix}floor", (x0 - t, x1 + t), (-0.1, 0.0), (z0 - t, z1 + t), floor)
    b.box(f"{prefix}ceiling", (x0 - t, x1 + t), (height_m, height_m + 0.1), (z0 - t, z1 + t), "plaster", CEILING_TINT)
    sides = {
        "wall_left": ((x0 - t, x0), (z0 - t, z1 + t)),
        "wall_right": ((x1, x1 + t), (z0 - t, z1 + t)),
        "wall_front": ((x0, x1), (z0 - t, z0)),
        "wall_back": ((x0, x1), (z1, z1 + t)),
    }
    for wall, (wx, wz) in sides.items():
        material, tint = walls[wall]
        b.box(f"{prefix}{wall}", wx, (0.0, height_m), wz, material, tint)


def _table(b: _MeshBuilder, name: str, cx: float, cz: float, sx: float, sz: float, top_h: float, material: str) -> None:
    b.box(f"{name}_top", (cx - sx / 2, cx + sx / 2), (top_h - 0.05, top_h), (cz - sz / 2, cz + sz / 2), material)
    leg = 0.06
    for i, (lx, lz) in enumerate([(-1, -1), (-1, 1), (1, -1), (1, 1)]):
        px, pz = cx + lx * (sx / 2 - leg), cz + lz * (sz / 2 - leg)
        b.box(f"{name}_leg{i}", (px - leg / 2, px + leg / 2), (0.0, top_h - 0.05), (pz - leg / 2, pz + leg / 2),
              material)


def _chair(b: _MeshBuilder, name: str, cx: float, cz: float, back_dir_z: int, material: str, seat: str, tint) -> None:
    s = 0.44
    b.box(f"{name}_seat", (cx - s / 2, cx + s / 2), (0.42, 0.47), (cz - s / 2, cz + s / 2), seat, tint)
    for i, (lx, lz) in enumerate([(-1, -1), (-1, 1), (1, -1), (1, 1)]):
        px, pz = cx + lx * (s / 2 - 0.03), cz + lz * (s / 2 - 0.03)
        b.box(f"{name}_leg{i}", (px - 0.02, px + 0.02), (0.0, 0.42), (pz - 0.02, pz + 0.02), material)
    bz = cz + back_dir_z * (s / 2 - 0.025)
    b.box(f"{name}_back", (cx - s / 2, cx + s / 2), (0.47, 0.95), (bz - 0.025, bz + 0.025), material)


def _shelf(b: _MeshBuilder, rng: np.random.Generator, name: str, x: tuple[float, float], z: tuple[float, float],
           height: float, along_x: bool) -> None:
    """A bookcase against a wall; ``along_x``: its length runs along x (against a front/back wall)."""
    (x0, x1), (z0, z1) = x, z
    mat = str(rng.choice(["wood", "wood_dark"]))
    t = 0.03
    if along_x:
        b.box(f"{name}_side0", (x0, x0 + t), (0.0, height), (z0, z1), mat)
        b.box(f"{name}_side1", (x1 - t, x1), (0.0, height), (z0, z1), mat)
    else:
        b.box(f"{name}_side0", (x0, x1), (0.0, height), (z0, z0 + t), mat)
        b.box(f"{name}_side1", (x0, x1), (0.0, height), (z1 - t, z1), mat)
    levels = np.linspace(0.05, height - t, int(rng.integers(4, 6)))
    for k, hk in enumerate(levels):
        b.box(f"{name}_board{k}", (x0, x1), (hk - t if hk > t else 0.0, hk if hk > t else t), (z0, z1), mat)
        if k == len(levels) - 1:
            break
        # books on this board
        gap = levels[k + 1] - hk - t
        length = (x1 - x0) if along_x else (z1 - z0)
        pos, i = 0.06, 0
        while pos < length - 0.1:
            thick = float(rng.uniform(0.025, 0.06))
            if rng.random() < 0.15:
                pos += thick  # a gap between books
                continue
            tall = float(min(gap - 0.03, rng.uniform(0.18, 0.32)))
            tint = tuple(float(c) for c in rng.uniform(0.25, 1.0, 3))
            # books stand centred on the board, 60-85 % of its depth
            board_depth = (z1 - z0) if along_x else (x1 - x0)
            book_depth = board_depth * float(rng.uniform(0.6, 0.85))
            across = ((z0 + z1) / 2 if along_x else (x0 + x1) / 2) + np.array([-0.5, 0.5]) * book_depth
            if along_x:
                bx, bz = (x0 + pos, x0 + pos + thick), tuple(across)
            else:
                bx, bz = tuple(across), (z0 + pos, z0 + pos + thick)
            if tall > 0.08:
                b.box(f"{name}_book{k}_{i}", bx, (hk, hk + tall), bz, "paper", tint)
            pos += thick + 0.004
            i += 1


def _crates(b: _MeshBuilder, rng: np.random.Generator, name: str, cx: float, cz: float) -> None:
    """One to three stacked crates centred near (cx, cz), within 0.35 m of it."""
    s = float(rng.uniform(0.4, 0.6))
    h = 0.0
    for k in range(int(rng.integers(1, 4))):
        sk = s * float(rng.uniform(0.7, 1.0)) if k else s
        ox, oz = (rng.uniform(-0.05, 0.05, 2) if k else (0.0, 0.0))
        b.box(f"{name}_{k}", (cx + ox - sk / 2, cx + ox + sk / 2), (h, h + sk), (cz + oz - sk / 2, cz + oz + sk / 2),
              "wood", tuple(float(c) for c in rng.uniform(0.8, 1.0, 3)))
        h += sk


def _plant(b: _MeshBuilder, rng: np.random.Generator, name: str, cx: float, cz: float) -> None:
    r = float(rng.uniform(0.15, 0.25))
    pot_h = float(rng.uniform(0.3, 0.5))
    b.prism(f"{name}_pot", (cx, cz), r, (0.0, pot_h), "tiles_warm", sides=8)
    b.sphere(f"{name}_leaves", (cx, pot_h + 1.6 * r, cz), 1.8 * r, "foliage", rings=6, segments=10)


def _sofa(b: _MeshBuilder, rng: np.random.Generator, name: str, x: tuple[float, float], z: tuple[float, float],
          back_at_high_z: bool) -> None:
    (x0, x1), (z0, z1) = x, z
    tint = tuple(float(c) for c in rng.uniform(0.5, 1.0, 3))
    b.box(f"{name}_base", (x0, x1), (0.0, 0.42), (z0, z1), "fabric", tint)
    bz = (z1 - 0.2, z1) if back_at_high_z else (z0, z0 + 0.2)
    b.box(f"{name}_back", (x0, x1), (0.42, 0.85), bz, "fabric", tint)
    b.box(f"{name}_arm0", (x0, x0 + 0.15), (0.42, 0.62), (z0, z1), "fabric", tint)
    b.box(f"{name}_arm1", (x1 - 0.15, x1), (0.42, 0.62), (z0, z1), "fabric", tint)


def _wall_picture(b: _MeshBuilder, rng: np.random.Generator, name: str, wall: str, along: float,
                  x: tuple[float, float], z: tuple[float, float]) -> None:
    """A framed painting on the inside of ``wall`` of the interior ``x`` x ``z``, centred at ``along`` on it."""
    w, h = float(rng.uniform(0.6, 1.2)), float(rng.uniform(0.5, 0.9))
    h0 = float(rng.uniform(1.2, 1.5))
    t = 0.03  # frame depth off the wall; the canvas sits 1 cm proud of the frame
    # (wall plane coordinate, +1 if the room lies on the high side of it, whether the wall runs along x)
    plane, into, along_x = {
        "wall_back": (z[1], -1, True), "wall_front": (z[0], 1, True),
        "wall_left": (x[0], 1, False), "wall_right": (x[1], -1, False),
    }[wall]
    frame_off = tuple(sorted((plane, plane + into * t)))
    canvas_off = tuple(sorted((plane + into * t, plane + into * (t + 0.01))))
    frame_span, canvas_span = (along - w / 2 - 0.05, along + w / 2 + 0.05), (along - w / 2, along + w / 2)
    for part, span, off, height, material in (
        ("frame", frame_span, frame_off, (h0 - 0.05, h0 + h + 0.05), "wood_dark"),
        ("canvas", canvas_span, canvas_off, (h0, h0 + h), "painting"),
    ):
        bx, bz = (span, off) if along_x else (off, span)
        b.box(f"{name}_{part}", bx, height, bz, material, solid=False)


# ---------------------------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------------------------


def _build_room(rng: np.random.Generator, b: _MeshBuilder) -> tuple[np.ndarray, None]:
    """One furnished room: table and chairs in the middle, shelves, sofa, crates, plants, pictures, a rug."""
    W, D, H = float(rng.uniform(5.0, 7.0)), float(rng.uniform(6.0, 8.0)), float(rng.uniform(2.6, 3.0))
    wall_tint = _pastel(rng)
    walls = {k: ("plaster", wall_tint) for k in ("wall_left", "wall_right", "wall_front", "wall_back")}
    accent = ("wall_left", "wall_right", "wall_back")[int(rng.integers(0, 3))]
    walls[accent] = (str(rng.choice(["brick", "brick_yellow"])), (1.0, 1.0, 1.0))
    _shell(b, (0.0, W), (0.0, D), H, str(rng.choice(["wood_floor", "tiles"])), walls)
    # The loop goes round the table: front-centre start, right side, back, left side, home.
    loop = np.array([[W / 2, 0.9], [W - 1.2, 1.6], [W - 1.2, D - 1.4], [1.2, D - 1.4], [1.2, 1.6], [W / 2, 0.9]])
    placer = _Placer(loop)
    # rug under the table: walkable, not an obstacle
    b.box("rug", (W / 2 - 1.3, W / 2 + 1.3), (0.0, 0.01), (D * 0.55 - 1.0, D * 0.55 + 1.0), "carpet",
          _pastel(rng), solid=False)
    for _ in range(8):
        tx, tz = W / 2 + rng.uniform(-0.2, 0.2), D * 0.55 + rng.uniform(-0.3, 0.3)
        sx, sz = float(rng.uniform(1.0, 1.4)), float(rng.uniform(0.7, 0.9))
        if placer.place((tx - sx / 2, tz - sz / 2, tx + sx / 2, tz + sz / 2)):
            _table(b, "table", tx, tz, sx, sz, 0.75, "wood")
            seat_tint = _pastel(rng)
            for side, name in ((-1, "chair_front"), (1, "chair_back")):
                cz = tz + side * (sz / 2 + 0.3)
                if placer.place((tx - 0.25, cz - 0.25, tx + 0.25, cz + 0.25)):
                    _chair(b, name, tx, cz, side, "wood_dark", "fabric", seat_tint)
            break
    # bookcases against the side walls
    for side, x in (("left", (0.0, 0.4)), ("right", (W - 0.4, W))):
        for _ in range(6):
            zc, length = float(rng.uniform(1.0, D - 1.0)), float(rng.uniform(0.8, 1.6))
            rect = (x[0], zc - length / 2, x[1], zc + length / 2)
            if placer.place(rect):
                _shelf(b, rng, f"shelf_{side}", x, (rect[1], rect[3]), float(rng.uniform(1.6, 2.1)), along_x=False)
                break
    # a sofa against the back wall
    for _ in range(6):
        xc, length = float(rng.uniform(1.5, W - 1.5)), float(rng.uniform(1.6, 2.2))
        rect = (xc - length / 2, D - 0.85, xc + length / 2, D)
        if placer.place(rect):
            _sofa(b, rng, "sofa", (rect[0], rect[2]), (rect[1], rect[3]), back_at_high_z=True)
            break
    # crates and plants in corners
    corners = [(0.45, D - 0.45), (W - 0.45, D - 0.45), (0.45, 0.45), (W - 0.45, 0.45)]
    for k, (cx, cz) in enumerate(corners):
        if rng.random() < 0.5:
            rect = (cx - 0.35, cz - 0.35, cx + 0.35, cz + 0.35)
            if placer.place(rect):
                _crates(b, rng, f"crates{k}", cx, cz)
        else:
            if placer.place((cx - 0.3, cz - 0.3, cx + 0.3, cz + 0.3)):
                _plant(b, rng, f"plant{k}", cx, cz)
    _wall_picture(b, rng, "picture_back", "wall_back", W / 2 + float(rng.uniform(-1.0, 1.0)), (0.0, W), (0.0, D))
    _wall_picture(b, rng, "picture_front", "wall_front", W / 2 + float(rng.uniform(-1.0, 1.0)), (0.0, W), (0.0, D))
    return loop, None


def _build_house(rng: np.random.Generator, b: _MeshBuilder) -> tuple[np.ndarray, None]:
    """Four rooms in a 2 x 2 grid with a doorway in each internal wall; the loop visits all four rooms."""
    Wr, Dr, H = float(rng.uniform(4.0, 5.0)), float(rng.uniform(4.0, 5.0)), 2.7
    W, D = 2 * Wr, 2 * Dr
    rooms = {  # name -> (x range, z range, floor material, wall tint)
        "room_a": ((0.0, Wr), (0.0, Dr)),
        "room_b": ((0.0, Wr), (Dr, D)),
        "room_c": ((Wr, W), (Dr, D)),
        "room_d": ((Wr, W), (0.0, Dr)),
    }
    floors = ["wood_floor", "tiles", "carpet", "tiles_warm"]
    rng.shuffle(floors)
    wall_tint = _pastel(rng)
    walls = {k: ("plaster", wall_tint) for k in ("wall_left", "wall_right", "wall_front", "wall_back")}
    walls["wall_back"] = (str(rng.choice(["brick", "plaster"])), (1.0, 1.0, 1.0))
    t = 0.2
    b.box("ceiling", (-t, W + t), (H, H + 0.1), (-t, D + t), "plaster", CEILING_TINT)
    for (name, (rx, rz)), floor in zip(rooms.items(), floors):
        b.box(f"{name}_floor", rx, (-0.1, 0.0), rz, floor)
    b.box("floor_rim", (-t, W + t), (-0.2, -0.1), (-t, D + t), "concrete")  # under the room slabs, hidden
    for wall, (wx, wz) in {
        "wall_left": ((-t, 0.0), (-t, D + t)), "wall_right": ((W, W + t), (-t, D + t)),
        "wall_front": ((0.0, W), (-t, 0.0)), "wall_back": ((0.0, W), (D, D + t)),
    }.items():
        b.box(wall, wx, (0.0, H), wz, *walls[wall])
    # internal walls with 1.1 m doorways (2.1 m high) at the middle of each room side
    half, door_w, door_h, inner_tint = 0.075, 1.1, 2.1, _pastel(rng)
    for k, (c0, c1, mid) in enumerate([(0.0, Dr, Dr / 2), (Dr, D, Dr + Dr / 2)]):  # wall x = Wr, along z
        b.box(f"inner_x{k}_a", (Wr - half, Wr + half), (0.0, H), (c0, mid - door_w / 2), "plaster", inner_tint)
        b.box(f"inner_x{k}_b", (Wr - half, Wr + half), (0.0, H), (mid + door_w / 2, c1), "plaster", inner_tint)
        b.box(f"inner_x{k}_lintel", (Wr - half, Wr + half), (door_h, H), (mid - door_w / 2, mid + door_w / 2),
              "plaster", inner_tint)
    for k, (c0, c1, mid) in enumerate([(0.0, Wr, Wr / 2), (Wr, W, Wr + Wr / 2)]):  # wall z = Dr, along x
        b.box(f"inner_z{k}_a", (c0, mid - door_w / 2), (0.0, H), (Dr - half, Dr + half), "plaster", inner_tint)
        b.box(f"inner_z{k}_b", (mid + door_w / 2, c1), (0.0, H), (Dr - half, Dr + half), "plaster", inner_tint)
        b.box(f"inner_z{k}_lintel", (mid - door_w / 2, mid + door_w / 2), (door_h, H), (Dr - half, Dr + half),
              "plaster", inner_tint)
    loop = np.array([
        [Wr / 2, 0.9], [Wr / 2, Dr], [Wr / 2, 1.5 * Dr], [Wr, 1.5 * Dr], [1.5 * Wr, 1.5 * Dr],
        [1.5 * Wr, Dr], [1.5 * Wr, Dr / 2], [Wr, Dr / 2], [Wr / 2, Dr / 2], [Wr / 2, 0.9],
    ])
    placer = _Placer(loop)
    # Each room gets furniture in its outer corner and along its outer walls.
    outer = {"room_a": (0.0, 0.0), "room_b": (0.0, D), "room_c": (W, D), "room_d": (W, 0.0)}
    for name, (rx, rz) in rooms.items():
        ox, oz = outer[name]
        sx, sz = (1 if ox == 0.0 else -1), (1 if oz == 0.0 else -1)  # direction from the corner into the room
        kind_order = ["table", "shelf", "sofa", "crates", "plant", "bed"]
        rng.shuffle(kind_order)
        for kind in kind_order[:4]:
            for _ in range(5):
                if kind == "table":
                    tx, tz = ox + sx * rng.uniform(0.9, 1.4), oz + sz * rng.uniform(0.9, 1.4)
                    if placer.place((tx - 0.6, tz - 0.45, tx + 0.6, tz + 0.45)):
                        _table(b, f"{name}_table", tx, tz, 1.1, 0.8, 0.74, str(rng.choice(["wood", "wood_dark"])))
                        break
                elif kind == "shelf":  # against the outer x wall
                    zc = float(rng.uniform(rz[0] + 0.8, rz[1] - 0.8))
                    x = (0.0, 0.38) if ox == 0.0 else (W - 0.38, W)
                    rect = (x[0], zc - 0.5, x[1], zc + 0.5)
                    if placer.place(rect):
                        height = float(rng.uniform(1.5, 2.0))
                        _shelf(b, rng, f"{name}_shelf", x, (rect[1], rect[3]), height, along_x=False)
                        break
                elif kind == "sofa":  # against the outer z wall
                    xc = float(rng.uniform(rx[0] + 1.1, rx[1] - 1.1))
                    z = (0.0, 0.85) if oz == 0.0 else (D - 0.85, D)
                    rect = (xc - 0.9, z[0], xc + 0.9, z[1])
                    if placer.place(rect):
                        _sofa(b, rng, f"{name}_sofa", (rect[0], rect[2]), z, back_at_high_z=(oz != 0.0))
                        break
                elif kind == "bed":  # head against the outer z wall
                    xc = float(rng.uniform(rx[0] + 0.9, rx[1] - 0.9))
                    z = (0.0, 2.0) if oz == 0.0 else (D - 2.0, D)
                    rect = (xc - 0.75, z[0], xc + 0.75, z[1])
                    if placer.place(rect):
                        b.box(f"{name}_bed_frame", (rect[0], rect[2]), (0.0, 0.35), z, "wood")
                        b.box(f"{name}_bed_mattress", (rect[0] + 0.05, rect[2] - 0.05), (0.35, 0.55),
                              (z[0] + 0.05, z[1] - 0.05), "fabric", _pastel(rng))
                        hz = (z[0], z[0] + 0.08) if oz == 0.0 else (z[1] - 0.08, z[1])
                        b.box(f"{name}_bed_head", (rect[0], rect[2]), (0.0, 1.0), hz, "wood_dark")
                        break
                else:
                    cx, cz = ox + sx * rng.uniform(0.4, 1.8), oz + sz * rng.uniform(0.4, 0.6)
                    if rng.random() < 0.5:
                        cx, cz = ox + sx * rng.uniform(0.4, 0.6), oz + sz * rng.uniform(0.4, 1.8)
                    if placer.place((cx - 0.35, cz - 0.35, cx + 0.35, cz + 0.35)):
                        (_crates if kind == "crates" else _plant)(b, rng, f"{name}_{kind}", cx, cz)
                        break
        wall = "wall_front" if oz == 0.0 else "wall_back"
        _wall_picture(b, rng, f"{name}_picture", wall, float(rng.uniform(rx[0] + 1.0, rx[1] - 1.0)), (0.0, W), (0.0, D))
    return loop, None


def _build_courtyard(rng: np.random.Generator, b: _MeshBuilder) -> tuple[np.ndarray, np.ndarray]:
    """An open square: paving, building facades with windows on three sides, a colonnade, a fountain, trees."""
    W, D = float(rng.uniform(12.0, 16.0)), float(rng.uniform(12.0, 16.0))
    centre = np.array([W / 2, 0.0, D / 2])
    far = 170.0  # ground reaches past the sky dome so the dome's lower half is never seen
    b.box("ground", (W / 2 - far, W / 2 + far), (-0.5, -0.01), (D / 2 - far, D / 2 + far), "grass", background=True)
    b.box("paving", (-8.0, W + 8.0), (-0.5, 0.0), (-8.0, D + 8.0), "paving")
    b.sphere("sky", (W / 2, 0.0, D / 2), SKY_RADIUS_M, "sky", rings=16, segments=32, solid=False, background=True,
             inward=True)

    def facade(name: str, x, z, height: float, facing: str, material: str, tint) -> None:
        b.box(name, x, (0.0, height), z, material, tint)
        floors = int(height // 3.0)
        length = (z[1] - z[0]) if facing in ("+x", "-x") else (x[1] - x[0])
        n_win = max(1, int(length // 2.4))
        for f in range(floors):
            h0 = 1.0 + 3.0 * f
            for k in range(n_win):
                c = (k + 0.5) * length / n_win + (z[0] if facing in ("+x", "-x") else x[0])
                if f == 0 and k == n_win // 2:
                    part, hw, hh, h0k, material = "door", 0.6, 2.3, 0.0, "wood_dark"  # ground-floor entrance
                else:
                    part, hw, hh, h0k, material = "window", 0.55, 1.5, h0, "glass"
                span = (c - hw, c + hw)
                proud = {"+x": (x[1], x[1] + 0.06), "-x": (x[0] - 0.06, x[0]), "-z": (z[0] - 0.06, z[0])}[facing]
                bx, bz = (proud, span) if facing in ("+x", "-x") else (span, proud)
                b.box(f"{name}_{part}{f}_{k}", bx, (h0k, h0k + hh), bz, material, solid=False)
        b.box(f"{name}_cornice", (x[0] - 0.1, x[1] + 0.1), (height, height + 0.3), (z[0] - 0.1, z[1] + 0.1), "stone")

    mats = ["brick", "brick_yellow", "plaster", "concrete"]
    rng.shuffle(mats)
    facade("building_left", (-6.0, 0.0), (-2.0, D + 2.0), float(rng.uniform(7.0, 10.0)), "+x", mats[0], (1, 1, 1))
    facade("building_right", (W, W + 6.0), (-1.0, D - 3.0), float(rng.uniform(6.0, 12.0)), "-x", mats[1], _pastel(rng))
    facade("building_back", (1.0, W - 1.0), (D, D + 6.0), float(rng.uniform(8.0, 12.0)), "-z", mats[2], _pastel(rng))
    # low wall along the open front side, with a gap the loop never uses
    b.box("front_wall_a", (-0.5, W / 2 - 2.0), (0.0, 0.9), (-0.6, -0.3), "stone")
    b.box("front_wall_b", (W / 2 + 2.0, W + 0.5), (0.0, 0.9), (-0.6, -0.3), "stone")
    # colonnade in front of the left building
    n_cols = int((D - 1.0) // 2.5)
    for k in range(n_cols):
        b.prism(f"pillar{k}", (1.6, 1.5 + 2.5 * k), 0.22, (0.0, 3.4), "stone", sides=10)
    b.box("colonnade_beam", (1.2, 2.0), (3.4, 3.8), (1.0, 1.5 + 2.5 * (n_cols - 1) + 0.5), "stone")
    b.box("colonnade_roof", (0.0, 2.2), (3.8, 3.95), (0.5, 1.5 + 2.5 * (n_cols - 1) + 1.0), "wood_dark")
    # fountain in the middle
    r = float(rng.uniform(1.1, 1.5))
    b.prism("fountain_basin", (W / 2, D / 2), r, (0.0, 0.55), "stone", sides=12)
    b.prism("fountain_water", (W / 2, D / 2), r - 0.12, (0.55, 0.56), "water", sides=12, solid=False)
    b.prism("fountain_column", (W / 2, D / 2), 0.2, (0.56, 1.6), "stone", sides=8)
    b.sphere("fountain_top", (W / 2, 1.75, D / 2), 0.25, "stone", rings=6, segments=10)
    loop = np.array([[W / 2, 1.5], [W - 3.5, 3.5], [W - 3.5, D - 3.5], [3.5, D - 3.5], [3.5, 3.5], [W / 2, 1.5]])
    placer = _Placer(loop)
    placer.rects += [(W / 2 - r, D / 2 - r, W / 2 + r, D / 2 + r), (1.2, 0.0, 2.0, D)]
    # trees and benches wherever they fit away from the loop
    for k in range(10):
        tx, tz = float(rng.uniform(1.0, W - 1.0)), float(rng.uniform(1.0, D - 1.0))
        if placer.place((tx - 0.5, tz - 0.5, tx + 0.5, tz + 0.5)):
            crown_r = float(rng.uniform(1.0, 1.5))
            crown_h = float(rng.uniform(2.3, 2.8)) + crown_r  # crown bottom above head height: walk under it
            b.prism(f"tree{k}_trunk", (tx, tz), 0.15, (0.0, crown_h), "bark", sides=8)
            b.sphere(f"tree{k}_crown", (tx, crown_h, tz), crown_r, "foliage", rings=7, segments=12)
    for k in range(4):
        bx, bz = float(rng.uniform(2.0, W - 2.0)), float(rng.uniform(1.0, D - 1.0))
        along_x = rng.random() < 0.5
        hx, hz = (0.8, 0.25) if along_x else (0.25, 0.8)
        if placer.place((bx - hx, bz - hz, bx + hx, bz + hz)):
            b.box(f"bench{k}_seat", (bx - hx, bx + hx), (0.42, 0.48), (bz - hz, bz + hz), "wood")
            for j, (lx, lz) in enumerate(((-1, -1), (1, 1))):
                px, pz = bx + lx * (hx - 0.1), bz + lz * (hz - 0.1)
                b.box(f"bench{k}_leg{j}", (px - 0.05, px + 0.05), (0.0, 0.42), (pz - 0.05, pz + 0.05), "metal")
    return loop, centre


_BUILDERS = {"room": _build_room, "house": _build_house, "courtyard": _build_courtyard}


def make_scene(name: str, seed: int = 0) -> ProceduralScene:
    """Build the procedural scene ``name`` (one of ``SCENE_NAMES``); the same (name, seed) gives the same scene."""
    if name not in _BUILDERS:
        raise InvalidInputError(f"unknown scene {name!r}; known scenes: {', '.join(SCENE_NAMES)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"scene seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(_stable_seed(int(seed), name))
    builder = _MeshBuilder(rng)
    loop, sky_centre = _BUILDERS[name](rng, builder)
    return ProceduralScene(name, int(seed), builder, loop, sky_centre)


def scene_items(count: int) -> list[tuple[str, int]]:
    """``count`` distinct (name, seed) pairs cycling through the families: a fixed evaluation / training set.

    ``scene_items(24)`` is rooms, houses and courtyards with seeds 0..7 each, always in the same order.
    """
    if int(count) < 1:
        raise InvalidInputError(f"count must be >= 1, got {count}")
    return [(SCENE_NAMES[i % len(SCENE_NAMES)], i // len(SCENE_NAMES)) for i in range(int(count))]
