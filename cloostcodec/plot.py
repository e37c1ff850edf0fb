"""Rate-distortion plot of a benchmark: bits per image (log scale) against PSNR, one curve a family.

matplotlib is an optional dependency (`pip install 'cloost[plot]'`); it is imported only here,
with the non-interactive Agg backend, so plotting works without a display.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from .bench import BenchResult


class PlotError(RuntimeError):
    """Plotting is not possible; one line for the user."""


INSTALL_HINT = "--plot needs matplotlib: pip install 'cloost[plot]'"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(INSTALL_HINT) from None
    return plt


def check_available() -> None:
    """Raise PlotError now, before a long benchmark, if matplotlib is missing."""
    _pyplot()


STYLES = {"cloost": dict(marker="o", linestyle="-"), "beam": dict(marker="*", linestyle="none", markersize=10),
          "kmeans": dict(marker="s", linestyle="--"), "jpeg": dict(marker="^", linestyle="none"),
          "webp": dict(marker="v", linestyle="none")}


def render(result: BenchResult, title: str | None = None) -> bytes:
    """The rate-distortion plot as PNG bytes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
        for family in result.families:
            if family.kind == "png":
                ax.axvline(family.rows[0].bits, color="grey", linestyle=":", label="PNG (lossless)")
                continue
            colour = next(colours)
            sweep = result.sweeps.get(family.name)
            if sweep is not None:  # the fine quality sweep as a thin line under the table's points
                points = [(r.bits, r.psnr) for r in sweep.rows if math.isfinite(r.psnr)]
                ax.plot([b for b, _ in points], [p for _, p in points], color=colour, linewidth=0.8, alpha=0.6)
            points = [(r.bits, r.psnr) for r in family.rows if math.isfinite(r.psnr)]
            if not points:
                continue
            ax.plot([b for b, _ in points], [p for _, p in points], color=colour, label=family.name,
                    **STYLES.get(family.kind, {}))
        ax.set_xscale("log")
        ax.set_xlabel("bits per image (file, header included)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(title or f"{result.images} images from {Path(result.dataset).name}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()
