"""Would the conv net's seeds pack? Grouped convolution (groups = R) vs R separate convolutions.

    python benchmarks/conv_grouping.py [--device cpu|cuda] [--runs 5 35] [--threads N]

Times the work of one relaxation step of the MNIST conv net (batch 128): its second layer's
convolution (32 -> 64 channels, 5x5 on 12x12) and the transposed convolution that carries the
feedback back, for R runs either as R separate calls or as one grouped call on the runs'
channels side by side. Fastest of 5 repeats of 20 steps each; the ratio > 1 means grouping pays.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F


def timed(fn, device: torch.device, repeats: int = 5) -> float:
    """Fastest of ``repeats`` timings of ``fn`` after a warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def compare(runs: int, device: torch.device, steps: int = 20) -> tuple[float, float]:
    """(seconds separate, seconds grouped) of ``steps`` conv + transposed-conv pairs."""
    gen = torch.Generator().manual_seed(0)
    x = [torch.rand(128, 32, 12, 12, generator=gen).to(device) for _ in range(runs)]
    w = [torch.randn(64, 32, 5, 5, generator=gen).to(device) * 0.05 for _ in range(runs)]
    xg, wg = torch.cat(x, 1), torch.cat(w, 0)

    def separate() -> None:
        for _ in range(steps):
            for xr, wr in zip(x, w, strict=True):
                F.conv_transpose2d(F.conv2d(xr, wr), wr)

    def grouped() -> None:
        for _ in range(steps):
            F.conv_transpose2d(F.conv2d(xg, wg, groups=runs), wg, groups=runs)

    return timed(separate, device), timed(grouped, device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--runs", type=int, nargs="+", default=[5])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    for runs in args.runs:
        separate, grouped = compare(runs, device)
        print(
            f"R={runs}: separate {1e3 * separate:.0f} ms, grouped {1e3 * grouped:.0f} ms "
            f"(20 steps); grouping speed-up {separate / grouped:.2f}x",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
