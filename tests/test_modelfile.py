import pytest
import torch

from cloostcodec.modelfile import ModelError, load_model, load_model_file, save_model
from conftest import random_refiner


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "tiny.pt"
    sha = save_model(random_refiner(), path, extra={"note": "test"})
    return path, sha


def test_save_and_load_round_trip(saved):
    path, sha = saved
    model = load_model_file(path)
    assert model.sha256 == sha and len(sha) == 64
    assert model.extra == {"note": "test"}
    original = random_refiner()
    for name, tensor in original.state_dict().items():
        assert torch.equal(model.refiner.state_dict()[name], tensor)
    assert not model.refiner.training


def test_hash_depends_on_weights(saved, tmp_path):
    path, sha = saved
    other = random_refiner(seed=1)
    assert save_model(other, tmp_path / "other.pt") != sha


@pytest.mark.parametrize("damage, message", [
    ("missing", "model file not found"),
    ("folder", "is a folder"),
    ("truncated", "truncated or damaged"),
    ("garbage", "truncated or damaged"),
    ("not-a-model", "not a cloost model file"),
    ("version", "model format version 99 is not supported"),
    ("incompatible", "incompatible model"),
    ("tampered", "do not match their recorded hash"),
])
def test_bad_model_files_give_one_line_errors(saved, tmp_path, damage, message):
    path, _ = saved
    target = tmp_path / "bad.pt"
    payload = torch.load(path, weights_only=True)
    if damage == "missing":
        target = tmp_path / "nope.pt"
    elif damage == "folder":
        target.mkdir()
    elif damage == "truncated":
        target.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        target.write_bytes(b"\x00garbage" * 20)
    elif damage == "not-a-model":
        torch.save({"hello": torch.zeros(2)}, target)
    elif damage == "version":
        torch.save({**payload, "version": 99}, target)
    elif damage == "incompatible":
        torch.save({**payload, "config": {**payload["config"], "hidden": 999}}, target)
    elif damage == "tampered":
        state = dict(payload["state_dict"])
        state["output_scale"] = state["output_scale"] + 1
        torch.save({**payload, "state_dict": state}, target)
    with pytest.raises(ModelError) as info:
        load_model_file(target)
    text = str(info.value)
    assert message in text and str(target) in text
    assert "\n" not in text


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    target = tmp_path / "evil.pt"
    torch.save({"format": "cloost-model", "payload": Evil()}, target)
    with pytest.raises(ModelError, match="truncated or damaged"):
        load_model_file(target)


def test_unknown_model_name_lists_bundled_models():
    with pytest.raises(ModelError, match="no such model"):
        load_model("no-such-model")
