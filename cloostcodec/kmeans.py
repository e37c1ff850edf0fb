"""Residual k-means ("cluster boosting"): the classical baseline the learned codec must beat.

Stage 1 clusters the images into K centres; stage 2 clusters the residuals (image minus the
chosen stage-1 centre); and so on for N stages. An image is coded as N indices of log2(K) bits,
the same layout as the learned codec's codes, and decoded as the sum of the chosen centres.

numpy only. Distances use ||x||^2 - 2 x.c + ||c||^2 with a float32 matmul, in row blocks so the
memory stays bounded. Encoding is greedy: at each stage, the nearest centre to the current residual.
Fitting and encoding share one assignment routine and one block size, so `encode` on the training
data reproduces exactly the assignments the fit used.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

FORMAT_NAME = "cloost-residual-kmeans"
FORMAT_VERSION = 1
BLOCK_ROWS = 4096  # rows per distance block: BLOCK_ROWS x K float32 scratch per block


def _assign(x: np.ndarray, centres: np.ndarray, x_sq: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre for every row of x: (indices int64 [N], squared distances float32 [N]).

    Rows are processed in blocks of BLOCK_ROWS; squared distances are clamped at 0 (the matmul
    trick can round slightly below it).
    """
    n = len(x)
    centres_t = np.ascontiguousarray(centres.T)
    c_sq = np.einsum("kd,kd->k", centres, centres)
    if x_sq is None:
        x_sq = np.einsum("nd,nd->n", x, x)
    labels = np.empty(n, dtype=np.int64)
    dists = np.empty(n, dtype=np.float32)
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        d = x[start:stop] @ centres_t  # [B, K]
        d *= -2.0
        d += c_sq  # ||c||^2 - 2 x.c: ||x||^2 is constant per row, so argmin does not need it
        idx = np.argmin(d, axis=1)
        labels[start:stop] = idx
        dists[start:stop] = d[np.arange(stop - start), idx] + x_sq[start:stop]
    np.maximum(dists, 0.0, out=dists)
    return labels, dists


