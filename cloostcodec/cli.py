"""The `cloost` command line: a thin layer over the Python API.

torch is imported only inside the commands that need it, so `cloost --help` and `--version` stay
fast. Every failure a user can cause is one line on stderr and a non-zero exit code.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import DEFAULT_BEAM, __version__

BATCH = 512


class CloostGroup(click.Group):
    """Turns exceptions into one-line messages instead of tracebacks."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("cloost: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # the last line of defence: never a traceback
            if os.environ.get("CLOOST_DEBUG"):
                raise
            click.echo(f"cloost: {error_text(exc)}", err=True)
            sys.exit(1)


def error_text(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (ValueError, OSError)) or type(exc).__name__.endswith("Error") and message:
        if isinstance(exc, OSError) and exc.filename:
            return f"{exc.filename}: {exc.strerror or message}"
        return message or type(exc).__name__
    return f"internal error: {type(exc).__name__}: {message} (set CLOOST_DEBUG=1 for details)"


@click.group(cls=CloostGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="cloost")
def main():
    """cloost: store small images (MNIST digits and the like) in a few bytes.

    \b
    cloost compress digit.png -o digit.clst
    cloost decompress digit.clst -o digit.png
    cloost bench
    """


def verbosity(func):
    func = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")(func)
    return click.option("-v", "--verbose", is_flag=True, help="Report every file written.")(func)


def model_option(default="mnist-30b"):
    return click.option("-m", "--model", default=default, show_default=True,
                        help="A bundled model name or the path of a model file.")


device_option = click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


class Batch:
    """Per-file outcome bookkeeping for commands that take many inputs and carry on past bad ones."""

    def __init__(self, quiet: bool, verbose: bool):
        self.quiet, self.verbose = quiet, verbose
        self.failures = 0

    def fail(self, name: str, exc: BaseException) -> None:
        self.failures += 1
        from .fileio import FileError

        text = error_text(exc)
        named = isinstance(exc, FileError) or text.startswith(f"{name}:") or text.startswith(f"{name} ")
        click.echo(f"cloost: {text}" if named else f"cloost: {name}: {text}", err=True)

    def deliver(self, name: str, target: str, force: bool, make) -> None:
        """Write what `make()` returns to `target`, or report why not."""
        try:
            data = make()
            emit(data, target, force)
            self.note(f"{name} -> {target} ({len(data)} bytes)")
        except Exception as exc:
            self.fail(name, exc)

    def note(self, message: str) -> None:
        if self.verbose and not self.quiet:
            click.echo(message, err=True)

    def finish(self, total: int) -> None:
        if self.failures:
            if total > 1:
                click.echo(f"cloost: {self.failures} of {total} files failed", err=True)
            sys.exit(1)


def plan_outputs(inputs, output, output_dir, suffix):
    """Where each input goes: a path, '-' for stdout."""
    if output and len(inputs) > 1:
        raise click.UsageError("-o/--output takes one input; use --output-dir for several")
    if output and output_dir:
        raise click.UsageError("give -o/--output or --output-dir, not both")
    if output_dir and not Path(output_dir).is_dir():
        raise click.UsageError(f"--output-dir {output_dir}: no such folder")
    if inputs.count("-") > 1:
        raise click.UsageError("standard input ('-') can be read only once")
    plans = []
    for name in inputs:
        if output:
            plans.append(output)
        elif name == "-":
            plans.append("-")
        else:
            target = Path(name).with_suffix(suffix).name
            plans.append(str(Path(output_dir) / target) if output_dir else str(Path(name).with_suffix(suffix)))
    return plans


def progress(items, label: str, quiet: bool):
    """A progress bar for long batches when stderr is a terminal."""
    if quiet or len(items) < 2 * BATCH or not sys.stderr.isatty():
        return _NoBar(items)
    return click.progressbar(items, label=label, file=sys.stderr)


class _NoBar:
    def __init__(self, items):
        self.items = items

    def __enter__(self):
        return self.items

    def __exit__(self, *exc):
        return False


def chunks(items, size=BATCH):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def stdin_file():
    """Standard input as a named in-memory file, so that messages can say where an image came from."""
    import io

    handle = io.BytesIO(sys.stdin.buffer.read())
    handle.name = "stdin"
    return handle


