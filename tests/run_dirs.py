"""Finished run directories as `frernn train` leaves them, for feeding the real aggregator."""

from __future__ import annotations

import json
import math
from pathlib import Path

from frernn import experiments


def write_run(
    root: Path,
    plan: experiments.Plan,
    rid: str,
    seed: int,
    tests: list[float],
    diverge: bool = False,
    **extra,
) -> Path:
    """metrics.json of one job (written last); ``diverge``: the last epoch's loss is NaN."""
    out = root / plan.run_dir(rid, seed)
    out.mkdir(parents=True, exist_ok=True)
    epochs = [
        {"epoch": i + 1, "loss": 0.5, "train_acc": t + 1, "test_acc": t, "seconds": 1.0}
        for i, t in enumerate(tests)
    ]
    if diverge:
        epochs[-1]["loss"] = math.nan
    metrics = {
        "spec": {**plan.runs[rid].spec, "seed": seed},
        "seed": seed,
        "dataset": plan.runs[rid].spec["dataset"],
        "test_acc_best": max(tests),
        "test_acc_final": tests[-1],
        "train_acc_best": max(tests) + 1,
        "diverged": diverge or tests[-1] < max(tests) - 5,
        "diverged_epoch": len(tests) if diverge else None,
        "wall_seconds": 10.0 + seed,
        "device": "cpu (test)",
        "versions": {"torch": "2.14.1", "frernn": "0.1.0"},
        "epochs": epochs,
        **extra,
    }
    (out / "metrics.json").write_text(json.dumps(metrics))  # NaN as the json module writes it
    return out


def write_dynamics(out: Path, before: dict, after: dict) -> None:
    """dynamics.json beside a run's metrics (``after`` empty for a diverged run)."""
    (out / "dynamics.json").write_text(json.dumps({"before": before, "after": after}))
