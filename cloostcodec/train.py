"""Training a refiner: the objective, the loop, evaluation, checkpoints and exact resume.

Objective per batch (VQ-DRAW's): the mean over stages of the chosen option's loss plus alpha
times the mean loss of all K options, which pulls unused options toward the data until they get
chosen. Runs alone or under `torchrun` with DistributedDataParallel (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .datasets import load_images, to_unit_float
from .kmeans import ResidualKMeans
from .modelfile import atomic_torch_save, content_hash, load_model, save_model
from .refiner import ModelConfig, Refiner
from .search import HeadAlgebra, encode, offset_losses, option_losses, pick

CHECKPOINT_VERSION = 1
RESCUE_POOL = 512  # training images sampled to find where a dead first-stage option goes


@dataclass
class TrainSettings:
    data: str
    out: str
    stages: int = 10
    options: int = 8
    arch: str = "shuffle"
    hidden: int | None = None  # None: ModelConfig's default, or the --init-from model's width (more widens it)
    core_layers: int = 3
    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    schedule: str = "cosine"  # cosine decay to 0 over --steps, or "constant"
    warmup: int = 200
    alpha: float = 0.01
    shift: int = 0  # augmentation: random shifts of up to this many pixels
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    holdout: int = 500
    eval_every: int = 500
    log_every: int = 50
    checkpoint_minutes: float = 5.0
    grad_clip: float = 1.0
    rescue_every: int = 200  # re-seed first-stage options unused for this many steps (0: never)
    first_stage_gradient: bool = True  # False: later stages' losses do not shape the first stage
    kmeans_init: bool = True  # start the first stage's K proposals at k-means centres of the data
    init_from: str | None = None  # start from this trained model's weights (it may have more or fewer stages)

    def validate(self) -> None:
        if self.steps is None and self.minutes is None:
            raise ValueError("give --steps, --minutes or both")
        if self.schedule == "cosine" and self.steps is None:
            raise ValueError("--schedule cosine needs --steps (or use --schedule constant)")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        for name in ("batch_size", "stages", "options", "hidden"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")


class Objective(nn.Module):
    """Runs all stages for a batch and returns the training loss; DDP wraps this module."""

    def __init__(self, refiner: Refiner, alpha: float, first_stage_gradient: bool = True):
        super().__init__()
        self.refiner = refiner
        self.alpha = alpha
        self.first_stage_gradient = first_stage_gradient

    def forward(self, target: torch.Tensor):
        refiner = self.refiner
        goal = refiner.to_cells(target)
        current = refiner.to_cells(refiner.start(target.shape[0], target.device, target.dtype))
        total = target.new_zeros(())
        chosen = []
        # every option's loss from the head's algebra, as in the search (built anew: the weights move)
        head = HeadAlgebra(refiner) if refiner.head_matrices() is not None else None
        for stage in range(refiner.config.stages):
            residual = goal - current
            if stage == 0:  # every image starts from the same tensor: one image's K offsets serve all
                offsets = refiner.offsets(current[:1], 0).expand(len(current), -1, -1, -1, -1)
                losses = offset_losses(offsets, residual)
            else:
                features = refiner.features(current, stage)
                losses = head.losses(features, residual) if head else offset_losses(
                    refiner.all_offsets(features, stage), residual)
            index = losses.detach().argmin(dim=1)
            total = total + losses.gather(1, index[:, None]).mean() + self.alpha * losses.mean()
            current = current + (pick(offsets, index) if stage == 0 else
                                 refiner.chosen_offsets(features, stage, index))
            if stage == 0 and not self.first_stage_gradient:
                # the first stage then learns only to partition the data (online k-means), not to
                # be a convenient start for later stages, which skews its usage toward a few options
                current = current.detach()
            chosen.append(index)
        return total / refiner.config.stages, torch.stack(chosen, dim=1)


def usage_stats(indices: torch.Tensor, options: int) -> dict:
    """Per-stage entropy of option usage (nats and as a fraction of ln K) and options used."""
    counts = torch.stack([torch.bincount(col, minlength=options) for col in indices.T.cpu()])
    probs = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=1)
    return {"entropy": [round(float(e), 4) for e in entropy],
            "entropy_frac": [round(float(e) / math.log(options), 4) for e in entropy],
            "options_used": [int((c > 0).sum()) for c in counts]}


@torch.inference_mode()
def evaluate(refiner: Refiner, pixels: torch.Tensor, batch_size: int = 500, beam: int = 1) -> dict:
    """Encode [0, 1] pixels; PSNR after every stage (clipped to [0, 1]) and usage."""
    was_training = refiner.training
    refiner.eval()
    sq_err = torch.zeros(refiner.config.stages, dtype=torch.float64)
    all_indices = []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start:start + batch_size]
        enc = encode(refiner, refiner.normalise(chunk), beam=beam)
        all_indices.append(enc.indices)
        for stage, recon in enumerate(enc.reconstructions):
            sq_err[stage] += (refiner.denormalise(recon) - chunk).double().pow(2).sum()
    refiner.train(was_training)
    mse = sq_err / pixels.numel()
    psnr = [round(float(10 * torch.log10(1 / m)), 3) for m in mse]
    return {"psnr": psnr[-1], "psnr_per_stage": psnr, "mse": float(mse[-1]),
            **usage_stats(torch.cat(all_indices), refiner.config.options)}


def random_shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift every image by up to `max_shift` pixels each way, filling with zeros (background)."""
    if max_shift <= 0:
        return batch
    b, _, h, w = batch.shape
    padded = nn.functional.pad(batch, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def learning_rate(settings: TrainSettings, step: int) -> float:
    warm = min(1.0, (step + 1) / settings.warmup) if settings.warmup > 0 else 1.0
    if settings.schedule == "constant":
        return settings.lr * warm
    progress = min(1.0, step / max(1, settings.steps))
    return settings.lr * warm * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Paths:
    model: Path
    checkpoint: Path
    log: Path

    @classmethod
    def for_out(cls, out: str) -> "Paths":
        base = Path(out)
        base = base.with_name(base.name.removesuffix(".pt"))
        return cls(base.with_suffix(".pt"), base.with_name(base.name + ".ckpt"),
                   base.with_name(base.name + ".log.jsonl"))


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> DistInfo:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    import torch.distributed as dist

    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), True)


