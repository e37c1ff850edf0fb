"""The benchmark behind `cloost bench`: what the codec buys a user, measured against what they have.

On one data set it measures, per image and averaged over the set:

* every cloost model at every stage prefix (encode once, decode each prefix: a rate-distortion
  curve for free), and at full stages with a beam search of each requested width;
* residual k-means ("cluster boosting") with the same stages and options, fitted on training
  data and cached, at every stage prefix too;
* PNG (lossless, optimised), and JPEG and WebP through Pillow into in-memory buffers, at a sweep
  of qualities; a fine sweep 1..100 answers "at cloost's PSNR, how many bytes does JPEG need?".

Sizes are real file sizes (the .clst header included); errors are mean squared errors over all
pixels in [0, 1] of the 8-bit images a user gets back, and PSNR = 10 log10(1 / MSE) of the mean.

The work is split into steps (`Benchmark.steps()`) so that a caller can show progress; this module
knows nothing of click. torch is imported only by the steps that need it.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import DEFAULT_BEAM, bitformat

SAMPLE_SET = "mnist-test-200.npz"
DEFAULT_QUALITIES = (5, 10, 20, 30, 50, 75, 90)
FINE_QUALITIES = tuple(range(1, 101))
DEFAULT_TRAIN_DATA = Path("..") / "shared" / "data" / "mnist"
BATCH = 512
KMEANS_CACHE_VERSION = 1


class BenchError(ValueError):
    """A benchmark that cannot run as asked; the message is one line for the user."""


# ------------------------------------------------------------------------------------------ results

@dataclass
class Row:
    """One rate point: a codec at one setting, averaged over the images."""

    setting: str  # "stages 3", "beam 4", "q 50", "lossless"
    file_bytes: float  # mean bytes of the stored file
    payload_bits: float | None  # code bits without the container (None: not separable)
    mse: float
    encode_s: float  # batch: total encode seconds / images
    decode_s: float
    encode_one_s: float  # one image at a time, model loaded: mean seconds per image
    decode_one_s: float
    stages: int | None = None
    beam: int | None = None
    quality: int | None = None

    @property
    def bits(self) -> float:
        return 8.0 * self.file_bytes

    @property
    def psnr(self) -> float:
        return psnr(self.mse)


@dataclass
class Family:
    """A curve: one codec (a model, a baseline, PNG, JPEG, WebP), one row per rate point."""

    name: str
    kind: str  # "cloost", "beam", "kmeans", "png", "jpeg", "webp"
    description: str
    rows: list[Row] = field(default_factory=list)


@dataclass
class Match:
    """Bytes a classical codec needs for a target mean PSNR, from its fine quality sweep."""

    codec: str
    target_psnr: float
    bytes: float | None  # None: it never gets there
    quality: float | None  # interpolated quality (about)
    best_psnr: float  # the best mean PSNR it reached in the sweep
    lowest: bool = False  # the lowest quality already beats the target: bytes is an upper bound


@dataclass
class Headline:
    model: str
    stages: int
    file_bytes: float
    psnr: float
    matches: list[Match]
    encoder: str  # "greedy", or "beam W" when the codec's default beam was measured


@dataclass
class BenchResult:
    dataset: str
    images: int
    height: int
    width: int
    families: list[Family]
    headlines: list[Headline]
    sweeps: dict[str, Family]  # "JPEG"/"WebP" -> fine sweep 1..100
    notes: list[str]

    @property
    def png_bytes(self) -> float | None:
        for family in self.families:
            if family.kind == "png":
                return family.rows[0].file_bytes
        return None

    def ratio(self, row: Row) -> float | None:
        """PNG bytes / this row's bytes: how many times smaller than lossless PNG."""
        png = self.png_bytes
        return None if png is None or row.file_bytes <= 0 else png / row.file_bytes

    def to_json(self) -> list[dict]:
        """A CompressAI-like list: one object per family, one list entry per rate point."""
        pixels = self.height * self.width
        out = []
        for family in self.families:
            rows = family.rows
            out.append({
                "name": family.name,
                "description": family.description,
                "results": {
                    "bpp": [r.bits / pixels for r in rows],
                    "bits_per_image": [r.bits for r in rows],
                    "payload_bits": [r.payload_bits for r in rows],
                    "psnr": [_finite(r.psnr) for r in rows],
                    "mse": [r.mse for r in rows],
                    "encoding_time": [r.encode_one_s for r in rows],
                    "decoding_time": [r.decode_one_s for r in rows],
                    "encoding_time_batch": [r.encode_s for r in rows],
                    "decoding_time_batch": [r.decode_s for r in rows],
                    "file_bytes": [r.file_bytes for r in rows],
                    "setting": [r.setting for r in rows],
                },
            })
        return out


