"""Encoding (searching for the code of an image) and decoding (replaying a code).

Everything works on batches of normalised images in model space. Decoding replays exactly the
operations of the encoder, so on the same device and dtype it reproduces the encoder's own
reconstruction bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .refiner import Refiner


def option_losses(proposals: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of every proposal: [B, K, C, H, W] vs [B, C, H, W] -> [B, K]."""
    return (proposals - target.unsqueeze(1)).pow(2).flatten(2).mean(dim=2)


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
    current = model.start(target.shape[0], target.device, target.dtype)
    indices, recons = [], []
    for stage in range(stages):
        proposals = model(current, stage)
        index = option_losses(proposals, target).argmin(dim=1)
        current = pick(proposals, index)
        indices.append(index)
        recons.append(current)
    return Encoding(_stack(indices, target), recons)


def _beam_encode(model: Refiner, target: torch.Tensor, stages: int, width: int) -> Encoding:
    """Keep the `width` partial codes with the lowest current error at every stage.

    Ties are broken towards the lowest (beam, option) position with a stable sort, the same
    rule as argmin, so a beam of width 1 makes the greedy choices.
    """
    batch, k = target.shape[0], model.config.options
    shape = target.shape[1:]
    current = model.start(batch, target.device, target.dtype)  # [B*W', C, H, W], W' grows to W
    codes = torch.zeros(batch, 1, 0, dtype=torch.long, device=target.device)  # [B, W', t]
    history = torch.zeros(batch, 1, 0, *shape, dtype=target.dtype, device=target.device)
    beams = 1
    for stage in range(stages):
        proposals = model(current, stage)  # [B*W', K, ...]
        losses = option_losses(proposals, target.repeat_interleave(beams, dim=0))
        losses = losses.view(batch, beams * k)
        keep = min(width, beams * k)
        order = torch.sort(losses, dim=1, stable=True).indices[:, :keep]  # [B, keep]
        parent, option = order // k, order % k
        rows = torch.arange(batch, device=target.device).unsqueeze(1)
        flat = proposals.view(batch, beams * k, *shape)
        current = flat[rows, order].reshape(batch * keep, *shape)
        codes = torch.cat([codes[rows, parent], option.unsqueeze(2)], dim=2)
        history = torch.cat([history[rows, parent], flat[rows, order].unsqueeze(2)], dim=2)
        beams = keep
    # the beams are sorted by their final loss, so beam 0 is the best code
    return Encoding(codes[:, 0], [history[:, 0, t] for t in range(stages)])


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
    current = model.start(indices.shape[0], indices.device, model.first_stage_bias.dtype)
    for stage in range(stages):
        current = pick(model(current, stage), indices[:, stage])
    return current


def _stack(indices: list, like: torch.Tensor) -> torch.Tensor:
    if not indices:
        return torch.zeros(like.shape[0], 0, dtype=torch.long, device=like.device)
    return torch.stack(indices, dim=1)
