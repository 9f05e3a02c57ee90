"""Reading and writing images, masks and depth maps, and resizing them with their intrinsics.

Conventions (``docs/DESIGN.md``): images are uint8 ``[H, W, 3]`` RGB; masks are bool ``[H, W]`` named for what True
means; depth is float32 ``[H, W]`` z-depth in metres with 0 = unknown. Sizes are given as ``(width, height)``,
the order PIL, OpenCV and the official Spatia CLI (``--width 1248 --height 704``) use.

Every reader takes a path or the raw bytes of a file (what arrives over gRPC). Failures name the file:
a missing path raises ``NotFoundError``, bytes that do not decode raise ``ImageDecodeError``, and a
decoded image of the wrong size raises ``InvalidInputError`` naming both sizes. Pixels are taken as stored:
EXIF orientation tags are ignored, because the intrinsics that come with an image describe the stored pixel grid.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np

from spatia.world.camera import Intrinsics
from spatia.world.errors import ImageDecodeError, InvalidInputError, NotFoundError

ImageSource = Union[str, Path, bytes, bytearray, memoryview]

_NPY_MAGIC = b"\x93NUMPY"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 64_000_000  # refuse decompression bombs before they fill memory (8K x 8K)


def _read_source(source: ImageSource, name: str | None) -> tuple[bytes, str]:
    """Return the file's bytes and a name for messages (the path, or ``name``/``"<bytes>"`` for raw bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise NotFoundError(f"image file not found: {path}")
        return path.read_bytes(), name or str(path)
    raise InvalidInputError(f"expected a path or bytes, got {type(source).__name__}")


def _open_pil(data: bytes, name: str):
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ImageDecodeError(f"{name}: {img.width}x{img.height} is larger than the {MAX_PIXELS}-pixel limit")
        img.load()  # decode now so truncated files fail here, not later
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"{name}: cannot decode image ({exc})") from None
    return img


def _check_size(actual_wh: tuple[int, int], expected_wh: tuple[int, int] | None, what: str, name: str) -> None:
    if expected_wh is None:
        return
    ew, eh = (int(v) for v in expected_wh)
    if tuple(actual_wh) != (ew, eh):
        raise InvalidInputError(f"{name}: {what} is {actual_wh[0]}x{actual_wh[1]} but {ew}x{eh} was expected")


def _to_uint8_grey(arr: np.ndarray) -> np.ndarray:
    """Scale a 16-bit / 32-bit / float single-channel array to uint8 by its dtype's range."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    # Integer modes ("I;16", "I"): 16-bit data is by far the common case.
    return (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def load_rgb(source: ImageSource, *, name: str | None = None) -> np.ndarray:
    """Decode a PNG/JPEG/... image to ``[H, W, 3]`` uint8 RGB.

    Greyscale is repeated into three channels; alpha is dropped (not composited), palettes are expanded and
    16-bit images are scaled to 8 bits.
    """
    data, name = _read_source(source, name)
    img = _open_pil(data, name)
    if img.mode in ("RGB",):
        arr = np.asarray(img)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _to_uint8_grey(np.asarray(img))
        arr = np.repeat(grey[:, :, None], 3, axis=2)
    else:  # L, LA, P, PA, RGBA, CMYK, YCbCr, 1, ...
        arr = np.asarray(img.convert("RGB"))
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(f"{name}: decoded to shape {arr.shape}, expected [H, W, 3]")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def load_mask(
    source: ImageSource,
    size: tuple[int, int] | None = None,  # expected (width, height)
    *,
    threshold: int = 0,
    name: str | None = None,
) -> np.ndarray:
    """Decode a mask image (or a ``.npy`` array) to bool ``[H, W]``: True where the pixel is white / nonzero.

    Colour masks count a pixel as set when its greyscale value is above ``threshold`` (0-255); the official
    Spatia case masks are anti-aliased greyscale PNGs, where "nonzero" also takes the soft edge. Raise
    ``threshold`` (e.g. 127) for JPEG-compressed masks.
    """
    data, name = _read_source(source, name)
    if data.startswith(_NPY_MAGIC):
        arr = _load_npy(data, name)
        if arr.ndim != 2:
            raise InvalidInputError(f"{name}: mask array must be 2-D [H, W], got shape {arr.shape}")
        mask = np.nan_to_num(arr.astype(np.float64)) > (threshold if arr.dtype == np.uint8 else 0)
    else:
        img = _open_pil(data, name)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F", "1", "L"):
            grey = _to_uint8_grey(np.asarray(img))
        else:
            grey = np.asarray(img.convert("L"))
        mask = grey > threshold
    _check_size((mask.shape[1], mask.shape[0]), size, "mask", name)
    return np.ascontiguousarray(mask)


def _load_npy(data: bytes, name: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: cannot read .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise ImageDecodeError(f"{name}: .npy must hold a numeric array, got dtype {getattr(arr, 'dtype', '?')}")
    return arr


def load_depth(
    source: ImageSource,
    expected_size: tuple[int, int] | None = None,  # (width, height)
    *,
    name: str | None = None,
) -> np.ndarray:
    """Decode a depth map to float32 ``[H, W]`` z-depth in metres, 0 = unknown.

    Formats (detected from the bytes, not the file name):
    - ``.npy``: a 2-D array (or ``[H, W, 1]``) in metres;
    - 16-bit PNG: millimetres (the TUM / ScanNet / Kinect convention), 0 = unknown;
    - 32-bit float TIFF: metres.
    NaN and infinite values become 0 (unknown); negative depth is rejected.
    """
    data, name = _read_source(source, name)
    if data.startswith(_NPY_MAGIC):
        arr = _load_npy(data, name)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim != 2:
            raise InvalidInputError(f"{name}: depth array must be 2-D [H, W], got shape {arr.shape}")
        depth = arr.astype(np.float32)
    else:
        img = _open_pil(data, name)
        raw = np.asarray(img)
        if img.mode in ("I;16", "I;16B", "I;16L") or (data.startswith(_PNG_MAGIC) and raw.dtype == np.uint16):
            depth = raw.astype(np.float32) / 1000.0  # millimetres -> metres
        elif img.mode == "I" and data.startswith(_PNG_MAGIC):
            depth = raw.astype(np.float32) / 1000.0  # PIL opens some 16-bit PNGs as 32-bit "I"
        elif img.mode == "F":
            depth = raw.astype(np.float32)
        else:
            raise InvalidInputError(
                f"{name}: depth images must be 16-bit PNG (millimetres) or float TIFF (metres), got mode {img.mode}; "
                "an 8-bit image cannot hold metric depth"
            )
    _check_size((depth.shape[1], depth.shape[0]), expected_size, "depth map", name)
    depth = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
    if (depth < 0).any():
        raise InvalidInputError(f"{name}: depth has negative values (min {float(depth.min()):.3f} m)")
    return np.ascontiguousarray(depth)


# ---------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------


def encode_png(image: np.ndarray, *, compress_level: int = 1) -> bytes:
    """PNG bytes of an RGB uint8 ``[H, W, 3]`` image, a greyscale uint8/uint16 ``[H, W]`` array or a bool mask.

    ``compress_level`` 1 favours speed (frames are encoded on the hot path); 9 is smallest.
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    rgb_u8 = arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    grey = arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16)  # PIL picks mode "L" / "I;16" from the dtype
    if not (rgb_u8 or grey):
        raise InvalidInputError(
            f"encode_png takes uint8 [H, W, 3], uint8/uint16/bool [H, W]; got {arr.dtype} {arr.shape}"
        )
    img = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=int(compress_level))
    return buf.getvalue()


