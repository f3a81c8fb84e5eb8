"""Throughput of packed training: R runs of one shape trained as one batched pack.

    python benchmarks/packing.py [--device cpu|cuda] [--runs 1 5 35] [--depth 2]
                                 [--batches B] [--threads N] [--synthetic]

Per pack size R and mode (eager; CUDA graphs, which on CPU is their rerun stand-in): a few
training steps of all members (batched EP step plus each member's own Adam step) and one
evaluation batch are timed, every setup once per round (interleaved, since shared machines are
noisy; the fastest round counts, after a warm-up), extrapolated to one epoch of 60k training
and 10k test samples, and printed as runs x epochs per second with the speed-up per run over
the first row (R = 1, eager), the peak memory of a step plus an evaluation batch, and the whole
paper's time (720 runs, cost model of ``frernn.experiments``) if every run trained at that
per-run speed-up. R = 1 is the unpacked path ``frernn train`` takes. For AGT nets the pack
runs on the union of its members' edges: the table gives that union's size over a member's
own edge count (the extra matmul work).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from engine import peak_memory, synthetic, timed

from frernn import data as datasets
from frernn import spec as run_spec
from frernn.experiments import build_plan, cpu_seconds, gpu_seconds
from frernn.packed import PackedTraining, step
from frernn.train import EVAL_BATCH, Run

TRAIN_SAMPLES, TEST_SAMPLES = 60_000, 10_000
REPO = Path(__file__).resolve().parents[1]


def base_spec(depth: int, topology: str) -> dict:
    """The paper's layered run of this depth on Fashion-MNIST (T = 10 L, K = 5 L); AGT nets
    with asymmetric feedback and the accumulate rule, so each seed draws its own edges."""
    agt = topology == "agt"
    return run_spec.resolve(
        {
            "dataset": "fashion_mnist",
            "model": {
                "depth": depth,
                "topology": topology,
                "feedback": "asymmetric" if agt else "symmetric",
            },
            "ep": {
                "T": 10 * depth,
                "K": 5 * depth,
                "beta": 0.1,
                "nudge_rule": "accumulate" if agt else "fixed",
            },
            "train": {"epochs": 50},
        }
    )


def members(spec: dict, runs: int, data: datasets.Data, device: torch.device, out: Path):
    """``runs`` Runs of ``spec`` with seeds 0.., each initialised as when trained alone."""
    return [
        Run({**spec, "seed": seed}, out / f"seed{seed}", out, device, data=data)
        for seed in range(runs)
    ]


def paper_hours(device: torch.device) -> float:
    """The cost model's whole-paper time (every run of the default target, unpacked), hours."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    plan = build_plan({**config, "scale": "paper"})
    estimate = gpu_seconds if device.type == "cuda" else cpu_seconds
    specs = [{**plan.run(rid).spec, "seed": s} for rid in plan.run_ids("runs") for s in plan.seeds]
    return sum(estimate(run_spec.resolve(s)) for s in specs) / 3600


class Setup:
    """A pack of ``runs`` members in ``mode`` (eager | graphs) with its timed work: a few
    training steps and one evaluation batch."""

    def __init__(self, spec, runs, mode, data, device, args, out: Path) -> None:
        self.runs, self.mode, self.device, self.batches = runs, mode, device, args.batches
        active = members(spec, runs, data, device, out)
        learner = PackedTraining(active).learner(active) if runs > 1 else active[0].learner
        own = sum(len(run.learner.net.graph.edges) for run in active) / runs
        union = len(learner.net.forward_edges) + len(learner.net.feedback_edges)
        self.edges = union / own if own else 1.0
        if mode == "eager":
            learner.cuda_graphs = False
        elif device.type == "cpu":
            learner.graph_calls(capture=False)
        self.active, self.learner, self.test = active, learner, data.test_x[:EVAL_BATCH]
        self.orders = [list(run.epoch_batches())[: args.batches] for run in active]
        self.tallies = [run.new_tally() for run in active]
        self.batch_size = spec["train"]["batch_size"]
        self.best = [math.inf, math.inf]

    def train(self) -> None:
        for batch in zip(*self.orders, strict=True):
            if self.runs == 1:
                (xb, yb), run = batch[0], self.active[0]
                run.optimizer.zero_grad(set_to_none=True)
                loss, logits = self.learner.train_step(xb, yb)
                run.update(self.tallies[0], loss, logits, yb)
            else:
                step(self.learner, self.active, batch, self.tallies)

    def evaluate(self) -> None:
        with torch.no_grad():
            self.learner.predict(self.test).argmax(-1)

    def time_once(self) -> None:
        """One timing of each; the fastest so far counts."""
        self.best[0] = min(self.best[0], timed(self.train, self.device) / self.batches)
        self.best[1] = min(self.best[1], timed(self.evaluate, self.device))

    def row(self) -> dict:
        peak = peak_memory(lambda: (self.train(), self.evaluate()), self.device) / 2**20
        step_s, eval_s = self.best
        epoch = TRAIN_SAMPLES / self.batch_size * step_s + TEST_SAMPLES / EVAL_BATCH * eval_s
        return {
            "runs": self.runs,
            "mode": self.mode,
            "step": step_s,
            "eval": eval_s,
            "epoch": epoch,
            "peak": peak,
            "edges": self.edges,
        }


def table(rows: list[dict], paper_h: float) -> str:
    """The results as a markdown table."""
    lines = [
        "| R | mode | step ms | eval ms | pack s/epoch | runs x epochs/s | per-run speed-up "
        "| peak MiB | edges / run's own | paper h (projected) |",
        "|" + "---|" * 10,
    ]
    base = rows[0]
    for r in rows:
        rate = r["runs"] / r["epoch"]
        speedup = rate / (base["runs"] / base["epoch"])
        lines.append(
            f"| {r['runs']} | {r['mode']} | {1e3 * r['step']:.1f} | {1e3 * r['eval']:.1f} | "
            f"{r['epoch']:.1f} | {rate:.3f} | {speedup:.2f}x | {r['peak']:.0f} | "
            f"{r['edges']:.2f} | {paper_h / speedup:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 5, 35])
    parser.add_argument("--modes", nargs="+", default=["eager", "graphs"])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--topology", default="chain", choices=("chain", "residual", "agt"))
    parser.add_argument("--batches", type=int, default=2, help="timed training batches")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's)")
    parser.add_argument("--data-dir", type=Path, default=datasets.default_data_dir())
    parser.add_argument("--synthetic", action="store_true", help="random images")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = base_spec(args.depth, args.topology)
    data = (
        synthetic(device)
        if args.synthetic
        else datasets.load("fashion_mnist", args.data_dir, device)
    )
    paper_h = paper_hours(device)
    print(
        f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.1f}; {args.topology} depth {args.depth}, T {spec['ep']['T']}, "
        f"K {spec['ep']['K']}, batch {spec['train']['batch_size']}; {args.batches} timed "
        f"batches, best of {args.repeats}; cost-model paper time unpacked {paper_h:.1f} h",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        setups = [
            Setup(spec, runs, mode, data, device, args, Path(tmp))
            for runs in args.runs
            for mode in args.modes
        ]
        for setup in setups:  # warm-up (and CUDA-graph capture)
            setup.train(), setup.evaluate()
        for repeat in range(args.repeats):
            for setup in setups:
                setup.time_once()
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
        rows = [setup.row() for setup in setups]
    print(f"\nload at end {os.getloadavg()[0]:.1f}\n")
    print(table(rows, paper_h))
    return 0


if __name__ == "__main__":
    sys.exit(main())