def psnr(mse: float) -> float:
    """10 log10(1 / MSE) for pixels in [0, 1]; infinite for a lossless codec."""
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def mse_of(original: np.ndarray, decoded: np.ndarray) -> float:
    """Mean squared error over all pixels, both uint8, measured in [0, 1]."""
    diff = (decoded.astype(np.float64) - original.astype(np.float64)) / 255.0
    return float(np.mean(diff * diff))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------- settings

@dataclass
class BenchSettings:
    data: str | None = None  # None: the shipped sample set
    models: tuple[str, ...] = ()  # () : every bundled model
    limit: int | None = None
    baselines: bool = False
    train_data: str | None = None  # None: ../shared/data/mnist if it exists
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/cloost or ~/.cache/cloost
    beams: tuple[int, ...] = ()
    qualities: tuple[int, ...] = DEFAULT_QUALITIES
    single_images: int = 20
    device: str = "cpu"
    kmeans_iterations: int = 20
    seed: int = 0


def sample_set_path() -> Path:
    """The digits shipped with cloost (package `cloostcodec.samples`)."""
    try:
        from importlib.resources import files

        return Path(str(files("cloostcodec.samples"))) / SAMPLE_SET
    except ModuleNotFoundError:  # a source tree that was never installed
        return Path(__file__).resolve().parent.parent / "samples" / SAMPLE_SET


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "cloost"


def load_gray_set(path: str | Path, split: str, what: str) -> tuple[np.ndarray, str]:
    """uint8 [N, H, W] from an IDX file or folder, an .npz or a folder of images."""
    from .datasets import DataError, load_images

    try:
        found = load_images(path, split=split)
    except DataError as exc:
        raise BenchError(f"{what}: {exc}") from None
    images = found.images
    if images.ndim != 3:
        raise BenchError(f"{what}: {path} holds colour images; the benchmark needs grayscale ones")
    return np.ascontiguousarray(images), found.source or str(path)


# ---------------------------------------------------------------------------------------- the bench

@dataclass
class Step:
    label: str
    run: Callable[[], None]