def _kmeans_pp(x: np.ndarray, x_sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: first centre uniform, each next one drawn with probability ~ D(x)^2."""
    n = len(x)
    chosen = [int(rng.integers(n))]
    closest = np.full(n, np.inf, dtype=np.float64)
    for _ in range(1, k):
        c = x[chosen[-1]]
        d = x_sq - 2.0 * (x @ c) + float(c @ c)
        np.minimum(closest, np.maximum(d, 0.0), out=closest)
        cumulative = np.cumsum(closest)
        total = cumulative[-1]
        if not total > 0.0:  # every point coincides with a chosen centre: pick uniformly
            chosen.append(int(rng.integers(n)))
            continue
        pick = int(np.searchsorted(cumulative, rng.random() * total, side="right"))
        chosen.append(min(pick, n - 1))
    return x[chosen].copy()


def _reseed_empty(labels: np.ndarray, dists: np.ndarray, k: int) -> bool:
    """Give every empty cluster the point currently farthest from its centre (in place).

    A point is only taken from a cluster that keeps at least one other member, so no new empty
    cluster is created. Returns True if any label changed.
    """
    counts = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if len(empty) == 0:
        return False
    order = np.argsort(-dists, kind="stable")
    cursor = 0
    for cluster in empty:
        while cursor < len(order) and counts[labels[order[cursor]]] <= 1:
            cursor += 1
        if cursor == len(order):
            break
        point = order[cursor]
        cursor += 1
        counts[labels[point]] -= 1
        labels[point] = cluster
        counts[cluster] = 1
        dists[point] = 0.0
    return True


def _means(x: np.ndarray, labels: np.ndarray, k: int, previous: np.ndarray) -> np.ndarray:
    """Cluster means (float32); a cluster with no members keeps its previous centre.

    Computed as one matmul with a [k, N] averaging matrix (1/n_k where point i is in cluster k),
    far faster than a scatter-add over rows.
    """
    n = len(x)
    counts = np.bincount(labels, minlength=k)
    weights = np.zeros((k, n), dtype=np.float32)
    weights[labels, np.arange(n)] = 1.0 / counts[labels]
    centres = weights @ x
    empty = counts == 0
    centres[empty] = previous[empty]
    return centres


def _kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on x; returns (centres [k, D], nearest-centre labels of x under them)."""
    x_sq = np.einsum("nd,nd->n", x, x)
    centres = _kmeans_pp(x, x_sq, k, rng)
    labels, dists = _assign(x, centres, x_sq)
    for _ in range(iterations):
        _reseed_empty(labels, dists, k)
        centres = _means(x, labels, k, centres)
        new_labels, dists = _assign(x, centres, x_sq)
        if np.array_equal(new_labels, labels):
            labels = new_labels
            break
        labels = new_labels
    return centres, labels


class ResidualKMeans:
    """A fitted residual k-means codebook: `stages` codebooks of `options` centres in R^dim."""

    def __init__(self, centres: list[np.ndarray]):
        if len(centres) == 0:
            raise ValueError("ResidualKMeans needs at least one stage of centres")
        arrays = [np.asarray(c, dtype=np.float32) for c in centres]
        shape = arrays[0].shape
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"each stage's centres must be shaped [K, D] with K, D >= 1, got {list(shape)}")
        for i, a in enumerate(arrays):
            if a.shape != shape:
                raise ValueError(f"stage {i} centres are shaped {list(a.shape)}, stage 0 {list(shape)}")
            if not np.isfinite(a).all():
                raise ValueError(f"stage {i} centres hold NaN or infinite values")
        self._centres = np.ascontiguousarray(np.stack(arrays))  # [stages, K, D]

    @property
    def stages(self) -> int:
        return self._centres.shape[0]

    @property
    def options(self) -> int:
        return self._centres.shape[1]

    @property
    def dim(self) -> int:
        return self._centres.shape[2]

    @property
    def centres(self) -> list[np.ndarray]:
        """Copies of the per-stage centre arrays, each float32 [K, D]."""
        return [c.copy() for c in self._centres]

    @property
    def bits(self) -> float:
        """Code length in bits: stages * log2(options)."""
        return self.stages * math.log2(self.options)

    def __repr__(self) -> str:
        return f"ResidualKMeans(stages={self.stages}, options={self.options}, dim={self.dim})"

    # ---------------------------------------------------------------- fitting

    @classmethod
    def fit(cls, data: np.ndarray, stages: int, options: int, iterations: int = 20, seed: int = 0,
            progress: Callable[[int], object] | None = None) -> "ResidualKMeans":
        """Fit `stages` rounds of k-means (K = `options`) on successive residuals of `data` [N, D].

        `iterations` caps the Lloyd iterations per stage (it stops early once no assignment
        changes). `progress(stage_index)` (0-based) is called after each stage is done.
        """
        x = _as_data(data, None)
        if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or stages < 1:
            raise ValueError(f"stages must be an integer >= 1, got {stages!r}")
        if isinstance(options, bool) or not isinstance(options, (int, np.integer)) or options < 1:
            raise ValueError(f"options must be an integer >= 1, got {options!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
            raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
        if len(x) < options:
            raise ValueError(f"need at least options={options} data rows to fit, got {len(x)}")
        rng = np.random.default_rng(seed)
        residual = x.copy()
        centres = []
        for stage in range(int(stages)):
            stage_centres, labels = _kmeans(residual, int(options), int(iterations), rng)
            residual -= stage_centres[labels]
            centres.append(stage_centres)
            if progress is not None:
                progress(stage)
        return cls(centres)

    # ---------------------------------------------------------------- coding

    def encode(self, data: np.ndarray, stages: int | None = None) -> np.ndarray:
        """Greedy codes int64 [N, stages]: at each stage the nearest centre to the residual."""
        x = _as_data(data, self.dim, allow_empty=True)
        if stages is None:
            stages = self.stages
        if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or not 0 <= stages <= self.stages:
            raise ValueError(f"stages must be an integer in 0..{self.stages}, got {stages!r}")
        n = len(x)
        codes = np.empty((n, int(stages)), dtype=np.int64)
        # One outer block spans the same rows as _assign's blocks, so the arithmetic (and hence
        # any near-tie decision) is the same as in `fit` on the same data.
        for start in range(0, n, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, n)
            residual = x[start:stop].copy()
            for s in range(int(stages)):
                labels, _ = _assign(residual, self._centres[s])
                codes[start:stop, s] = labels
                residual -= self._centres[s][labels]
        return codes

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Sum of the chosen centres of the first n = indices.shape[1] stages; float32 [N, D].

        Not clipped: callers clip to the pixel range themselves.
        """
        idx = np.asarray(indices)
        if idx.ndim != 2:
            raise ValueError(f"indices must be shaped [N, n], got {list(idx.shape)}")
        if idx.shape[1] > self.stages:
            raise ValueError(f"indices have {idx.shape[1]} stages, the model has {self.stages}")
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers, got {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.options):
            raise ValueError(f"indices must lie in 0..{self.options - 1}")
        out = np.zeros((idx.shape[0], self.dim), dtype=np.float32)
        for s in range(idx.shape[1]):
            out += self._centres[s][idx[:, s]]
        return out

    # ---------------------------------------------------------------- files

    def save(self, path: str | Path) -> None:
        """Write an .npz (no pickled objects) atomically: centres and a JSON metadata record."""
        path = Path(path)
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "stages": self.stages,
                "options": self.options, "dim": self.dim}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), centres=self._centres)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> "ResidualKMeans":
        """Read a file written by `save`; ValueError (one line) if it is damaged or incompatible."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                if "meta" not in archive.files or "centres" not in archive.files:
                    raise ValueError("not a residual k-means file (missing meta or centres)")
                meta_arr = archive["meta"]
                centres = archive["centres"]
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file") from None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: damaged or not a residual k-means file "
                             f"({_one_line(exc)})") from None
        except Exception as exc:  # e.g. zlib.error or struct errors from a mangled archive
            raise ValueError(f"{path}: damaged residual k-means file ({type(exc).__name__}: "
                             f"{_one_line(exc)})") from None
        try:
            if meta_arr.dtype.kind != "U" or meta_arr.ndim != 0:
                raise ValueError("metadata record has the wrong type")
            meta = json.loads(str(meta_arr[()]))
            if not isinstance(meta, dict):
                raise ValueError("metadata record is not an object")
        except ValueError as exc:
            raise ValueError(f"{path}: damaged metadata ({_one_line(exc)})") from None
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{path}: not a residual k-means file (format {meta.get('format')!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: residual k-means format version {meta.get('version')!r} "
                             f"is not supported (this code reads version {FORMAT_VERSION})")
        expected = [meta.get("stages"), meta.get("options"), meta.get("dim")]
        if centres.dtype != np.float32 or list(centres.shape) != expected:
            raise ValueError(f"{path}: centres are {centres.dtype} {list(centres.shape)}, "
                             f"metadata says float32 {expected}")
        try:
            return cls(list(centres))
        except ValueError as exc:
            raise ValueError(f"{path}: {_one_line(exc)}") from None


def _as_data(data: np.ndarray, dim: int | None, allow_empty: bool = False) -> np.ndarray:
    x = np.asarray(data)
    if x.ndim != 2:
        raise ValueError(f"data must be shaped [N, D], got {list(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"data rows have {x.shape[1]} values, the model expects {dim}")
    if (x.shape[0] == 0 and not allow_empty) or x.shape[1] == 0:
        raise ValueError(f"data is empty (shape {list(x.shape)})")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("data holds NaN or infinite values")
    return x


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
