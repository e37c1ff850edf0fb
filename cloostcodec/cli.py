"""The `cloost` command line: a thin layer over the Python API.

torch is imported only inside the commands that need it, so `cloost --help` and `--version` stay
fast. Every failure a user can cause is one line on stderr and a non-zero exit code.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__

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
@click.option("--beam", type=click.IntRange(1), default=1, show_default=True, help="Beam width of the search.")
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
                try:
                    data = bitformat.pack(bitformat.ClstFile(file_id, bits, tuple(row)))
                    emit(data, target, force)
                    batch.note(f"{name} -> {target} ({len(data)} bytes)")
                except Exception as exc:
                    batch.fail(name, exc)
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
            n = parsed.stages if stages is None else stages
            if n > parsed.stages:
                raise ValueError(f"--stages {n}: the file holds only {parsed.stages} stages")
            ready.append((name, target, parsed.indices[:n], loaded))
        except Exception as exc:
            batch.fail(name, exc)
    groups: dict = {}
    for item in ready:
        groups.setdefault((item[3].sha256, len(item[2])), []).append(item)
    import torch

    work = [part for group in groups.values() for part in chunks(group)]
    with progress(work, "decompressing", quiet) as parts:
        for part in parts:
            codes = torch.tensor([indices for _, _, indices, _ in part], dtype=torch.long).view(len(part), -1)
            for (name, target, _, _), pixels in zip(part, codec.decode_codes(codes, part[0][3])):
                try:
                    data = encode_image(to_image(pixels, scale), target if target != "-" else "out.png")
                    emit(data, target, force)
                    batch.note(f"{name} -> {target}")
                except Exception as exc:
                    batch.fail(name, exc)
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
@click.option("--data", required=True, help="IDX folder or file (.gz or raw), .npz, or a folder of images.")
@click.option("--out", required=True, help="Output name: writes OUT.pt, OUT.ckpt and OUT.log.jsonl.")
@click.option("--stages", type=click.IntRange(1, 255), default=10, show_default=True, help="N stages.")
@click.option("--options", type=click.IntRange(2, 65536), default=8, show_default=True, help="K options per stage.")
@click.option("--arch", type=click.Choice(["shuffle", "deconv"]), default="shuffle", show_default=True)
@click.option("--hidden", type=click.IntRange(4), default=128, show_default=True, help="Channels of the refiner.")
@click.option("--core-layers", type=click.IntRange(0), default=4, show_default=True)
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
