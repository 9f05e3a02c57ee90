import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from spatia.world.errors import InvalidInputError
from spatia.world.metrics import psnr, ssim


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psnr_and_ssim_match_scikit_image(seed):
    rng = np.random.default_rng(seed)
    a = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    b = np.clip(a + rng.normal(0, 5 + 10 * seed, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), rel=1e-9)
    ref = structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-6)


def test_identical_images():
    a = np.full((20, 20, 3), 7, np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(InvalidInputError, match="shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
