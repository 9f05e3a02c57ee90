"""Shared fixtures: small real things (a textured box room rendered by ray casting in numpy), the lock that keeps
the Ray test files from starting two Rays on one machine at once, and pytest-xdist's ``loadfile`` scheduling made
safe for a lost worker (tests/xdist_crash.py)."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from spatia.cli import configure_logging
from spatia.world.camera import Intrinsics
from xdist_crash import pytest_xdist_make_scheduler  # noqa: F401 -- a hook: a lost xdist worker never hangs the run

# Logs go to stderr, as the CLI configures them: commands called in-process print JSON on stdout, and a fill
# thread of an earlier test logging at that moment would otherwise land in the middle of it (CI saw this).
configure_logging(verbose=True)


def pytest_configure(config):
    """Compile the numba kernels (world core and layout fill) into numba's on-disk cache once, before any test,
    as ``spatia serve`` does in its warm-up child. A cold cache (a fresh clone: CI) takes ~2 min of CPU to compile
    them; compiled inside a test instead, they made a test's first Play frame miss its 60 s deadline. In a child
    process, by the xdist controller only (the workers then load from the cache): the test processes import
    nothing here, and a warm cache costs a few seconds."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller has warmed the cache
        return
    t0 = time.perf_counter()
    code = "from spatia.model import make_generator; from spatia.server.host import warm_kernels; " \
           "warm_kernels(make_generator('geometric'))"
    try:  # a failure here is not the suite's: the tests then compile what they use themselves
        code = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=900, check=False).returncode
    except subprocess.TimeoutExpired:
        code = "timed out"
    sys.stderr.write(f"numba kernels warmed in {time.perf_counter() - t0:.1f} s (exit {code})\n")


def render_box_room(intrinsics: Intrinsics, c2w: np.ndarray, half_size_m: float = 2.0, seed: int = 0):
    """Exact RGB-D of the inside of an axis-aligned cube (side 2 * half_size_m, centred at the origin) whose
    faces carry a seeded checker-and-noise texture that depends only on the world position (view-independent)."""
    H, W = intrinsics.height, intrinsics.width
    u = (np.arange(W) + 0.5 - intrinsics.cx) / intrinsics.fx
    v = (np.arange(H) + 0.5 - intrinsics.cy) / intrinsics.fy
    uu, vv = np.meshgrid(u, v)
    dirs_cam = np.stack([uu, vv, np.ones_like(uu)], -1)  # z = 1
    dirs = dirs_cam @ c2w[:3, :3].T
    o = c2w[:3, 3]
    with np.errstate(divide="ignore"):
        t = np.where(dirs > 0, (half_size_m - o) / dirs, (-half_size_m - o) / dirs)
    t = np.where(np.isfinite(t) & (t > 0), t, np.inf)
    axis = np.argmin(t, -1)
    tmin = np.take_along_axis(t, axis[..., None], -1)[..., 0]
    hit = o + dirs * tmin[..., None]
    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 230, (6, 3))
    face = axis * 2 + (np.take_along_axis(dirs, axis[..., None], -1)[..., 0] > 0)
    cells = np.floor(hit / 0.25).astype(int).sum(-1) % 2
    fine = np.sin(hit[..., 0] * 37.0) * np.sin(hit[..., 1] * 29.0) * np.sin(hit[..., 2] * 31.0)
    rgb = palette[face] * (0.75 + 0.25 * cells[..., None]) + 20 * fine[..., None]
    depth = tmin  # ray with z = 1 in the camera: t is the z-depth
    return np.clip(rgb, 0, 255).astype(np.uint8), depth.astype(np.float32)


def box_room_points(rng, R: np.ndarray, n: int = 6000) -> np.ndarray:
    """Points of a 6 x 3 x 8 m room (floor y=0, up = +y in the room frame) on floor, ceiling and three walls,
    rotated into the world by ``R`` [3, 3]; the fourth wall (z = 0) is not seen. ``n`` points per surface."""
    floor = np.c_[rng.uniform(0, 6, n), np.zeros(n), rng.uniform(0, 8, n)]
    ceil = np.c_[rng.uniform(0, 6, n), np.full(n, 3.0), rng.uniform(0, 8, n)]
    back = np.c_[rng.uniform(0, 6, n), rng.uniform(0, 3, n), np.full(n, 8.0)]
    left = np.c_[np.zeros(n), rng.uniform(0, 3, n), rng.uniform(3, 8, n)]
    right = np.c_[np.full(n, 6.0), rng.uniform(0, 3, n), rng.uniform(3, 8, n)]
    return np.concatenate([floor, ceil, back, left, right]) @ R.T


def perturbation(rot_deg: float, trans_m: float, seed: int) -> np.ndarray:
    """A rigid 4x4 transform: a rotation of ``rot_deg`` about a random axis and a shift of ``trans_m`` metres in a
    random direction (seeded), for pose-refinement tests."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    axis, direction = rng.normal(size=3), rng.normal(size=3)
    P = np.eye(4)
    P[:3, :3] = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.radians(rot_deg)).as_matrix()
    P[:3, 3] = direction / np.linalg.norm(direction) * trans_m
    return P


@pytest.fixture
def box_room():
    return render_box_room


@pytest.fixture(scope="module")
def ray_tests_lock():
    """One Ray test file at a time on this machine (tests/test_ray_*.py): an flock, released when the file's tests
    end, or by the OS when the process holding it dies (Ray's processes do not inherit the descriptor: Python opens
    it non-inheritable), so a lost xdist worker never leaves it held."""
    import fcntl
    import tempfile

    with open(os.path.join(tempfile.gettempdir(), "spatia-ray-tests.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
