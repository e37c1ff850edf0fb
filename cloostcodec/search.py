"""Encoding (searching for the code of an image) and decoding (replaying a code).

Everything works on batches of normalised images in model space; inside, the search runs in the
refiner's cell layout (`Refiner.to_cells`). Decoding replays exactly the operations of the
encoder, so on the same device and dtype it reproduces the encoder's own reconstruction bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .refiner import Refiner


def option_losses(proposals: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of every proposal: [B, K, C, H, W] vs [B, C, H, W] -> [B, K]."""
    return (proposals - target.unsqueeze(1)).pow(2).flatten(2).mean(dim=2)


def offset_losses(offsets: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Mean squared error of every proposal `current + offset`, given residual = target - current.

    |r - o|^2 = |r|^2 - 2 r.o + |o|^2: two read-only passes over the K offsets instead of
    building every proposal and its error (the elementwise work was 40% of a greedy encode).
    [B, K, ...] offsets and [B, ...] residual -> [B, K].
    """
    flat, r = offsets.flatten(2), residual.flatten(1)
    cross = torch.bmm(flat, r.unsqueeze(2)).squeeze(2)
    own = torch.linalg.vector_norm(flat, dim=2).square()
    return (r.square().sum(1, keepdim=True) - 2 * cross + own) / r.shape[1]


def pick(proposals: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select one proposal per image: [B, K, ...] with index [B] -> [B, ...]."""
    return proposals[torch.arange(proposals.shape[0], device=proposals.device), index]


@dataclass
class Encoding:
    indices: torch.Tensor  # [B, N] int64
    reconstructions: list  # N tensors [B, C, H, W] in model space: after stage 1, 2, ...


def encode(model: Refiner, target: torch.Tensor, stages: int | None = None, beam: int = 1) -> Encoding:
    """Find a code for each image in `target` (model space), greedily or with a beam of width `beam`."""
    stages = model.config.stages if stages is None else stages
    if beam > 1:
        return _best_of(target, _beam_encode(model, target, stages, beam), encode(model, target, stages))
    goal = model.to_cells(target)
    current = model.to_cells(model.start(target.shape[0], target.device, target.dtype))
    indices, recons = [], []
    for stage in range(stages):
        offsets = model.offsets(current, stage)
        index = offset_losses(offsets, goal - current).argmin(dim=1)
        current = current + pick(offsets, index)
        indices.append(index)
        recons.append(model.from_cells(current))
    return Encoding(_stack(indices, target), recons)


def _beam_encode(model: Refiner, target: torch.Tensor, stages: int, width: int) -> Encoding:
    """Keep the `width` partial codes with the lowest current error at every stage.

    Ties are broken towards the lowest (beam, option) position with a stable sort, the same
    rule as argmin, so a beam of width 1 makes the greedy choices.
    """
    batch, k = target.shape[0], model.config.options
    goal = model.to_cells(target)
    shape = goal.shape[1:]
    current = model.to_cells(model.start(batch, target.device, target.dtype))  # [B*W', ...], W' grows to W
    codes = torch.zeros(batch, 1, 0, dtype=torch.long, device=target.device)  # [B, W', t]
    history = torch.zeros(batch, 1, 0, *shape, dtype=target.dtype, device=target.device)
    beams = 1
    for stage in range(stages):
        offsets = model.offsets(current, stage)  # [B*W', K, ...]
        losses = offset_losses(offsets, goal.repeat_interleave(beams, dim=0) - current)
        losses = losses.view(batch, beams * k)
        keep = min(width, beams * k)
        order = torch.sort(losses, dim=1, stable=True).indices[:, :keep]  # [B, keep]
        parent, option = order // k, order % k
        rows = torch.arange(batch, device=target.device).unsqueeze(1)
        kept = current.view(batch, beams, *shape)[rows, parent] + offsets.view(batch, beams * k, *shape)[rows, order]
        current = kept.reshape(batch * keep, *shape)
        codes = torch.cat([codes[rows, parent], option.unsqueeze(2)], dim=2)
        history = torch.cat([history[rows, parent], kept.unsqueeze(2)], dim=2)
        beams = keep
    # the beams are sorted by their final loss, so beam 0 is the best code
    return Encoding(codes[:, 0], [model.from_cells(history[:, 0, t]) for t in range(stages)])


def _best_of(target: torch.Tensor, first: Encoding, second: Encoding) -> Encoding:
    """Per image, the encoding with the lower final loss (ties: `first`).

    Pruning can in principle drop the greedy path from a beam; keeping the better of the two
    guarantees a beam never does worse than greedy.
    """
    if not first.reconstructions:
        return first
    err = lambda enc: (enc.reconstructions[-1] - target).pow(2).flatten(1).mean(1)
    take_second = err(second) < err(first)
    mask = take_second.view(-1, *([1] * (target.dim() - 1)))
    return Encoding(torch.where(take_second[:, None], second.indices, first.indices),
                    [torch.where(mask, b, a) for a, b in zip(first.reconstructions, second.reconstructions)])


def decode(model: Refiner, indices: torch.Tensor, stages: int | None = None) -> torch.Tensor:
    """Replay the first `stages` indices of each code: [B, >=stages] -> [B, C, H, W] model space."""
    stages = indices.shape[1] if stages is None else stages
    if stages > indices.shape[1]:
        raise ValueError(f"asked for {stages} stages but the codes hold {indices.shape[1]}")
    current = model.to_cells(model.start(indices.shape[0], indices.device, model.first_stage_bias.dtype))
    for stage in range(stages):
        current = current + pick(model.offsets(current, stage), indices[:, stage])
    return model.from_cells(current)


def _stack(indices: list, like: torch.Tensor) -> torch.Tensor:
    if not indices:
        return torch.zeros(like.shape[0], 0, dtype=torch.long, device=like.device)
    return torch.stack(indices, dim=1)
