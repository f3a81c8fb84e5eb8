"""One training run: the epoch loop, per-epoch checkpoint and resume (its files: rundir)."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from frernn import data as datasets
from frernn import spec as run_spec
from frernn.eager import eager_step, keep_optimizers_eager
from frernn.errors import FrernnError
from frernn.gpu import job_device
from frernn.io import atomic_write, atomic_write_json
from frernn.methods import Learner, build_learner
from frernn.rundir import RunDir, epoch_record

log = logging.getLogger(__name__)

EVAL_BATCH = 1000


def make_optimizer(
    optim: dict[str, Any], groups: list[list[torch.Tensor]]
) -> torch.optim.Optimizer:
    """torch.optim optimiser over per-layer groups; a list ``lr`` gives one rate per layer."""
    keep_optimizers_eager()
    rates = optim["lr"] if isinstance(optim["lr"], list) else [optim["lr"]] * len(groups)
    if len(rates) != len(groups):
        raise FrernnError(
            f"optim.lr has {len(rates)} rates but the net has {len(groups)} layers"
            " (one rate per weight layer)"
        )
    params = [{"params": g, "lr": lr} for g, lr in zip(groups, rates, strict=True)]
    wd = optim["weight_decay"]
    if optim["name"] == "sgd":
        return torch.optim.SGD(params, lr=rates[0], weight_decay=wd)
    cls = torch.optim.Adam if optim["name"] == "adam" else torch.optim.AdamW
    return cls(params, lr=rates[0], betas=(0.9, 0.999), eps=1e-8, weight_decay=wd, fused=True)


def make_schedule(optim: dict[str, Any], opt: torch.optim.Optimizer, epochs: int):
    """Per-epoch cosine annealing to 1e-6, or None."""
    if optim["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-6)
    return None


@torch.no_grad()
def accuracies(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Percent of ``x`` classified correctly by test-time inference, per member of a pack
    (one value for a single net)."""
    correct = sum(
        (learner.predict(xb).argmax(-1) == yb).sum(-1).reshape(-1)
        for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH), strict=True)
    )
    return [100.0 * int(c) / len(y) for c in correct]


def accuracy(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of ``x`` classified correctly by test-time inference."""
    return accuracies(learner, x, y)[0]


def seeded_learner(spec: dict[str, Any], info: datasets.DatasetInfo, device: torch.device):
    """The run's net and learning rule, initialised from its seed (training and evaluation
    build the same net, random feedback and graph included)."""
    torch.manual_seed(spec["seed"])
    learner = build_learner(spec, info, torch.Generator().manual_seed(spec["seed"]))
    learner.net.to(device)
    return learner


def load_data(spec: dict[str, Any], data_dir: Path, device: torch.device) -> datasets.Data:
    """The run's dataset and subsets on ``device``."""
    train = spec["train"]
    return datasets.load(
        spec["dataset"],
        data_dir,
        device,
        normalize=train["normalize"],
        train_subset=train["train_subset"],
        test_subset=train["test_subset"],
    )


def diagnostics_batch(data: datasets.Data, samples: int) -> torch.Tensor:
    """The fixed batch of test images the dynamics diagnostics run on."""
    return data.test_x[:samples]


