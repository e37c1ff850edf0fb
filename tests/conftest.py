"""Shared fixtures: tiny models and synthetic data sets that train in seconds."""
import numpy as np
import pytest
import torch

from cloostcodec.refiner import ModelConfig, Refiner

torch.set_num_threads(1)


def tiny_config(arch="shuffle", **overrides):
    base = dict(height=8, width=8, stages=4, options=4, hidden=8, core_layers=1, arch=arch,
                norm_mean=0.2, norm_std=0.3)
    base.update(overrides)
    return ModelConfig(**base)


def random_refiner(arch="shuffle", seed=0, **overrides):
    """An untrained refiner whose options differ from each other (random first-stage bias)."""
    torch.manual_seed(seed)
    refiner = Refiner(tiny_config(arch, **overrides))
    with torch.no_grad():
        refiner.first_stage_bias.normal_()
        refiner.output_scale.fill_(1.0)
    return refiner.eval()


def synthetic_digits(count=400, size=8, prototypes=4, seed=0):
    """uint8 images: noisy copies of a few random blob prototypes."""
    rng = np.random.default_rng(seed)
    protos = (rng.random((prototypes, size, size)) > 0.6).astype(np.float32)
    labels = rng.integers(0, prototypes, count)
    images = protos[labels] * rng.uniform(0.6, 1.0, (count, 1, 1)) + rng.normal(0, 0.05, (count, size, size))
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels


@pytest.fixture
def synthetic_npz(tmp_path):
    images, labels = synthetic_digits()
    path = tmp_path / "synthetic.npz"
    np.savez(path, images=images, labels=labels)
    return path
