import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cloostcodec.cli import main
from cloostcodec.modelfile import load_model_file
from cloostcodec.train import Objective, TrainSettings, train

TINY = dict(stages=2, options=4, hidden=16, core_layers=1, holdout=64, threads=1)


def read_log(path):
    return [json.loads(line) for line in open(path)]


def test_short_training_lowers_loss_and_spreads_usage(synthetic_npz, tmp_path):
    # from a plain random start: k-means would place the first stage on this easy data by itself
    settings = TrainSettings(data=str(synthetic_npz), out=str(tmp_path / "m"), steps=300, eval_every=100,
                             log_every=10, warmup=20, lr=3e-3, kmeans_init=False, **TINY)
    result = train(settings, quiet=True)
    losses = [r["loss"] for r in read_log(tmp_path / "m.log.jsonl") if "loss" in r]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
    assert all(frac > 0.9 for frac in result["entropy_frac"]), result["entropy_frac"]
    assert all(e > 0.9 * math.log(4) for e in result["entropy"])
    assert result["psnr_per_stage"][1] > result["psnr_per_stage"][0]
    model = load_model_file(tmp_path / "m.pt")
    assert model.config.stages == 2 and model.config.options == 4
    assert model.extra["step"] == 300


def test_resumed_run_follows_the_same_loss_sequence(synthetic_npz, tmp_path):
    # constant schedule: the interrupted run's first leg is told --steps 4, the rest --steps 8
    common = dict(data=str(synthetic_npz), eval_every=4, log_every=1, shift=1, warmup=3, schedule="constant",
                  rescue_every=3, **TINY)
    train(TrainSettings(out=str(tmp_path / "straight"), steps=8, **common), quiet=True)
    train(TrainSettings(out=str(tmp_path / "split"), steps=8, minutes=1e-9, **common), quiet=True)
    train(TrainSettings(out=str(tmp_path / "split"), steps=4, **common), resume=True, quiet=True)
    train(TrainSettings(out=str(tmp_path / "split"), steps=8, **common), resume=True, quiet=True)
    straight = [(r["step"], r["loss"]) for r in read_log(tmp_path / "straight.log.jsonl") if "loss" in r]
    split = [(r["step"], r["loss"]) for r in read_log(tmp_path / "split.log.jsonl") if "loss" in r]
    assert [s for s, _ in straight] == list(range(1, 9))
    assert split == straight
    a, b = load_model_file(tmp_path / "straight.pt"), load_model_file(tmp_path / "split.pt")
    assert a.sha256 == b.sha256


def test_train_cli_reports_bad_data(tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_shape = tmp_path / "bad.npz"
    np.savez(bad_shape, images=np.zeros((5, 3, 4, 4, 2), np.uint8))
    garbage = tmp_path / "train-images-idx3-ubyte.gz"
    garbage.write_bytes(b"not gzip at all")
    cases = [(empty, "no images or IDX files"), (bad_shape, "expected images shaped"),
             (garbage, "not a valid gzip file"), (tmp_path / "missing", "no such file or folder")]
    for data, message in cases:
        result = runner.invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "m"), "--steps", "1"])
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_train_cli_runs_and_writes_model_log_checkpoint(synthetic_npz, tmp_path):
    out = tmp_path / "cli"
    args = ["train", "--data", str(synthetic_npz), "--out", str(out), "--steps", "3", "--stages", "2",
            "--options", "4", "--hidden", "8", "--core-layers", "1", "--holdout", "32", "--threads", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "held-out PSNR" in result.output
    assert (tmp_path / "cli.pt").exists() and (tmp_path / "cli.ckpt").exists()
    evals = [r for r in read_log(tmp_path / "cli.log.jsonl") if r.get("eval")]
    assert evals[-1]["step"] == 3 and len(evals[-1]["entropy"]) == 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_distributed_ranks_end_with_identical_weights(synthetic_npz, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}",
           "-m", "cloostcodec", "train", "--data", str(synthetic_npz), "--out", str(out), "--steps", "5",
           "--stages", "2", "--options", "4", "--hidden", "8", "--core-layers", "1", "--holdout", "32",
           "--threads", "1", "--checkpoint-minutes", "0.0001", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-1500:]
    hashes = [r["rank_hashes"] for r in read_log(tmp_path / "ddp.log.jsonl") if "rank_hashes" in r]
    assert len(hashes) == 1 and len(hashes[0]) == 2
    assert hashes[0][0] == hashes[0][1] == load_model_file(tmp_path / "ddp.pt").sha256