def _chunks(n: int, size: int = BATCH):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class Benchmark:
    """Checks everything it can up front (data, models, training data), then runs in steps."""

    def __init__(self, settings: BenchSettings, log: Callable[[str], None] | None = None):
        self.settings = settings
        self.log = log or (lambda message: None)
        if settings.single_images < 1:
            raise BenchError("--single-images must be at least 1")
        if any(w < 1 for w in settings.beams):
            raise BenchError("--beam widths must be at least 1")
        if any(not 1 <= q <= 100 for q in settings.qualities):
            raise BenchError("--qualities must lie in 1..100")

        data_path = Path(settings.data) if settings.data else sample_set_path()
        images, self.dataset = load_gray_set(data_path, "test", "--data")
        if settings.limit is not None:
            if settings.limit < 1:
                raise BenchError("--limit must be at least 1")
            images = images[:settings.limit]
        self.images = images
        self.height, self.width = images.shape[1:]

        self.models = self._load_models()
        self.train_path = self._train_path() if settings.baselines else None
        self.families: list[Family] = []
        self.model_curves: list[tuple[Family, Family | None]] = []  # per model: (stage prefixes, beams)
        self.sweeps: dict[str, Family] = {}
        self.notes: list[str] = []
        self._codes: dict[str, object] = {}
        self._baselines: dict[tuple[int, int], object] = {}
        self._train_images: np.ndarray | None = None
        self._train_digest: str | None = None

    # ---------------------------------------------------------------- set-up

    def _load_models(self) -> list:
        from . import codec
        from .modelfile import bundled_models

        names = list(self.settings.models)
        if not names:
            names = list(bundled_models())
            if not names:
                raise BenchError("no bundled models are installed; pass -m/--model PATH.pt")
        loaded = []
        for name in names:
            model = codec.load_model(name, self.settings.device)
            cfg = model.config
            if cfg.channels != 1:
                raise BenchError(f"model {model.name}: only grayscale models can be benchmarked")
            if (cfg.height, cfg.width) != (self.height, self.width):
                raise BenchError(f"model {model.name} takes {cfg.width}x{cfg.height} images but the data "
                                 f"set holds {self.width}x{self.height} ones")
            if any(m.sha256 == model.sha256 for m in loaded):
                continue  # the same model twice (by name and by path)
            loaded.append(model)
        return loaded

    def _train_path(self) -> Path:
        given = self.settings.train_data
        if given:
            path = Path(given)
            if not path.exists():
                raise BenchError(f"--train-data {given}: no such file or folder")
            return path
        if DEFAULT_TRAIN_DATA.exists():
            return DEFAULT_TRAIN_DATA
        raise BenchError(f"--baselines needs --train-data PATH (training images for the k-means baseline; "
                         f"the default {DEFAULT_TRAIN_DATA} does not exist here)")

    # ---------------------------------------------------------------- plan

    def steps(self) -> list[Step]:
        """Every unit of work, in order; run each one's `run()` then call `result()`."""
        plan: list[Step] = []
        for model in self.models:
            family = Family(f"cloost {model.name}", "cloost", _model_description(model))
            self.families.append(family)
            plan.append(Step(f"{model.name}: encode", lambda m=model, f=family: self._encode_full(m, f)))
            for n in range(model.config.stages + 1):
                plan.append(Step(f"{model.name}: {n} stages",
                                 lambda m=model, f=family, n=n: self._cloost_prefix(m, f, n)))
            beams = None
            if self.settings.beams:
                beams = Family(f"cloost {model.name} beam", "beam",
                               f"{_model_description(model)}; full stages, beam search of width W")
                self.families.append(beams)
                for width in self.settings.beams:
                    plan.append(Step(f"{model.name}: beam {width}",
                                     lambda m=model, f=beams, w=width: self._cloost_beam(m, f, w)))
            self.model_curves.append((family, beams))
        if self.train_path is not None:
            configs = []
            for model in self.models:
                key = (model.config.stages, model.config.options)
                if key not in configs:
                    configs.append(key)
            for stages, options in configs:
                family = Family(f"k-means {stages}x{options}", "kmeans",
                                f"residual k-means (cluster boosting), {stages} stages x {options} options, "
                                f"fitted on {self.train_path}; stored in the .clst container")
                self.families.append(family)
                plan.append(Step(f"k-means {stages}x{options}: fit",
                                 lambda s=stages, k=options: self._fit_baseline(s, k)))
                for n in range(stages + 1):
                    plan.append(Step(f"k-means {stages}x{options}: {n} stages",
                                     lambda s=stages, k=options, f=family, n=n: self._baseline_prefix(s, k, f, n)))
        png = Family("PNG", "png", "PNG through Pillow, lossless, optimize=True")
        self.families.append(png)
        plan.append(Step("PNG", lambda: self._pillow(png, "PNG", None)))
        from PIL import features

        codecs = [("JPEG", "jpeg", "JPEG through Pillow, grayscale, optimize=True, quality q")]
        if features.check("webp"):
            codecs.append(("WebP", "webp", "lossy WebP through Pillow (libwebp), method=6, quality q"))
        else:
            self.notes.append("WebP skipped: this Pillow was built without WebP support")
        for name, kind, description in codecs:
            table = Family(name, kind, description)
            sweep = Family(name, kind, description)
            self.families.append(table)
            self.sweeps[name] = sweep
            for quality in FINE_QUALITIES:
                plan.append(Step(f"{name} q {quality}", lambda f=sweep, n=name, q=quality: self._pillow(
                    f, "WEBP" if n == "WebP" else n, q)))
            plan.append(Step(f"{name}: table", lambda t=table, s=sweep: self._select_qualities(t, s)))
        return plan

    def run(self, on_step: Callable[[Step], None] | None = None) -> BenchResult:
        for step in self.steps():
            step.run()
            if on_step is not None:
                on_step(step)
        return self.result()

    def result(self) -> BenchResult:
        headlines = []
        for model, (family, beams) in zip(self.models, self.model_curves):
            # what `cloost compress` makes: the default beam's row when it was measured
            default = next((row for row in (beams.rows if beams else []) if row.beam == DEFAULT_BEAM), None)
            full = family.rows[-1] if default is None else default
            encoder = "greedy" if default is None else f"beam {DEFAULT_BEAM}"
            matches = [match_psnr(sweep, full.psnr) for sweep in self.sweeps.values()]
            headlines.append(Headline(model.name, model.config.stages, full.file_bytes, full.psnr, matches,
                                      encoder))
        return BenchResult(self.dataset, len(self.images), self.height, self.width, self.families,
                           headlines, self.sweeps, self.notes)

    # ---------------------------------------------------------------- cloost

    def _encode_batched(self, model, stages=None, beam=1):
        import torch

        from . import codec

        images = list(self.images)
        start = time.perf_counter()
        parts = [codec.encode_images(images[s], model, stages, beam=beam) for s in _chunks(len(images))]
        codes = torch.cat(parts) if parts else torch.zeros(0, 0, dtype=torch.long)
        return codes, (time.perf_counter() - start) / len(images)

    def _decode_batched(self, model, codes):
        from . import codec

        start = time.perf_counter()
        out = np.concatenate([codec.decode_codes(codes[s], model) for s in _chunks(len(codes))])
        return out, (time.perf_counter() - start) / len(codes)

    def _single(self, model, stages=None, beam=1) -> tuple[float, float]:
        """Mean seconds to compress one image to .clst bytes, and to decompress it."""
        from . import codec

        count = min(self.settings.single_images, len(self.images))
        encode_total = decode_total = 0.0
        for image in self.images[:count]:
            start = time.perf_counter()
            data = codec.compress(image, model=model, stages=stages, beam=beam, device=self.settings.device)
            middle = time.perf_counter()
            codec.decompress(data, model=model, device=self.settings.device)
            encode_total += middle - start
            decode_total += time.perf_counter() - middle
        return encode_total / count, decode_total / count

    def _encode_full(self, model, family: Family) -> None:
        from . import codec

        # warm up (first-call allocations, lazy initialisation) so that no row pays for it
        codec.decode_codes(codec.encode_images(list(self.images[:2]), model), model)
        codes, encode_s = self._encode_batched(model)
        self._codes[model.sha256] = (codes, encode_s)

    def _cloost_prefix(self, model, family: Family, n: int) -> None:
        codes, full_encode_s = self._codes[model.sha256]
        if n == model.config.stages:
            encode_s = full_encode_s
        else:  # time an encode of n stages; greedy codes of n stages are a prefix of the full ones
            prefix, encode_s = self._encode_batched(model, n)
            differ = int((prefix != codes[:, :n]).any(dim=1).sum())
            if differ:
                self.notes.append(f"{model.name}: encoding {n} stages gave codes that differ from the "
                                  f"first {n} indices of the full code for {differ} images")
        decoded, decode_s = self._decode_batched(model, codes[:, :n])
        encode_one, decode_one = self._single(model, n)
        bits = model.config.bits_per_stage
        family.rows.append(Row(f"stages {n}", bitformat.file_size(n, bits), n * bits,
                               mse_of(self.images, decoded), encode_s, decode_s, encode_one, decode_one,
                               stages=n))

    def _cloost_beam(self, model, family: Family, width: int) -> None:
        codes, encode_s = self._encode_batched(model, beam=width)
        decoded, decode_s = self._decode_batched(model, codes)
        encode_one, decode_one = self._single(model, beam=width)
        n, bits = model.config.stages, model.config.bits_per_stage
        family.rows.append(Row(f"beam {width}", bitformat.file_size(n, bits), n * bits,
                               mse_of(self.images, decoded), encode_s, decode_s, encode_one, decode_one,
                               stages=n, beam=width))

    # ---------------------------------------------------------------- residual k-means

    def _training_images(self) -> tuple[np.ndarray, str]:
        if self._train_images is None:
            images, _ = load_gray_set(self.train_path, "train", "--train-data")
            if images.shape[1:] != (self.height, self.width):
                raise BenchError(f"--train-data {self.train_path} holds {images.shape[2]}x{images.shape[1]} "
                                 f"images, the data set {self.width}x{self.height} ones")
            digest = hashlib.sha256()
            digest.update(f"{images.dtype}|{list(images.shape)}".encode())
            digest.update(images.tobytes())
            self._train_images, self._train_digest = images, digest.hexdigest()
        return self._train_images, self._train_digest

    def baseline_cache_path(self, stages: int, options: int) -> Path:
        """Where the baseline for (stages, options) on this training data is cached."""
        from .kmeans import FORMAT_VERSION

        _, data_digest = self._training_images()
        key = json.dumps({"data": data_digest, "stages": stages, "options": options,
                          "iterations": self.settings.kmeans_iterations, "seed": self.settings.seed,
                          "format": FORMAT_VERSION, "cache": KMEANS_CACHE_VERSION}, sort_keys=True)
        name = f"kmeans-{stages}x{options}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
        cache = Path(self.settings.cache_dir).expanduser() if self.settings.cache_dir else default_cache_dir()
        return cache / name

    def _fit_baseline(self, stages: int, options: int) -> None:
        from .kmeans import ResidualKMeans

        path = self.baseline_cache_path(stages, options)
        if path.exists():
            try:
                fitted = ResidualKMeans.load(path)
                if (fitted.stages, fitted.options, fitted.dim) == (stages, options, self.height * self.width):
                    self._baselines[(stages, options)] = fitted
                    self.log(f"k-means {stages}x{options}: using the cached baseline {path}")
                    return
            except ValueError as exc:
                self.log(f"k-means {stages}x{options}: ignoring a damaged cache file ({exc})")
        images, _ = self._training_images()
        self.log(f"k-means {stages}x{options}: fitting on {len(images)} training images "
                 f"(cached afterwards in {path})")
        data = images.reshape(len(images), -1).astype(np.float32) / 255.0
        fitted = ResidualKMeans.fit(data, stages, options, iterations=self.settings.kmeans_iterations,
                                    seed=self.settings.seed)
        try:
            fitted.save(path)
        except OSError as exc:
            self.log(f"k-means {stages}x{options}: could not cache the baseline in {path} ({exc.strerror or exc})")
        self._baselines[(stages, options)] = fitted

    def _baseline_prefix(self, stages: int, options: int, family: Family, n: int) -> None:
        fitted = self._baselines[(stages, options)]
        bits = max(1, (options - 1).bit_length())
        model_id = bytes.fromhex(self._train_digest)[:bitformat.MODEL_ID_SIZE]
        count = len(self.images)

        start = time.perf_counter()
        codes = fitted.encode(self.images.reshape(count, -1).astype(np.float32) / 255.0, stages=n)
        encode_s = (time.perf_counter() - start) / count
        start = time.perf_counter()
        decoded = _kmeans_pixels(fitted.decode(codes), self.height, self.width)
        decode_s = (time.perf_counter() - start) / count

        singles = min(self.settings.single_images, count)
        encode_total = decode_total = 0.0
        for image in self.images[:singles]:
            start = time.perf_counter()
            row = fitted.encode(image.reshape(1, -1).astype(np.float32) / 255.0, stages=n)[0]
            data = bitformat.pack(bitformat.ClstFile(model_id, bits, tuple(int(i) for i in row)))
            middle = time.perf_counter()
            parsed = bitformat.unpack(data)
            _kmeans_pixels(fitted.decode(np.array([parsed.indices], dtype=np.int64).reshape(1, -1)),
                           self.height, self.width)
            encode_total += middle - start
            decode_total += time.perf_counter() - middle
        family.rows.append(Row(f"stages {n}", bitformat.file_size(n, bits), n * bits,
                               mse_of(self.images, decoded), encode_s, decode_s,
                               encode_total / singles, decode_total / singles, stages=n))

    # ---------------------------------------------------------------- Pillow codecs

    def _pillow(self, family: Family, fmt: str, quality: int | None) -> None:
        from PIL import Image

        options = {"optimize": True} if fmt in ("PNG", "JPEG") else {"method": 6}
        if quality is not None:
            options["quality"] = quality
        Image.fromarray(self.images[0]).save(io.BytesIO(), format=fmt, **options)  # warm up
        sizes = np.empty(len(self.images))
        decoded = np.empty_like(self.images)
        encode_total = decode_total = 0.0
        for i, image in enumerate(self.images):
            start = time.perf_counter()
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format=fmt, **options)
            data = buffer.getvalue()
            middle = time.perf_counter()
            with Image.open(io.BytesIO(data)) as opened:
                decoded[i] = np.asarray(opened.convert("L"))
            encode_total += middle - start
            decode_total += time.perf_counter() - middle
            sizes[i] = len(data)
        count = len(self.images)
        setting = "lossless" if quality is None else f"q {quality}"
        family.rows.append(Row(setting, float(sizes.mean()), None, mse_of(self.images, decoded),
                               encode_total / count, decode_total / count, encode_total / count,
                               decode_total / count, quality=quality))

    def _select_qualities(self, table: Family, sweep: Family) -> None:
        by_quality = {row.quality: row for row in sweep.rows}
        table.rows.extend(by_quality[q] for q in sorted(set(self.settings.qualities)))


