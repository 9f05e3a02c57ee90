"""The lock-step step's fast paths, third pass (issue 14 section 6, session 9): each against its slow twin."""

import numpy as np
import pytest


def _depth_with_holes(rng, H, W, dtype=np.float32):
    """A slanted floor, a near box (occlusion edges), pinholes, long holes, a NaN and a negative depth."""
    yy, xx = np.mgrid[0:H, 0:W]
    depth = 1.0 / (0.1 + 0.8 * yy / H + 0.05 * rng.uniform(size=(H, W)))
    depth[H // 4 : H // 2, W // 3 : W // 2] *= 0.3
    valid = rng.uniform(size=(H, W)) > rng.uniform(0.1, 0.5)
    valid[H // 2 : H // 2 + 3, :] = False  # a row band wider than most spans
    valid[:, W - 30 : W - 2] = False  # a column band wider than max_span
    depth[1, 1], depth[2, 2] = np.nan, -1.0  # flagged valid, treated as holes
    valid[1, 1] = valid[2, 2] = True
    return depth.astype(dtype), valid


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_hole_fill_is_the_scan_kernel_bit_for_bit(seed):
    """The two-pass, one-axis-per-hole fill gives the former kernel's bits on 128x96 frames with pinholes, bands,
    occlusion edges and invalid depths, for spans 24 (the frame path's), 1 and unbounded, float32 and float64;
    and the plainly written reference on a small frame."""
    from spatia.world.update import (
        _fill_holes_background_scans, _reference_fill_holes_background, fill_holes_background,
    )

    rng = np.random.default_rng(seed)
    for dtype in (np.float32, np.float64):
        depth, valid = _depth_with_holes(rng, 96, 128, dtype)
        for span in (24, 1, None):
            fast = fill_holes_background(depth, valid, 0.05, span)
            assert fast.dtype == np.float32
            np.testing.assert_array_equal(fast, _fill_holes_background_scans(depth, valid, 0.05, span))
    depth, valid = _depth_with_holes(rng, 20, 40)
    for span in (5, None):
        # (the reference interpolates depths where the kernels interpolate inverse depths: float64 rounding apart)
        np.testing.assert_allclose(fill_holes_background(depth, valid, 0.05, span),
                                   _reference_fill_holes_background(depth, valid, 0.05, span), rtol=1e-6, atol=0)
    with pytest.raises(Exception, match="one shape"):
        fill_holes_background(depth, valid[:, :-1])



def test_a_reader_of_newest_depths_only_gets_no_image_decoded_ahead():
    """Each kind is decoded ahead only while its own newest frames are read: served play reads every newest
    depth but seldom a newest image, and decoding every image ahead for it cost the shared encoder thread a JPEG
    decode a frame, nearly all unread. An image read then starts its decode-ahead; reads give the same bits as
    a store that decodes every read from the frame file."""
    from spatia.world.camera import Intrinsics
    from spatia.world.history import FrameStore, HistoryConfig

    rng = np.random.default_rng(4)
    K_ = Intrinsics.from_fov(60.0, 40, 30)
    fast = FrameStore(HistoryConfig(voxel_set_levels=0))
    slow = FrameStore(HistoryConfig(voxel_set_levels=0, decoded_cache_frames=0))
    for f in range(12):
        rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        depth = rng.uniform(0.1, 30.0, (30, 40)).astype(np.float32)
        for store in (fast, slow):
            store.add(rgb, np.eye(4), K_, np.arange(f, f + 20, dtype=np.int64), depth_m=depth)
        fast.flush()
        if 3 <= f < 8:  # depths only: the depths are kept ahead, no image is decoded
            assert fast._take_decoded(f, fast._stored_depth) is not None
            assert not fast._decoded_ahead
        if f == 7:  # a newest image read (from the frame file: nothing ahead yet) ...
            np.testing.assert_array_equal(fast.get_rgb(f), slow.get_rgb(f))
        if f >= 8:  # ... and the images added after it are decoded ahead
            assert fast._take_decoded(f) is not None
        if f >= 2:
            np.testing.assert_array_equal(fast.get_depth(f - 2), slow.get_depth(f - 2))
    for i in range(12):
        np.testing.assert_array_equal(fast.get_rgb(i), slow.get_rgb(i))
        np.testing.assert_array_equal(fast.get_depth(i), slow.get_depth(i))
    fast.close()
    slow.close()


@pytest.mark.parametrize("image_codec", ["jpeg", "png"])
@pytest.mark.parametrize("depth_codec", ["float16_zstd", "float32_zstd", "png_mm"])
def test_frames_read_back_as_decoded_without_the_round_trip(image_codec, depth_codec):
    """A frame's depth is kept as the codec stores it, and its image decoded ahead, on the encoder thread:
    ``get_rgb`` / ``get_depth`` give the same bits as a store that decodes every read from the frame file (lossy
    JPEG and float16 included; a depth beyond float16's range reads back 0 either way). Only while the newest
    frames are being read: a store whose reader never asks for them (a Play session) decodes nothing ahead."""
    from spatia.world.camera import Intrinsics
    from spatia.world.history import FrameStore, HistoryConfig

    rng = np.random.default_rng(3)
    K_ = Intrinsics.from_fov(60.0, 40, 30)
    fast = FrameStore(HistoryConfig(image_codec=image_codec, depth_codec=depth_codec, voxel_set_levels=0))
    slow = FrameStore(HistoryConfig(image_codec=image_codec, depth_codec=depth_codec, voxel_set_levels=0,
                                    decoded_cache_frames=0))
    for f in range(7):
        rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        depth = rng.uniform(0.1, 30.0, (30, 40)).astype(np.float32)
        depth[0, :5] = [0.0, 1e-4, 65519.0, 70000.0, 3.14159]
        for store in (fast, slow):
            store.add(rgb, np.eye(4), K_, np.arange(f, f + 20, dtype=np.int64), depth_m=depth)
        if f < 2:
            fast.flush()
            assert not fast._decoded_ahead  # nobody has read a newest frame yet: nothing is decoded ahead
        if f >= 2:  # what a one-frame clip reads: the frame added two steps before
            fast.flush()
            if f >= 5:  # frames added after the first such read (at f = 2) are decoded ahead
                assert fast._take_decoded(f - 2) is not None
                if depth_codec != "png_mm":
                    assert fast._take_decoded(f - 2, fast._stored_depth) is not None  # no decode
            for i in (f - 2, f - 1, f):
                np.testing.assert_array_equal(fast.get_rgb(i), slow.get_rgb(i))
                np.testing.assert_array_equal(fast.get_depth(i), slow.get_depth(i))
    for i in range(7):  # older frames: from the cache or the frame file, the same bits
        np.testing.assert_array_equal(fast.get_rgb(i), slow.get_rgb(i))
        np.testing.assert_array_equal(fast.get_depth(i), slow.get_depth(i))
    fast.close()
    slow.close()
    assert not fast._decoded_ahead and not fast._stored_depth
