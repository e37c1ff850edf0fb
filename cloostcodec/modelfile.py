"""Save and load trained refiners, and name them by a hash of their content.

A model file is a `torch.save` of plain data only (a config dict, tensors, strings), so it loads
with `weights_only=True` and never runs pickled code. Its identity is the SHA-256 of the config
and the weights; .clst files store the first bytes of it, so a retrained model can never decode
an old file silently.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .refiner import ModelConfig, Refiner

FORMAT_NAME = "cloost-model"
FORMAT_VERSION = 1


class ModelError(Exception):
    """A model that cannot be used; the message is one line naming the file and the problem."""


def content_hash(config: ModelConfig, state: dict) -> str:
    """SHA-256 over the canonical config JSON and each tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(model: Refiner, path: str | Path, extra: dict | None = None) -> str:
    """Write the model atomically; returns its content hash."""
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    sha = content_hash(model.config, state)
    payload = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": model.config.to_dict(),
               "state_dict": state, "sha256": sha, "extra": json.dumps(extra or {})}
    atomic_torch_save(payload, Path(path))
    return sha


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LoadedModel:
    """A refiner in eval mode together with its identity."""

    def __init__(self, refiner: Refiner, sha256: str, path: Path, extra: dict):
        self.refiner = refiner
        self.sha256 = sha256
        self.path = path
        self.extra = extra

    @property
    def config(self) -> ModelConfig:
        return self.refiner.config

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".pt")


def load_model_file(path: str | Path, device: str = "cpu") -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not a model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a readable cloost model (truncated or damaged: {reason[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ModelError(f"{path}: not a cloost model file")
    if payload.get("version") != FORMAT_VERSION:
        raise ModelError(f"{path}: model format version {payload.get('version')} is not supported "
                         f"(this cloost reads version {FORMAT_VERSION})")
    try:
        config = ModelConfig.from_dict(payload["config"])
        refiner = Refiner(config)
        refiner.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: incompatible model ({reason[:160]})") from None
    sha = content_hash(config, payload["state_dict"])
    if sha != payload.get("sha256"):
        raise ModelError(f"{path}: weights do not match their recorded hash (file damaged)")
    refiner.eval().requires_grad_(False)
    return LoadedModel(refiner.to(device), sha, path, json.loads(payload.get("extra") or "{}"))


def bundled_dir() -> Path:
    """The repository's models/ folder, installed as the package `cloostcodec.models`."""
    try:
        from importlib.resources import files

        return Path(str(files("cloostcodec.models")))
    except ModuleNotFoundError:  # running from a source tree that was never installed
        return Path(__file__).resolve().parent.parent / "models"


def bundled_models() -> dict[str, Path]:
    """Name -> path of the models shipped with cloost."""
    return {p.name.removesuffix(".pt"): p for p in sorted(bundled_dir().glob("*.pt"))}


def resolve_model(name_or_path: str | Path) -> Path:
    """A bundled model's name, or a path to a model file."""
    bundled = bundled_models()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    path = Path(name_or_path)
    if path.exists() or path.suffix == ".pt" or os.sep in str(name_or_path):
        return path
    known = ", ".join(bundled) or "none"
    raise ModelError(f"{name_or_path}: no such model (bundled models: {known}; or give a path to a .pt file)")


def load_model(name_or_path: str | Path = "mnist-30b", device: str = "cpu") -> LoadedModel:
    return load_model_file(resolve_model(name_or_path), device)