def emit(data: bytes, target: str, force: bool, binary: bool = True) -> None:
    from .fileio import write_atomic, write_stdout

    if target == "-":
        write_stdout(data, binary)
    else:
        write_atomic(Path(target), data, force)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output file ('-' for standard output).")
@click.option("--output-dir", help="Write NAME.clst files into this folder.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files.")
@model_option()
@click.option("--stages", type=int, help="Store only the first n stages (a smaller, coarser file).")
@click.option("--fit", is_flag=True, help="Convert an arbitrary digit picture to the model's input first.")
@click.option("--beam", type=click.IntRange(1), default=DEFAULT_BEAM, show_default=True,
              help="Beam width of the search (1: greedy, fastest).")
@device_option
@verbosity
def compress(inputs, output, output_dir, force, model, stages, fit, beam, device, quiet, verbose):
    """Compress images (PNG, JPEG, ...; '-' for standard input) to .clst files."""
    from . import bitformat, codec
    from .fileio import check_writable
    from .images import prepare

    plans = plan_outputs(list(inputs), output, output_dir, ".clst")
    loaded = codec.load_model(model, device)
    codec.check_stages(stages, loaded)
    batch = Batch(quiet, verbose)
    ready = []
    for name, target in zip(inputs, plans):
        try:
            if target != "-":
                check_writable(Path(target), force)
            source = stdin_file() if name == "-" else name
            ready.append((name, target, prepare(source, loaded.config.height, loaded.config.width,
                                                fit=fit, model_name=loaded.name)))
        except Exception as exc:
            batch.fail(name, exc)
    file_id, bits = codec.model_id(loaded), loaded.config.bits_per_stage
    with progress(list(chunks(ready)), "compressing", quiet) as parts:
        for part in parts:
            codes = codec.encode_images([pixels for _, _, pixels in part], loaded, stages, beam=beam)
            for (name, target, _), row in zip(part, codes.tolist()):
                batch.deliver(name, target, force, lambda: bitformat.pack(bitformat.ClstFile(file_id, bits, tuple(row))))
    batch.finish(len(inputs))


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output image; the format follows the extension (PNG by default).")
@click.option("--output-dir", help="Write NAME.png files into this folder.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files.")
@click.option("-m", "--model", help="A model file to try besides the bundled ones.")
@click.option("--stages", type=click.IntRange(0), help="Decode only the first n stages (coarser).")
@click.option("--scale", type=click.IntRange(1, 64), default=1, show_default=True, help="Enlarge for viewing.")
@device_option
@verbosity
def decompress(inputs, output, output_dir, force, model, stages, scale, device, quiet, verbose):
    """Decompress .clst files ('-' for standard input) to images."""
    from . import codec
    from .fileio import check_writable, read_input
    from .images import encode_image, to_image

    plans = plan_outputs(list(inputs), output, output_dir, ".png")
    extra = [model] if model else []
    batch = Batch(quiet, verbose)
    ready = []
    for name, target in zip(inputs, plans):
        try:
            if target != "-":
                check_writable(Path(target), force)
            parsed, loaded = codec.parse(read_input(name), extra, device)
            ready.append((name, target, (codec.prefix(parsed, stages), loaded)))
        except Exception as exc:
            batch.fail(name, exc)
    with progress(list(chunks(ready)), "decompressing", quiet) as parts:
        for part in parts:
            for (name, target, _), pixels in zip(part, codec.decode_many([item for _, _, item in part])):
                batch.deliver(name, target, force,
                              lambda: encode_image(to_image(pixels, scale), target if target != "-" else "out.png"))
    batch.finish(len(inputs))


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-m", "--model", help="A model file to look in besides the bundled ones.")
def info(inputs, model):
    """Show the header of .clst files and whether the model they need is available."""
    from . import bitformat
    from .fileio import read_input

    failures = 0
    for name in inputs:
        try:
            fields = bitformat.describe(read_input(name))
        except Exception as exc:
            failures += 1
            click.echo(f"cloost: {name}: {error_text(exc)}", err=True)
            continue
        click.echo(f"{name}:")
        for key, value in fields.items():
            click.echo(f"  {key}: {value}")
        click.echo(f"  model: {describe_model_for(bytes.fromhex(fields['model_id']), model)}")
        if not (fields["crc_ok"] and fields["padding_ok"]):
            failures += 1
            problem = "integrity check failed: the file is corrupted" if not fields["crc_ok"] else "non-zero padding bits"
            click.echo(f"cloost: {name}: {problem}", err=True)
    if failures:
        sys.exit(1)


