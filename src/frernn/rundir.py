"""The files of one run directory: checkpoint with identity, history.csv, progress line,
model.pt and metrics.json. A training loop calls these for each run it trains."""

from __future__ import annotations

import csv
import importlib.metadata
import io
import logging
import math
import platform
from pathlib import Path
from typing import Any

import torch

import frernn
from frernn.errors import FrernnError
from frernn.io import atomic_write, atomic_write_json, atomic_write_text
from frernn.spec import differences

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "loss", "train_acc", "test_acc", "seconds")
DIVERGENCE_DROP = 5.0
MODEL_FILE, METRICS_FILE, CHECKPOINT_FILE = "model.pt", "metrics.json", "checkpoint.pt"


def versions() -> dict[str, str]:
    """Software versions recorded with every run."""
    return {
        "frernn": frernn.__version__,
        "torch": str(torch.__version__),
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


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` atomically; a failed write (torch raises RuntimeError) is one line."""

    def write(tmp: Path) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            raise FrernnError(f"cannot write {path}: {str(exc).splitlines()[0]}") from exc

    atomic_write(path, write)


def epoch_record(
    epoch: int, loss: float, train_acc: float, test_acc: float, seconds: float
) -> dict[str, float]:
    """One epoch's record; a non-finite loss is recorded as NaN (the run diverged in it)."""
    return {
        "epoch": epoch,
        "loss": loss if math.isfinite(loss) else float("nan"),
        "train_acc": train_acc,
        "test_acc": test_acc,
        "seconds": seconds,
    }


def duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``3.1 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def epoch_line(record: dict[str, float], total: int, wall: float) -> str:
    """The progress line of one epoch: epoch/total, loss, accuracies, seconds, ETA."""
    done = record["epoch"]
    eta = wall / done * (total - done)
    return (
        f"epoch {done}/{total} loss {record['loss']:.4f} train {record['train_acc']:.2f}% "
        f"test {record['test_acc']:.2f}% {record['seconds']:.1f} s ETA {duration(eta)}"
    )


class RunDir:
    """One run's directory and identity (the full resolved spec and the frernn version)."""

    def __init__(self, out: Path, spec: dict[str, Any]) -> None:
        self.out, self.spec = Path(out), spec
        self.identity = {"spec": spec, "frernn": frernn.__version__}
        if self.out.exists() and not self.out.is_dir():
            raise FrernnError(f"--out {self.out} is an existing file, not a run directory")

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT_FILE

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Everything needed to continue after a kill, saved atomically with the run identity."""
        save_torch(self.checkpoint, {"identity": self.identity, **state})

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The saved state, or None when absent, unreadable or of another run (with a warning
        naming the difference: a checkpoint is resumed only by the very same run)."""
        if not self.checkpoint.exists():
            return None
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is discarded
            log.warning("discarding unreadable checkpoint %s (%s)", self.checkpoint, exc)
            return None
        saved = state.get("identity") if isinstance(state, dict) else None
        if saved != self.identity:
            why = "; ".join(differences(saved, self.identity)) if saved else "no run identity"
            log.warning("discarding checkpoint %s of another run (%s)", self.checkpoint, why)
            return None
        return state

    def record_epoch(self, epochs: list[dict[str, float]], wall: float) -> None:
        """After each epoch: history.csv rewritten atomically and one progress line logged."""
        atomic_write_text(self.out / "history.csv", history_csv(epochs))
        log.info("%s %s", self.out, epoch_line(epochs[-1], self.spec["train"]["epochs"], wall))

    def metrics(
        self, epochs: list[dict[str, float]], wall: float, device: torch.device
    ) -> dict[str, Any]:
        """The metrics.json contract (a non-finite loss ends the run in that epoch: its record
        holds loss NaN and the test accuracy of the diverged state)."""
        tests = [e["test_acc"] for e in epochs]
        best = max(tests, default=float("nan"))
        final = tests[-1] if tests else float("nan")
        diverged_epoch = next((e["epoch"] for e in epochs if not math.isfinite(e["loss"])), None)
        return {
            "spec": self.spec,
            "seed": self.spec["seed"],
            "dataset": self.spec["dataset"],
            "test_acc_best": best,
            "test_acc_final": final,
            "train_acc_best": max((e["train_acc"] for e in epochs), default=float("nan")),
            "train_acc_measure": self.spec["train"]["train_acc"],
            "diverged": diverged_epoch is not None or not tests or final < best - DIVERGENCE_DROP,
            "diverged_epoch": diverged_epoch,
            "wall_seconds": wall,
            "device": device_name(device),
            "versions": versions(),
            "epochs": epochs,
        }

    def finish(self, metrics: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        """Final outputs: model.pt (loadable with ``weights_only=True``), then metrics.json
        last; the checkpoint goes."""
        save_torch(
            self.out / MODEL_FILE,
            {"spec": self.spec, "versions": metrics["versions"], "model": weights},
        )
        atomic_write_json(self.out / METRICS_FILE, metrics)
        self.checkpoint.unlink(missing_ok=True)


def load_model(run_dir: Path) -> dict[str, Any]:
    """The saved final weights and spec of a finished run (one-line error when absent)."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise FrernnError(f"{path}: no saved model (is {run_dir} a finished run directory?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise FrernnError(f"{path}: unreadable model file ({str(exc).splitlines()[0]})") from exc
