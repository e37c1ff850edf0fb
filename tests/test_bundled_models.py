"""The shipped models: found by name, as good as their cards say, and the default of `compress`."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cloostcodec import bitformat, codec
from cloostcodec.bench import sample_set_path
from cloostcodec.datasets import load_images, to_unit_float
from cloostcodec.modelfile import bundled_dir, bundled_models
from cloostcodec.train import evaluate

# (name, bits, PSNR floor on the 200 shipped digits, least usage entropy as a fraction of ln K there).
# The floors guard the shipped weights: they measure 17.88 and 19.75 dB greedy on these digits, well
# above residual k-means at the same bits, but under issue #4's targets (see the model cards). With
# 64 options, 200 digits underestimate the entropy by about 0.15 nats.
MODELS = [("mnist-30b", 30, 17.7, 0.9), ("mnist-60b", 60, 19.5, 0.9)]


@pytest.fixture(scope="module")
def sample_pixels():
    images = load_images(sample_set_path(), split="test").images
    return torch.from_numpy(to_unit_float(images))


@pytest.mark.parametrize("name, bits, floor, entropy_frac", MODELS)
def test_bundled_model_meets_its_floor_on_the_sample_digits(name, bits, floor, entropy_frac, sample_pixels):
    assert name in bundled_models()
    model = codec.load_model(name)
    assert model.config.code_bits == bits
    result = evaluate(model.refiner, sample_pixels)
    assert result["psnr"] >= floor
    assert all(a < b for a, b in zip(result["psnr_per_stage"], result["psnr_per_stage"][1:]))
    assert min(result["entropy_frac"]) >= entropy_frac


@pytest.mark.parametrize("name", [name for name, *_ in MODELS])
def test_model_card_names_the_weights_hash(name):
    card = (bundled_dir() / f"{name}.md").read_text()
    model = codec.load_model(name)
    assert re.search(rf"`{model.sha256}`", card)
    assert f"`{bitformat.model_id_from_sha256(model.sha256).hex()}`" in card
    assert "cloost train" in card


def test_default_model_makes_12_byte_files_that_round_trip(sample_pixels):
    image = (sample_pixels[0, 0] * 255).round().to(torch.uint8).numpy()  # [H, W]
    data = codec.compress(image)
    assert len(data) == 12
    target = sample_pixels[0, 0].numpy()
    decoded = np.asarray(codec.decompress(data), dtype=np.float64).reshape(target.shape) / 255

    def psnr(guess):
        return 10 * math.log10(1 / float(((guess - target) ** 2).mean()))

    assert psnr(decoded) > psnr(np.zeros_like(target)) + 5  # far better than a blank picture


def test_format_spec_real_file_is_a_valid_file_of_the_default_model(sample_pixels):
    spec = (Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md").read_text().split("## A real file")[1]
    data = bytes.fromhex(re.search(r"```\n([0-9a-f ]+)\n```", spec).group(1))
    parsed = bitformat.unpack(data)
    assert parsed.model_id == codec.model_id(codec.load_model("mnist-30b"))
    assert f"Indices `{list(parsed.indices)}`" in spec
    # it is the code of the first sample digit: it decodes close to it, as the search found it
    target = sample_pixels[0, 0].numpy()
    decoded = np.asarray(codec.decompress(data), dtype=np.float64) / 255
    found = np.asarray(codec.decompress(codec.compress((target * 255).round().astype(np.uint8))),
                       dtype=np.float64) / 255
    assert ((decoded - target) ** 2).mean() <= ((found - target) ** 2).mean() + 1e-3
