"""The codec: images -> .clst bytes and back, binding every file to the exact model that made it.

This is the Python API; the CLI is a thin layer over it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from . import DEFAULT_BEAM, bitformat
from .images import prepare, to_image
from .modelfile import LoadedModel, ModelError, bundled_models, load_model_file, resolve_model
from .search import decode, encode

DEFAULT_MODEL = "mnist-30b"
_cache: dict[tuple[str, str], LoadedModel] = {}


def load_model(name_or_path: str | Path | LoadedModel = DEFAULT_MODEL, device: str = "cpu") -> LoadedModel:
    """A bundled model by name (e.g. "mnist-30b") or a model file by path; cached per process."""
    if isinstance(name_or_path, LoadedModel):
        return name_or_path
    path = resolve_model(name_or_path)
    key = (str(path.resolve()), device)
    if key not in _cache:
        _cache[key] = load_model_file(path, device)
    return _cache[key]


def model_id(model: LoadedModel) -> bytes:
    return bitformat.model_id_from_sha256(model.sha256)


def find_model_for(file_id: bytes, candidates: Iterable = (), device: str = "cpu") -> LoadedModel:
    """The model whose id matches a file's: the given candidates first, then the bundled models."""
    tried = []
    for candidate in [*candidates, *bundled_models().values()]:
        model = load_model(candidate, device)
        if model_id(model) == file_id:
            return model
        tried.append(f"{model.name} ({model_id(model).hex()})")
    raise ModelError(f"this file needs model {file_id.hex()}, which is not available "
                     f"(have: {', '.join(tried) or 'none'}); pass --model with the model file that made it")


def check_stages(stages: int | None, model: LoadedModel) -> int:
    total = model.config.stages
    if stages is None:
        return total
    if not 0 <= stages <= total:
        raise ValueError(f"--stages {stages} is outside 0..{total} for model {model.name}")
    return stages


def images_to_tensor(images: list, model: LoadedModel, fit: bool = False) -> torch.Tensor:
    """Images (paths, PIL images, arrays, bytes) -> [B, 1, H, W] model-space tensor."""
    cfg = model.config
    if cfg.channels != 1:
        raise ModelError(f"{model.name}: only grayscale models can compress images from files")
    arrays = [prepare(im, cfg.height, cfg.width, fit=fit, model_name=model.name) for im in images]
    pixels = torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0).unsqueeze(1)
    return model.refiner.normalise(pixels.to(model.refiner.first_stage_bias.device))


@torch.inference_mode()
def encode_images(images: list, model: LoadedModel, stages: int | None = None, fit: bool = False,
                  beam: int = DEFAULT_BEAM) -> torch.Tensor:
    """Images -> codes [B, n] (int64, on the CPU)."""
    stages = check_stages(stages, model)
    if beam < 1:
        raise ValueError("--beam must be at least 1")
    target = images_to_tensor(images, model, fit)
    return encode(model.refiner, target, stages, beam=beam).indices.cpu()


def to_pixels(model: LoadedModel, values: torch.Tensor) -> np.ndarray:
    """Model-space [B, 1, H, W] -> uint8 pixels [B, H, W]."""
    return (model.refiner.denormalise(values)[:, 0] * 255).round().to(torch.uint8).cpu().numpy()


@torch.inference_mode()
def decode_codes(codes: torch.Tensor, model: LoadedModel, batch: int = 1024) -> np.ndarray:
    """Codes [B, n] -> uint8 pixels [B, H, W], decoded `batch` at a time."""
    device = model.refiner.first_stage_bias.device
    parts = [to_pixels(model, decode(model.refiner, codes[i:i + batch].to(device)))
             for i in range(0, len(codes), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.height, model.config.width), np.uint8)


def compress_batch(images: list, model=DEFAULT_MODEL, stages: int | None = None, fit: bool = False,
                   beam: int = DEFAULT_BEAM, device: str = "cpu") -> list[bytes]:
    loaded = load_model(model, device)
    codes = encode_images(images, loaded, stages, fit, beam)
    file_id, bits = model_id(loaded), loaded.config.bits_per_stage
    return [bitformat.pack(bitformat.ClstFile(file_id, bits, tuple(int(i) for i in row))) for row in codes]


def compress(image, model=DEFAULT_MODEL, stages: int | None = None, fit: bool = False, beam: int = DEFAULT_BEAM,
             device: str = "cpu") -> bytes:
    """One image (path, PIL image, uint8 array or encoded bytes) -> .clst bytes."""
    return compress_batch([image], model, stages, fit, beam, device)[0]


def parse(data: bytes, models: Iterable = (), device: str = "cpu") -> tuple[bitformat.ClstFile, LoadedModel]:
    """Read a .clst file and find the model that made it."""
    parsed = bitformat.unpack(data)
    model = find_model_for(parsed.model_id, models, device)
    if parsed.bits != model.config.bits_per_stage or parsed.stages > model.config.stages:
        raise bitformat.FormatError(f"file holds {parsed.stages} stages of {parsed.bits} bits but model "
                                    f"{model.name} has {model.config.stages} stages of {model.config.bits_per_stage} bits")
    return parsed, model


def decode_many(items: list[tuple[tuple, LoadedModel]]) -> list[np.ndarray]:
    """(indices, model) pairs -> uint8 pixels each; codes of one model and length decode as one batch."""
    groups: dict[tuple, list[int]] = {}
    for position, (indices, loaded) in enumerate(items):
        groups.setdefault((loaded.sha256, len(indices)), []).append(position)
    pixels: list = [None] * len(items)
    for positions in groups.values():
        loaded = items[positions[0]][1]
        codes = torch.tensor([items[p][0] for p in positions], dtype=torch.long).view(len(positions), -1)
        for p, decoded in zip(positions, decode_codes(codes, loaded)):
            pixels[p] = decoded
    return pixels


def decompress_batch(datas: list[bytes], stages: int | None = None, model=None, device: str = "cpu") -> list:
    """.clst files -> PIL images; files made by different models may be mixed."""
    items = []
    for data in datas:
        parsed, loaded = parse(data, [model] if model is not None else [], device)
        items.append((prefix(parsed, stages), loaded))
    return [to_image(pixels) for pixels in decode_many(items)]


def prefix(parsed: bitformat.ClstFile, stages: int | None) -> tuple:
    """The first `stages` indices of a file (all when None)."""
    if stages is None:
        return parsed.indices
    if not 0 <= stages <= parsed.stages:
        raise ValueError(f"--stages {stages}: the file holds only {parsed.stages} stages")
    return parsed.indices[:stages]


def decompress(data: bytes, stages: int | None = None, model=None, device: str = "cpu"):
    """.clst bytes -> PIL image (grayscale). `stages` decodes only a prefix of the code."""
    return decompress_batch([data], stages, model, device)[0]
