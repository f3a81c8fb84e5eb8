"""P-EP's relaxation next to FRE-RNN's EP on the three Table 1 architectures, in one process.

    python benchmarks/pep.py [--quick] [--device cpu|cuda] [--families 2hl 3hl conv]
                             [--threads N] [--repeats R] [--synthetic]

Per family (2HL-512, 3HL-512, MNIST conv): FRE-RNN EP at its Table 1 settings, P-EP at its
published settings (batch 20) and P-EP at the FRE-RNN row's batch size. One epoch (60k training
samples, optimiser step included, plus the 10k-sample test evaluation) is extrapolated from the
fastest of a few interleaved repeats; samples/s and relaxation steps/s are of training. The
ratio is P-EP's time per epoch over FRE-RNN's.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

import torch
from engine import Bench, add_common_arguments, setup, timed

from frernn import data as datasets
from frernn.methods.ep import LayeredEP
from frernn.methods.ep_conv import ConvEP
from frernn.methods.pep import PrototypicalEP
from frernn.models.conv import ConvFRERNN
from frernn.models.graph import LayerGraph
from frernn.models.layered import LayeredFRERNN
from frernn.models.pep import ConvPEPNet, PEPNet

TRAIN_SAMPLES, TEST_SAMPLES = 60_000, 10_000


@dataclass(frozen=True)
class Setting:
    """One learner of a family: FRE-RNN EP or P-EP, with its steps and batch size."""

    family: str
    method: str
    T: int
    K: int
    batch: int
    eval_batch: int

    def build(self, gen: torch.Generator, device: torch.device):
        """The learner on ``device``."""
        conv, depth = self.family == "conv", 3 if self.family == "3hl" else 2
        if self.method == "FRE-RNN EP":
            if conv:
                net = ConvFRERNN((1, 28, 28), [32, 64], 10, beta=0.01, generator=gen)
                return ConvEP(net.to(device), self.T, self.K, 0.25)
            graph = LayerGraph.build("chain", depth, 0.2, gen)
            net = LayeredFRERNN(784, 10, graph, 512, "symmetric", 1.0, 0.01, gen)
            return LayeredEP(net.to(device), self.T, self.K, 0.1, "fixed")
        if conv:
            return PrototypicalEP(
                ConvPEPNet((1, 28, 28), [32, 64], 10, gen).to(device), self.T, self.K, 0.4
            )
        return PrototypicalEP(PEPNet(784, depth, 512, 10, gen).to(device), self.T, self.K, 0.5)


def family(name: str, ep: tuple[int, int, int], pep: tuple[int, int], eval_batch: int):
    """FRE-RNN EP (T, K, batch), P-EP published (batch 20) and P-EP at EP's batch."""
    t, k, batch = ep
    return [
        Setting(name, "FRE-RNN EP", t, k, batch, 1000),
        Setting(name, "P-EP", *pep, 20, eval_batch),
        Setting(name, f"P-EP b{batch}", *pep, batch, eval_batch),
    ]


FAMILIES = {
    "2hl": family("2hl", (10, 5, 500), (100, 20), 1000),
    "3hl": family("3hl", (18, 10, 500), (180, 20), 1000),
    "conv": family("conv", (20, 10, 128), (200, 10), 100),
}


@dataclass
class Row:
    setting: Setting
    train_s: float
    eval_s: float

    @property
    def epoch(self) -> float:
        s = self.setting
        return TRAIN_SAMPLES / s.batch * self.train_s + TEST_SAMPLES / s.eval_batch * self.eval_s

    @property
    def samples_s(self) -> float:
        return self.setting.batch / self.train_s


def measure(settings: list[Setting], data: datasets.Data, repeats: int, device) -> list[Row]:
    """Interleaved repeats (A B C A B C ...) of one training batch and one evaluation batch."""
    benches = [Bench(s.build(torch.Generator().manual_seed(0), device), device) for s in settings]
    best = [[math.inf, math.inf] for _ in settings]
    for round_ in range(repeats + 1):  # round 0 warms up (and captures CUDA graphs)
        for s, bench, times in zip(settings, benches, best, strict=True):
            batch = [(data.train_x[: s.batch], data.train_y[: s.batch])]
            train = timed(lambda b=bench, batch=batch: b.train(batch), device)
            test = data.test_x[: s.eval_batch]
            evaluate = timed(lambda b=bench, test=test: b.evaluate(test), device)
            if round_:
                times[0], times[1] = min(times[0], train), min(times[1], evaluate)
    return [Row(s, *t) for s, t in zip(settings, best, strict=True)]


def table(rows: list[Row]) -> str:
    """The results as a markdown table, ratios against the family's FRE-RNN EP row."""
    head = (
        "| family | method | batch | T+K | s/epoch | samples/s | relaxation steps/s | "
        "P-EP / FRE-RNN s/epoch |"
    )
    lines = [head, "|" + "---|" * 8]
    base = {r.setting.family: r.epoch for r in rows if r.setting.method == "FRE-RNN EP"}
    for r in rows:
        s = r.setting
        ratio = "" if s.method == "FRE-RNN EP" else f"{r.epoch / base[s.family]:.1f}x"
        lines.append(
            f"| {s.family} | {s.method} | {s.batch} | {s.T + s.K} | {r.epoch:.0f} | "
            f"{r.samples_s:.0f} | {r.samples_s * (s.T + s.K):.3g} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed repeat")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    add_common_arguments(parser)
    args = parser.parse_args()
    device, data = setup(args)
    print(
        f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows = []
    for name in args.families:
        rows += measure(FAMILIES[name], data, 1 if args.quick else args.repeats, device)
        print(f"{name}: done", flush=True)
    print(
        f"\nOne epoch = {TRAIN_SAMPLES} training + {TEST_SAMPLES} test samples, extrapolated from "
        f"one batch each (fastest repeat); load at end {os.getloadavg()[0]:.1f}\n"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