def describe_model_for(file_id: bytes, extra) -> str:
    from . import codec
    from .modelfile import ModelError

    try:
        found = codec.find_model_for(file_id, [extra] if extra else [])
    except ModelError as exc:
        return f"NOT AVAILABLE ({exc})"
    cfg = found.config
    return f"{found.name} ({found.path}), available; {cfg.stages} stages x {cfg.options} options"


@main.command()
@click.option("--data", required=True, help="IDX folder or file, .npz, or a folder of images.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--limit", type=click.IntRange(1), help="Use only the first N images.")
@click.option("--beam", type=click.IntRange(1), default=DEFAULT_BEAM, show_default=True,
              help="Beam width of the search (1: greedy, fastest).")
@click.option("--json", "json_path", help="Also write the figures as JSON.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing JSON file.")
@model_option()
@device_option
def evaluate(data, split, limit, beam, json_path, force, model, device):
    """Held-out quality of a model: PSNR after every stage and usage entropy per stage."""
    import json
    import math

    import torch

    from . import codec
    from .datasets import load_images, to_unit_float
    from .train import evaluate as evaluate_model

    loaded = codec.load_model(model, device)
    images = load_images(data, split).images[:limit]
    cfg = loaded.config
    if images.shape[1:] != (cfg.height, cfg.width):
        raise ValueError(f"{data}: images are {images.shape[2]}x{images.shape[1]}; "
                         f"{loaded.name} expects {cfg.width}x{cfg.height} grayscale")
    pixels = torch.from_numpy(to_unit_float(images)).to(device)
    result = evaluate_model(loaded.refiner, pixels, beam=beam)
    report = {"model": loaded.name, "sha256": loaded.sha256, "data": str(data), "split": split,
              "images": len(images), "beam": beam, "bits_per_stage": cfg.bits_per_stage, **result}
    click.echo(f"{loaded.name} on {len(images)} images of {data} ({split}), beam {beam}")
    click.echo(f"{'stage':>5} {'bits':>5} {'PSNR dB':>8} {'entropy':>8} {'of ln K':>8} {'used':>5}")
    for i, psnr in enumerate(result["psnr_per_stage"]):
        click.echo(f"{i + 1:>5} {(i + 1) * cfg.bits_per_stage:>5} {psnr:>8.2f} {result['entropy'][i]:>8.3f} "
                   f"{result['entropy_frac'][i]:>8.1%} {result['options_used'][i]:>3}/{cfg.options}")
    click.echo(f"ln K = {math.log(cfg.options):.3f} nats")
    if json_path:
        emit((json.dumps(report, indent=2) + "\n").encode(), json_path, force, binary=False)


@main.command()
@click.argument("input")
@click.option("--stages", type=click.IntRange(0), required=True, help="Keep the first n stages.")
@click.option("-o", "--output", help="Write here instead of rewriting INPUT in place.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing OUTPUT.")
def truncate(input, stages, output, force):
    """Rewrite a .clst file to its first n stages: a valid, smaller, coarser file (no model needed)."""
    from . import bitformat
    from .fileio import read_input

    parsed = bitformat.unpack(read_input(input))
    if stages > parsed.stages:
        raise ValueError(f"--stages {stages}: {input} holds only {parsed.stages} stages")
    data = bitformat.pack(bitformat.truncate(parsed, stages))
    if output is None and input == "-":
        output = "-"
    emit(data, output or input, force=force or output is None)


@main.command()
@click.option("-n", "--count", type=click.IntRange(1, 100000), default=64, show_default=True)
@click.option("--grid", "grid_path", help="Write all samples as one picture.")
@click.option("--out-dir", help="Write each sample as NNNNN.png into this folder.")
@click.option("--columns", type=click.IntRange(1), help="Grid width in tiles (default: square).")
@click.option("--scale", type=click.IntRange(1, 64), default=2, show_default=True, help="Enlarge grid tiles.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stages", type=click.IntRange(0), help="Decode only the first n stages.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files.")
@model_option()
@device_option
def sample(count, grid_path, out_dir, columns, scale, seed, stages, force, model, device):
    """Decode uniformly random codes: what the model thinks an image looks like."""
    from . import codec
    from .pictures import random_codes

    if not grid_path and not out_dir:
        raise click.UsageError("give --grid FILE, --out-dir DIR or both")
    loaded = codec.load_model(model, device)
    codec.check_stages(stages, loaded)
    pixels = codec.decode_codes(random_codes(loaded, count, stages, seed), loaded)
    write_pictures(pixels, grid_path, out_dir, columns, scale, force)