def _split(pixels: torch.Tensor, holdout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed split (independent of --seed, so resumed runs agree): last `holdout` of a permutation."""
    holdout = min(holdout, len(pixels) // 5)
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(1234))
    return pixels[order[holdout:]], pixels[order[:holdout]]


class Progress:
    """One status line, rewritten in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, total_steps: int | None, enabled: bool):
        self.total = total_steps
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last_print = 0.0

    def update(self, step: int, loss: float, elapsed: float, last_eval: dict | None, force=False):
        if not self.enabled:
            return
        now = time.time()
        if not force and not self.tty and now - self.last_print < 30:
            return
        self.last_print = now
        done = f"{step}/{self.total}" if self.total else str(step)
        bar = ""
        if self.total:
            filled = int(20 * step / self.total)
            bar = "[" + "#" * filled + "." * (20 - filled) + "] "
        text = f"{bar}step {done} loss {loss:.4f} {elapsed / 60:.1f}min"
        if last_eval:
            text += (f" | held-out {last_eval['psnr']:.2f} dB, entropy min {min(last_eval['entropy']):.2f} nats"
                     f" ({min(last_eval['entropy_frac']):.0%} of ln K), options used min"
                     f" {min(last_eval['options_used'])}")
        if self.tty:
            sys.stderr.write("\r" + text[:200].ljust(120))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self):
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def train(settings: TrainSettings, resume: bool = False, quiet: bool = False) -> dict:
    """Train (or continue training) a refiner; returns the last evaluation."""
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    dist_info = _init_distributed(settings.device)
    device = torch.device(settings.device if not settings.device.startswith("cuda") or not dist_info.group
                          else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    paths = Paths.for_out(settings.out)

    data = load_images(settings.data, "train")
    pixels = torch.from_numpy(to_unit_float(data.images))
    train_pixels, held_out = _split(pixels, settings.holdout)
    if len(train_pixels) < 1:
        raise ValueError(f"{settings.data}: too few images to train on")

    checkpoint = None
    if resume:
        if not paths.checkpoint.exists():
            raise FileNotFoundError(f"{paths.checkpoint}: no checkpoint to resume from")
        checkpoint = torch.load(paths.checkpoint, map_location="cpu", weights_only=True)
        saved = json.loads(checkpoint["settings"])
        # the model shape and data come from the checkpoint; limits and schedule from this call
        for key in ("stages", "options", "arch", "hidden", "core_layers", "alpha", "batch_size", "holdout"):
            setattr(settings, key, saved[key])
        config = ModelConfig.from_dict(checkpoint["config"])
    elif settings.init_from:
        start_model = load_model(settings.init_from)
        config = grown_config(start_model.config, settings.stages, settings.hidden)
        if config.image_shape != tuple(train_pixels.shape[1:]):
            raise ValueError(f"{settings.init_from}: model images are {config.image_shape}, "
                             f"the data's are {tuple(train_pixels.shape[1:])}")
        for key in ("options", "arch", "hidden", "core_layers"):
            setattr(settings, key, getattr(config, key))
    else:
        mean, std = float(train_pixels.mean()), float(train_pixels.std())
        c, h, w = train_pixels.shape[1:]
        settings.hidden = settings.hidden or ModelConfig.hidden
        config = ModelConfig(channels=c, height=h, width=w, stages=settings.stages, options=settings.options,
                             norm_mean=round(mean, 6), norm_std=round(std, 6), arch=settings.arch, hidden=settings.hidden,
                             core_layers=settings.core_layers)

    torch.manual_seed(settings.seed)
    refiner = Refiner(config).to(device)
    if checkpoint is None and settings.init_from:
        refiner.load_state_dict(grown_state(start_model.refiner.state_dict(), config.stages, refiner.state_dict()))
    elif checkpoint is None and settings.kmeans_init:
        init_first_stage_kmeans(refiner, train_pixels, settings.seed)
    optimizer = torch.optim.Adam(refiner.parameters(), lr=settings.lr)
    sampler = torch.Generator().manual_seed(settings.seed * 1000 + dist_info.rank)
    step, elapsed_before = 0, 0.0
    history: list = []
    first_stage_counts = torch.zeros(config.options, dtype=torch.long)
    if checkpoint is not None:
        refiner.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = int(checkpoint["step"])
        elapsed_before = float(checkpoint["elapsed"])
        sampler.set_state(checkpoint["sampler_states"][dist_info.rank])
        torch.set_rng_state(checkpoint["torch_rng"])
        history = json.loads(checkpoint["evals"])
        first_stage_counts = checkpoint["first_stage_counts"]

    objective = Objective(refiner, settings.alpha, settings.first_stage_gradient)
    if dist_info.group:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    log = open(paths.log, "a") if dist_info.main else None
    progress = Progress(settings.steps, enabled=dist_info.main and not quiet)
    started = time.time()
    last_checkpoint = started
    last_eval = history[-1] if history else None
    loss_value = float("nan")
    refiner.train()

    def write_checkpoint():
        states = [sampler.get_state()]
        if dist_info.group:
            import torch.distributed as dist

            states = [None] * dist_info.world
            dist.all_gather_object(states, sampler.get_state())
        if dist_info.main:
            atomic_torch_save({
                "version": CHECKPOINT_VERSION, "config": config.to_dict(), "model": refiner.state_dict(),
                "optimizer": optimizer.state_dict(), "step": step, "elapsed": elapsed(),
                "sampler_states": states, "torch_rng": torch.get_rng_state(),
                "settings": json.dumps(asdict(settings)), "evals": json.dumps(history),
                "first_stage_counts": first_stage_counts,
            }, paths.checkpoint)
            save_model(refiner, paths.model, extra={"step": step, "settings": asdict(settings),
                                                    "last_eval": last_eval})

    def elapsed() -> float:
        return elapsed_before + time.time() - started

    def out_of_time() -> bool:
        return settings.minutes is not None and time.time() - started >= settings.minutes * 60

    try:
        while settings.steps is None or step < settings.steps:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, step)
            rows = torch.randint(0, len(train_pixels), (settings.batch_size,), generator=sampler)
            batch = random_shift(train_pixels[rows], settings.shift, sampler).to(device)
            loss, chosen = objective(refiner.normalise(batch))
            first_stage_counts += torch.bincount(chosen[:, 0].cpu(), minlength=config.options)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                nn.utils.clip_grad_norm_(refiner.parameters(), settings.grad_clip)
            optimizer.step()
            step += 1
            loss_value = loss.item()
            if settings.rescue_every and step % settings.rescue_every == 0:
                rescued = rescue_first_stage(refiner, first_stage_counts, train_pixels, step, settings.seed, dist_info)
                if log and rescued:
                    log.write(json.dumps({"step": step, "rescued_first_stage_options": rescued}) + "\n")
                first_stage_counts.zero_()
            if log and (step % settings.log_every == 0 or step == 1):
                log.write(json.dumps({"step": step, "loss": round(loss_value, 6), "lr": learning_rate(settings, step - 1),
                                      "elapsed": round(elapsed(), 1)}) + "\n")
                log.flush()
            if step % settings.eval_every == 0:
                last_eval = _evaluate_and_log(refiner, held_out, step, elapsed(), log, history)
            progress.update(step, loss_value, elapsed(), last_eval)
            time_up, checkpoint_due = _agreed(dist_info, device, out_of_time(),
                                              time.time() - last_checkpoint >= settings.checkpoint_minutes * 60)
            if time_up:
                break
            if checkpoint_due:
                write_checkpoint()
                last_checkpoint = time.time()
        if not history or history[-1]["step"] != step:
            last_eval = _evaluate_and_log(refiner, held_out, step, elapsed(), log, history)
        write_checkpoint()
        if dist_info.group:
            _log_rank_hashes(refiner, dist_info, log)
            # No rank tears its gloo connections down while a peer is still in its last
            # collective (that made the peer abort in about one run in ten).
            import torch.distributed as dist

            dist.barrier()
        progress.update(step, loss_value, elapsed(), last_eval, force=True)
    finally:
        progress.close()
        if log:
            log.close()
        if dist_info.group:
            import torch.distributed as dist

            dist.destroy_process_group()
    return last_eval


