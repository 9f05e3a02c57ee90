"""Image metrics of the paper's evaluations (Sec. 4): PSNR and SSIM on uint8 RGB frames.

SSIM follows Wang et al. 2004 with the usual settings (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
computed per channel on [0, 255] and averaged), which is what scikit-image's ``structural_similarity`` gives
with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255`` (tests compare the two).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from spatia.world.errors import InvalidInputError


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InvalidInputError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise InvalidInputError(f"expected [H, W] or [H, W, C] images, got shape {a.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity (Gaussian window 11, sigma 1.5), averaged over channels."""
    x, y = _pair(a, b)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(img: np.ndarray) -> np.ndarray:
        # truncate at 3.5 sigma like scikit-image (radius 5 -> 11 taps), mirror at the border
        return cv2.GaussianBlur(img, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    values = []
    for ch in range(x.shape[2]):
        xc, yc = x[..., ch], y[..., ch]
        mx, my = blur(xc), blur(yc)
        sxx = blur(xc * xc) - mx * mx
        syy = blur(yc * yc) - my * my
        sxy = blur(xc * yc) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        pad = 5  # scikit-image averages over the interior, away from the window's reach into the border
        values.append(s[pad:-pad, pad:-pad].mean())
    return float(np.mean(values))
