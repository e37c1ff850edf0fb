import pytest
import torch

from cloostcodec.search import HeadAlgebra, _beam_encode, head_algebra, decode, encode, offset_losses, option_losses, pick
from conftest import random_refiner


def targets(batch, seed=1):
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["shuffle", "deconv"])
@torch.inference_mode()
def test_stored_index_is_argmin_at_every_stage(arch):
    model = random_refiner(arch)
    x = targets(16)
    enc = encode(model, x)
    current = model.start(16)
    for stage in range(model.config.stages):
        # the MSE of every proposal, computed directly on the images (not the encoder's shortcut)
        losses = option_losses(model(current, stage), x)
        chosen = losses.gather(1, enc.indices[:, stage:stage + 1]).squeeze(1)
        assert torch.allclose(chosen, losses.min(dim=1).values, rtol=1e-5, atol=1e-7)
        best_two = losses.topk(2, dim=1, largest=False).values
        clear = best_two[:, 1] - best_two[:, 0] > 1e-4 * best_two[:, 0]  # no float near-tie
        assert clear.sum() >= len(clear) // 2
        assert torch.equal(enc.indices[clear, stage], losses.argmin(dim=1)[clear])
        current = enc.reconstructions[stage]
    # the search actually used more than one option
    assert len(torch.unique(enc.indices)) > 1


@torch.inference_mode()
def test_head_algebra_gives_every_options_error_without_building_the_offsets():
    model = random_refiner(seed=2)
    current, residual = model.to_cells(targets(6, seed=3)), model.to_cells(targets(6, seed=4))
    for stage in range(1, model.config.stages):
        features = model.features(current, stage)
        expected = offset_losses(model.all_offsets(features, stage), residual)
        got = HeadAlgebra(model).losses(features, residual)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(got.argmin(1), expected.argmin(1))


def test_head_algebra_is_kept_until_the_head_changes():
    model = random_refiner(seed=2)
    first = head_algebra(model)
    assert head_algebra(model) is first
    with torch.no_grad():
        model.head.weight.mul_(2)
    second = head_algebra(model)
    assert second is not first
    assert torch.allclose(second.gram, 4 * first.gram)
    assert head_algebra(random_refiner("deconv")) is None
    # kept from a call in inference mode, it still serves a search outside it, even with grad on
    fresh = random_refiner(seed=7)
    with torch.inference_mode():
        kept = head_algebra(fresh)
        expected = encode(fresh, targets(3)).indices
    assert torch.equal(encode(fresh, targets(3)).indices, expected)
    assert head_algebra(fresh) is kept


@pytest.mark.parametrize("arch", ["shuffle", "deconv"])
@torch.inference_mode()
def test_chosen_offsets_are_the_chosen_options_of_all_offsets(arch):
    model = random_refiner(arch, seed=5)
    current = model.to_cells(targets(7, seed=6))
    index = torch.tensor([0, 3, 1, 2, 3, 0, 1])
    for stage in (0, 2):
        features = model.features(current, stage)
        expected = pick(model.all_offsets(features, stage), index)
        assert torch.allclose(model.chosen_offsets(features, stage, index), expected, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3, 17, 64])
@pytest.mark.parametrize("arch", ["shuffle", "deconv"])
@torch.inference_mode()
def test_decode_reproduces_encoder_reconstruction_exactly(arch, batch):
    model = random_refiner(arch)
    x = targets(batch, seed=batch)
    enc = encode(model, x)
    assert enc.indices.shape == (batch, model.config.stages)
    assert enc.indices.dtype == torch.long
    assert torch.equal(decode(model, enc.indices), enc.reconstructions[-1])
    for n in range(1, model.config.stages + 1):
        assert torch.equal(decode(model, enc.indices, stages=n), enc.reconstructions[n - 1])


@torch.inference_mode()
def test_decoding_one_by_one_matches_batch_closely():
    model = random_refiner()
    x = targets(9)
    enc = encode(model, x)
    singles = torch.cat([decode(model, enc.indices[i:i + 1]) for i in range(9)])
    assert torch.allclose(singles, enc.reconstructions[-1], atol=1e-5)


@torch.inference_mode()
def test_decode_zero_stages_is_the_start_tensor_and_too_many_is_an_error():
    model = random_refiner()
    codes = torch.zeros(2, 4, dtype=torch.long)
    assert torch.equal(decode(model, codes, stages=0), model.start(2))
    with pytest.raises(ValueError, match="asked for 5 stages"):
        decode(model, codes, stages=5)


@pytest.mark.parametrize("arch", ["shuffle", "deconv"])
@torch.inference_mode()
def test_beam_of_width_one_is_greedy(arch):
    model = random_refiner(arch)
    x = targets(12)
    greedy = encode(model, x)
    beam = _beam_encode(model, x, model.config.stages, 1)
    assert torch.equal(beam.indices, greedy.indices)
    for a, b in zip(beam.reconstructions, greedy.reconstructions):
        assert torch.equal(a, b)


@pytest.mark.parametrize("width", [2, 4, 8])
@torch.inference_mode()
def test_beam_never_worse_than_greedy_and_decodes(width):
    model = random_refiner(seed=3)
    x = targets(32, seed=5)
    greedy = encode(model, x)
    beam = encode(model, x, beam=width)
    final = lambda recon: (recon - x).pow(2).flatten(1).mean(1)
    assert final(beam.reconstructions[-1]).sum() <= final(greedy.reconstructions[-1]).sum()
    assert torch.allclose(decode(model, beam.indices), beam.reconstructions[-1], atol=1e-5)


def test_indices_do_not_depend_on_thread_count_or_batch_size():
    """Fixed-width codes must not desynchronise across machines: the search is stable."""
    model = random_refiner(seed=4)
    x = targets(24, seed=9)
    with torch.inference_mode():
        reference = encode(model, x).indices
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            assert torch.equal(encode(model, x).indices, reference)
        finally:
            torch.set_num_threads(threads)
        singles = torch.cat([encode(model, x[i:i + 1]).indices for i in range(24)])
        assert torch.equal(singles, reference)
        halves = torch.cat([encode(model, x[:7]).indices, encode(model, x[7:]).indices])
        assert torch.equal(halves, reference)


def test_offset_losses_equal_the_direct_mean_squared_error():
    gen = torch.Generator().manual_seed(5)
    current, target = torch.randn(6, 16, 7, 7, generator=gen), torch.randn(6, 16, 7, 7, generator=gen)
    offsets = torch.randn(6, 8, 16, 7, 7, generator=gen)
    direct = option_losses(current.unsqueeze(1) + offsets, target)
    assert torch.allclose(offset_losses(offsets, target - current), direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["shuffle", "deconv"])
def test_cell_layout_is_a_permutation_of_the_pixels(arch):
    model = random_refiner(arch)
    x = targets(4)
    cells = model.to_cells(x)
    assert torch.equal(model.from_cells(cells), x)
    assert torch.equal(cells.flatten().sort().values, x.flatten().sort().values)