def grown_config(config: ModelConfig, stages: int, hidden: int | None = None) -> ModelConfig:
    """The config of `config`'s model continued (or cut) to `stages` stages, and widened to
    `hidden` channels if given."""
    hidden = config.hidden if hidden is None else hidden
    if hidden < config.hidden:
        raise ValueError(f"--hidden {hidden} is narrower than the starting model's {config.hidden} channels")
    if hidden > config.hidden and config.arch != "shuffle":
        raise ValueError(f"only a 'shuffle' refiner can be widened, this one is {config.arch!r}")
    return ModelConfig.from_dict({**config.to_dict(), "stages": stages, "hidden": hidden})


def grown_state(state: dict, stages: int, fresh: dict | None = None) -> dict:
    """A trained model's weights for another stage count, and optionally more channels.

    Only the per-stage channel scales depend on the stage count; the network is shared, so a
    model trained for n stages is a trained start for the first n stages of a longer one (every
    added stage starts as a copy of its last), and its first m stages are a model of m stages.

    `fresh` (the state of a newly initialised wider refiner) widens it: every trained tensor goes
    into the leading corner of its fresh counterpart, and the weights that would carry the new
    channels into old ones (and into the head) are zeroed. The widened model then proposes
    exactly what the trained one did, while the new channels, computed from fresh random weights,
    get gradients from the first step.
    """
    grown = {}
    for name, tensor in state.items():
        if name.startswith("scales.") and name.endswith(".scale"):
            if len(tensor) < stages:
                tensor = torch.cat([tensor, tensor[-1:].expand(stages - len(tensor), -1)])
            tensor = tensor[:stages]
        if fresh is not None and fresh[name].shape != tensor.shape:
            wider = fresh[name].clone()
            wider[tuple(slice(0, size) for size in tensor.shape)] = tensor
            if tensor.dim() == 4:  # conv weight [out, in, kh, kw]: old outputs ignore new inputs
                wider[:tensor.shape[0], tensor.shape[1]:] = 0
            tensor = wider
        grown[name] = tensor.clone()
    return grown


