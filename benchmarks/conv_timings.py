"""The conv EP timings side by side: speed relative to `corrected`, and cos(update, BP) at init.

    python benchmarks/conv_timings.py [--seeds 3] [--batches 2] [--repeats 3] [--threads 1]
                                      [--device cpu|cuda] [--synthetic]

MNIST conv geometry (channels 32-64, T/K 20/10, β 0.01, batch 128) on the first Fashion-MNIST
training images (random images with --synthetic). Per timing preset: training-step time relative
to `corrected` (timed interleaved, fastest repeat), and the per-layer cosine between the EP
update and the autograd BP gradient of the feed-forward twin at initialisation, mean ± std over
seeds, for the nudges of Table 2 (0.25) and Table 1 (0.1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from frernn import data as datasets
from frernn.alignment import layer_cosines
from frernn.methods.ep_conv import ConvEP
from frernn.models.conv import ConvFRERNN
from frernn.models.timing import TIMINGS

BATCH, T, K, BETA = 128, 20, 10, 0.01


def learner(timing: str, seed: int, nudge: float, device: torch.device) -> ConvEP:
    gen = torch.Generator().manual_seed(seed)
    net = ConvFRERNN((1, 28, 28), [32, 64], 10, BETA, generator=gen, timing=TIMINGS[timing])
    return ConvEP(net.to(device), T, K, nudge)


def step_seconds(engines: dict[str, ConvEP], x, y, repeats: int, device) -> dict[str, float]:
    """Fastest time of one training step per timing, timed interleaved (A B C ... A B C ...),
    after one warm-up step each."""
    for engine in engines.values():
        engine.train_step(x[0], y[0])
    best = dict.fromkeys(engines, float("inf"))
    for _ in range(repeats):
        for name, engine in engines.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for xb, yb in zip(x, y, strict=True):
                engine.train_step(xb, yb)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], (time.perf_counter() - start) / len(x))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=2, help="timed training batches")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--data-dir", type=Path, default=datasets.default_data_dir())
    parser.add_argument("--synthetic", action="store_true", help="random images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n = BATCH * args.batches
    if args.synthetic:
        gen = torch.Generator().manual_seed(0)
        images, labels = torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,))
    else:
        loaded = datasets.load("fashion_mnist", args.data_dir, torch.device("cpu"))
        images, labels = loaded.train_x[:n], loaded.train_y[:n]
    images, labels = images.to(device), labels.to(device)
    x, y = images.split(BATCH), labels.split(BATCH)
    print(
        f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.1f}; {'random' if args.synthetic else 'Fashion-MNIST'} "
        f"images, batch {BATCH}, T/K {T}/{K}, β {BETA}"
    )
    engines = {name: learner(name, 0, 0.25, device) for name in TIMINGS}
    seconds = step_seconds(engines, x, y, args.repeats, device)
    print("\n| timing | s per training step | vs corrected |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.3f} | {s / seconds['corrected']:.2f}x |")
    print(f"\ncos(EP update, BP gradient) at init, first batch, seeds 0-{args.seeds - 1}:")
    print("\n| timing | nudge | conv1 | conv2 | fc |\n|---|---|---|---|---|")
    for name in TIMINGS:
        for nudge in (0.25, 0.1):
            per_layer: dict[str, list[float]] = {}
            for seed in range(args.seeds):
                cosines = layer_cosines(learner(name, seed, nudge, device), x[0], y[0])
                for layer, value in cosines.items():
                    per_layer.setdefault(layer, []).append(value)
            cells = [
                f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"
                for v in per_layer.values()
            ]
            print(f"| {name} | {nudge} | " + " | ".join(cells) + " |")
    print(f"\nload at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