def test_rescue_moves_dead_first_stage_options_into_the_most_used_clusters():
    import torch

    from cloostcodec.search import option_losses
    from cloostcodec.train import DistInfo, rescue_first_stage
    from conftest import random_refiner, synthetic_digits

    refiner = random_refiner()
    pixels = torch.from_numpy(synthetic_digits(count=64)[0]).float().div(255).unsqueeze(1)
    targets = refiner.normalise(pixels)
    with torch.no_grad():
        before = refiner(refiner.start(1), 0)[0]
    owner = option_losses(before.expand(len(targets), *before.shape), targets).argmin(1)
    used = owner.unique().tolist()
    assert len(used) >= 2
    counts = torch.zeros(4, dtype=torch.long)
    counts[used[0]], counts[used[1]] = 40, 50  # every other option is dead (under a tenth of 90/4)
    dead = [o for o in range(4) if o not in used[:2]]
    bias = refiner.first_stage_bias.detach().clone()
    rescued = rescue_first_stage(refiner, counts, pixels, step=7, seed=0, dist_info=DistInfo())
    assert rescued == dead
    with torch.no_grad():
        after = refiner(refiner.start(1), 0)[0]
    for i, option in enumerate(rescued):
        donor = [used[1], used[0]][i % 2]  # the most used first
        distances = (targets - after[option]).pow(2).flatten(1).mean(1)
        assert distances.min() < 1e-10  # the option now proposes exactly a training image ...
        assert owner[distances.argmin()] == donor  # ... that the donor option claimed
    assert torch.equal(refiner.first_stage_bias[used[:2]], bias[used[:2]])
    assert rescue_first_stage(refiner, torch.tensor([5, 5, 5, 5]), pixels, 8, 0, DistInfo()) == []


def test_without_first_stage_gradient_only_the_first_stage_loss_trains_its_bias():
    import torch

    from cloostcodec.search import option_losses
    from cloostcodec.train import Objective
    from conftest import random_refiner

    refiner = random_refiner(stages=3).train()
    target = torch.rand(6, 1, 8, 8)
    alpha, stages = 0.01, refiner.config.stages

    def bias_grad(loss):
        refiner.zero_grad()
        loss.backward()
        return refiner.first_stage_bias.grad.clone()

    # the first stage's own terms, weighted as in the objective (a mean over the stages)
    losses = option_losses(refiner(refiner.start(len(target)), 0), target)
    own = (losses.gather(1, losses.detach().argmin(1, keepdim=True)).mean() + alpha * losses.mean()) / stages
    first_only = bias_grad(own)
    isolated = bias_grad(Objective(refiner, alpha, first_stage_gradient=False)(target)[0])
    shared = bias_grad(Objective(refiner, alpha)(target)[0])
    assert torch.allclose(isolated, first_only, atol=1e-7)
    assert not torch.allclose(shared, first_only, atol=1e-5)  # later stages do shape it by default


def test_kmeans_init_starts_the_first_stage_at_the_cluster_centres():
    import torch

    from cloostcodec.kmeans import ResidualKMeans
    from cloostcodec.refiner import Refiner
    from cloostcodec.train import init_first_stage_kmeans
    from conftest import synthetic_digits, tiny_config

    pixels = torch.from_numpy(synthetic_digits(count=200)[0]).float().div(255).unsqueeze(1)
    refiner = Refiner(tiny_config())
    init_first_stage_kmeans(refiner, pixels, seed=3)
    with torch.no_grad():
        proposals = refiner(refiner.start(1), 0)[0].flatten(1)
    fitted = ResidualKMeans.fit(refiner.normalise(pixels).flatten(1).numpy(), stages=1, options=4, seed=3)
    centres = torch.from_numpy(fitted.centres[0])
    assert torch.allclose(proposals, centres, atol=1e-5)
    assert len(torch.unique(proposals, dim=0)) == 4  # K distinct images, not K copies of one


def test_init_from_grows_a_trained_model_to_more_stages(synthetic_npz, tmp_path):
    import torch

    from cloostcodec.search import decode
    from cloostcodec.train import grown_state

    short = dict(data=str(synthetic_npz), steps=20, eval_every=20, warmup=5, **TINY)
    train(TrainSettings(out=str(tmp_path / "short"), **short), quiet=True)
    start = load_model_file(tmp_path / "short.pt")
    grown = TrainSettings(out=str(tmp_path / "long"), **{**short, "stages": 4, "steps": 1})
    grown.init_from = str(tmp_path / "short.pt")
    train(grown, quiet=True)
    longer = load_model_file(tmp_path / "long.pt")
    assert longer.config.stages == 4 and longer.config.options == start.config.options

    # before any training, the grown model decodes the old codes exactly as the old model did
    refiner = type(start.refiner)(longer.config)
    refiner.load_state_dict(grown_state(start.refiner.state_dict(), 4))
    codes = torch.tensor([[0, 1], [3, 2], [2, 2]])
    with torch.no_grad():
        assert torch.equal(decode(refiner.eval(), codes), decode(start.refiner, codes))


