"""`frernn train`: the metrics contract, bad specs, determinism, learning, divergence, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from frernn.cli import main

METRIC_KEYS = {
    "spec",
    "seed",
    "dataset",
    "test_acc_best",
    "test_acc_final",
    "train_acc_best",
    "diverged",
    "wall_seconds",
    "device",
    "versions",
    "epochs",
}
EPOCH_KEYS = {"epoch", "loss", "train_acc", "test_acc", "seconds"}


def write_spec(path: Path, **sections) -> Path:
    spec = {
        "dataset": "fashion_mnist",
        "train": {"epochs": 2, "batch_size": 100, "train_subset": 2000, "test_subset": 500},
        "ep": {"T": 20, "K": 10, "beta": 0.01},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(spec))
    return path


def train(spec: Path, out: Path, data_dir: Path, *extra: str) -> int:
    return main(["train", str(spec), "--out", str(out), "--data-dir", str(data_dir), *extra])


def load_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def without_timings(metrics: dict) -> dict:
    stripped = {k: v for k, v in metrics.items() if k not in ("wall_seconds",)}
    stripped["epochs"] = [{k: v for k, v in e.items() if k != "seconds"} for e in metrics["epochs"]]
    return stripped


def test_metrics_contract_and_history(tmp_path, fmnist_dir):
    spec = write_spec(tmp_path / "spec.yaml")
    assert train(spec, tmp_path / "run", fmnist_dir, "--set", "train.epochs=1") == 0
    metrics = load_metrics(tmp_path / "run")
    assert set(metrics) == METRIC_KEYS
    assert metrics["spec"]["train"]["epochs"] == 1
    assert [set(e) for e in metrics["epochs"]] == [EPOCH_KEYS]
    assert metrics["test_acc_best"] == metrics["epochs"][0]["test_acc"]
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,loss,train_acc,test_acc,seconds" and len(history) == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["history.csv", "metrics.json"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.depht=3", "unknown key model.depht"),
        ("model.depth=0", "model.depth"),
        ("ep.beta=-0.1", "ep.beta"),
        ("ep.T=0", "ep.T"),
        ("dataset=imagenet", "dataset"),
        ("optim.lr=[0.1, 0.2]", "optim.lr"),
        ("train.epochs=two", "train.epochs"),
    ],
)
def test_bad_spec_is_one_line_and_writes_nothing(tmp_path, capsys, fmnist_dir, override, message):
    spec = write_spec(tmp_path / "spec.yaml")
    out = tmp_path / "run"
    assert train(spec, out, fmnist_dir, "--set", override) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err and err.startswith("frernn: error:")
    assert not out.exists()


def test_missing_spec_file_and_dataset(tmp_path, capsys):
    assert train(tmp_path / "nope.yaml", tmp_path / "run", tmp_path) == 2
    assert "spec file not found" in capsys.readouterr().err
    spec = write_spec(tmp_path / "spec.yaml", dataset="mnist")
    assert train(spec, tmp_path / "run", tmp_path / "empty") == 2
    err = capsys.readouterr().err.strip()
    assert "mnist" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_same_seed_same_metrics(tmp_path, fmnist_dir):
    spec = write_spec(tmp_path / "spec.yaml", model={"depth": 3}, train={"epochs": 1})
    for name in ("a", "b"):
        assert train(spec, tmp_path / name, fmnist_dir) == 0
    a, b = load_metrics(tmp_path / "a"), load_metrics(tmp_path / "b")
    assert without_timings(a) == without_timings(b)
    assert train(spec, tmp_path / "c", fmnist_dir, "--set", "seed=1") == 0
    assert load_metrics(tmp_path / "c")["epochs"] != a["epochs"]


LEARNING = {
    # name: (spec sections, best test % measured here on this subset after 2 epochs)
    "ep-chain": ({"model": {"depth": 2}}, 80.2),
    "ep-residual": (
        {
            "model": {"depth": 5, "topology": "residual"},
            "ep": {"T": 50, "K": 25, "beta": 0.1, "nudge_rule": "accumulate"},
        },
        81.6,
    ),
    "ep-agt": (
        {
            "model": {"depth": 4, "topology": "agt", "feedback": "asymmetric"},
            "ep": {"T": 40, "K": 20, "beta": 0.1, "nudge_rule": "accumulate"},
        },
        66.8,
    ),
    "bp": ({"method": "bp", "model": {"depth": 2}}, 79.6),
    "fa": ({"method": "fa", "model": {"depth": 2, "feedback": "asymmetric"}}, 69.4),
}


@pytest.mark.parametrize("name", sorted(LEARNING))
def test_learning_happens(tmp_path, fmnist_dir, name):
    """2 epochs on 4000 Fashion-MNIST images: within 5 points of the accuracy measured here."""
    sections, measured = LEARNING[name]
    train_section = {"batch_size": 50, "train_subset": 4000}
    spec = write_spec(tmp_path / "spec.yaml", train=train_section, **sections)
    assert train(spec, tmp_path / "run", fmnist_dir) == 0
    metrics = load_metrics(tmp_path / "run")
    assert not metrics["diverged"]
    assert metrics["test_acc_best"] > measured - 5.0, metrics["epochs"]


def test_non_finite_loss_stops_as_diverged(tmp_path, fmnist_dir):
    spec = write_spec(tmp_path / "spec.yaml", method="bp", optim={"lr": 1.0e38})
    assert train(spec, tmp_path / "run", fmnist_dir, "--set", "train.epochs=3") == 0
    metrics = load_metrics(tmp_path / "run")
    assert metrics["diverged"] is True
    assert len(metrics["epochs"]) < 3
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def run_cli(spec: Path, out: Path, data_dir: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "frernn.cli",
        "train",
        str(spec),
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--threads",
        "1",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_run_resumes_to_identical_metrics(tmp_path, fmnist_dir):
    """SIGKILL after the first checkpoint, rerun: same metrics as an uninterrupted run."""
    spec = write_spec(tmp_path / "spec.yaml", train={"epochs": 4, "train_subset": 3000})
    assert run_cli(spec, tmp_path / "whole", fmnist_dir).wait() == 0
    killed = run_cli(spec, tmp_path / "killed", fmnist_dir)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint appeared"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    resumed = run_cli(spec, tmp_path / "killed", fmnist_dir)
    _, err = resumed.communicate()
    assert resumed.returncode == 0
    assert b"resuming" in err
    assert without_timings(load_metrics(tmp_path / "killed")) == without_timings(
        load_metrics(tmp_path / "whole")
    )
    assert not checkpoint.exists()


def test_corrupt_checkpoint_is_discarded(tmp_path, fmnist_dir, caplog):
    spec = write_spec(tmp_path / "spec.yaml", train={"epochs": 1})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert train(spec, tmp_path / "run", fmnist_dir) == 0
    assert "discarding unreadable checkpoint" in caplog.text
    assert load_metrics(tmp_path / "run")["epochs"][0]["epoch"] == 1


def test_diagnostics_before_and_after_training(tmp_path, fmnist_dir):
    import numpy as np

    spec = write_spec(
        tmp_path / "spec.yaml",
        model={"depth": 2},
        train={"epochs": 1},
        diagnostics={"dynamics": True, "trajectory": True, "samples": 50},
    )
    assert train(spec, tmp_path / "run", fmnist_dir) == 0
    dynamics = json.loads((tmp_path / "run" / "dynamics.json").read_text())
    assert set(dynamics) == {"before", "after"}
    for phase in dynamics.values():
        assert {"sr", "ftmle", "mle", "conv_time", "conv_frac", "samples"} <= set(phase)
        assert phase["samples"] == 50
    assert dynamics["before"]["sr"] != dynamics["after"]["sr"]
    with np.load(tmp_path / "run" / "trajectory.npz") as npz:
        assert npz["states"].shape == (20, 2 * 64) == npz["changes"].shape


def test_diagnostics_rejected_for_conv(tmp_path, capsys, fmnist_dir):
    spec = write_spec(tmp_path / "spec.yaml", model={"kind": "conv"})
    assert train(spec, tmp_path / "run", fmnist_dir, "--set", "diagnostics.dynamics=true") == 2
    assert "layered nets only" in capsys.readouterr().err


def test_per_layer_sgd_rates_and_cosine_schedule():
    import torch

    from frernn.errors import FrernnError
    from frernn.train import make_optimizer, make_schedule

    groups = [[torch.nn.Parameter(torch.zeros(2))] for _ in range(4)]
    optim = {"name": "sgd", "lr": [0.002, 0.2, 0.05, 0.01], "weight_decay": 0.0,
             "schedule": "cosine", "clip": None}  # fmt: skip
    opt = make_optimizer(optim, groups)
    assert [g["lr"] for g in opt.param_groups] == [0.002, 0.2, 0.05, 0.01]
    schedule = make_schedule(optim, opt, epochs=50)
    for _ in range(50):
        opt.step()
        schedule.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-6] * 4)
    with pytest.raises(FrernnError, match="optim.lr has 3 rates but the net has 4 layers"):
        make_optimizer({**optim, "lr": [0.1, 0.1, 0.1]}, groups)
