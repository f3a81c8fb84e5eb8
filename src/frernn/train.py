"""One training run: the epoch loop, metrics.json/history.csv, per-epoch checkpoint and resume."""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import io
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import frernn
from frernn import data as datasets
from frernn import spec as run_spec
from frernn.errors import FrernnError
from frernn.gpu import job_device
from frernn.io import atomic_write, atomic_write_json, atomic_write_text
from frernn.methods import Learner, build_learner

log = logging.getLogger(__name__)

EVAL_BATCH = 1000
DIVERGENCE_DROP = 5.0
HISTORY_FIELDS = ("epoch", "loss", "train_acc", "test_acc", "seconds")


def make_optimizer(
    optim: dict[str, Any], groups: list[list[torch.Tensor]]
) -> torch.optim.Optimizer:
    """torch.optim optimiser over per-layer groups; a list ``lr`` gives one rate per layer."""
    rates = optim["lr"] if isinstance(optim["lr"], list) else [optim["lr"]] * len(groups)
    if len(rates) != len(groups):
        raise FrernnError(
            f"optim.lr has {len(rates)} rates but the net has {len(groups)} layers (W_0 .. W_out)"
        )
    params = [{"params": g, "lr": lr} for g, lr in zip(groups, rates, strict=True)]
    wd = optim["weight_decay"]
    if optim["name"] == "sgd":
        return torch.optim.SGD(params, lr=rates[0], weight_decay=wd)
    cls = torch.optim.Adam if optim["name"] == "adam" else torch.optim.AdamW
    return cls(params, lr=rates[0], betas=(0.9, 0.999), eps=1e-8, weight_decay=wd, fused=True)


