"""Residual k-means baseline: fitting, greedy coding, decoding and the .npz file format."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloostcodec import kmeans  # noqa: E402
from cloostcodec.kmeans import ResidualKMeans  # noqa: E402


def blobs(n_blobs=5, per_blob=60, dim=8, noise=0.01, seed=1):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, size=(n_blobs, dim)).astype(np.float32)
    # keep the blobs well separated: every pair of centres at least 0.3 apart
    while min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1:]) < 0.3:
        centres = rng.uniform(0.1, 0.9, size=(n_blobs, dim)).astype(np.float32)
    labels = np.repeat(np.arange(n_blobs), per_blob)
    data = centres[labels] + rng.normal(0, noise, size=(len(labels), dim)).astype(np.float32)
    return data.astype(np.float32), centres, labels


def random_data(n=240, dim=12, seed=3):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, dim)).astype(np.float32)


def greedy_reference(x, centres):
    """Brute-force greedy residual coding in float64: codes and reconstruction."""
    residual = x.astype(np.float64)
    recon = np.zeros_like(residual)
    codes = []
    for c in centres:
        c = c.astype(np.float64)
        dist = ((residual[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        idx = dist.argmin(1)
        codes.append(idx)
        residual -= c[idx]
        recon += c[idx]
    return np.stack(codes, 1), recon


def test_stage_one_recovers_blob_centres():
    data, true_centres, labels = blobs()
    for k in (5, 7):
        model = ResidualKMeans.fit(data, stages=1, options=k, seed=0)
        fitted = model.centres[0]
        gaps = np.linalg.norm(true_centres[:, None] - fitted[None], axis=-1)  # [blobs, K]
        assert gaps.min(1).max() < 0.02, f"K={k}: a blob centre has no fitted centre near it"
        codes = model.encode(data, stages=1)[:, 0]
        # no fitted centre mixes two blobs
        for c in np.unique(codes):
            assert len(np.unique(labels[codes == c])) == 1
        if k == 5:  # K == blobs: the clustering is the blob partition, one centre per blob
            assert sorted(gaps.argmin(1)) == list(range(5))
            for b in range(5):
                assert len(np.unique(codes[labels == b])) == 1


def test_fit_shapes_progress_and_properties():
    seen = []
    model = ResidualKMeans.fit(random_data(), stages=3, options=4, iterations=5, progress=seen.append)
    assert seen == [0, 1, 2]
    assert (model.stages, model.options, model.dim) == (3, 4, 12)
    assert model.bits == 6.0
    assert all(c.dtype == np.float32 and c.shape == (4, 12) for c in model.centres)


def test_encode_is_greedy_nearest_centre(monkeypatch):
    train = random_data()
    model = ResidualKMeans.fit(train, stages=4, options=6, seed=2)
    fresh = random_data(n=101, seed=9)
    monkeypatch.setattr(kmeans, "BLOCK_ROWS", 16)  # several blocks, a ragged last one
    for x in (train, fresh):
        codes = model.encode(x)
        assert codes.dtype == np.int64 and codes.shape == (len(x), 4)
        expected, _ = greedy_reference(x, model.centres)
        np.testing.assert_array_equal(codes, expected)
        np.testing.assert_array_equal(model.encode(x, stages=2), expected[:, :2])
    assert model.encode(fresh, stages=0).shape == (101, 0)
    with pytest.raises(ValueError):
        model.encode(fresh, stages=5)
    with pytest.raises(ValueError):
        model.encode(fresh[:, :5])


def test_decode_of_encode_is_greedy_reconstruction():
    train = random_data()
    model = ResidualKMeans.fit(train, stages=4, options=6, seed=2)
    x = random_data(n=50, seed=11)
    codes = model.encode(x)
    _, expected = greedy_reference(x, model.centres)
    recon = model.decode(codes)
    assert recon.dtype == np.float32 and recon.shape == x.shape
    np.testing.assert_allclose(recon, expected, rtol=0, atol=1e-5)
    # a prefix of the code decodes to the sum of the first n stages
    by_hand = model.centres[0][codes[:, 0]] + model.centres[1][codes[:, 1]]
    np.testing.assert_allclose(model.decode(codes[:, :2]), by_hand, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(model.decode(codes[:, :0]), np.zeros_like(x))
    with pytest.raises(ValueError):
        model.decode(np.full((2, 4), 6))
    with pytest.raises(ValueError):
        model.decode(np.zeros((2, 5), dtype=np.int64))


def test_decode_is_not_clipped():
    model = ResidualKMeans([np.array([[1.5, -0.5]], np.float32), np.array([[0.25, -0.25]], np.float32)])
    np.testing.assert_array_equal(model.decode(np.zeros((1, 2), np.int64)), [[1.75, -0.75]])


def test_error_never_increases_with_stages_on_training_data():
    train = random_data(n=300, dim=10)
    model = ResidualKMeans.fit(train, stages=6, options=4, seed=0)
    codes = model.encode(train)
    mse = [float(np.mean((model.decode(codes[:, :n]).astype(np.float64) - train) ** 2))
           for n in range(0, 7)]
    assert all(b <= a for a, b in zip(mse, mse[1:])), mse
    assert mse[-1] < 0.6 * mse[1]


def test_fit_is_reproducible():
    data = random_data()
    a = ResidualKMeans.fit(data, stages=3, options=5, seed=4)
    b = ResidualKMeans.fit(data, stages=3, options=5, seed=4)
    c = ResidualKMeans.fit(data, stages=3, options=5, seed=5)
    for ca, cb in zip(a.centres, b.centres):
        np.testing.assert_array_equal(ca, cb)
    assert any(not np.array_equal(ca, cc) for ca, cc in zip(a.centres, c.centres))


def test_empty_clusters_are_reseeded():
    # 3 distinct points but K=3 with a duplicate-heavy set: every centre must end up used
    data = np.array([[0, 0]] * 20 + [[1, 1]] * 2 + [[0, 1]], dtype=np.float32)
    model = ResidualKMeans.fit(data, stages=1, options=3, seed=0)
    assert sorted(map(tuple, model.centres[0].tolist())) == [(0, 0), (0, 1), (1, 1)]
    labels = np.array([0, 0, 0, 1, 1])
    dists = np.array([0.0, 5.0, 1.0, 9.0, 0.5], np.float32)
    kmeans._reseed_empty(labels, dists, 4)  # clusters 2 and 3 empty
    assert np.bincount(labels, minlength=4).min() == 1
    assert labels[1] in (2, 3) and labels[3] in (2, 3)  # the farthest points moved


def test_save_load_round_trip(tmp_path):
    model = ResidualKMeans.fit(random_data(), stages=3, options=4, seed=1)
    path = tmp_path / "baseline.npz"
    model.save(path)
    loaded = ResidualKMeans.load(path)
    assert (loaded.stages, loaded.options, loaded.dim) == (3, 4, 12)
    for a, b in zip(model.centres, loaded.centres):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    x = random_data(n=30, seed=7)
    np.testing.assert_array_equal(model.encode(x), loaded.encode(x))
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"][()]))
    assert meta["stages"] == 3 and meta["options"] == 4 and meta["dim"] == 12 and "version" in meta


def _expect_load_error(path):
    with pytest.raises(ValueError) as info:
        ResidualKMeans.load(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_damaged_or_incompatible_files_raise_value_error(tmp_path):
    model = ResidualKMeans.fit(random_data(), stages=2, options=4, seed=1)
    good = tmp_path / "good.npz"
    model.save(good)
    raw = good.read_bytes()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    _expect_load_error(truncated)

    flipped = tmp_path / "flipped.npz"
    data = bytearray(raw)
    offset = raw.index(model.centres[1].tobytes()[:32])  # inside the stored centres
    data[offset + 5] ^= 0xFF
    flipped.write_bytes(bytes(data))
    _expect_load_error(flipped)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not an archive")
    _expect_load_error(garbage)

    _expect_load_error(tmp_path / "missing.npz")

    centres = np.stack(model.centres)
    meta = {"format": kmeans.FORMAT_NAME, "version": 99, "stages": 2, "options": 4, "dim": 12}
    future = tmp_path / "future.npz"
    np.savez(future, meta=np.array(json.dumps(meta)), centres=centres)
    assert "version" in _expect_load_error(future)

    meta["version"] = kmeans.FORMAT_VERSION
    meta["dim"] = 13
    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, meta=np.array(json.dumps(meta)), centres=centres)
    _expect_load_error(mismatched)

    other = tmp_path / "other.npz"
    np.savez(other, images=np.zeros((2, 3)))
    _expect_load_error(other)