def _kmeans_pixels(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Unclipped k-means reconstructions in [0, 1] -> the uint8 images a user gets back."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(-1, height, width)


def _model_description(model) -> str:
    cfg = model.config
    return (f"cloost model {model.name} (sha256 {model.sha256[:12]}), {cfg.stages} stages x {cfg.options} "
            f"options = {cfg.code_bits} code bits, {cfg.arch} refiner, hidden {cfg.hidden}; "
            f"greedy encoding, each stage prefix of one code")


# ------------------------------------------------------------------------------------ the headline

def match_psnr(sweep: Family, target: float) -> Match:
    """Mean bytes a codec needs for mean PSNR `target`, interpolated along its sweep.

    Only the Pareto front counts (the cheapest way to each PSNR: a point that costs more bytes
    than another without a higher PSNR is dropped); between two neighbouring points of the front,
    bytes are interpolated linearly in PSNR.
    """
    points = sorted((row.file_bytes, row.psnr, row.quality) for row in sweep.rows)
    front: list[tuple[float, float, int]] = []
    for point in points:
        if not front or point[1] > front[-1][1]:
            front.append(point)
    best = max(p[1] for p in front) if front else -math.inf
    if not front or target > best:
        return Match(sweep.name, target, None, None, best)
    if target <= front[0][1]:
        return Match(sweep.name, target, front[0][0], front[0][2], best, lowest=True)
    for (b0, p0, q0), (b1, p1, q1) in zip(front, front[1:]):
        if p0 < target <= p1:
            t = (target - p0) / (p1 - p0)
            return Match(sweep.name, target, b0 + t * (b1 - b0), q0 + t * (q1 - q0), best)
    raise AssertionError("unreachable: the target lies within the front")  # pragma: no cover


def headline_text(result: BenchResult) -> str:
    """A few sentences: at each model's PSNR, how many bytes JPEG and WebP need."""
    lines = []
    for h in result.headlines:
        parts = []
        for m in h.matches:
            if m.bytes is None:
                parts.append(f"{m.codec} never gets there (its best, quality 100, is {m.best_psnr:.2f} dB)")
            elif m.lowest:
                parts.append(f"{m.codec} beats it even at its smallest files (quality {m.quality:.0f}), "
                             f"which take {m.bytes:.1f} bytes ({m.bytes / h.file_bytes:.1f}x as many)")
            else:
                parts.append(f"{m.codec} needs {m.bytes:.1f} bytes ({m.bytes / h.file_bytes:.1f}x as many, "
                             f"about quality {m.quality:.0f})")
        sentence = (f"At the PSNR of {h.model} ({h.psnr:.2f} dB in {h.file_bytes:.0f} bytes per image, "
                    f"{h.stages} stages, {h.encoder})")
        if parts:
            sentence += ", " + "; ".join(parts) + "."
        else:
            sentence += ": no classical codec was measured."
        lines.append(sentence)
    png = result.png_bytes
    if png is not None:
        lines.append(f"Lossless PNG takes {png:.1f} bytes per image.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- the table

COLUMNS = ("family", "setting", "bytes", "bits/img", "payload", "xPNG", "MSE", "PSNR dB",
           "enc img/s", "dec img/s", "enc ms", "dec ms")


def _rate(seconds: float) -> str:
    return f"{1.0 / seconds:,.0f}" if seconds > 0 else "-"


def table_rows(result: BenchResult) -> list[list[str]]:
    """The table's cells: one list per row, a blank row between families."""
    cells = []
    for family in result.families:
        if cells:
            cells.append([""] * len(COLUMNS))
        for i, row in enumerate(family.rows):
            ratio = result.ratio(row)
            cells.append([
                family.name if i == 0 else "",
                row.setting,
                f"{row.file_bytes:.1f}",
                f"{row.bits:.0f}",
                "-" if row.payload_bits is None else f"{row.payload_bits:.0f}",
                "-" if ratio is None else f"{ratio:.1f}",
                f"{row.mse:.5f}",
                "inf" if math.isinf(row.psnr) else f"{row.psnr:.2f}",
                _rate(row.encode_s),
                _rate(row.decode_s),
                f"{row.encode_one_s * 1e3:.2f}",
                f"{row.decode_one_s * 1e3:.2f}",
            ])
    return cells


def format_table(result: BenchResult) -> str:
    cells = table_rows(result)
    widths = [max(len(c) for c in [name, *(row[i] for row in cells)]) for i, name in enumerate(COLUMNS)]
    left = {0, 1}

    def line(values):
        return "  ".join(v.ljust(w) if i in left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    header = (f"{result.images} images ({result.width}x{result.height}) from {result.dataset}; "
              f"bytes and bits are per image, header included; xPNG = PNG bytes / bytes; "
              f"img/s: batches; ms: one image, model loaded")
    return "\n".join([header, "", line(COLUMNS), line(["-" * w for w in widths]),
                      *(line(row) for row in cells)])
