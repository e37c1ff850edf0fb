"""`cloost bench`: the numbers it prints are the numbers you get when you measure them yourself."""
import io
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cloostcodec import DEFAULT_BEAM, bench, bitformat, codec
from cloostcodec.cli import main
from cloostcodec.datasets import load_images
from cloostcodec.kmeans import ResidualKMeans
from cloostcodec.modelfile import save_model
from conftest import random_refiner, synthetic_digits

LIMIT = 20
STAGES, OPTIONS = 4, 8  # 3 bits per stage


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(random_refiner(height=28, width=28, stages=STAGES, options=OPTIONS), path)
    return path


def sample_images(limit=LIMIT):
    return load_images(bench.sample_set_path(), split="test").images[:limit]


def run(*args):
    result = CliRunner().invoke(main, ["bench", "--threads", "1", *map(str, args)])
    return result


def parse_table(stdout):
    """{family: {setting: {column: text}}} from the printed table, cut by the dashes under the header."""
    lines = stdout.splitlines()
    dash = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans, pos = [], 0
    for block in lines[dash].split("  "):
        spans.append((pos, pos + len(block)))
        pos += len(block) + 2
    names = [lines[dash - 1][a:b].strip() for a, b in spans]
    table, family = {}, None
    for line in lines[dash + 1:]:
        if not line.strip():
            family = None
            continue
        cells = {name: line[a:b].strip() for name, (a, b) in zip(names, spans)}
        try:
            float(cells["bytes"])
        except ValueError:
            break  # the sentences under the table
        if cells["family"]:
            family = cells["family"]
            table[family] = {}
        table[family][cells["setting"]] = cells
    return table


@pytest.fixture(scope="module")
def bench_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    result = run("-m", tiny_model, "--limit", LIMIT, "--beam", "2", "--qualities", "10,50,90", "--json", out)
    assert result.exit_code == 0, result.output
    return result, parse_table(result.stdout), json.loads(out.read_text())


def test_table_lists_every_stage_prefix_with_exact_sizes(bench_run):
    _, table, _ = bench_run
    rows = table["cloost tiny"]
    assert list(rows) == [f"stages {n}" for n in range(STAGES + 1)]
    for n in range(STAGES + 1):
        bits = n * 3
        assert int(rows[f"stages {n}"]["payload"]) == bits
        assert float(rows[f"stages {n}"]["bytes"]) == 8 + math.ceil(bits / 8) == bitformat.file_size(n, 3)
        assert int(rows[f"stages {n}"]["bits/img"]) == 8 * (8 + math.ceil(bits / 8))
    assert list(table["cloost tiny beam"]) == ["beam 2"]
    assert list(table["JPEG"]) == ["q 10", "q 50", "q 90"]
    assert list(table["WebP"]) == ["q 10", "q 50", "q 90"]
    assert list(table["PNG"]) == ["lossless"]


def test_psnr_matches_an_independent_measurement(bench_run, tiny_model):
    _, table, _ = bench_run
    model = codec.load_model(tiny_model)
    images = sample_images()
    codes = codec.encode_images(list(images), model, beam=1)  # the stage rows are greedy
    for n in (1, STAGES):
        decoded = codec.decode_codes(codes[:, :n], model).astype(np.float64) / 255.0
        mse = np.mean((decoded - images / 255.0) ** 2)
        expected = 10 * math.log10(1 / mse)
        assert float(table["cloost tiny"][f"stages {n}"]["PSNR dB"]) == pytest.approx(expected, abs=0.006)
        assert float(table["cloost tiny"][f"stages {n}"]["MSE"]) == pytest.approx(mse, abs=6e-6)


def test_png_row_is_the_mean_optimised_png_size(bench_run):
    _, table, _ = bench_run
    sizes = []
    for image in sample_images():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", optimize=True)
        sizes.append(len(buffer.getvalue()))
    png = table["PNG"]["lossless"]
    assert float(png["bytes"]) == pytest.approx(np.mean(sizes), abs=0.051)
    assert png["PSNR dB"] == "inf" and png["xPNG"] == "1.0"
    full = table["cloost tiny"][f"stages {STAGES}"]
    assert float(full["xPNG"]) == pytest.approx(np.mean(sizes) / float(full["bytes"]), abs=0.051)