@torch.no_grad()
def init_first_stage_kmeans(refiner: Refiner, train_pixels: torch.Tensor, seed: int, iterations: int = 20) -> None:
    """Start the first stage's K proposals at the k-means centres of the training images.

    Stage 0 always sees the same input, so its proposals are K fixed images and choosing among
    them is a nearest-centre assignment: starting at k-means spares training the slow, skewed
    climb from K near-identical images to K clusters.
    """
    target = refiner.normalise(train_pixels).flatten(1).numpy()
    centres = torch.from_numpy(ResidualKMeans.fit(target, 1, refiner.config.options, iterations, seed).centres[0])
    device = refiner.first_stage_bias.device
    proposals = refiner(refiner.start(1, device), 0)[0]
    refiner.first_stage_bias += centres.view_as(proposals).to(device) - proposals


@torch.no_grad()
def rescue_first_stage(refiner: Refiner, counts: torch.Tensor, train_pixels: torch.Tensor, step: int,
                       seed: int, dist_info: DistInfo) -> list[int]:
    """Move first-stage options that (almost) nobody chose into the clusters of the most used ones.

    The alpha term pulls unused options toward the data, but at stage 0 (a fixed input, so a
    fixed set of K images) an option stranded between clusters can stay unused for good. As
    k-means does with an empty cluster, each dead option is moved onto a training image that one
    of the most used options claims (the i-th dead option into the i-th most used option's
    cluster), so the two split that cluster. All ranks compute the same choice from the shared
    data, so DDP replicas stay identical.
    """
    if dist_info.group:
        import torch.distributed as dist

        counts = counts.clone()
        dist.all_reduce(counts)
    # "dead": chosen less than a tenth as often as a uniform share
    dead = (counts * 10 * len(counts) < counts.sum()).nonzero().flatten().tolist()
    if not dead:
        return []
    device = refiner.first_stage_bias.device
    pool_rows = torch.randint(0, len(train_pixels), (RESCUE_POOL,), generator=torch.Generator().manual_seed(seed * 7919 + step))
    target = refiner.normalise(train_pixels[pool_rows].to(device))
    proposals = refiner(refiner.start(1, device), 0)[0]  # [K, C, H, W], the same for every image
    owner = option_losses(proposals.expand(len(target), *proposals.shape), target).argmin(dim=1)
    donors = [d for d in counts.argsort(descending=True, stable=True).tolist() if d not in dead]
    for i, option in enumerate(dead):
        members = (owner == donors[i % len(donors)]).nonzero().flatten()
        row = int(members[0]) if len(members) else i % len(target)  # the pool is in random order
        refiner.first_stage_bias[option] += target[row] - proposals[option]
    return dead


def _agreed(dist_info: DistInfo, device: torch.device, *flags: bool) -> list[bool]:
    """Flags that every rank must act on together (each rank's clock differs): true if true on any."""
    if not dist_info.group:
        return list(flags)
    import torch.distributed as dist

    votes = torch.tensor([int(flag) for flag in flags], device=device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return [bool(vote) for vote in votes]


def _log_rank_hashes(refiner: Refiner, dist_info: DistInfo, log) -> None:
    """Record every rank's weight hash: DDP must keep them identical."""
    import torch.distributed as dist

    state = {k: v.detach().cpu() for k, v in refiner.state_dict().items()}
    hashes = [None] * dist_info.world
    dist.all_gather_object(hashes, content_hash(refiner.config, state))
    if log:
        log.write(json.dumps({"rank_hashes": hashes}) + "\n")


def _evaluate_and_log(refiner, held_out, step, elapsed, log, history) -> dict:
    result = evaluate(refiner, held_out.to(next(refiner.parameters()).device))
    result = {"step": step, "elapsed": round(elapsed, 1), **result}
    history.append(result)
    if log:
        log.write(json.dumps({"eval": True, **result}) + "\n")
        log.flush()
    return result
