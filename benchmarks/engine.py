"""Throughput of frernn's EP engine next to the plain dense baseline, measured in one process.

    python benchmarks/engine.py [--quick] [--device cpu|cuda] [--configs chain2 chain10 ...]
                                [--threads N] [--repeats R] [--batches B] [--synthetic]

Per configuration: one epoch (60k training samples plus the 10k-sample test evaluation),
extrapolated from timing a few batches of each (the output says how many); samples/s; peak
memory of a training step plus an evaluation batch; the engine/baseline ratio; and the
arithmetic bound (matmul FLOPs and tanh evaluations at this machine's measured rates). Engine
and baseline are timed interleaved (A B A B ...) and the fastest repeat counts, since shared
machines are noisy. Before timing, both must give the same updates (float64, to 1e-5).
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from dense_baseline import DenseEP, PlainConvEP

from frernn import data as datasets
from frernn.methods.ep import LayeredEP
from frernn.methods.ep_conv import ConvEP
from frernn.models.conv import ConvFRERNN
from frernn.models.graph import LayerGraph
from frernn.models.layered import LayeredFRERNN, tanh_of_scaled

TRAIN_SAMPLES, TEST_SAMPLES, EVAL_BATCH = 60_000, 10_000, 1000
CHECK_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Config:
    """One benchmarked network: a layered graph (depth, topology) or the MNIST conv net."""

    name: str
    T: int
    K: int
    batch: int
    depth: int = 0
    width: int = 64
    topology: str = "chain"
    feedback: str = "symmetric"
    rule: str = "fixed"
    beta: float = 0.1
    nudge: float = 0.1

    @property
    def conv(self) -> bool:
        return self.depth == 0


def layered(name: str, depth: int, **kw) -> Config:
    return Config(name, T=10 * depth, K=5 * depth, batch=500, depth=depth, **kw)


CONFIGS = {
    c.name: c
    for c in [
        *(layered(f"chain{d}", d) for d in (2, 3, 5, 10)),
        *(layered(f"residual{d}", d, topology="residual", rule="accumulate") for d in (10, 20)),
        layered("agt10", 10, topology="agt", feedback="asymmetric", rule="accumulate"),
        Config("chain3x512", 18, 10, 500, depth=3, width=512, beta=0.01),
        Config("conv", 20, 10, 128, beta=0.01, nudge=0.25, rule="recompute"),
    ]
}


def build(cfg: Config, device: torch.device, dtype: torch.dtype = torch.float32):
    """(engine learner, baseline learner) on two copies of one seeded net."""
    gen = torch.Generator().manual_seed(0)
    if cfg.conv:
        net = ConvFRERNN((1, 28, 28), [32, 64], 10, beta=cfg.beta, generator=gen)
        twin = copy.deepcopy(net).to(device, dtype)
        return (
            ConvEP(net.to(device, dtype), cfg.T, cfg.K, cfg.nudge),
            PlainConvEP(twin, cfg.T, cfg.K, cfg.nudge),
        )
    graph = LayerGraph.build(cfg.topology, cfg.depth, 0.2, gen)
    net = LayeredFRERNN(784, 10, graph, cfg.width, cfg.feedback, 1.0, cfg.beta, gen)
    twin = copy.deepcopy(net).to(device, dtype)
    net = net.to(device, dtype)
    return (
        LayeredEP(net, cfg.T, cfg.K, cfg.nudge, cfg.rule),
        DenseEP(twin, cfg.T, cfg.K, cfg.nudge, cfg.rule),
    )


def grads(learner, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    learner.train_step(x, y)
    return {name: p.grad.clone() for name, p in learner.net.named_parameters()}


def update_difference(cfg: Config, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest |engine - baseline| update, relative to the update's scale, in float64."""
    engine, dense = build(cfg, x.device, torch.float64)
    return relative_difference(grads(engine, x.double(), y), grads(dense, x.double(), y))


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a - b| over all parameters, relative to the largest |a| (the update's scale)."""
    scale = max(float(g.abs().max()) for g in a.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


def graph_plumbing_difference(x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest weight difference after 3 Adam steps: the learner's own path (captured CUDA graphs
    on CUDA, eager on CPU) vs GraphedCall's rerun stand-in (same static-buffer plumbing)."""
    results = []
    for graphed in (False, True):
        engine, _ = build(CONFIGS["chain2"], x.device)
        if graphed:
            engine.graph_calls(capture=False)
        opt = torch.optim.Adam(engine.net.parameters(), 1e-3, fused=True)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            engine.train_step(x, y)
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in engine.net.parameters()]))
    return float((results[0] - results[1]).abs().max())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class Bench:
    """Times training batches (optimizer step included) and evaluation batches of a learner."""

    def __init__(self, learner, device: torch.device) -> None:
        self.learner, self.device = learner, device
        self.opt = torch.optim.Adam(learner.net.parameters(), 1e-4, fused=True)

    def train(self, batches) -> None:
        for x, y in batches:
            self.opt.zero_grad(set_to_none=True)
            self.learner.train_step(x, y)
            self.opt.step()

    def evaluate(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            for xb in x.split(EVAL_BATCH):
                self.learner.predict(xb).argmax(1)


def peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """Peak bytes of tensors allocated while ``fn`` runs: CUDA allocator statistics, or on CPU
    the profiler's memory timeline (a private torch API: NaN if it is unavailable)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # silence the profiler's GPU probes
    try:
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(
            activities=activities, profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            fn()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(device)
        return max(sum(s) for s in sizes) - sum(sizes[0])
    except (ImportError, AttributeError, RuntimeError, ValueError):
        return math.nan


def throughput(fn: Callable[[], object], work: float, device: torch.device) -> float:
    """Best of 3 timings of ``fn`` (after a warm-up call): ``work`` units per second."""
    fn()
    return work / min(timed(fn, device) for _ in range(3))


def rates(device: torch.device) -> tuple[float, float]:
    """(matmul FLOP/s, tanh/s): the best measured over a few shapes and both tanh routes."""
    best_mm = 0.0
    for m, k, n in ((500, 64, 64), (500, 512, 512), (1024, 1024, 1024), (500, 784, 64)):
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        out = torch.empty(m, n, device=device)
        reps = max(3, int(2e9 / (2 * m * k * n)))

        def matmuls(a=a, b=b, out=out, reps=reps) -> None:
            for _ in range(reps):
                torch.mm(a, b, out=out)

        best_mm = max(best_mm, throughput(matmuls, 2 * m * k * n * reps, device))
    x = torch.randn(10, 500, 64, device=device)
    out = torch.empty_like(x)

    def torch_tanh() -> None:
        for _ in range(50):
            torch.tanh(x, out=out)

    def engine_tanh() -> None:
        for _ in range(50):
            tanh_of_scaled(x, out)

    best_tanh = max(throughput(f, 50 * x.numel(), device) for f in (torch_tanh, engine_tanh))
    return best_mm, best_tanh


def layered_work(cfg: Config, m: int, train: bool) -> tuple[float, float]:
    """(matmul FLOPs, tanh evaluations) the engine does for one batch of ``m`` samples; on
    graphs whose edges all join opposite parities its free phase updates half the layers."""
    graph = LayerGraph.build(cfg.topology, cfg.depth, 0.2, torch.Generator().manual_seed(0))
    n, edges, forward = cfg.width, len(graph.edges), len(graph.forward_edges)
    free_edges, free_layers = float(edges * cfg.T), float(cfg.depth * cfg.T)
    if all((j - i) % 2 for i, j in graph.edges):
        into = [sum((j - 1) % 2 == p for _, j in graph.edges) for p in (0, 1)]
        layers = [len(range(p, cfg.depth, 2)) for p in (0, 1)]
        free_edges = sum(into[k % 2] for k in range(cfg.T))
        free_layers = sum(layers[k % 2] for k in range(cfg.T))
    steps_edges = free_edges + (cfg.K * edges if train else 0)
    flops = 2 * m * 784 * n + 2 * m * n * n * steps_edges + 2 * m * n * 10
    if train:
        readouts = {"fixed": 0, "accumulate": 1, "recompute": cfg.K}[cfg.rule]
        flops += 2 * m * n * 10 * (2 + readouts)  # nudge E_out, W_out grad, extra readouts
        flops += 2 * m * 784 * n + 2 * m * n * n * forward  # grads W_0, W_ij
    return flops, (free_layers + (cfg.K * cfg.depth if train else 0)) * m * n


def conv_work(cfg: Config, m: int, train: bool) -> tuple[float, float]:
    """(conv FLOPs, 0) of one batch of the MNIST conv net (elementwise work not counted)."""
    conv1 = 2 * m * 32 * 24 * 24 * 1 * 25
    conv2 = 2 * m * 64 * 8 * 8 * 32 * 25
    steps = cfg.T + (cfg.K if train else 0)
    flops = conv1 + steps * 2 * conv2  # forward conv2 and its transpose (feedback) per step
    if train:
        flops += conv1 + conv2 + 2 * 2 * m * 1024 * 10  # weight grads, fc and nudge
    return flops, 0.0


def epoch_bound(cfg: Config, mm_rate: float, tanh_rate: float) -> float:
    """Seconds per epoch if every matmul ran at ``mm_rate`` and every tanh at ``tanh_rate``."""
    work = conv_work if cfg.conv else layered_work
    train_flops, train_tanh = work(cfg, cfg.batch, True)
    eval_flops, eval_tanh = work(cfg, EVAL_BATCH, False)
    scale_train, scale_eval = TRAIN_SAMPLES / cfg.batch, TEST_SAMPLES / EVAL_BATCH
    flops = scale_train * train_flops + scale_eval * eval_flops
    tanhs = scale_train * train_tanh + scale_eval * eval_tanh
    return flops / mm_rate + tanhs / tanh_rate


@dataclass
class Row:
    name: str
    epoch: tuple[float, float]
    samples_s: tuple[float, float]
    peak: tuple[float, float]
    bound: float
    check: float
    batches: int


def measure(cfg: Config, data: datasets.Data, args, device, mm_rate, tanh_rate) -> Row:
    """Time engine and baseline interleaved on the same batches; the fastest repeat counts."""
    n_train = args.batches or (1 if args.quick or cfg.depth >= 10 or cfg.conv else 3)
    x, y = data.train_x, data.train_y
    batches = [
        (x[i * cfg.batch : (i + 1) * cfg.batch], y[i * cfg.batch : (i + 1) * cfg.batch])
        for i in range(n_train)
    ]
    test = data.test_x[:EVAL_BATCH]
    check = update_difference(cfg, x[:64], y[:64]) if not cfg.conv else conv_check(x, y, device)
    benches = [Bench(learner, device) for learner in build(cfg, device)]
    peaks = tuple(
        peak_memory(lambda b=b: (b.train(batches[:1]), b.evaluate(test)), device) / 2**20
        for b in benches
    )
    best = [[math.inf, math.inf] for _ in benches]
    for _ in range(1 if args.quick else args.repeats):
        for bench, times in zip(benches, best, strict=True):
            times[0] = min(times[0], timed(lambda b=bench: b.train(batches), device) / n_train)
            times[1] = min(times[1], timed(lambda b=bench: b.evaluate(test), device))
    epochs = tuple(TRAIN_SAMPLES / cfg.batch * t + TEST_SAMPLES / EVAL_BATCH * e for t, e in best)
    samples = tuple(cfg.batch / t for t, _ in best)
    bound = epoch_bound(cfg, mm_rate, tanh_rate)
    return Row(cfg.name, epochs, samples, peaks, bound, check, n_train)


def conv_check(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Largest relative update difference of conv engine and baseline (float64, 16 samples)."""
    engine, plain = build(CONFIGS["conv"], device, torch.float64)
    return relative_difference(
        grads(engine, x[:16].double(), y[:16]), grads(plain, x[:16].double(), y[:16])
    )


def table(rows: list[Row]) -> str:
    """The results as a markdown table."""
    head = (
        "| config | engine s/epoch | dense s/epoch | speed-up | engine samples/s | "
        "dense samples/s | engine peak MiB | dense peak MiB | bound s/epoch | engine/bound | "
        "update diff |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.epoch[0]:.1f} | {r.epoch[1]:.1f} | {r.epoch[1] / r.epoch[0]:.2f}x | "
            f"{r.samples_s[0]:.0f} | {r.samples_s[1]:.0f} | {r.peak[0]:.0f} | {r.peak[1]:.0f} | "
            f"{r.bound:.1f} | {r.epoch[0] / r.bound:.2f}x | {r.check:.1e} |"
        )
    return "\n".join(lines)


def synthetic(device: torch.device) -> datasets.Data:
    """Uniform random 28x28 images and labels (timings do not depend on the pixels)."""
    gen = torch.Generator().manual_seed(0)
    x = [torch.rand(n, 1, 28, 28, generator=gen).to(device) for n in (6000, EVAL_BATCH)]
    y = [torch.randint(0, 10, (n,), generator=gen).to(device) for n in (6000, EVAL_BATCH)]
    return datasets.Data(x[0], y[0], x[1], y[1], info=datasets.dataset_info("fashion_mnist"))


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every benchmark takes: device, threads, repeats, data."""
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: one job per core, as the pipeline runs; 0: torch's)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    parser.add_argument("--data-dir", type=Path, default=datasets.default_data_dir())
    parser.add_argument(
        "--synthetic", action="store_true", help="random images instead of Fashion-MNIST"
    )


def setup(args: argparse.Namespace) -> tuple[torch.device, datasets.Data]:
    """Threads set, (device, data) of the common arguments."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.synthetic:
        return device, synthetic(device)
    return device, datasets.load("fashion_mnist", args.data_dir, device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, one batch")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batches", type=int, default=0, help="timed training batches")
    add_common_arguments(parser)
    args = parser.parse_args()
    device, data = setup(args)
    plumbing = graph_plumbing_difference(data.train_x[:100], data.train_y[:100])
    mm_rate, tanh_rate = rates(device)
    print(
        f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.1f}; matmul {mm_rate / 1e9:.0f} GFLOP/s, "
        f"tanh {tanh_rate / 1e9:.2f} G/s; graph plumbing diff {plumbing:.1e}",
        flush=True,
    )
    rows = []
    for name in args.configs:
        rows.append(measure(CONFIGS[name], data, args, device, mm_rate, tanh_rate))
        r = rows[-1]
        print(
            f"{name}: timed {r.batches} training batch(es) + {EVAL_BATCH} test samples, "
            f"speed-up {r.epoch[1] / r.epoch[0]:.2f}x",
            flush=True,
        )
    print(
        f"\nOne epoch = {TRAIN_SAMPLES} training + {TEST_SAMPLES} test samples, extrapolated; "
        f"load at end {os.getloadavg()[0]:.1f}\n"
    )
    print(table(rows))
    failed = [r.name for r in rows if not r.check <= CHECK_TOLERANCE]
    if failed or not plumbing <= CHECK_TOLERANCE:
        print(f"\nMISMATCH: engine and baseline updates differ for {failed or 'graph plumbing'}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