def test_jpeg_row_matches_pillow(bench_run):
    _, table, _ = bench_run
    sizes, errors = [], []
    for image in sample_images():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=50, optimize=True)
        sizes.append(len(buffer.getvalue()))
        back = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))
        errors.append(np.mean(((back.astype(np.float64) - image) / 255.0) ** 2))
    row = table["JPEG"]["q 50"]
    assert float(row["bytes"]) == pytest.approx(np.mean(sizes), abs=0.051)
    assert float(row["PSNR dB"]) == pytest.approx(10 * math.log10(1 / np.mean(errors)), abs=0.006)


def test_beam_row_costs_the_same_bytes_and_does_not_lose_quality(bench_run):
    _, table, _ = bench_run
    greedy, beam = table["cloost tiny"][f"stages {STAGES}"], table["cloost tiny beam"]["beam 2"]
    assert beam["bytes"] == greedy["bytes"]
    assert float(beam["MSE"]) <= float(greedy["MSE"]) + 2e-5


def test_headline_answers_the_question(bench_run):
    result, table, _ = bench_run
    greedy = table["cloost tiny"][f"stages {STAGES}"]["PSNR dB"]
    # only beam 2 was measured, so the headline is about greedy encoding
    assert f"At the PSNR of tiny ({greedy} dB in 10 bytes per image, {STAGES} stages, greedy)" in result.stdout
    assert "JPEG" in result.stdout.split("At the PSNR of tiny")[1]


def test_headline_is_about_the_default_encoder_when_it_was_measured(tiny_model):
    result = run("-m", tiny_model, "--limit", 5, "--beam", f"2,{DEFAULT_BEAM}", "--qualities", "50")
    assert result.exit_code == 0, result.output
    beam = parse_table(result.stdout)["cloost tiny beam"][f"beam {DEFAULT_BEAM}"]["PSNR dB"]
    assert f"At the PSNR of tiny ({beam} dB in 10 bytes per image, {STAGES} stages, beam {DEFAULT_BEAM})" \
        in result.stdout


def test_json_has_the_compressai_like_schema(bench_run, tiny_model):
    _, table, data = bench_run
    assert isinstance(data, list)
    by_name = {item["name"]: item for item in data}
    assert set(by_name) == set(table)
    keys = {"bpp", "bits_per_image", "payload_bits", "psnr", "mse", "encoding_time", "decoding_time"}
    for name, item in by_name.items():
        assert isinstance(item["description"], str) and item["description"]
        results = item["results"]
        assert keys <= set(results)
        for key in keys:
            assert len(results[key]) == len(table[name]), (name, key)
        for bpp, bits in zip(results["bpp"], results["bits_per_image"]):
            assert bpp == pytest.approx(bits / (28 * 28))
        assert all(t > 0 for t in results["encoding_time"] + results["decoding_time"])
    model = by_name["cloost tiny"]["results"]
    assert model["payload_bits"] == [3 * n for n in range(STAGES + 1)]
    assert model["bits_per_image"] == [8 * bitformat.file_size(n, 3) for n in range(STAGES + 1)]
    for psnr, mse in zip(model["psnr"], model["mse"]):
        assert psnr == pytest.approx(10 * math.log10(1 / mse))
    assert by_name["PNG"]["results"]["psnr"] == [None] and by_name["PNG"]["results"]["mse"] == [0.0]


