"""The refiner network: given the current reconstruction and the stage index, propose K refinements.

Design (after VQ-DRAW's MNIST refiner): strided convolutions down to a quarter of the image size,
a few 3x3 convolutions there, transposed convolutions back up, and a final convolution that emits
K option images. After every hidden convolution a learned per-stage channel scale tells the net
which stage it is working on. The output is a residual: input + learned scale x proposal, and at
stage 0 (where the input is always the same fixed tensor) a learned bias per option is added.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a refiner; saved next to its weights."""

    channels: int = 1  # image channels (1 for grayscale)
    height: int = 28
    width: int = 28
    stages: int = 10  # N: indices per code
    options: int = 8  # K: proposals per stage, so a code is N * log2(K) bits
    norm_mean: float = 0.0  # pixels in [0, 1] are stored as (p - mean) / std
    norm_std: float = 1.0
    arch: str = "shuffle"  # "shuffle" (all work at 1/4 resolution) or "deconv" (VQ-DRAW's layout)
    hidden: int = 96  # channels at quarter resolution ("deconv": half this at the outer layers)
    core_layers: int = 3  # residual 3x3 convolutions at quarter resolution

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        return cls(**raw)

    @property
    def bits_per_stage(self) -> int:
        return max(1, (self.options - 1).bit_length())

    @property
    def code_bits(self) -> int:
        return self.stages * self.bits_per_stage

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def validate(self) -> None:
        if self.height % 4 or self.width % 4:
            raise ValueError("image height and width must be multiples of 4")
        if self.stages < 1 or self.options < 2:
            raise ValueError("need at least 1 stage and 2 options")
        if self.norm_std <= 0:
            raise ValueError("norm_std must be positive")
        if self.arch not in ("shuffle", "deconv"):
            raise ValueError(f"unknown architecture {self.arch!r}")