@main.command()
@click.argument("input")
@click.option("-o", "--output", required=True, help="The picture to write (PNG by default).")
@click.option("--all-options", is_flag=True, help="Add a row per stage with all K proposals, the chosen one framed.")
@click.option("--scale", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--fit", is_flag=True, help="Convert an arbitrary digit picture to the model's input first.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
@model_option()
@device_option
def stages(input, output, all_options, scale, fit, force, model, device):
    """Picture the refinement: the input, then the reconstruction after every stage."""
    from . import codec
    from .fileio import check_writable
    from .images import encode_image, prepare
    from .pictures import stage_picture

    if output != "-":
        check_writable(Path(output), force)
    loaded = codec.load_model(model, device)
    pixels = prepare(stdin_file() if input == "-" else input, loaded.config.height, loaded.config.width,
                     fit=fit, model_name=loaded.name)
    picture = stage_picture(loaded, pixels, scale, all_options)
    emit(encode_image(picture, output if output != "-" else "out.png"), output, force)


@main.command("encode-dataset")
@click.option("--data", required=True, help="IDX folder or file, .npz, or a folder of images.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
              help="Which split of an IDX folder or .npz.")
@click.option("-o", "--output", required=True, help="Codes as a .npy array [N, stages].")
@click.option("--stages", type=click.IntRange(0), help="Keep the first n stages.")
@click.option("--beam", type=click.IntRange(1), default=DEFAULT_BEAM, show_default=True,
              help="Beam width of the search (1: greedy, fastest).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
@model_option()
@device_option
@click.option("-q", "--quiet", is_flag=True)
def encode_dataset(data, split, output, stages, beam, force, model, device, quiet):
    """Encode a whole data set to its discrete codes (uint8/uint16 .npy)."""
    import io

    import numpy as np

    from . import codec
    from .datasets import load_images
    from .fileio import check_writable

    check_writable(Path(output), force)
    loaded = codec.load_model(model, device)
    n = codec.check_stages(stages, loaded)
    images = load_images(data, split).images
    cfg = loaded.config
    if images.shape[1:] != (cfg.height, cfg.width):
        raise ValueError(f"{data}: images are {images.shape[2]}x{images.shape[1]}; "
                         f"{loaded.name} expects {cfg.width}x{cfg.height} grayscale")
    dtype = np.uint8 if cfg.options <= 256 else np.uint16
    codes = np.zeros((len(images), n), dtype)
    with progress(list(range(0, len(images), BATCH)), "encoding", quiet or len(images) < 2 * BATCH) as starts:
        for start in starts:
            part = list(images[start:start + BATCH])
            codes[start:start + len(part)] = codec.encode_images(part, loaded, n, beam=beam).numpy()
    buffer = io.BytesIO()
    np.save(buffer, codes)
    emit(buffer.getvalue(), output, force)
    if not quiet:
        click.echo(f"{len(codes)} codes of {n} stages ({n * cfg.bits_per_stage} bits) -> {output}", err=True)


@main.command("decode-codes")
@click.argument("codes_file")
@click.option("--out-dir", help="Write each image as NNNNN.png into this folder.")
@click.option("--grid", "grid_path", help="Write all images as one picture.")
@click.option("--columns", type=click.IntRange(1), help="Grid width in tiles (default: square).")
@click.option("--scale", type=click.IntRange(1, 64), default=1, show_default=True, help="Enlarge grid tiles.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files.")
@model_option()
@device_option
def decode_codes(codes_file, out_dir, grid_path, columns, scale, force, model, device):
    """Decode a .npy array of codes (from encode-dataset) back to images."""
    import numpy as np
    import torch

    from . import codec

    if not grid_path and not out_dir:
        raise click.UsageError("give --out-dir DIR, --grid FILE or both")
    try:
        codes = np.load(codes_file, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{codes_file}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{codes_file}: not a .npy array of codes ({exc})") from None
    loaded = codec.load_model(model, device)
    cfg = loaded.config
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{codes_file}: expected an integer array [N, stages], got {codes.dtype} {list(codes.shape)}")
    if codes.shape[1] > cfg.stages:
        raise ValueError(f"{codes_file}: codes have {codes.shape[1]} stages; {loaded.name} has {cfg.stages}")
    if codes.size and (codes.min() < 0 or codes.max() >= cfg.options):
        raise ValueError(f"{codes_file}: code values must lie in 0..{cfg.options - 1} for {loaded.name}")
    pixels = codec.decode_codes(torch.from_numpy(codes.astype(np.int64)), loaded)
    write_pictures(pixels, grid_path, out_dir, columns, scale, force)


def write_pictures(pixels, grid_path, out_dir, columns, scale, force):
    """A grid picture and/or one PNG per image; checks every target before writing any."""
    from .fileio import check_writable
    from .images import encode_image, to_image
    from .pictures import grid

    targets = []
    if out_dir:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        targets = [folder / f"{i:05d}.png" for i in range(len(pixels))]
        for target in targets:
            check_writable(target, force)
    if grid_path:
        if grid_path != "-":
            check_writable(Path(grid_path), force)
        picture = grid(pixels, columns, scale)
        emit(encode_image(picture, grid_path if grid_path != "-" else "out.png"), grid_path, force)
    for target, tile in zip(targets, pixels):
        emit(encode_image(to_image(tile), str(target)), str(target), force)


@main.command()
@click.option("--data", required=True, help="IDX folder or file (.gz or raw), .npz, or a folder of images.")
@click.option("--out", required=True, help="Output name: writes OUT.pt, OUT.ckpt and OUT.log.jsonl.")
@click.option("--stages", type=click.IntRange(1, 255), default=10, show_default=True, help="N stages.")
@click.option("--options", type=click.IntRange(2, 65536), default=8, show_default=True, help="K options per stage.")
@click.option("--arch", type=click.Choice(["shuffle", "deconv"]), default="shuffle", show_default=True)
@click.option("--hidden", type=click.IntRange(4),
              help="Channels of the refiner  [default: 96, or the --init-from model's; more widens that model]")
@click.option("--core-layers", type=click.IntRange(0), default=3, show_default=True)
@click.option("--steps", type=click.IntRange(1), help="Stop after this many optimiser steps.")
@click.option("--minutes", type=click.FloatRange(0, min_open=True), help="Stop after this much wall time.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True,
              help="cosine decays the learning rate to 0 at --steps.")
@click.option("--alpha", type=click.FloatRange(0), default=0.01, show_default=True,
              help="Weight of the mean loss of all K options.")
@click.option("--shift", type=click.IntRange(0, 8), default=0, show_default=True,
              help="Augment with random shifts of up to this many pixels.")
@click.option("--warmup", type=click.IntRange(0), default=200, show_default=True,
              help="Steps of linear learning-rate warm-up.")
@click.option("--rescue-every", type=click.IntRange(0), default=200, show_default=True,
              help="Move first-stage options that were almost never chosen in this many steps (0: never).")
@click.option("--first-stage-gradient/--no-first-stage-gradient", default=True, show_default=True,
              help="Let later stages' losses train the first stage (off: it learns only to partition the data).")
@click.option("--kmeans-init/--no-kmeans-init", default=True, show_default=True,
              help="Start the first stage's options at k-means centres of the training images.")
@click.option("--init-from", metavar="MODEL",
              help="Start from a trained model (name or .pt); with more --stages, added stages copy its last; "
                   "with fewer, its first stages.")
@click.option("--holdout", type=click.IntRange(0), default=500, show_default=True,
              help="Images held out of training for evaluation.")
@click.option("--eval-every", type=click.IntRange(1), default=500, show_default=True)
@click.option("--checkpoint-minutes", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT.ckpt exactly where it stopped.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads for torch.")
@device_option
@click.option("-q", "--quiet", is_flag=True)
def train(quiet, resume, **options):
    """Train a refiner on a data set."""
    from .train import TrainSettings, train as run_training

    settings = TrainSettings(**options)
    result = run_training(settings, resume=resume, quiet=quiet)
    if not quiet and result:
        click.echo(f"held-out PSNR {result['psnr']:.2f} dB after {result['step']} steps; "
                   f"usage entropy min {min(result['entropy_frac']):.0%} of ln K", err=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A gloo worker thread can still be freeing the last collective's tensors, which needs the
        # GIL; if the interpreter is finalising by then, the rank aborts (SIGABRT) after a successful
        # run (about one run in 60 here; pytorch/pytorch#179291). Everything is written and closed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _int_list(low: int, high: int | None = None):
    """A click callback: "2,4,8" -> (2, 4, 8), every value in low..high."""

    def parse(ctx, param, value):
        if value is None or value == "":
            return ()
        try:
            numbers = tuple(int(part) for part in str(value).replace(" ", "").split(",") if part)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of whole numbers") from None
        bad = [n for n in numbers if n < low or (high is not None and n > high)]
        if bad or not numbers:
            span = f"{low}..{high}" if high is not None else f"at least {low}"
            raise click.BadParameter(f"{value!r}: every value must be {span}")
        return numbers

    return parse


@main.command()
@click.option("--data", help="Test images: an IDX file or folder, an .npz or a folder of images "
                             "[default: the 200 MNIST test digits shipped with cloost].")
@click.option("-m", "--model", "models", multiple=True,
              help="A bundled model name or a model file; repeat for several [default: every bundled model].")
@click.option("--limit", type=click.IntRange(1), help="Use only the first N images.")
@click.option("--baselines", is_flag=True, help="Add residual k-means with the stages and options of each model.")
@click.option("--train-data", help="Training images for --baselines [default: ../shared/data/mnist].")
@click.option("--cache-dir", help="Where fitted baselines are cached [default: ~/.cache/cloost].")
@click.option("--beam", "beams", callback=_int_list(1), default=str(DEFAULT_BEAM), show_default=True,
              help="Beam widths to add at full stages, e.g. 2,4,8 (the stage rows are greedy).")
@click.option("--qualities", callback=_int_list(1, 100), default="5,10,20,30,50,75,90", show_default=True,
              help="JPEG and WebP qualities shown in the table (the headline uses a sweep of 1..100).")
@click.option("--single-images", type=click.IntRange(1), default=20, show_default=True,
              help="Images compressed one at a time for the ms columns.")
@click.option("--json", "json_path", help="Also write the results to this file as JSON (CompressAI-like).")
@click.option("--plot", "plot_path", help="Draw the rate-distortion curves into this PNG (needs matplotlib).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing --json and --plot files.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads for torch.")
@device_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (write --json/--plot only).")
def bench(data, models, limit, baselines, train_data, cache_dir, beams, qualities, single_images, json_path,
          plot_path, force, threads, device, quiet):
    """Measure size, quality and speed against PNG, JPEG, WebP (and k-means with --baselines)."""
    import json

    from . import bench as benchmark
    from .fileio import check_writable, write_atomic

    set_threads(threads)
    for target in (json_path, plot_path):
        if target:
            check_writable(Path(target), force=force)
    if plot_path:
        from . import plot

        plot.check_available()
    log = (lambda message: None) if quiet else (lambda message: click.echo(f"cloost bench: {message}", err=True))
    settings = benchmark.BenchSettings(data=data, models=tuple(models), limit=limit, baselines=baselines,
                                       train_data=train_data, cache_dir=cache_dir, beams=beams,
                                       qualities=qualities, single_images=single_images, device=device)
    runner = benchmark.Benchmark(settings, log=log)
    steps = runner.steps()
    if not quiet and sys.stderr.isatty():
        with click.progressbar(steps, label="benchmarking", file=sys.stderr,
                               item_show_func=lambda step: step.label if step else None) as bar:
            for step in bar:
                step.run()
    else:
        for step in steps:
            step.run()
    result = runner.result()
    if json_path:
        text = json.dumps(result.to_json(), indent=2) + "\n"
        write_atomic(Path(json_path), text.encode(), force=force)
    if plot_path:
        write_atomic(Path(plot_path), plot.render(result), force=force)
    if quiet:
        return
    click.echo(benchmark.format_table(result))
    click.echo("")
    click.echo(benchmark.headline_text(result))
    for note in result.notes:
        log(note)
    for target in (json_path, plot_path):
        if target:
            log(f"wrote {target}")
