"""Pictures that show what a model does: grids of samples and the stage-by-stage refinement."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from .codec import to_pixels
from .modelfile import LoadedModel
from .search import encode

PAD = 2
MARK = (255, 64, 64)


@torch.inference_mode()
def random_codes(model: LoadedModel, count: int, stages: int | None = None, seed: int = 0) -> torch.Tensor:
    """Uniformly random codes [count, stages], reproducible from `seed`."""
    cfg = model.config
    stages = cfg.stages if stages is None else stages
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.options, (count, stages), generator=generator)


def grid(tiles: np.ndarray, columns: int | None = None, scale: int = 1) -> Image.Image:
    """uint8 tiles [N, H, W] -> one grayscale picture, `columns` wide (default: square)."""
    count, h, w = tiles.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    th, tw = h * scale, w * scale
    canvas = Image.new("L", (columns * (tw + PAD) + PAD, rows * (th + PAD) + PAD), 40)
    for i, tile in enumerate(tiles):
        image = Image.fromarray(tile).resize((tw, th), Image.NEAREST)
        canvas.paste(image, (PAD + (i % columns) * (tw + PAD), PAD + (i // columns) * (th + PAD)))
    return canvas


@torch.inference_mode()
def stage_picture(model: LoadedModel, pixels: np.ndarray, scale: int = 2, all_options: bool = False) -> Image.Image:
    """Row 0: the input, then the reconstruction after each stage.

    With `all_options`, row i (1..N) shows the K proposals of stage i with the chosen one framed.
    Every tile is H*scale x W*scale with PAD pixels between tiles.
    """
    refiner = model.refiner
    target = refiner.normalise(torch.from_numpy(pixels.astype(np.float32) / 255.0)[None, None])
    enc = encode(refiner, target)
    n, k = model.config.stages, model.config.options
    first_row = np.concatenate([pixels[None].astype(np.uint8)] + [to_pixels(model, r) for r in enc.reconstructions])
    columns = max(n + 1, k) if all_options else n + 1
    rows = [first_row]
    if all_options:
        current = refiner.start(1)
        for stage in range(n):
            rows.append(to_pixels(model, refiner(current, stage)[0]))
            current = enc.reconstructions[stage]
    h, w = pixels.shape
    th, tw = h * scale, w * scale
    canvas = Image.new("RGB", (columns * (tw + PAD) + PAD, len(rows) * (th + PAD) + PAD), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            x, y = PAD + c * (tw + PAD), PAD + r * (th + PAD)
            canvas.paste(Image.fromarray(tile).resize((tw, th), Image.NEAREST).convert("RGB"), (x, y))
            if r > 0 and c == int(enc.indices[0, r - 1]):
                draw.rectangle([x - 1, y - 1, x + tw, y + th], outline=MARK, width=2)
    return canvas
