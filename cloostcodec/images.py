"""Turning user pictures into model input, and model output into image files.

Everything here works on plain numpy arrays and PIL images (no torch), so the
command line can validate and convert pictures before any model is loaded.

Conventions:

* a *grayscale* array is ``uint8 [H, W]`` with 0 = black and 255 = white;
* model input follows MNIST: light ink (255) on a dark background (0).

Errors meant for the user are raised as :class:`ImageError`; their message is
a single line that the CLI prints as ``cloost: <message>``.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import PurePath
from typing import Any, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageError",
    "open_image",
    "to_grayscale",
    "prepare",
    "fit_mnist",
    "to_image",
    "encode_image",
    "OUTPUT_FORMATS",
]

#: The MNIST digit box: the longer side of a digit is 20 px in a 28 px field.
_MNIST_BOX = 20
_MNIST_FIELD = 28


class ImageError(ValueError):
    """A problem with a user-supplied picture or output name (one-line message)."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


def _one_line(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------

_UNSUPPORTED_HINTS = {
    ".heic": "HEIC/HEIF photos are not supported; convert it to PNG or JPEG first",
    ".heif": "HEIC/HEIF photos are not supported; convert it to PNG or JPEG first",
    ".avif": "AVIF is not supported by this installation; convert it to PNG or JPEG first",
    ".svg": "SVG is a vector format; export it to PNG first",
    ".pdf": "PDF is not an image; export the page to PNG first",
}


def _source_name(source: Any) -> str:
    """The name to show the user for ``source`` ("image" when it has none)."""
    if isinstance(source, (str, PurePath)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    if isinstance(name, str) and name and not name.startswith("<"):
        return name
    return "image"


def _read_path(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError(f"{path}: no such file (broken link)") from None
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        if os.path.isdir(path):
            raise ImageError(f"{path}: is a folder, not an image") from None
        raise ImageError(f"{path}: cannot read (permission denied)") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _decode(data: bytes, name: str) -> Image.Image:
    if len(data) == 0:
        raise ImageError(f"{name}: empty file, not an image")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        hint = _UNSUPPORTED_HINTS.get(os.path.splitext(name)[1].lower())
        if hint:
            raise ImageError(f"{name}: not a readable image ({hint})") from None
        raise ImageError(f"{name}: not an image (cannot identify image file)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from None
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as exc:
        detail = _one_line(exc) or type(exc).__name__
        raise ImageError(f"{name}: truncated or corrupt image ({detail})") from None
    # Photos from phones are often stored sideways with an EXIF rotation tag.
    try:
        rotated = ImageOps.exif_transpose(image)
        if rotated is not None:
            image = rotated
    except Exception:  # a broken EXIF block must not make a readable image fail
        pass
    return image


def _from_array(array: np.ndarray, name: str = "image") -> Image.Image:
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] in (2, 3, 4):
        mode = {2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    elif arr.ndim == 2:
        mode = "L"
    else:
        raise ImageError(
            f"{name}: array of shape {tuple(arr.shape)} is not an image "
            "(expected [H,W], [H,W,3] or [H,W,4])"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{name}: array of shape {tuple(arr.shape)} is empty")

    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        out = np.rint(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif kind == "f":
        values = arr.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ImageError(f"{name}: float image array contains NaN or infinity")
        lo, hi = float(values.min()), float(values.max())
        if lo < -1e-6 or hi > 1.0 + 1e-6:
            raise ImageError(
                f"{name}: float image array must hold values in [0, 1] "
                f"(found {lo:g} to {hi:g})"
            )
        out = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ImageError(
            f"{name}: unsupported image array dtype {arr.dtype} "
            "(use uint8, uint16, bool, or float in [0, 1])"
        )
    return Image.fromarray(np.ascontiguousarray(out), mode=mode)


def open_image(source: Any) -> Image.Image:
    """Open ``source`` as a fully loaded PIL image.

    ``source`` may be a path (``str`` or ``pathlib.Path``), ``bytes``, a binary
    file-like object, a PIL image, or a numpy array (``uint8`` ``[H,W]``,
    ``[H,W,3]`` or ``[H,W,4]``; ``bool``, ``uint16`` and float arrays in
    ``[0, 1]`` are converted to 8 bits).  Files are read completely and
    closed; EXIF rotation is applied.  Raises :class:`ImageError` with a
    user-facing message for anything that is not a readable image.
    """
    name = _source_name(source)
    if isinstance(source, Image.Image):
        try:
            source.load()
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name}: image too large ({exc})") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            detail = _one_line(exc) or type(exc).__name__
            raise ImageError(f"{name}: truncated or corrupt image ({detail})") from None
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, name)
    if isinstance(source, (str, PurePath)):
        path = os.fspath(source)
        if path == "":
            raise ImageError("no image file given (empty path)")
        return _decode(_read_path(path), path)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), name)
    if hasattr(source, "read"):
        try:
            data = source.read()
        except OSError as exc:
            raise ImageError(f"{name}: cannot read ({_one_line(exc)})") from None
        if isinstance(data, str):
            raise ImageError(f"{name}: opened in text mode; images must be read as binary")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageError(f"{name}: reading gave {type(data).__name__}, not bytes")
        return _decode(bytes(data), name)
    raise ImageError(f"cannot read an image from a {type(source).__name__}")


# --------------------------------------------------------------------------
# Grayscale conversion
# --------------------------------------------------------------------------

def _scale_to_uint8(values: np.ndarray, maximum: float) -> np.ndarray:
    scaled = np.clip(values.astype(np.float64), 0.0, maximum) * (255.0 / maximum)
    return np.rint(scaled).astype(np.uint8)


def _integer_gray(image: Image.Image) -> np.ndarray:
    """16- and 32-bit integer modes, scaled by their bit depth."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        return _scale_to_uint8(values, 65535.0)
    # Mode "I" is a 32-bit container. Pillow uses it for 8-bit data converted
    # with convert("I") and (in some versions and formats) for 16-bit files, so
    # infer the real depth as the smallest of 8/16/32 bits holding the maximum.
    top = float(values.max()) if values.size else 0.0
    for bits in (8, 16):
        if top <= 2**bits - 1:
            return _scale_to_uint8(values, float(2**bits - 1))
    return _scale_to_uint8(values, float(2**31 - 1))


def _float_gray(image: Image.Image) -> np.ndarray:
    """Mode F: values in [0, 1] when nothing exceeds 1, else in [0, 255]."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0,
                           posinf=255.0, neginf=0.0)
    if values.size and float(values.max()) <= 1.0:
        values = values * 255.0
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def to_grayscale(image: Any) -> np.ndarray:
    """Convert a PIL image (any common mode) to ``uint8 [H, W]``.

    Transparent pixels are composited over white first, so dark ink on a
    transparent background reads as dark ink on white paper.  16-bit and
    32-bit integer images are scaled by their bit depth (65535 -> 255), float
    images are read as [0, 1] (or [0, 255] when values exceed 1).
    """
    if not isinstance(image, Image.Image):
        image = open_image(image)
    mode = image.mode
    if mode == "L" and "transparency" not in image.info:
        return np.array(image, dtype=np.uint8)
    if mode == "1":
        return np.array(image.convert("L"), dtype=np.uint8)
    if mode == "I" or mode.startswith("I;"):
        return _integer_gray(image)
    if mode == "F":
        return _float_gray(image)
    if mode == "LAB":  # the L* band is lightness already scaled to 0..255
        return np.array(image.getchannel(0), dtype=np.uint8)

    if mode == "La":  # premultiplied alpha: Pillow only converts it to LA
        image = image.convert("LA")
    try:
        has_alpha = image.has_transparency_data
    except AttributeError:  # pragma: no cover - Pillow < 9.5
        has_alpha = "A" in image.getbands() or "transparency" in image.info
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
            flat = Image.alpha_composite(paper, rgba).convert("RGB")
        elif mode == "RGB":
            flat = image
        else:
            flat = image.convert("RGB")
        gray = flat.convert("L")
    except (ValueError, OSError) as exc:
        raise ImageError(f"cannot convert an image of mode {mode} to grayscale ({exc})") from None
    return np.array(gray, dtype=np.uint8)


# --------------------------------------------------------------------------
# Model input
# --------------------------------------------------------------------------

def prepare(
    image_source: Any,
    height: int = 28,
    width: int = 28,
    fit: bool = False,
    model_name: str = "the model",
) -> np.ndarray:
    """Turn ``image_source`` into the model's ``uint8 [height, width]`` input.

    Mode conversion (colour, alpha, palette, 16-bit) is always silent.  With
    ``fit`` the picture is normalised like MNIST (see :func:`fit_mnist`);
    without it, a picture of another size is an :class:`ImageError`.
    """
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    name = _source_name(image_source)
    gray = to_grayscale(open_image(image_source))
    if fit:
        return fit_mnist(gray, height, width)
    if gray.shape != (height, width):
        h, w = gray.shape
        raise ImageError(
            f"{name} is {w}x{h}; {model_name} expects {width}x{height} grayscale "
            "images (use --fit to convert an arbitrary digit picture)"
        )
    return gray


def _background_level(gray: np.ndarray) -> Tuple[float, np.ndarray]:
    """Background level and the pixels it was judged from.

    Uses the border pixels' median when the border is mostly one level, and
    falls back to the whole image's median when it is not (e.g. a digit
    touching the edges, or a photo that shows the table around the paper).
    """
    h, w = gray.shape
    if h > 2 and w > 2:
        border = np.concatenate([gray[0, :], gray[-1, :], gray[1:-1, 0], gray[1:-1, -1]])
    else:
        border = gray.ravel()
    border = border.astype(np.float64)
    level = float(np.median(border))
    if np.mean(np.abs(border - level) <= 32.0) >= 0.5:
        return level, border
    return float(np.median(gray)), gray.ravel().astype(np.float64)


def _solid(mask: np.ndarray) -> np.ndarray:
    """``mask`` without isolated specks (pixels with < 2 of 8 neighbours set)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    h, w = mask.shape
    neighbours = np.zeros((h, w), dtype=np.uint8)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            neighbours += padded[dy:dy + h, dx:dx + w]
    return mask & (neighbours >= 2)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def fit_mnist(gray: np.ndarray, height: int = 28, width: int = 28) -> np.ndarray:
    """Normalise an arbitrary digit picture the way MNIST was made.

    1. polarity: make the digit light on a dark background (the background
       level comes from the border pixels, or the overall median when the
       border is not uniform; the ink is on the side that departs further from
       it, with "light background means dark ink" as tie-break);
    2. subtract the background and stretch so the background is 0 and the
       strongest ink 255, with a soft threshold that zeroes paper texture and
       JPEG noise;
    3. crop to the ink's bounding box (isolated specks ignored); no ink gives
       an all-zero image;
    4. resize with antialiasing (area averaging when shrinking, bilinear when
       enlarging; no ringing halos), keeping the aspect ratio, so the
       longer side fills a box of round(20/28 * size) (20 px for 28x28);
    5. paste into the canvas so the ink's centre of mass lands at the centre
       ((height-1)/2, (width-1)/2 in pixel indices, i.e. within half a pixel
       after rounding), clamped so the digit stays inside.
    """
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    height, width = int(height), int(width)
    arr = np.asarray(gray)
    if arr.ndim != 2:
        raise ImageError(f"expected a grayscale [H,W] array, got shape {tuple(arr.shape)}")
    canvas = np.zeros((height, width), dtype=np.uint8)
    if arr.size == 0:
        return canvas
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    values = arr.astype(np.float64)
    if arr.dtype.kind == "f" and values.size and np.nanmax(values) <= 1.0:
        values = values * 255.0
    values = np.clip(np.nan_to_num(values), 0.0, 255.0)

    # (1) polarity
    bg, reference = _background_level(values)
    lo, hi = np.percentile(values, [0.05, 99.95])
    dark_extent, light_extent = bg - lo, hi - bg
    if dark_extent > light_extent or (dark_extent == light_extent and bg > 127.5):
        values = 255.0 - values
        bg = 255.0 - bg
        reference = 255.0 - reference

    # (2) background removal and contrast stretch
    ink = np.clip(values - bg, 0.0, None)
    peak = float(ink.max())
    if peak < 24.0:  # nothing stands out from the background
        return canvas
    spread = np.abs(reference - np.median(reference))
    sigma = 1.4826 * float(np.median(spread))  # noise of the background
    floor = max(8.0, 3.0 * sigma)
    candidates = ink[ink > floor]
    strong = float(np.percentile(candidates, 99.0)) if candidates.size else peak
    threshold = max(floor, 0.1 * strong)
    if strong - threshold < 16.0:
        return canvas
    stretched = np.clip((ink - threshold) / (strong - threshold), 0.0, 1.0)

    # (3) crop to the ink
    solid = _solid(stretched > 0.0)
    rows = np.flatnonzero(solid.any(axis=1))
    cols = np.flatnonzero(solid.any(axis=0))
    if rows.size == 0:
        return canvas
    crop = stretched[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    bh, bw = crop.shape

    # (4) resize so the longer side fills the digit box
    box_h = max(1, _round_half_up(_MNIST_BOX / _MNIST_FIELD * height))
    box_w = max(1, _round_half_up(_MNIST_BOX / _MNIST_FIELD * width))
    scale = min(box_h / bh, box_w / bw)
    nh = min(box_h, max(1, _round_half_up(bh * scale)))
    nw = min(box_w, max(1, _round_half_up(bw * scale)))
    # Area averaging when shrinking, bilinear when enlarging: both antialias
    # without the ringing of Lanczos, which leaves faint halos around strokes
    # on the black background.
    shrinking = nh <= bh and nw <= bw
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    resized = Image.fromarray(crop.astype(np.float32), mode="F").resize((nw, nh), resample)
    digit = np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)
    top_value = float(digit.max())
    if top_value <= 0.0:
        return canvas
    digit = np.rint(digit / top_value * 255.0).astype(np.uint8)
    if not digit.any():
        return canvas

    # (5) centre of mass to the canvas centre
    mass = digit.astype(np.float64)
    total = mass.sum()
    cy = float((mass.sum(axis=1) * np.arange(nh)).sum() / total)
    cx = float((mass.sum(axis=0) * np.arange(nw)).sum() / total)
    # The canvas centre in pixel-index coordinates is ((H-1)/2, (W-1)/2),
    # e.g. 13.5 for 28 px: a symmetric 20 px digit then fills rows 4..23.
    top = _round_half_up((height - 1) / 2.0 - cy)
    left = _round_half_up((width - 1) / 2.0 - cx)
    top = min(max(top, 0), max(height - nh, 0))
    left = min(max(left, 0), max(width - nw, 0))
    ph, pw = min(nh, height - top), min(nw, width - left)
    canvas[top:top + ph, left:left + pw] = digit[:ph, :pw]
    return canvas


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def to_image(pixels: np.ndarray, scale: int = 1) -> Image.Image:
    """A grayscale (mode ``L``) PIL image from ``uint8`` or float ``[H, W]``.

    Float pixels are read as [0, 1] (rounded and clipped); ``scale`` >= 1
    enlarges the picture with nearest-neighbour sampling for viewing.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ImageError(f"expected pixels of shape [H,W], got {tuple(arr.shape)}")
    if isinstance(scale, bool) or int(scale) != scale or int(scale) < 1:
        raise ImageError(f"scale must be a whole number >= 1, got {scale!r}")
    scale = int(scale)
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        out = np.rint(np.clip(np.nan_to_num(arr.astype(np.float64)), 0.0, 1.0) * 255.0)
        out = out.astype(np.uint8)
    else:
        raise ImageError(f"unsupported pixel dtype {arr.dtype} (use uint8 or float in [0, 1])")
    if scale > 1:
        out = np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
    return Image.fromarray(np.ascontiguousarray(out), mode="L")


#: Output extension (or format name) -> Pillow format.
OUTPUT_FORMATS = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "webp": "WEBP",
    "bmp": "BMP",
    "gif": "GIF",
    "tif": "TIFF",
    "tiff": "TIFF",
    "pgm": "PPM",
    "pnm": "PPM",
}

