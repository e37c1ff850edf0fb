"""truncate, sample, stages, encode-dataset and decode-codes."""
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cloostcodec import bitformat, codec
from cloostcodec.cli import main
from test_cli import SAMPLES, model_path  # noqa: F401  (fixture)


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


@pytest.fixture
def digit(tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray(np.load(SAMPLES)["images"][7]).save(path)
    return path


def test_truncated_file_decodes_like_a_stage_prefix(model_path, digit, tmp_path):
    full = tmp_path / "full.clst"
    assert run("compress", digit, "-o", full, "-m", model_path).exit_code == 0
    short = tmp_path / "short.clst"
    assert run("truncate", full, "--stages", 4, "-o", short).exit_code == 0
    assert len(short.read_bytes()) == bitformat.file_size(4, 3) < len(full.read_bytes())
    assert bitformat.unpack(short.read_bytes()).indices == bitformat.unpack(full.read_bytes()).indices[:4]
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert run("decompress", short, "-o", a, "-m", model_path).exit_code == 0
    assert run("decompress", full, "-o", b, "--stages", 4, "-m", model_path).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    # in place, and never longer than the file
    assert run("truncate", full, "--stages", 2).exit_code == 0
    assert bitformat.unpack(full.read_bytes()).stages == 2
    result = run("truncate", full, "--stages", 3)
    assert result.exit_code == 1 and "holds only 2 stages" in result.output


def test_sampling_is_reproducible_and_writes_files(model_path, tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert run("sample", "-n", 9, "--grid", a, "--seed", 3, "-m", model_path, "--scale", 1).exit_code == 0
    assert run("sample", "-n", 9, "--grid", b, "--seed", 3, "-m", model_path, "--scale", 1).exit_code == 0
    assert run("sample", "-n", 9, "--grid", c, "--seed", 4, "-m", model_path, "--scale", 1).exit_code == 0
    pa, pb, pc = (np.asarray(Image.open(p)) for p in (a, b, c))
    assert np.array_equal(pa, pb) and not np.array_equal(pa, pc)
    assert pa.shape == (3 * 30 + 2, 3 * 30 + 2)
    out = tmp_path / "samples"
    assert run("sample", "-n", 5, "--out-dir", out, "-m", model_path).exit_code == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
    assert Image.open(files[0]).size == (28, 28)
    # the grid tiles are exactly the individual samples
    loaded = codec.load_model(model_path)
    from cloostcodec.pictures import random_codes

    expected = codec.decode_codes(random_codes(loaded, 5, None, 0), loaded)
    assert all(np.array_equal(np.asarray(Image.open(f)), e) for f, e in zip(files, expected))
    assert run("sample", "-n", 5, "--out-dir", out, "-m", model_path).exit_code == 1  # no overwrite


def test_stage_picture_size(model_path, digit, tmp_path):
    out = tmp_path / "stages.png"
    assert run("stages", digit, "-o", out, "-m", model_path, "--scale", 2).exit_code == 0
    tile = 28 * 2 + 2
    assert Image.open(out).size == (11 * tile + 2, tile + 2)
    full = tmp_path / "full.png"
    assert run("stages", digit, "-o", full, "-m", model_path, "--all-options", "--scale", 1).exit_code == 0
    assert Image.open(full).size == (11 * 30 + 2, 11 * 30 + 2)
    # the first tile is the input itself
    picture = np.asarray(Image.open(out).convert("L"))
    first = picture[2:58:2, 2:58:2]
    assert np.array_equal(first, np.asarray(Image.open(digit)))



def test_stage_picture_wraps_many_options_and_frames_the_chosen_ones(tmp_path):
    from cloostcodec.modelfile import LoadedModel
    from cloostcodec.pictures import MARK, OPTIONS_PER_ROW, PAD, STAGE_GAP, stage_picture
    from cloostcodec.search import encode
    from conftest import random_refiner

    refiner = random_refiner(stages=2, options=64)
    model = LoadedModel(refiner, "0" * 64, tmp_path / "wide.pt", {})
    pixels = (np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)
    picture = stage_picture(model, pixels, scale=1, all_options=True)
    tile, rows_per_stage = 8 + PAD, 64 // OPTIONS_PER_ROW
    assert picture.size == (OPTIONS_PER_ROW * tile + PAD, (1 + 2 * rows_per_stage) * tile + 2 * STAGE_GAP + PAD)
    target = refiner.normalise(torch.from_numpy(pixels / 255.0).float()[None, None])
    array = np.asarray(picture)
    for stage, index in enumerate(encode(refiner, target).indices[0].tolist()):
        row = 1 + stage * rows_per_stage + index // OPTIONS_PER_ROW
        x = PAD + (index % OPTIONS_PER_ROW) * tile
        y = PAD + row * tile + (stage + 1) * STAGE_GAP
        assert tuple(array[y - 1, x - 1]) == MARK  # the frame's corner, just outside the tile


def test_encode_dataset_and_decode_codes_round_trip(model_path, tmp_path):
    codes_path = tmp_path / "codes.npy"
    result = run("encode-dataset", "--data", SAMPLES, "-o", codes_path, "-m", model_path, "--stages", 6)
    assert result.exit_code == 0, result.output
    codes = np.load(codes_path)
    assert codes.shape == (200, 6) and codes.dtype == np.uint8
    loaded = codec.load_model(model_path)
    images = np.load(SAMPLES)["images"]
    assert np.array_equal(codes, codec.encode_images(list(images[:200]), loaded, 6).numpy())
    out = tmp_path / "decoded"
    assert run("decode-codes", codes_path, "--out-dir", out, "-m", model_path).exit_code == 0
    decoded = np.asarray(Image.open(out / "00011.png"))
    assert np.array_equal(decoded, codec.decode_codes(torch.from_numpy(codes[11:12].astype(np.int64)), loaded)[0])
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((2, 3), 9))
    result = run("decode-codes", bad, "--out-dir", out, "-m", model_path)
    assert result.exit_code == 1 and "must lie in 0..7" in result.output
