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
OPTIONS_PER_ROW = 16  # proposals per row in a stage picture when K is larger
STAGE_GAP = 6  # extra pixels between the stage blocks of a wrapped stage picture


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

    With `all_options`, each stage adds a block with its K proposals, the chosen one framed:
    one row when K fits beside the first row, else rows of OPTIONS_PER_ROW, blocks STAGE_GAP
    pixels apart. Every tile is H*scale x W*scale with PAD pixels between tiles.
    """
    refiner = model.refiner
    target = refiner.normalise(torch.from_numpy(pixels.astype(np.float32) / 255.0)[None, None])
    enc = encode(refiner, target)
    n, k = model.config.stages, model.config.options
    first_row = np.concatenate([pixels[None].astype(np.uint8)] + [to_pixels(model, r) for r in enc.reconstructions])
    columns = max(n + 1, min(k, OPTIONS_PER_ROW)) if all_options else n + 1
    h, w = pixels.shape
    th, tw = h * scale, w * scale
    rows, tops, chosen = [first_row], [PAD], set()  # tiles, y of each row, (row, column) framed
    if all_options:
        current = refiner.start(1)
        for stage in range(n):
            proposals = to_pixels(model, refiner(current, stage)[0])
            index = int(enc.indices[0, stage])
            chosen.add((len(rows) + index // columns, index % columns))
            for i in range(0, k, columns):
                gap = STAGE_GAP if i == 0 and k > columns else 0
                tops.append(tops[-1] + th + PAD + gap)
                rows.append(proposals[i:i + columns])
            current = enc.reconstructions[stage]
    canvas = Image.new("RGB", (columns * (tw + PAD) + PAD, tops[-1] + th + PAD), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for r, (tiles, y) in enumerate(zip(rows, tops)):
        for c, tile in enumerate(tiles):
            x = PAD + c * (tw + PAD)
            canvas.paste(Image.fromarray(tile).resize((tw, th), Image.NEAREST).convert("RGB"), (x, y))
            if (r, c) in chosen:
                draw.rectangle([x - 1, y - 1, x + tw, y + th], outline=MARK, width=2)
    return canvas