def test_init_from_a_longer_model_keeps_its_first_stages(synthetic_npz, tmp_path):
    import torch

    from cloostcodec.search import decode
    from cloostcodec.train import grown_config, grown_state

    settings = dict(data=str(synthetic_npz), steps=20, eval_every=20, warmup=5, **{**TINY, "stages": 3})
    train(TrainSettings(out=str(tmp_path / "long"), **settings), quiet=True)
    long = load_model_file(tmp_path / "long.pt")
    cut = type(long.refiner)(grown_config(long.config, 2))
    cut.load_state_dict(grown_state(long.refiner.state_dict(), 2))
    codes = torch.tensor([[0, 1, 2], [3, 2, 1], [2, 2, 0]])
    with torch.no_grad():
        assert torch.equal(decode(cut.eval(), codes[:, :2]), decode(long.refiner, codes, stages=2))
    shorter = TrainSettings(out=str(tmp_path / "short"), **{**settings, "stages": 2, "steps": 1})
    shorter.init_from = str(tmp_path / "long.pt")
    train(shorter, quiet=True)
    assert load_model_file(tmp_path / "short.pt").config.stages == 2


def test_init_from_with_more_hidden_channels_widens_without_changing_the_model(synthetic_npz, tmp_path):
    import torch

    from cloostcodec.refiner import Refiner
    from cloostcodec.search import decode
    from cloostcodec.train import grown_config, grown_state

    settings = dict(data=str(synthetic_npz), steps=20, eval_every=20, warmup=5, **TINY)
    train(TrainSettings(out=str(tmp_path / "narrow"), **settings), quiet=True)
    narrow = load_model_file(tmp_path / "narrow.pt")
    wide_config = grown_config(narrow.config, narrow.config.stages, narrow.config.hidden + 8)
    torch.manual_seed(0)
    wide = Refiner(wide_config)
    wide.load_state_dict(grown_state(narrow.refiner.state_dict(), wide_config.stages, wide.state_dict()))
    codes = torch.tensor([[0, 1], [3, 2], [2, 2]])
    with torch.no_grad():
        assert torch.allclose(decode(wide.eval(), codes), decode(narrow.refiner, codes), atol=1e-5)
        current = torch.randn(3, *narrow.config.image_shape)
        assert torch.allclose(wide(current, 1), narrow.refiner(current, 1), atol=1e-5)

    # the new channels learn: the head's zeroed columns for them get gradients at once
    target = torch.randn(4, *narrow.config.image_shape)
    Objective(wide.train(), 0.01)(target)[0].backward()
    assert wide.head.weight.grad[:, narrow.config.hidden:].abs().sum() > 0

    widened = TrainSettings(out=str(tmp_path / "wide"), **{**settings, "steps": 2})
    widened.init_from, widened.hidden = str(tmp_path / "narrow.pt"), narrow.config.hidden + 8
    train(widened, quiet=True)
    assert load_model_file(tmp_path / "wide.pt").config.hidden == narrow.config.hidden + 8
    with pytest.raises(ValueError, match="narrower"):
        grown_config(narrow.config, 2, narrow.config.hidden - 1)


@pytest.mark.parametrize("arch", ["shuffle", "deconv"])
def test_objective_matches_the_loss_built_from_all_k_offsets(arch):
    """The training loss skips building the K offsets; it must equal (value and gradients) the
    objective written out plainly: chosen option's loss + alpha x mean of all K, every stage."""
    import torch

    from cloostcodec.search import offset_losses, pick
    from cloostcodec.train import Objective
    from conftest import random_refiner

    refiner = random_refiner(arch, seed=11).train()
    target = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    loss, chosen = Objective(refiner, alpha=0.1)(target)
    grads = torch.autograd.grad(loss, list(refiner.parameters()), allow_unused=True)

    current, goal, total = refiner.to_cells(refiner.start(6)), refiner.to_cells(target), 0.0
    for stage in range(refiner.config.stages):
        offsets = refiner.offsets(current, stage)
        losses = offset_losses(offsets, goal - current)
        index = losses.detach().argmin(dim=1)
        assert torch.equal(index, chosen[:, stage])
        total = total + losses.gather(1, index[:, None]).mean() + 0.1 * losses.mean()
        current = current + pick(offsets, index)
    expected = total / refiner.config.stages
    assert torch.allclose(loss, expected, rtol=1e-5)
    for got, want in zip(grads, torch.autograd.grad(expected, list(refiner.parameters()), allow_unused=True)):
        if want is None:
            assert got is None or not got.any()
        else:
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-5)