# Modes each format stores as they are; anything else is converted.
_KEEP_MODES = {
    "PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "I;16B"},
    "JPEG": {"L", "RGB"},
    "WEBP": {"RGB", "RGBA"},
    "BMP": {"1", "L", "P", "RGB"},
    "GIF": {"L", "P", "RGB"},
    "TIFF": {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "F"},
    "PPM": {"1", "L", "RGB"},
}

_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}


def _output_format(filename_or_format: str) -> Tuple[str, bool]:
    """(Pillow format, whether the output must be grayscale)."""
    text = os.fspath(filename_or_format)
    base = os.path.basename(text.rstrip("/\\")) or text
    if "." in base:
        ext = base.rsplit(".", 1)[1].lower()
        if ext == "":
            return "PNG", False
    elif base.lower() in OUTPUT_FORMATS:
        ext = base.lower()
    else:
        return "PNG", False
    if ext not in OUTPUT_FORMATS:
        supported = ", ".join("." + e for e in OUTPUT_FORMATS)
        raise ImageError(f"unsupported output format .{ext} (use one of {supported})")
    return OUTPUT_FORMATS[ext], ext == "pgm"


def _convert_for(image: Image.Image, fmt: str, gray_only: bool) -> Image.Image:
    keep = _KEEP_MODES[fmt]
    mode = image.mode
    is_gray = mode in _GRAY_MODES or mode.startswith("I;")
    if gray_only:
        return image if mode == "L" else Image.fromarray(to_grayscale(image), mode="L")
    if mode in keep:
        return image
    try:
        has_alpha = image.has_transparency_data
    except AttributeError:  # pragma: no cover - Pillow < 9.5
        has_alpha = "A" in image.getbands() or "transparency" in image.info
    if has_alpha and "RGBA" in keep and not (is_gray and "LA" in keep):
        return image.convert("RGBA")
    if is_gray or has_alpha:
        # to_grayscale composites transparency over white and rescales
        # 16-bit/float data; keep colour for colour pictures with alpha.
        if is_gray:
            flat = Image.fromarray(to_grayscale(image), mode="L")
        else:
            paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
            flat = Image.alpha_composite(paper, image.convert("RGBA")).convert("RGB")
        return flat if flat.mode in keep else flat.convert("RGB")
    return image.convert("RGB")


def encode_image(image: Image.Image, filename_or_format: str) -> bytes:
    """Encode ``image`` in the format named by a file name's extension.

    ``.png``, ``.jpg``/``.jpeg``, ``.webp``, ``.bmp``, ``.gif``,
    ``.tif``/``.tiff`` and ``.pgm``/``.pnm`` are understood (as are those
    words alone, e.g. ``"jpeg"``); a name without an extension gives PNG and
    an unknown extension raises :class:`ImageError`.  PNG, WebP (lossless),
    TIFF and the others are lossless for 8-bit grayscale; JPEG is quality 95.
    """
    fmt, gray_only = _output_format(filename_or_format)
    try:
        out = _convert_for(image, fmt, gray_only)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"cannot convert a {image.mode} image for {fmt} ({_one_line(exc)})") from None
    options = {}
    if fmt == "JPEG":
        options = {"quality": 95}
    elif fmt == "WEBP":
        options = {"lossless": True}
    buffer = io.BytesIO()
    try:
        out.save(buffer, format=fmt, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise ImageError(f"cannot write a {fmt} image ({_one_line(exc)})") from None
    return buffer.getvalue()