class StageScale(nn.Module):
    """Multiply each channel by a learned per-stage factor (initialised to 1)."""

    def __init__(self, stages: int, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(stages, channels))

    def forward(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        return x * self.scale[stage].view(1, -1, 1, 1)


class Refiner(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        c, h, n, k, layers = config.channels, config.hidden, config.stages, config.options, config.core_layers
        if config.arch == "shuffle":
            # 4x4 pixel blocks become channels; the head emits a 4x4 block per cell and option
            self.down = nn.ModuleList([nn.Conv2d(16 * c, h, 3, 1, 1)])
            self.up = nn.ModuleList()
            self.head = nn.Conv2d(h, 16 * k * c, 1)
        else:
            self.down = nn.ModuleList([nn.Conv2d(c, h // 2, 4, 2, 1), nn.Conv2d(h // 2, h, 4, 2, 1)])
            self.up = nn.ModuleList([nn.ConvTranspose2d(h, h // 2, 4, 2, 1),
                                     nn.ConvTranspose2d(h // 2, h // 2, 4, 2, 1)])
            self.head = nn.Conv2d(h // 2, k * c, 3, 1, 1)
        self.core = nn.ModuleList(nn.Conv2d(h, h, 3, 1, 1) for _ in range(layers))
        convs = [*self.down, *self.core, *self.up]
        self.scales = nn.ModuleList(StageScale(n, conv.out_channels) for conv in convs)
        self.output_scale = nn.Parameter(torch.tensor(0.1))
        self.first_stage_bias = nn.Parameter(torch.zeros(k, c, config.height, config.width))

    def to_cells(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> the layout the network works in: [B, 16C, H/4, W/4] for "shuffle".

        Only a permutation of the pixels, so squared errors and the values themselves are the same
        in either layout. Search and training stay in this layout: it saves rearranging all K
        proposals at every stage, half the cost of a greedy encode before.
        """
        return nn.functional.pixel_unshuffle(images, 4) if self.config.arch == "shuffle" else images

    def from_cells(self, cells: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_cells`."""
        return nn.functional.pixel_shuffle(cells, 4) if self.config.arch == "shuffle" else cells

    def propose(self, current: torch.Tensor, stage: int) -> torch.Tensor:
        """current: [B, *cell shape] reconstruction in cell layout -> [B, K, *cell shape] proposals."""
        return current.unsqueeze(1) + self.offsets(current, stage)

    def offsets(self, current: torch.Tensor, stage: int) -> torch.Tensor:
        """What each of the K proposals adds to `current` (cell layout): [B, K, *cell shape]."""
        return self.all_offsets(self.features(current, stage), stage)

    def features(self, current: torch.Tensor, stage: int) -> torch.Tensor:
        """The network up to its head: what every proposal of `current` is computed from."""
        x = current
        scales = iter(self.scales)
        for conv in self.down:
            x = torch.relu(next(scales)(conv(x), stage))
        for conv in self.core:
            x = x + torch.relu(next(scales)(conv(x), stage))
        for conv in self.up:
            x = torch.relu(next(scales)(conv(x), stage))
        return x

    def all_offsets(self, features: torch.Tensor, stage: int) -> torch.Tensor:
        """The head on `features`: the K offsets, [B, K, *cell shape]."""
        cfg = self.config
        # the learned output scale folded into the head's weights: one pass less over K images
        head, scale = self.head, self.output_scale
        offsets = nn.functional.conv2d(features, head.weight * scale, head.bias * scale, head.stride, head.padding)
        offsets = offsets.view(features.shape[0], cfg.options, -1, *offsets.shape[2:])
        if stage == 0:
            offsets = offsets + self.to_cells(self.first_stage_bias)
        return offsets

    def head_matrices(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The head as one linear map per option, output scale folded in: weight [K, 16C, hidden]
        and bias [K, 16C], applied at every cell. None for "deconv", whose head is a 3x3 conv."""
        if self.config.arch != "shuffle":
            return None
        k, scale = self.config.options, self.output_scale
        return (self.head.weight * scale).view(k, -1, self.config.hidden), (self.head.bias * scale).view(k, -1)

    def chosen_offsets(self, features: torch.Tensor, stage: int, index: torch.Tensor) -> torch.Tensor:
        """The offset of option `index[b]` for each image b: [B, *cell shape].

        Encoder and decoder both move the reconstruction with this, so they agree bit for bit.
        With a 1x1 head only the chosen option's slice of it is applied: a K-th of its work.
        """
        matrices = self.head_matrices()
        if matrices is None:
            offsets = self.all_offsets(features, stage)
            return offsets[torch.arange(len(index), device=index.device), index]
        weight, bias = matrices[0][index], matrices[1][index]  # [B, 16C, hidden], [B, 16C]
        offsets = torch.bmm(weight, features.flatten(2)).view(len(index), -1, *features.shape[2:])
        offsets = offsets + bias[:, :, None, None]
        if stage == 0:
            offsets = offsets + self.to_cells(self.first_stage_bias)[index]
        return offsets

    def forward(self, current: torch.Tensor, stage: int) -> torch.Tensor:
        """current: [B, C, H, W] normalised reconstruction -> [B, K, C, H, W] proposals."""
        proposals = self.propose(self.to_cells(current), stage)
        return self.from_cells(proposals.flatten(0, 1)).view(current.shape[0], self.config.options, *current.shape[1:])

    def start(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        """The fixed reconstruction every code starts from: zeros in normalised space."""
        cfg = self.config
        return torch.zeros(batch, *cfg.image_shape, device=device, dtype=dtype)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> model space."""
        return (pixels - self.config.norm_mean) / self.config.norm_std

    def denormalise(self, values: torch.Tensor) -> torch.Tensor:
        """Model space -> [0, 1] pixels, clipped (clipping only ever moves pixels closer)."""
        return (values * self.config.norm_std + self.config.norm_mean).clamp(0.0, 1.0)
