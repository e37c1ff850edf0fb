"""Read image data sets: MNIST-style IDX files (.gz or raw), .npz archives, or folders of images.

Every loader returns uint8 arrays [N, H, W] (grayscale) or [N, H, W, C], plus labels when the
source has them. Errors are `DataError` with one line naming the file and the problem.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm"}
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


class DataError(Exception):
    """A data set that cannot be used; the message is one line for the user."""


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 [N, H, W] or [N, H, W, C]
    labels: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzipped or raw)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dims = raw[3]
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX payload is {len(raw) - header} bytes, shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(folder: Path, split: str, kind: str) -> Path | None:
    for prefix in SPLIT_PREFIXES[split]:
        for name in (f"{prefix}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte", ):
            for candidate in (folder / (name + ".gz"), folder / name):
                if candidate.is_file():
                    return candidate
    return None


def _load_idx_folder(folder: Path, split: str) -> ImageSet | None:
    images_path = _find_idx(folder, split, "images")
    if images_path is None:
        return None
    images = read_idx(images_path)
    labels_path = _find_idx(folder, split, "labels")
    labels = read_idx(labels_path) if labels_path is not None else None
    if labels is not None and len(labels) != len(images):
        labels = None
    return ImageSet(_as_uint8(images, images_path), labels, str(images_path))


def _load_npz(path: Path, split: str) -> ImageSet:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None
    with archive:
        keys = list(archive.keys())
        names = {"train": ["images", "x_train", "x"], "test": ["images", "x_test", "x"]}[split]
        key = next((k for k in names if k in keys), None)
        if key is None:
            raise DataError(f"{path}: no image array (looked for {', '.join(names)}; found {', '.join(keys) or 'nothing'})")
        images = archive[key]
        label_key = {"images": "labels", "x_train": "y_train", "x_test": "y_test", "x": "y"}[key]
        labels = archive[label_key] if label_key in keys else None
    return ImageSet(_as_uint8(images, path), labels, str(path))


def _load_image_folder(folder: Path) -> ImageSet:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no images or IDX files found in this folder")
    arrays = []
    for file in files:
        try:
            with Image.open(file) as im:
                arrays.append(np.asarray(im.convert("L")))
        except OSError as exc:
            raise DataError(f"{file}: not a readable image ({exc})") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"{folder}: images differ in size ({', '.join(sorted(map(str, shapes)))})")
    return ImageSet(np.stack(arrays), None, str(folder))


def _as_uint8(images: np.ndarray, path: Path) -> np.ndarray:
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise DataError(f"{path}: expected images shaped [N, H, W] or [N, H, W, C], got {list(images.shape)}")
    if len(images) == 0:
        raise DataError(f"{path}: holds no images")
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.min() >= 0 and images.max() <= 1:
            images = np.round(images * 255)
        elif images.min() < 0 or images.max() > 255:
            raise DataError(f"{path}: pixel values must lie in 0..255 (or 0..1 for floats)")
        images = images.astype(np.uint8)
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    return images


def load_images(path: str | Path, split: str = "train") -> ImageSet:
    """Load a data set; for folders holding both splits of an IDX set, `split` picks one."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        found = _load_idx_folder(path, split)
        if found is None and _load_idx_folder(path, "test" if split == "train" else "train") is not None:
            raise DataError(f"{path}: holds no {split} split of IDX files")
        return found if found is not None else _load_image_folder(path)
    name = path.name.lower()
    if name.endswith(".npz"):
        return _load_npz(path, split)
    if "idx" in name or name.endswith(".gz") or name.endswith(".ubyte"):
        return ImageSet(_as_uint8(read_idx(path), path), None, str(path))
    raise DataError(f"{path}: unknown data format (expected an IDX file, .npz or a folder of images)")


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W(, C)] -> float32 [N, C, H, W] in [0, 1]."""
    x = images.astype(np.float32) / 255.0
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