def make_schedule(optim: dict[str, Any], opt: torch.optim.Optimizer, epochs: int):
    """Per-epoch cosine annealing to 1e-6 (SPEC §3), or None."""
    if optim["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-6)
    return None


@torch.no_grad()
def accuracy(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of ``x`` classified correctly by test-time inference."""
    correct = sum(
        int((learner.predict(xb).argmax(1) == yb).sum())
        for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH), strict=True)
    )
    return 100.0 * correct / len(y)


def versions() -> dict[str, str]:
    """Software versions recorded with every run."""
    return {
        "frernn": frernn.__version__,
        "torch": torch.__version__,
        "torchvision": importlib.metadata.version("torchvision"),
        "python": platform.python_version(),
    }


def device_name(device: torch.device) -> str:
    """Human-readable device, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def history_csv(epochs: list[dict[str, float]]) -> str:
    """The per-epoch records as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(epochs)
    return buffer.getvalue()


class Checkpoint:
    """Everything needed to continue a run after a kill: saved atomically at each epoch end."""

    def __init__(self, path: Path, run: str) -> None:
        self.path, self.run = path, run

    def save(self, state: dict[str, Any]) -> None:
        atomic_write(self.path, lambda tmp: torch.save({"run": self.run, **state}, tmp))

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when absent, unreadable or of another configuration."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is discarded
            log.warning("discarding unreadable checkpoint %s (%s)", self.path, exc)
            return None
        if state.get("run") != self.run:
            log.warning("discarding checkpoint %s of another configuration", self.path)
            return None
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def diagnostics_batch(data: datasets.Data, samples: int) -> torch.Tensor:
    """The fixed batch of test images the dynamics diagnostics run on."""
    return data.test_x[:samples]


class Run:
    """A resolved spec bound to its data, learner, optimiser and output directory."""

    def __init__(self, spec: dict[str, Any], out: Path, data_dir: Path, device: torch.device):
        self.spec, self.out, self.device = spec, Path(out), device
        train = spec["train"]
        self.data = datasets.load(
            spec["dataset"],
            data_dir,
            device,
            normalize=train["normalize"],
            train_subset=train["train_subset"],
            test_subset=train["test_subset"],
        )
        torch.manual_seed(spec["seed"])
        init = torch.Generator().manual_seed(spec["seed"])
        self.learner = build_learner(spec, self.data.info, init)
        self.learner.net.to(device)
        self.optimizer = make_optimizer(spec["optim"], self.learner.parameter_groups())
        self.schedule = make_schedule(spec["optim"], self.optimizer, train["epochs"])
        self.shuffle = torch.Generator().manual_seed(spec["seed"] + 1)
        self.diag_rng = torch.Generator().manual_seed(spec["seed"] + 2)
        self.checkpoint = Checkpoint(self.out / "checkpoint.pt", run_spec.run_id(spec))
        self.epochs: list[dict[str, float]] = []
        self.wall = 0.0
        self.dynamics_before: dict[str, float] | None = None

    def state(self) -> dict[str, Any]:
        return {
            "model": self.learner.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule else {},
            "shuffle": self.shuffle.get_state(),
            "torch_rng": torch.get_rng_state(),
            "diag_rng": self.diag_rng.get_state(),
            "epochs": self.epochs,
            "wall": self.wall,
            "dynamics_before": self.dynamics_before or {},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.learner.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule:
            self.schedule.load_state_dict(state["schedule"])
        self.shuffle.set_state(state["shuffle"])
        torch.set_rng_state(state["torch_rng"])
        self.diag_rng.set_state(state["diag_rng"])
        self.epochs, self.wall = list(state["epochs"]), float(state["wall"])
        self.dynamics_before = state["dynamics_before"] or None
        log.info("resuming %s after epoch %d", self.out, len(self.epochs))

    def diagnose(self) -> dict[str, float]:
        from frernn.dynamics import diagnose

        ep, diag = self.spec["ep"], self.spec["diagnostics"]
        horizon = 1000 if self.epochs else 500
        x = diagnostics_batch(self.data, diag["samples"])
        return diagnose(self.learner.net, x, ep["T"], horizon, self.diag_rng)

    def train_epoch(self, progress: tqdm) -> tuple[float, float]:
        """One pass over the training set; returns (mean loss, running train accuracy %)."""
        train, clip = self.spec["train"], self.spec["optim"]["clip"]
        params = [p for g in self.learner.parameter_groups() for p in g]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for xb, yb in datasets.batches(
            self.data.train_x, self.data.train_y, train["batch_size"], self.shuffle
        ):
            self.optimizer.zero_grad(set_to_none=True)
            loss, logits = self.learner.train_step(xb, yb)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.optimizer.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            progress.update(1)
        n = len(self.data.train_y)
        return float(loss_sum) / n, 100.0 * int(correct) / n

    def fit(self) -> bool:
        """Train the remaining epochs; returns True when the loss became non-finite."""
        train = self.spec["train"]
        n_batches = math.ceil(len(self.data.train_y) / train["batch_size"])
        progress = tqdm(
            total=train["epochs"] * n_batches,
            initial=len(self.epochs) * n_batches,
            desc=self.out.name,
            disable=None,
        )
        with progress:
            while len(self.epochs) < train["epochs"]:
                start = time.perf_counter()
                loss, train_acc = self.train_epoch(progress)
                if not math.isfinite(loss):
                    log.warning("%s: loss became %s; stopping (diverged)", self.out, loss)
                    return True
                if self.schedule:
                    self.schedule.step()
                test_acc = accuracy(self.learner, self.data.test_x, self.data.test_y)
                seconds = time.perf_counter() - start
                self.wall += seconds
                self.epochs.append(
                    {
                        "epoch": len(self.epochs) + 1,
                        "loss": loss,
                        "train_acc": train_acc,
                        "test_acc": test_acc,
                        "seconds": seconds,
                    }
                )
                self.checkpoint.save(self.state())
        return False

    def metrics(self, non_finite: bool) -> dict[str, Any]:
        """The metrics.json contract of DESIGN.md."""
        tests = [e["test_acc"] for e in self.epochs]
        best = max(tests, default=float("nan"))
        final = tests[-1] if tests else float("nan")
        return {
            "spec": self.spec,
            "seed": self.spec["seed"],
            "dataset": self.spec["dataset"],
            "test_acc_best": best,
            "test_acc_final": final,
            "train_acc_best": max((e["train_acc"] for e in self.epochs), default=float("nan")),
            "diverged": non_finite or not tests or final < best - DIVERGENCE_DROP,
            "wall_seconds": self.wall,
            "device": device_name(self.device),
            "versions": versions(),
            "epochs": self.epochs,
        }

    def execute(self) -> dict[str, Any]:
        """Resume or start, train, write every output; metrics.json last."""
        diag = self.spec["diagnostics"]
        state = self.checkpoint.load()
        if state is not None:
            self.restore(state)
        elif diag["dynamics"]:
            self.dynamics_before = self.diagnose()
        non_finite = self.fit()
        if diag["dynamics"]:
            after = {} if non_finite else self.diagnose()
            atomic_write_json(
                self.out / "dynamics.json", {"before": self.dynamics_before, "after": after}
            )
        if diag["trajectory"]:
            self.write_trajectory()
        if diag["alignment"]:
            from frernn.alignment import measure

            alignment = measure(self.spec, self.data, self.learner, non_finite)
            atomic_write_json(self.out / "alignment.json", alignment)
        metrics = self.metrics(non_finite)
        atomic_write_text(self.out / "history.csv", history_csv(self.epochs))
        atomic_write_json(self.out / "metrics.json", metrics)
        self.checkpoint.remove()
        return metrics

    def write_trajectory(self) -> None:
        """The free phase of test sample 0 (Fig. 2) as trajectory.npz."""
        import numpy as np

        from frernn.dynamics import trajectory

        states, changes = trajectory(self.learner.net, self.data.test_x[:1], self.spec["ep"]["T"])

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, states=states, changes=changes)

        atomic_write(self.out / "trajectory.npz", write)


def train(spec: dict[str, Any], out: Path, data_dir: Path, device: str = "cpu") -> dict[str, Any]:
    """Train one resolved run spec into ``out`` on ``cpu|cuda|auto``; returns its metrics.

    A CUDA job holds a free GPU (lock file) while it runs.
    """
    with job_device(device) as name:
        return Run(spec, out, data_dir, torch.device(name)).execute()


def _command(args: argparse.Namespace) -> int:
    spec = run_spec.load(args.spec, args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    metrics = train(spec, args.out, args.data_dir, args.device)
    print(
        f"{run_spec.run_id(spec)} seed {spec['seed']}: best test {metrics['test_acc_best']:.2f}% "
        f"final {metrics['test_acc_final']:.2f}% diverged={metrics['diverged']} "
        f"({metrics['wall_seconds']:.1f} s)"
    )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``frernn train SPEC --out DIR [--set k=v ...] [--data-dir D] [--device ...]``."""
    p = subparsers.add_parser("train", help="train one run spec and write its metrics")
    p.add_argument("spec", type=Path, help="run spec (YAML or JSON)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec key (repeatable)",
    )
    p.add_argument("--data-dir", type=Path, default=datasets.default_data_dir())
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=_command)