class Run:
    """A resolved spec bound to its learner, optimiser, data and run directory."""

    def __init__(
        self,
        spec: dict[str, Any],
        out: Path,
        data_dir: Path,
        device: torch.device,
        data: datasets.Data | None = None,
    ):
        self.spec, self.device = spec, device
        self.dir = RunDir(out, spec)
        train = spec["train"]
        self.learner = seeded_learner(spec, datasets.dataset_info(spec["dataset"]), device)
        self.data = data or load_data(spec, data_dir, device)
        self.optimizer = make_optimizer(spec["optim"], self.learner.parameter_groups())
        self.schedule = make_schedule(spec["optim"], self.optimizer, train["epochs"])
        self.shuffle = torch.Generator().manual_seed(spec["seed"] + 1)
        self.diag_rng = torch.Generator().manual_seed(spec["seed"] + 2)
        self.epochs: list[dict[str, float]] = []
        self.wall = 0.0
        self.dynamics_before: dict[str, float] | None = None

    def weights(self) -> dict[str, torch.Tensor]:
        """The net's state dict as tensors of their own (a pack member's are views)."""
        return {k: v.detach().clone() for k, v in self.learner.net.state_dict().items()}

    def state(self) -> dict[str, Any]:
        return {
            "model": self.weights(),
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
        log.info("resuming %s after epoch %d", self.dir.out, len(self.epochs))

    def diagnose(self) -> dict[str, float]:
        from frernn.dynamics import diagnose

        ep, diag = self.spec["ep"], self.spec["diagnostics"]
        horizon = 1000 if self.epochs else 500
        x = diagnostics_batch(self.data, diag["samples"])
        return diagnose(self.learner.net, x, ep["T"], horizon, self.diag_rng)

    def epoch_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's minibatches in the run's own order."""
        data = self.data
        return datasets.batches(
            data.train_x, data.train_y, self.spec["train"]["batch_size"], self.shuffle
        )

    def new_tally(self) -> list[torch.Tensor]:
        """(loss sum, correct count) of an epoch, on the device."""
        return [
            torch.zeros((), dtype=torch.float64, device=self.device),
            torch.zeros((), dtype=torch.long, device=self.device),
        ]

    def update(self, tally: list[torch.Tensor], loss, logits, yb) -> None:
        """After ``train_step`` wrote the gradients: clip, step, count into ``tally``."""
        clip = self.spec["optim"]["clip"]
        if clip is not None:
            params = [p for g in self.learner.parameter_groups() for p in g]
            torch.nn.utils.clip_grad_norm_(params, clip)
        eager_step(self.optimizer)
        tally[0] += loss.detach() * len(yb)
        tally[1] += (logits.argmax(-1) == yb).sum()

    def epoch_means(self, tally: list[torch.Tensor]) -> tuple[float, float]:
        """(mean loss, running train accuracy %) of an epoch's tally."""
        n = len(self.data.train_y)
        return float(tally[0]) / n, 100.0 * int(tally[1]) / n

    def train_epoch(self, progress: tqdm) -> tuple[float, float]:
        """One pass over the training set; returns (mean loss, running train accuracy %)."""
        tally = self.new_tally()
        for xb, yb in self.epoch_batches():
            self.optimizer.zero_grad(set_to_none=True)
            loss, logits = self.learner.train_step(xb, yb)
            self.update(tally, loss, logits, yb)
            progress.update(1)
        return self.epoch_means(tally)

    def run_epoch(self, progress: tqdm) -> dict[str, float]:
        """Train one epoch and append its record."""
        start = time.perf_counter()
        loss, train_acc = self.train_epoch(progress)
        return self.close_epoch(loss, train_acc, start, partial(accuracy, self.learner))

    def close_epoch(
        self, loss: float, train_acc: float, start: float, accuracy_of: Callable
    ) -> dict[str, float]:
        """Schedule, evaluate (``accuracy_of(x, y)``) and append the record of an epoch begun
        at ``start``; a non-finite loss is recorded as NaN with the accuracies of the state it
        left."""
        finite = math.isfinite(loss)
        if finite and self.schedule:
            self.schedule.step()
        if self.spec["train"]["train_acc"] == "eval":
            train_acc = accuracy_of(self.data.train_x, self.data.train_y)
        test_acc = accuracy_of(self.data.test_x, self.data.test_y)
        seconds = time.perf_counter() - start
        self.wall += seconds
        record = epoch_record(len(self.epochs) + 1, loss, train_acc, test_acc, seconds)
        self.epochs.append(record)
        return record

    def fit(self) -> None:
        """Train the remaining epochs, checkpointing each; stop in an epoch whose loss is
        non-finite (diverged)."""
        train = self.spec["train"]
        n_batches = math.ceil(len(self.data.train_y) / train["batch_size"])
        progress = tqdm(
            total=train["epochs"] * n_batches,
            initial=len(self.epochs) * n_batches,
            desc=self.dir.out.name,
            disable=None,
        )
        with progress, nullcontext() if progress.disable else logging_redirect_tqdm():
            while not self.done():
                self.keep(self.run_epoch(progress))

    def done(self) -> bool:
        """Whether every epoch is trained or the loss became non-finite (diverged)."""
        epochs = self.epochs
        return len(epochs) >= self.spec["train"]["epochs"] or (
            bool(epochs) and not math.isfinite(epochs[-1]["loss"])
        )

    def keep(self, record: dict[str, float]) -> None:
        """After an epoch: history and progress line; a checkpoint, or the divergence noted."""
        self.dir.record_epoch(self.epochs, self.wall)
        if math.isfinite(record["loss"]):
            self.dir.save_checkpoint(self.state())
        else:
            log.warning(
                "%s: loss became non-finite in epoch %d; stopping (diverged)",
                self.dir.out,
                record["epoch"],
            )

    def start(self) -> None:
        """Resume from the checkpoint, or measure the dynamics before training."""
        state = self.dir.load_checkpoint()
        if state is not None:
            self.restore(state)
        elif self.spec["diagnostics"]["dynamics"]:
            self.dynamics_before = self.diagnose()

    def execute(self) -> dict[str, Any]:
        """Resume or start, train, write every output; metrics.json last."""
        self.start()
        self.fit()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Dynamics, trajectory, model.pt and metrics.json (last) of the trained run."""
        diag = self.spec["diagnostics"]
        metrics = self.dir.metrics(self.epochs, self.wall, self.device)
        if diag["dynamics"]:
            after = {} if metrics["diverged_epoch"] else self.diagnose()
            atomic_write_json(
                self.dir.out / "dynamics.json", {"before": self.dynamics_before, "after": after}
            )
        if diag["trajectory"]:
            self.write_trajectory()
        if diag["alignment"]:
            from frernn.alignment import measure

            diverged = metrics["diverged_epoch"] is not None
            alignment = measure(self.spec, self.data, self.learner, diverged)
            atomic_write_json(self.dir.out / "alignment.json", alignment)
        self.dir.finish(metrics, self.weights())
        return metrics

    def write_trajectory(self) -> None:
        """The free phase of test sample 0 (Fig. 2) as trajectory.npz."""
        import numpy as np

        from frernn.dynamics import trajectory

        states, changes = trajectory(self.learner.net, self.data.test_x[:1], self.spec["ep"]["T"])

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, states=states, changes=changes)

        atomic_write(self.dir.out / "trajectory.npz", write)


def train(spec: dict[str, Any], out: Path, data_dir: Path, device: str = "auto") -> dict[str, Any]:
    """Train one resolved run spec into ``out`` on ``cpu|cuda|auto``; returns its metrics.

    A CUDA job holds a free GPU (lock file) while it runs.
    """
    with job_device(device) as name:
        return Run(spec, out, data_dir, torch.device(name)).execute()


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM (Slurm's time limit or preemption, a cancelled job) stops training as Ctrl-C does."""
    raise KeyboardInterrupt


def interruptible(threads: int, what: str, work: Callable[[], Any]) -> Any | None:
    """``work()`` on ``threads`` torch threads (0: torch's choice), SIGTERM treated as Ctrl-C;
    None after a one-line message that rerunning resumes ``what`` when it was interrupted."""
    if threads < 0:
        raise FrernnError(f"--threads must be 0 (torch's choice) or more, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _stop)
    try:
        return work()
    except KeyboardInterrupt:
        print(
            f"frernn: training stopped (interrupted); run the same command again to resume "
            f"{what} from its last finished epoch",
            file=sys.stderr,
        )
        return None


def _command(args: argparse.Namespace) -> int:
    if args.spec is None and not args.print_spec:
        raise FrernnError("frernn train needs a SPEC file (or --print-spec to see the defaults)")
    if args.spec:
        spec = run_spec.load(args.spec, args.set)
    else:
        spec = run_spec.refuse_ignored_keys(run_spec.resolve({}, args.set))
    if args.print_spec:
        print(yaml.safe_dump(spec, sort_keys=False), end="")
        return 0
    if args.out is None:
        raise FrernnError("frernn train needs --out DIR, the run directory to write")
    metrics = interruptible(
        args.threads, str(args.out), lambda: train(spec, args.out, args.data_dir, args.device)
    )
    if metrics is None:
        return 130
    print(
        f"{run_spec.run_id(spec)} seed {spec['seed']}: best test {metrics['test_acc_best']:.2f}% "
        f"final {metrics['test_acc_final']:.2f}% diverged={metrics['diverged']} "
        f"({metrics['wall_seconds']:.1f} s)"
    )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``frernn train SPEC --out DIR [--set k=v ...] [--data-dir D] [--device ...]``."""
    p = subparsers.add_parser("train")
    p.add_argument("spec", type=Path, nargs="?", help="run spec file (YAML or JSON)")
    p.add_argument("--out", type=Path, help="run directory to write (created if absent)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec key, e.g. ep.beta=0.1 (repeatable)",
    )
    p.add_argument(
        "--print-spec",
        action="store_true",
        help="print the resolved spec (defaults filled in) and exit without training",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=datasets.default_data_dir(),
        help="data directory (default: $FRERNN_DATA_DIR, else ./data)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help="auto (default): a free GPU when one is visible, else the CPU",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's choice)"
    )
    p.set_defaults(func=_command)
