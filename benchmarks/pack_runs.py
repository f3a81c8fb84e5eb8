"""Wall time of real runs trained alone and packed (issue 9's targets on one GPU: a 50-epoch
depth-2 run <= 5 s alone, 35 such runs packed <= 15 s).

    python benchmarks/pack_runs.py [--device cuda] [--runs 1 35] [--epochs 50] --out DIR
                                   [--data-dir D] [--set key.path=value ...]

R = 1 trains through ``frernn.train.train`` (what ``frernn train`` runs); R > 1 trains R runs
(seeds x Table S1's betas) through ``frernn.packed.train_pack`` in one process. Wall time
includes data loading and every output file, not the interpreter's start-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from frernn import data as datasets
from frernn import spec as run_spec
from frernn.packed import train_pack
from frernn.train import train

BETAS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)


def member_specs(runs: int, epochs: int, overrides: list[str]) -> list[dict]:
    """``runs`` depth-2 specs differing in seed and beta (one pack key)."""
    specs = []
    for k in range(runs):
        raw = {"dataset": "fashion_mnist", "seed": k // len(BETAS), "train": {"epochs": epochs}}
        raw["ep"] = {"beta": BETAS[k % len(BETAS)] if runs > 1 else 0.1}
        specs.append(run_spec.resolve(raw, overrides))
    return specs


def timed_runs(runs: int, args: argparse.Namespace) -> tuple[float, list[dict]]:
    """(wall seconds, metrics) of ``runs`` runs trained alone (R = 1) or as one pack."""
    specs = member_specs(runs, args.epochs, args.set)
    outs = [args.out / f"R{runs}" / f"run{k}" for k in range(runs)]
    start = time.perf_counter()
    if runs == 1:
        metrics = [train(specs[0], outs[0], args.data_dir, args.device)]
    else:
        metrics = train_pack(list(zip(specs, outs, strict=True)), args.data_dir, args.device)
    return time.perf_counter() - start, metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 35])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True, help="directory for the run dirs")
    parser.add_argument("--data-dir", type=Path, default=datasets.default_data_dir())
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for runs in args.runs:
        seconds, metrics = timed_runs(runs, args)
        best = [m["test_acc_best"] for m in metrics]
        print(
            f"{runs} run(s) x {args.epochs} epochs on {metrics[0]['device']}: {seconds:.1f} s "
            f"wall ({runs * args.epochs / seconds:.2f} runs x epochs/s); best test accuracy "
            f"{min(best):.2f}..{max(best):.2f}%",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
