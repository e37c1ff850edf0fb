import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cloostcodec import bitformat, codec
from cloostcodec.cli import main
from cloostcodec.modelfile import save_model
from cloostcodec.refiner import ModelConfig, Refiner

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "mnist-test-200.npz"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    refiner = Refiner(ModelConfig(hidden=8, core_layers=1, stages=10, options=8, norm_mean=0.13, norm_std=0.31))
    with torch.no_grad():
        refiner.first_stage_bias.normal_()
    path = tmp_path_factory.mktemp("model") / "tiny28.pt"
    save_model(refiner, path)
    return str(path)


@pytest.fixture
def digits(tmp_path):
    images = np.load(SAMPLES)["images"][:5]
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def one_error_line(result, expected, code=1):
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_compress_searches_with_the_default_beam_and_beam_one_is_greedy(model_path, digits, tmp_path):
    from cloostcodec import DEFAULT_BEAM
    from cloostcodec.search import decode

    loaded = codec.load_model(model_path)
    pixels = [np.asarray(Image.open(path)) for path in digits]
    target = codec.images_to_tensor(pixels, loaded)
    errors = {}
    for beam in (None, 1):
        folder = tmp_path / f"beam{beam}"
        folder.mkdir()
        args = ["compress", *digits, "--output-dir", folder, "-m", model_path] + (["--beam", beam] if beam else [])
        result = run(*args)
        assert result.exit_code == 0, result.output
        codes = torch.tensor([bitformat.unpack((folder / f"{p.stem}.clst").read_bytes()).indices for p in digits])
        assert torch.equal(codes, codec.encode_images(pixels, loaded, beam=beam or DEFAULT_BEAM))
        with torch.inference_mode():
            errors[beam] = (decode(loaded.refiner, codes) - target).pow(2).sum()
    assert DEFAULT_BEAM > 1 and errors[None] <= errors[1]


def test_compress_decompress_round_trip_keeps_indices_byte_exact(model_path, digits, tmp_path):
    out = tmp_path / "d.clst"
    result = run("compress", digits[0], "-o", out, "-m", model_path)
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert len(data) == bitformat.HEADER_SIZE + (10 * 3 + 7) // 8 == 12
    loaded = codec.load_model(model_path)
    expected = codec.encode_images([np.asarray(Image.open(digits[0]))], loaded)[0].tolist()
    parsed = bitformat.unpack(data)
    assert list(parsed.indices) == expected
    assert parsed.model_id == bytes.fromhex(loaded.sha256[:6])
    png = tmp_path / "d.png"
    assert run("decompress", out, "-o", png, "-m", model_path).exit_code == 0
    decoded = np.asarray(Image.open(png))
    assert decoded.shape == (28, 28)
    assert np.array_equal(decoded, codec.decode_codes(torch.tensor([expected]), loaded)[0])


def test_many_inputs_write_beside_each_or_into_output_dir(model_path, digits, tmp_path):
    assert run("compress", *digits, "-m", model_path).exit_code == 0
    assert all(p.with_suffix(".clst").stat().st_size == 12 for p in digits)
    outdir = tmp_path / "out"
    outdir.mkdir()
    result = run("decompress", *[p.with_suffix(".clst") for p in digits], "--output-dir", outdir,
                 "-m", model_path, "--scale", 3)
    assert result.exit_code == 0, result.output
    for p in digits:
        assert Image.open(outdir / (p.stem + ".png")).size == (84, 84)


def test_stages_prefix_makes_smaller_file_and_prefix_decode_matches(model_path, digits, tmp_path):
    short = tmp_path / "short.clst"
    # greedy codes are prefixes of each other (a beam search optimises the n-stage code itself)
    assert run("compress", digits[1], "-o", short, "--stages", 4, "--beam", 1, "-m", model_path).exit_code == 0
    assert len(short.read_bytes()) == 8 + 2
    full = tmp_path / "full.clst"
    assert run("compress", digits[1], "-o", full, "--beam", 1, "-m", model_path).exit_code == 0
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert run("decompress", short, "-o", a, "-m", model_path).exit_code == 0
    assert run("decompress", full, "-o", b, "--stages", 4, "-m", model_path).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    one_error_line(run("decompress", short, "-o", tmp_path / "c.png", "--stages", 5, "-m", model_path),
                   "holds only 4 stages")
    one_error_line(run("compress", digits[1], "-o", tmp_path / "x.clst", "--stages", 11, "-m", model_path),
                   "--stages 11 is outside 0..10")