def test_baselines_are_fitted_once_then_cached(tiny_model, tmp_path, monkeypatch):
    train, _ = synthetic_digits(count=300, size=28, prototypes=6)
    train_path = tmp_path / "train.npz"
    np.savez(train_path, images=train)
    cache = tmp_path / "cache"
    args = ("-m", tiny_model, "--limit", 5, "--qualities", "50", "--baselines",
            "--train-data", train_path, "--cache-dir", cache)

    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "fitting on 300 training images" in first.stderr
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns

    def no_refit(*a, **k):
        raise AssertionError("the baseline was fitted again")

    monkeypatch.setattr(ResidualKMeans, "fit", classmethod(no_refit))
    second = run(*args)
    assert second.exit_code == 0, second.output
    assert "using the cached baseline" in second.stderr and "fitting" not in second.stderr
    assert files[0].stat().st_mtime_ns == stamp and list(cache.glob("*.npz")) == files

    # the baseline rows: every stage prefix, the same sizes as the model, the PSNR of the cached fit
    rows = parse_table(second.stdout)[f"k-means {STAGES}x{OPTIONS}"]
    assert list(rows) == [f"stages {n}" for n in range(STAGES + 1)]
    fitted = ResidualKMeans.load(files[0])
    images = sample_images(5)
    x = images.reshape(5, -1).astype(np.float32) / 255.0
    for n in range(STAGES + 1):
        assert float(rows[f"stages {n}"]["bytes"]) == bitformat.file_size(n, 3)
        decoded = np.rint(np.clip(fitted.decode(fitted.encode(x, stages=n)), 0, 1) * 255) / 255.0
        expected = 10 * math.log10(1 / np.mean((decoded - x) ** 2))
        assert float(rows[f"stages {n}"]["PSNR dB"]) == pytest.approx(expected, abs=0.006)
    before = parse_table(first.stdout)[f"k-means {STAGES}x{OPTIONS}"]
    assert [(r["MSE"], r["PSNR dB"]) for r in before.values()] == [(r["MSE"], r["PSNR dB"]) for r in rows.values()]


def test_baselines_without_training_data_is_a_clear_error(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ../shared/data/mnist here
    result = run("-m", tiny_model, "--limit", 2, "--baselines")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--baselines needs --train-data" in result.stderr


def test_plot_writes_a_png(tiny_model, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "rd.png"
    result = run("-m", tiny_model, "--limit", 3, "--qualities", "50", "--plot", target)
    assert result.exit_code == 0, result.output
    with Image.open(target) as im:
        assert im.format == "PNG" and im.width > 300
    before = target.read_bytes()
    again = run("-m", tiny_model, "--limit", 3, "--qualities", "50", "--plot", target)
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert target.read_bytes() == before
    assert run("-m", tiny_model, "--limit", 3, "--qualities", "50", "--plot", target, "-f").exit_code == 0


@pytest.mark.parametrize("data", ["missing-folder", "not-data.txt"])
def test_bad_data_is_one_line_and_exit_1(tiny_model, tmp_path, data):
    (tmp_path / "not-data.txt").write_text("hello")
    result = run("-m", tiny_model, "--data", tmp_path / data)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloost: ") and data in lines[0]
    assert "Traceback" not in result.output


def test_no_model_and_none_bundled(monkeypatch):
    import cloostcodec.modelfile

    monkeypatch.setattr(cloostcodec.modelfile, "bundled_models", lambda: {})
    result = run("--limit", 2)
    assert result.exit_code == 1
    assert "no bundled models" in result.stderr and "--model" in result.stderr


def test_bad_option_values_are_usage_errors(tiny_model):
    assert run("-m", tiny_model, "--qualities", "0,50").exit_code == 2
    assert run("-m", tiny_model, "--beam", "two").exit_code == 2


def test_matching_psnr_interpolates_along_the_pareto_front():
    def row(q, size, psnr):
        return bench.Row(f"q {q}", size, None, 10 ** (-psnr / 10), 0, 0, 0, 0, quality=q)

    sweep = bench.Family("X", "jpeg", "", [row(1, 100, 20), row(2, 110, 19), row(3, 120, 22), row(4, 200, 30)])
    middle = bench.match_psnr(sweep, 26)
    assert middle.bytes == pytest.approx(160) and middle.quality == pytest.approx(3.5)
    assert bench.match_psnr(sweep, 21).bytes == pytest.approx(110)  # 19 dB at 110 bytes is dominated
    low = bench.match_psnr(sweep, 15)
    assert low.lowest and low.bytes == 100
    never = bench.match_psnr(sweep, 31)
    assert never.bytes is None and never.best_psnr == pytest.approx(30)
