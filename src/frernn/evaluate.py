"""``frernn evaluate``: rebuild a finished run's net from model.pt and re-measure it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from frernn import data as datasets
from frernn.errors import FrernnError
from frernn.gpu import job_device
from frernn.rundir import METRICS_FILE, load_model
from frernn.train import accuracy, load_data, seeded_learner


def evaluate(run_dir: Path, data_dir: Path, device: str = "cpu") -> float:
    """Test accuracy (%) of the weights saved in ``run_dir``, on the run's own test set."""
    saved = load_model(run_dir)
    spec: dict[str, Any] = saved["spec"]
    with job_device(device) as name:
        dev = torch.device(name)
        learner = seeded_learner(spec, datasets.dataset_info(spec["dataset"]), dev)
        try:
            learner.net.load_state_dict(saved["model"])
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise FrernnError(f"{run_dir}: model.pt does not fit its spec ({first})") from exc
        data = load_data(spec, data_dir, dev)
        return accuracy(learner, data.test_x, data.test_y)


def _command(args: argparse.Namespace) -> int:
    measured = evaluate(args.run_dir, args.data_dir, args.device)
    metrics_file = args.run_dir / METRICS_FILE
    recorded = ""
    if metrics_file.is_file():
        final = json.loads(metrics_file.read_text())["test_acc_final"]
        recorded = f" (recorded final: {final:.2f}%)"
    print(f"{args.run_dir}: test accuracy {measured:.2f}%{recorded}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``frernn evaluate RUN_DIR [--data-dir D] [--device ...]``."""
    p = subparsers.add_parser("evaluate")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=datasets.default_data_dir(),
        help="data directory (default: $FRERNN_DATA_DIR, else ./data)",
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.set_defaults(func=_command)
