"""How long a user waits for the `cloost` command itself: start-up and one-image compression.

Each command runs in a fresh subprocess (so every run pays for starting Python and importing
what it needs, as a user does); the table shows the median, the fastest and the slowest of
--runs runs, after one untimed run that warms the file system cache.

    python benchmarks/startup.py [--runs 7] [--model NAME_OR_PATH.pt]

Without --model it uses the first bundled model, or else a small untrained model written to a
temporary folder (start-up and search cost do not depend on the weights' values).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cloost_command() -> list[str]:
    """The installed `cloost` script next to this Python, else `python -m cloostcodec`."""
    beside = Path(sys.executable).with_name("cloost")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("cloost")
    return [found] if found else [sys.executable, "-m", "cloostcodec"]


def wall_times(command: list[str], runs: int) -> list[float]:
    subprocess.run(command, check=True, capture_output=True)  # warm-up, untimed
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def pick_model(given: str | None, folder: Path) -> tuple[str, str]:
    """(model argument, how it was chosen)."""
    if given:
        return given, "given"
    from cloostcodec.modelfile import bundled_models

    bundled = bundled_models()
    if bundled:
        name = next(iter(bundled))
        return name, "bundled"
    from cloostcodec.modelfile import save_model
    from cloostcodec.refiner import ModelConfig, Refiner

    path = folder / "untrained.pt"
    save_model(Refiner(ModelConfig()), path)  # the default architecture, untrained
    return str(path), "untrained, default architecture (no model is bundled)"


def sample_digit(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    from cloostcodec.bench import sample_set_path

    with np.load(sample_set_path()) as archive:
        image = archive["images"][0]
    path = folder / "digit.png"
    Image.fromarray(image).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command (default 7)")
    parser.add_argument("--model", help="model name or .pt for the compress run")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    cloost = cloost_command()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, how = pick_model(args.model, folder)
        digit = sample_digit(folder)
        output = folder / "digit.clst"
        cases = [
            ("cloost --version", [*cloost, "--version"]),
            ("cloost --help", [*cloost, "--help"]),
            ("python -c 'import torch'", [sys.executable, "-c", "import torch"]),  # the floor of any command that runs a model
            ("cloost compress (1 image)", [*cloost, "compress", str(digit), "-o", str(output), "-f",
                                           "-m", model]),
            ("cloost decompress (1 file)", [*cloost, "decompress", str(output), "-o", str(folder / "back.png"),
                                            "-f"]),
        ]
        print(f"{' '.join(cloost)}; model for compress: {model} ({how}); {args.runs} runs each, wall time")
        print()
        width = max(len(name) for name, _ in cases)
        print(f"{'command'.ljust(width)}  {'median s':>9}  {'min s':>7}  {'max s':>7}")
        print(f"{'-' * width}  {'-' * 9}  {'-' * 7}  {'-' * 7}")
        for name, command in cases:
            try:
                times = wall_times(command, args.runs)
            except subprocess.CalledProcessError as exc:
                message = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
                print(f"{name.ljust(width)}  failed: {message[-1] if message else exc}")
                continue
            print(f"{name.ljust(width)}  {statistics.median(times):9.3f}  {min(times):7.3f}  {max(times):7.3f}")
        if output.exists():
            print(f"\none compressed digit: {output.stat().st_size} bytes")


if __name__ == "__main__":
    main()