def test_stdin_and_stdout(model_path, digits):
    result = CliRunner().invoke(main, ["compress", "-", "-m", model_path], input=digits[2].read_bytes())
    assert result.exit_code == 0
    data = result.stdout_bytes
    assert len(data) == 12 and data[0] == bitformat.MAGIC
    result = CliRunner().invoke(main, ["decompress", "-", "-o", "-", "-m", model_path], input=data)
    assert result.exit_code == 0
    assert result.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_format_follows_extension(model_path, digits, tmp_path):
    clst = tmp_path / "d.clst"
    run("compress", digits[0], "-o", clst, "-m", model_path)
    for name, fmt in [("d.jpg", "JPEG"), ("d.webp", "WEBP"), ("d.bmp", "BMP")]:
        assert run("decompress", clst, "-o", tmp_path / name, "-m", model_path).exit_code == 0
        assert Image.open(tmp_path / name).format == fmt


def test_never_overwrites_without_force(model_path, digits, tmp_path):
    out = tmp_path / "d.clst"
    out.write_bytes(b"precious")
    one_error_line(run("compress", digits[0], "-o", out, "-m", model_path), "already exists (use -f to overwrite)")
    assert out.read_bytes() == b"precious"
    assert run("compress", digits[0], "-o", out, "-m", model_path, "-f").exit_code == 0
    assert len(out.read_bytes()) == 12


