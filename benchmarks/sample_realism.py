"""Do random codes decode to realistic digits? A classifier's confidence on `cloost sample` output.

Trains a small convolutional classifier on the training digits, then reports, for the real test
digits and for uniformly random codes of each bundled model (what `cloost sample` draws), the
share classified with confidence > 0.9 and how the samples spread over the ten classes. The
reference point in the issue: VQ-DRAW's released MNIST model has 85% of its random samples above
0.9 with its judge's classifier, real digits 94%. Our classifier is not that judge (it is trained
on 8,000 digits only), so compare the rows with each other, not with those figures.

    python benchmarks/sample_realism.py [--data ../shared/data/mnist] [--count 1000] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from cloostcodec import codec
from cloostcodec.datasets import load_images, to_unit_float
from cloostcodec.modelfile import bundled_models
from cloostcodec.pictures import random_codes

CONFIDENT = 0.9


def classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, 10),
    )


def shifted(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to 2 pixels in each direction (zero fill): more digits from 8,000."""
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = classifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 64):
            pick = order[start:start + 64]
            loss = nn.functional.cross_entropy(net(shifted(images[pick], generator)), labels[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


@torch.inference_mode()
def probabilities(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(images[i:i + 1000]).softmax(1) for i in range(0, len(images), 1000)])


def summary(name: str, probs: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    confidence, predicted = probs.max(1)
    counts = torch.bincount(predicted, minlength=10).double()
    share = counts / counts.sum()
    entropy = -float((share[share > 0] * share[share > 0].log()).sum())
    accuracy = f"{100 * float((predicted == labels).double().mean()):.1f}%" if labels is not None else "-"
    return (f"{name:<26} {len(probs):>6} {100 * float((confidence > CONFIDENT).double().mean()):>9.1f}% "
            f"{int((share >= 0.02).sum()):>8}/10 {100 * entropy / math.log(10):>12.1f}% {accuracy:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mnist", help="IDX folder with train and test digits")
    parser.add_argument("--count", type=int, default=1000, help="random codes per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def tensors(split):
        data = load_images(args.data, split=split)
        return torch.from_numpy(to_unit_float(data.images)), torch.tensor(data.labels, dtype=torch.long)

    train_x, train_y = tensors("train")
    test_x, test_y = tensors("test")
    start = time.perf_counter()
    net = train_classifier(train_x, train_y, args.epochs, args.seed)
    print(f"classifier: {args.epochs} epochs on {len(train_x)} training digits in "
          f"{time.perf_counter() - start:.0f} s\n")
    print(f"{'images':<26} {'count':>6} {'conf > 0.9':>10} {'classes':>11} {'class entropy':>13} {'accuracy':>9}")
    print(summary("real test digits", probabilities(net, test_x), test_y))
    for name in bundled_models():
        model = codec.load_model(name)
        pixels = codec.decode_codes(random_codes(model, args.count, seed=args.seed), model)
        print(summary(f"cloost sample, {name}", probabilities(net, torch.from_numpy(to_unit_float(pixels)))))
    print(f"\nclasses: how many of the ten digits get at least 2% of the images; class entropy: "
          f"of the predicted classes, as a share of ln 10 (100% = all ten equally often).")


if __name__ == "__main__":
    main()
