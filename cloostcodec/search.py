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


class HeadAlgebra:
    """Every option's error at a stage after the first, without computing the K offsets.

    With a 1x1 head, option k adds o_k = W_k x + b_k at each cell, x being the network's
    features there. Its squared error against the residual r, summed over cells p, is
    |r|^2 - 2 (<W_k, sum_p r_p x_p^T> + <b_k, sum_p r_p>) + <W_k^T W_k, sum_p x_p x_p^T>
    + 2 <W_k^T b_k, sum_p x_p> + P |b_k|^2: a few small matrix products per image instead of
    the K offsets, which cost as much as the rest of the network. The search and the training
    objective rank options with it; the reconstruction always moves by `Refiner.chosen_offsets`,
    as in the decoder. The search builds it once per model (`head_algebra`), training at every
    step (autograd goes through it).
    """

    def __init__(self, model: Refiner):
        weight, bias = model.head_matrices()  # [K, D, h], [K, D]
        k = weight.shape[0]
        self.weight = weight.flatten(1)  # [K, D*h]
        self.bias = bias
        self.gram = (weight.transpose(1, 2) @ weight).flatten(1)  # [K, h*h]
        self.weight_bias = (weight.transpose(1, 2) @ bias.unsqueeze(2)).view(k, -1)  # [K, h]
        self.bias_norm = bias.square().sum(1)  # [K]

    def losses(self, features: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Mean squared error of every option: features [B, h, ...], residual [B, D, ...] -> [B, K]."""
        x, r = features.flatten(2), residual.flatten(2)  # [B, h, P], [B, D, P]
        cells = x.shape[2]
        cross = torch.bmm(r, x.transpose(1, 2)).flatten(1) @ self.weight.T + r.sum(2) @ self.bias.T
        own = (torch.bmm(x, x.transpose(1, 2)).flatten(1) @ self.gram.T + 2 * x.sum(2) @ self.weight_bias.T
               + cells * self.bias_norm)
        return (r.square().flatten(1).sum(1, keepdim=True) - 2 * cross + own) / (r.shape[1] * cells)


def head_algebra(model: Refiner) -> HeadAlgebra | None:
    """The model's `HeadAlgebra` (None without a 1x1 head), kept on the model until its head's
    weights change: building it costs as much as a few stages of one image."""
    if model.config.arch != "shuffle":
        return None
    params = (model.head.weight, model.head.bias, model.output_scale)
    if any(p.is_inference() for p in params):  # made under inference_mode: no version counter
        return HeadAlgebra(model)
    key = tuple((p.data_ptr(), p._version) for p in params)
    cached = getattr(model, "_head_algebra", None)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():  # usable in and out of inference mode
            cached = (key, HeadAlgebra(model))
        model._head_algebra = cached
    return cached[1]


def stage_features(model: Refiner, current: torch.Tensor, stage: int) -> torch.Tensor:
    """`model.features`, computed once for all codes at stage 0, where every code starts from the
    same fixed tensor. Encoder and decoder both use this, so they stay bit for bit alike."""
    if stage == 0:
        return model.features(current[:1], 0).expand(current.shape[0], -1, -1, -1)
    return model.features(current, stage)


def _stage_losses(model: Refiner, head: HeadAlgebra | None, features: torch.Tensor,
                   residual: torch.Tensor, stage: int) -> torch.Tensor:
    if head is not None and stage > 0:
        return head.losses(features, residual)
    if stage == 0:  # the K offsets are the same for every code: compute them once
        offsets = model.all_offsets(features[:1], 0).expand(features.shape[0], -1, -1, -1, -1)
    else:
        offsets = model.all_offsets(features, stage)
    return offset_losses(offsets, residual)


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
    head = head_algebra(model)
    indices, recons = [], []
    for stage in range(stages):
        features = stage_features(model, current, stage)
        index = _stage_losses(model, head, features, goal - current, stage).argmin(dim=1)
        current = current + model.chosen_offsets(features, stage, index)
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
    head = head_algebra(model)
    beams = 1
    for stage in range(stages):
        features = stage_features(model, current, stage)  # [B*W', ...]
        losses = _stage_losses(model, head, features, goal.repeat_interleave(beams, dim=0) - current, stage)
        losses = losses.view(batch, beams * k)
        keep = min(width, beams * k)
        order = torch.sort(losses, dim=1, stable=True).indices[:, :keep]  # [B, keep]
        parent, option = order // k, order % k
        rows = torch.arange(batch, device=target.device).unsqueeze(1)
        chosen = (rows * beams + parent).flatten()  # rows of `current` and `features` kept
        current = current[chosen] + model.chosen_offsets(features[chosen], stage, option.flatten())
        kept = current.view(batch, keep, *shape)
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
        current = current + model.chosen_offsets(stage_features(model, current, stage), stage, indices[:, stage])
    return model.from_cells(current)


def _stack(indices: list, like: torch.Tensor) -> torch.Tensor:
    if not indices:
        return torch.zeros(like.shape[0], 0, dtype=torch.long, device=like.device)
    return torch.stack(indices, dim=1)