def test_failed_write_leaves_no_partial_file(model_path, digits, tmp_path, monkeypatch):
    out = tmp_path / "d.clst"

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    one_error_line(run("compress", digits[0], "-o", out, "-m", model_path), "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in digits)


def test_batch_reports_each_bad_file_and_carries_on(model_path, digits, tmp_path):
    notimage = tmp_path / "notes.txt"
    notimage.write_text("hello")
    wrong_size = tmp_path / "big.png"
    Image.new("L", (40, 30)).save(wrong_size)
    result = run("compress", digits[0], notimage, tmp_path / "missing.png", wrong_size, digits[1], "-m", model_path)
    assert result.exit_code == 1
    errors = result.output.strip().splitlines()
    assert len(errors) == 4, result.output
    assert "notes.txt: not an image" in errors[0]
    assert "missing.png: no such file" in errors[1]
    assert "is 40x30" in errors[2] and "expects 28x28" in errors[2] and "--fit" in errors[2]
    assert "3 of 5 files failed" in errors[3]
    assert digits[0].with_suffix(".clst").exists() and digits[1].with_suffix(".clst").exists()


def test_fit_turns_an_arbitrary_picture_into_a_digit(model_path, tmp_path):
    photo = Image.new("RGB", (300, 200), "white")
    photo.paste((0, 0, 0), (40, 30, 60, 180))
    path = tmp_path / "photo.jpg"
    photo.save(path)
    one_error_line(run("compress", path, "-m", model_path), "use --fit")
    assert run("compress", path, "-m", model_path, "--fit").exit_code == 0
    assert path.with_suffix(".clst").stat().st_size == 12


@pytest.fixture
def good_file(model_path, digits, tmp_path):
    out = tmp_path / "good.clst"
    run("compress", digits[0], "-o", out, "-m", model_path)
    return out.read_bytes()


def damaged(kind, good):
    if kind == "not-clst":
        return b"\x89PNG\r\n\x1a\n" + bytes(20)
    if kind == "truncated":
        return good[:-1]
    if kind == "version":
        return bytes([good[0], (2 << 4) | (good[1] & 15)]) + good[2:]
    if kind == "corrupt":
        return good[:9] + bytes([good[9] ^ 4]) + good[10:]
    if kind == "empty":
        return b""
    raise ValueError(kind)


MALFORMED = [("not-clst", "not a .clst file"), ("truncated", "truncated file"),
             ("version", "unsupported .clst format version 2"), ("corrupt", "integrity check failed"),
             ("empty", "empty file")]


@pytest.mark.parametrize("kind, message", MALFORMED)
def test_malformed_files_give_one_line_errors(model_path, good_file, tmp_path, kind, message):
    bad = tmp_path / f"{kind}.clst"
    bad.write_bytes(damaged(kind, good_file))
    one_error_line(run("decompress", bad, "-o", tmp_path / "o.png", "-m", model_path), message)
    assert not (tmp_path / "o.png").exists()
    info = run("info", bad)
    assert info.exit_code == 1 and message in info.stderr and "Traceback" not in info.output


@pytest.mark.parametrize("kind, message", MALFORMED[:3])
def test_malformed_files_via_real_subprocess(model_path, good_file, tmp_path, kind, message):
    bad = tmp_path / f"{kind}.clst"
    bad.write_bytes(damaged(kind, good_file))
    done = subprocess.run([sys.executable, "-m", "cloostcodec", "decompress", str(bad), "-m", model_path],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr


def test_missing_model_is_named(good_file, tmp_path):
    path = tmp_path / "g.clst"
    path.write_bytes(good_file)
    result = run("decompress", path, "-o", tmp_path / "o.png")
    one_error_line(result, f"needs model {good_file[2:5].hex()}, which is not available")
    info = run("info", path)
    assert info.exit_code == 0 and "NOT AVAILABLE" in info.output


def test_info_shows_fields_and_model(model_path, good_file, tmp_path):
    path = tmp_path / "g.clst"
    path.write_bytes(good_file)
    result = run("info", path, "-m", model_path)
    assert result.exit_code == 0
    assert "stages: 10" in result.output and "bits_per_index: 3" in result.output
    assert "tiny28" in result.output and "available" in result.output


def test_input_problems(model_path, digits, tmp_path):
    one_error_line(run("decompress", tmp_path, "-m", model_path), "is a folder")
    one_error_line(run("decompress", tmp_path / "nope.clst", "-m", model_path), "nope.clst: no such file")
    one_error_line(run("compress", digits[0], "-o", tmp_path, "-m", model_path), "is a folder")
    one_error_line(run("compress", digits[0], "-o", tmp_path / "no" / "x.clst", "-m", model_path), "does not exist")
    one_error_line(run("compress", digits[0], "-m", tmp_path / "nomodel.pt"), "model file not found")
    result = run("compress", digits[0], digits[1], "-o", tmp_path / "x.clst", "-m", model_path)
    assert result.exit_code == 2 and "--output-dir" in result.output


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_no_permission_to_write(model_path, digits, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    one_error_line(run("compress", digits[0], "--output-dir", locked, "-m", model_path), "no permission to write")


def test_decoder_fuzz_only_raises_format_errors(model_path, good_file):
    rng = np.random.default_rng(0)
    model = codec.load_model(model_path)
    accepted = 0
    for trial in range(1500):
        if trial % 3 == 0:
            data = bytes(rng.integers(0, 256, rng.integers(0, 20), dtype=np.uint8))
        else:
            data = bytearray(good_file)
            for _ in range(rng.integers(1, 4)):
                data[rng.integers(0, len(data))] ^= 1 << int(rng.integers(0, 8))
            data = bytes(data)
        try:
            image = codec.decompress(data, model=model)
            accepted += data != good_file  # two flips of one bit cancel out
            assert image.size == (28, 28)
        except bitformat.FormatError:
            pass
        except codec.ModelError as exc:
            assert "not available" in str(exc)
    assert accepted == 0  # every real change to a real file is caught by the check


def test_python_api(model_path, digits):
    data = codec.compress(str(digits[0]), model=model_path)
    array = np.asarray(Image.open(digits[0]))
    assert codec.compress(array, model=model_path) == data
    assert codec.compress(Image.open(digits[0]), model=model_path) == data
    image = codec.decompress(data, model=model_path)
    assert image.size == (28, 28) and image.mode == "L"
    batch = codec.compress_batch([array, array], model=model_path)
    assert batch == [data, data]
    assert [np.asarray(i).tolist() for i in codec.decompress_batch(batch, model=model_path)] == [np.asarray(image).tolist()] * 2
