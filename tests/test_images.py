"""Image, mask and depth reading/writing: round trips, conversions, and errors that name the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from spatia.world.camera import Intrinsics
from spatia.world.errors import ImageDecodeError, InvalidInputError, NotFoundError
from spatia.world.images import (
    depth_to_png16,
    encode_jpeg,
    encode_png,
    load_depth,
    load_mask,
    load_rgb,
    resize_depth,
    resize_mask,
    resize_rgb,
)

OFFICIAL_MASK = "/work/shared/conformance/spatia-official-cases/case_3/mask.png"


def _pil_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)  # [H=6, W=9, 3]


def test_png_round_trip_from_bytes_and_path(rgb, tmp_path):
    data = encode_png(rgb)
    np.testing.assert_array_equal(load_rgb(data), rgb)
    path = tmp_path / "frame.png"
    path.write_bytes(data)
    out = load_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (6, 9, 3)
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_round_trip_is_close():
    smooth = np.zeros((32, 32, 3), dtype=np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]
    smooth[..., 1] = 120
    out = load_rgb(encode_jpeg(smooth, quality=95))
    assert out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() < 4.0


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "1"])
def test_other_modes_become_rgb(mode):
    img = Image.new(mode, (5, 4), color=1)
    out = load_rgb(_pil_bytes(img))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    # greyscale values land equally in all three channels
    if mode in ("L", "I;16", "1", "LA"):
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_rgba_alpha_is_dropped():
    arr = np.zeros((3, 4, 4), dtype=np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = 0  # fully transparent, colour still kept
    out = load_rgb(_pil_bytes(Image.fromarray(arr)))
    assert (out[..., 0] == 200).all()


def test_corrupt_bytes_name_the_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="<bytes>"):
        load_rgb(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="upload.jpg"):
        load_rgb(b"\xff\xd8\xff\xe0garbage", name="upload.jpg")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_rgb(b"")
    truncated = encode_png(np.full((64, 64, 3), 7, dtype=np.uint8))[:60]
    bad = tmp_path / "broken.png"
    bad.write_bytes(truncated)
    with pytest.raises(ImageDecodeError, match="broken.png"):
        load_rgb(bad)
    # ImageDecodeError is an InvalidInputError (INVALID_ARGUMENT at the service edge)
    assert issubclass(ImageDecodeError, InvalidInputError)


def test_missing_file_raises_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="nope.png"):
        load_rgb(tmp_path / "nope.png")
    with pytest.raises(NotFoundError):
        load_mask(tmp_path / "nope.png")
    with pytest.raises(NotFoundError):
        load_depth(str(tmp_path / "nope.npy"))


def test_wrong_source_type():
    with pytest.raises(InvalidInputError, match="path or bytes"):
        load_rgb(12345)  # type: ignore[arg-type]


def test_mask_white_is_true_and_size_checked():
    grey = np.zeros((4, 6), dtype=np.uint8)
    grey[1, 2] = 255
    grey[2, 3] = 1  # nonzero counts by default
    mask = load_mask(encode_png(grey), size=(6, 4))
    assert mask.dtype == np.bool_ and mask.shape == (4, 6)
    assert mask.sum() == 2 and mask[1, 2] and mask[2, 3]
    assert load_mask(encode_png(grey), threshold=127).sum() == 1
    with pytest.raises(InvalidInputError, match=r"6x4.*8x4"):
        load_mask(encode_png(grey), size=(8, 4))


def test_mask_from_colour_and_npy(tmp_path):
    colour = np.zeros((3, 3, 3), dtype=np.uint8)
    colour[0, 0] = (255, 255, 255)
    assert load_mask(encode_png(colour)).sum() == 1
    arr = np.zeros((3, 5), dtype=bool)
    arr[2, 4] = True
    path = tmp_path / "m.npy"
    np.save(path, arr)
    np.testing.assert_array_equal(load_mask(path), arr)


def test_official_case_mask_loads():
    mask = load_mask(OFFICIAL_MASK, size=(1248, 704))
    assert mask.shape == (704, 1248)
    assert 0.01 < mask.mean() < 0.2  # the case's dynamic region is a few percent of the frame


def test_depth_npy_metres_and_png_millimetres(tmp_path):
    depth = np.random.default_rng(1).uniform(0.2, 9.0, size=(5, 7)).astype(np.float32)
    depth[0, 0] = 0.0
    path = tmp_path / "d.npy"
    np.save(path, depth)
    np.testing.assert_array_equal(load_depth(path, expected_size=(7, 5)), depth)
    from_png = load_depth(depth_to_png16(depth), expected_size=(7, 5))
    assert from_png.dtype == np.float32
    np.testing.assert_allclose(from_png, depth, atol=5e-4)  # 1 mm quantisation
    assert from_png[0, 0] == 0.0
    # an explicit 16-bit PNG holding 1500 mm reads as 1.5 m
    mm = np.full((2, 3), 1500, dtype=np.uint16)
    np.testing.assert_allclose(load_depth(encode_png(mm)), 1.5)


def test_depth_errors():
    depth = np.ones((5, 7), dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, depth)
    with pytest.raises(InvalidInputError, match=r"7x5.*8x6"):
        load_depth(buf.getvalue(), expected_size=(8, 6))
    with pytest.raises(InvalidInputError, match="8-bit"):
        load_depth(encode_png(np.zeros((4, 4), dtype=np.uint8)))
    neg = io.BytesIO()
    np.save(neg, -depth)
    with pytest.raises(InvalidInputError, match="negative"):
        load_depth(neg.getvalue())
    with pytest.raises(ImageDecodeError, match="depth.npy"):
        load_depth(b"\x93NUMPYbroken", name="depth.npy")
    three_d = io.BytesIO()
    np.save(three_d, np.ones((2, 2, 2)))
    with pytest.raises(InvalidInputError, match="2-D"):
        load_depth(three_d.getvalue())


def test_depth_non_finite_becomes_unknown():
    depth = np.array([[1.0, np.nan], [np.inf, 2.0]], dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, depth)
    out = load_depth(buf.getvalue())
    np.testing.assert_array_equal(out, [[1.0, 0.0], [0.0, 2.0]])


def test_encode_rejects_bad_arrays():
    with pytest.raises(InvalidInputError):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(InvalidInputError):
        encode_jpeg(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(InvalidInputError, match="quality"):
        encode_jpeg(np.zeros((4, 4, 3), dtype=np.uint8), quality=0)


def test_resize_keeps_intrinsics_in_step(rgb):
    K = Intrinsics.from_fov(60.0, 9, 6)
    out, K2 = resize_rgb(rgb, (18, 12), K)
    assert out.shape == (12, 18, 3) and out.dtype == np.uint8
    assert K2 == K.scaled(18, 12)
    assert K2.fov_x_deg == pytest.approx(K.fov_x_deg)
    small, none = resize_rgb(rgb, (3, 2))
    assert small.shape == (2, 3, 3) and none is None
    with pytest.raises(InvalidInputError):
        resize_rgb(rgb, (0, 5))


def test_resize_depth_and_mask_do_not_blend():
    depth = np.zeros((4, 4), dtype=np.float32)
    depth[:, 2:] = 5.0  # a step edge: nearest keeps only the two original values
    out = resize_depth(depth, (7, 3))
    assert out.shape == (3, 7) and set(np.unique(out).tolist()) <= {0.0, 5.0}
    mask = depth > 0
    mout = resize_mask(mask, (8, 8))
    assert mout.dtype == np.bool_ and mout.shape == (8, 8) and mout[:, :4].sum() == 0 and mout[:, 4:].all()