def encode_jpeg(rgb: np.ndarray, *, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 ``[H, W, 3]`` image."""
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InvalidInputError(f"encode_jpeg takes uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    if not 1 <= int(quality) <= 100:
        raise InvalidInputError(f"JPEG quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def depth_to_png16(depth_m: np.ndarray) -> bytes:
    """16-bit PNG bytes of a depth map in millimetres (the format ``load_depth`` reads); > 65.535 m saturates."""
    depth = np.asarray(depth_m, dtype=np.float64)
    if depth.ndim != 2:
        raise InvalidInputError(f"depth must be 2-D [H, W], got shape {depth.shape}")
    mm = np.clip(np.round(np.nan_to_num(depth) * 1000.0), 0, 65535).astype(np.uint16)
    return encode_png(mm)


# ---------------------------------------------------------------------------------------------------------------
# Resizing with intrinsics kept in step
# ---------------------------------------------------------------------------------------------------------------


def _check_target(size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise InvalidInputError(f"target size must be positive, got {w}x{h}")
    return w, h


def resize_rgb(
    rgb: np.ndarray,  # [H, W, 3] uint8
    size: tuple[int, int],  # (width, height)
    intrinsics: Intrinsics | None = None,
) -> tuple[np.ndarray, Intrinsics | None]:
    """Resize an image (area filter when shrinking, bilinear when enlarging) and scale its intrinsics to match."""
    import cv2

    w, h = _check_target(size)
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInputError(f"rgb must be [H, W, 3], got shape {arr.shape}")
    shrinking = w < arr.shape[1] or h < arr.shape[0]
    out = cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return out, (intrinsics.scaled(w, h) if intrinsics is not None else None)


def resize_depth(
    depth_m: np.ndarray,  # [H, W] float32 metres, 0 = unknown
    size: tuple[int, int],  # (width, height)
) -> np.ndarray:
    """Nearest-neighbour resize: depth must not be blended across object edges (that invents floating points)."""
    import cv2

    w, h = _check_target(size)
    arr = np.asarray(depth_m, dtype=np.float32)
    if arr.ndim != 2:
        raise InvalidInputError(f"depth must be 2-D [H, W], got shape {arr.shape}")
    return cv2.resize(arr, (w, h), interpolation=cv2.INTER_NEAREST)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool ``[H, W]`` mask."""
    import cv2

    w, h = _check_target(size)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InvalidInputError(f"mask must be 2-D [H, W], got shape {arr.shape}")
    return cv2.resize(arr.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
