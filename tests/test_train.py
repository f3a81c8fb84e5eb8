"""`frernn train`: the metrics contract, bad specs, determinism, learning, divergence, resume."""

from __future__ import annotations

import json
import logging
import os
import re
import resource
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
    "train_acc_measure",
    "diverged",
    "diverged_epoch",
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
    assert metrics["train_acc_measure"] == "running" and metrics["diverged_epoch"] is None
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["history.csv", "metrics.json", "model.pt"]


def test_progress_line_per_epoch(tmp_path, fmnist_dir, caplog):
    spec = write_spec(tmp_path / "spec.yaml")
    with caplog.at_level(logging.INFO):
        assert train(spec, tmp_path / "run", fmnist_dir) == 0
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(lines) == 2
    pattern = r"epoch 1/2 loss \d+\.\d{4} train \d+\.\d\d% test \d+\.\d\d% \d+\.\d s ETA \d+ s$"
    assert re.search(pattern, lines[0]), lines[0]


def test_evaluate_reproduces_final_accuracy(tmp_path, fmnist_dir, capsys):
    """model.pt loads with weights_only=True and `frernn evaluate` re-measures the final test
    accuracy exactly (CPU), for a net with fixed random feedback and a random graph."""
    import torch

    sections = {"model": {"depth": 3, "topology": "agt", "feedback": "asymmetric"}}
    spec = write_spec(tmp_path / "spec.yaml", **sections)
    assert train(spec, tmp_path / "run", fmnist_dir) == 0
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert saved["spec"] == load_metrics(tmp_path / "run")["spec"]
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--data-dir", str(fmnist_dir)]) == 0
    final = load_metrics(tmp_path / "run")["test_acc_final"]
    assert capsys.readouterr().out.strip() == (
        f"{tmp_path / 'run'}: test accuracy {final:.2f}% (recorded final: {final:.2f}%)"
    )
    from frernn.evaluate import evaluate

    assert evaluate(tmp_path / "run", fmnist_dir) == final


def test_evaluate_without_model_is_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no saved model" in err and "\n" not in err


def test_train_accuracy_by_evaluation_pass(tmp_path, fmnist_dir):
    """train.train_acc: eval measures the whole training set after each epoch (a different
    number from the running accuracy of the same training), recorded in metrics."""
    spec = write_spec(tmp_path / "spec.yaml")
    assert train(spec, tmp_path / "running", fmnist_dir) == 0
    assert train(spec, tmp_path / "eval", fmnist_dir, "--set", "train.train_acc=eval") == 0
    running, evaluated = load_metrics(tmp_path / "running"), load_metrics(tmp_path / "eval")
    assert evaluated["train_acc_measure"] == "eval"
    assert [e["test_acc"] for e in running["epochs"]] == [
        e["test_acc"] for e in evaluated["epochs"]
    ]
    assert [e["train_acc"] for e in running["epochs"]] != [
        e["train_acc"] for e in evaluated["epochs"]
    ]
    assert evaluated["epochs"][-1]["train_acc"] == train_set_accuracy(tmp_path / "eval", fmnist_dir)


def train_set_accuracy(run_dir: Path, data_dir: Path) -> float:
    """Accuracy of a run's saved final weights on its training set."""
    import torch

    from frernn import data
    from frernn.rundir import load_model
    from frernn.train import accuracy, seeded_learner

    saved = load_model(run_dir)
    spec = saved["spec"]
    learner = seeded_learner(spec, data.dataset_info(spec["dataset"]), torch.device("cpu"))
    learner.net.load_state_dict(saved["model"])
    loaded = data.load(spec["dataset"], data_dir, train_subset=spec["train"]["train_subset"])
    return accuracy(learner, loaded.train_x, loaded.train_y)


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


def test_non_finite_loss_is_recorded_as_diverged(tmp_path, fmnist_dir):
    """The epoch whose loss became non-finite is recorded (loss NaN, the test accuracy of the
    state it left) and ends the run; test_acc_final is that epoch's."""
    spec = write_spec(tmp_path / "spec.yaml", method="bp", optim={"lr": 1.0e38})
    assert train(spec, tmp_path / "run", fmnist_dir, "--set", "train.epochs=3") == 0
    metrics = load_metrics(tmp_path / "run")
    assert metrics["diverged"] is True
    last = metrics["epochs"][-1]
    assert metrics["diverged_epoch"] == last["epoch"] == len(metrics["epochs"]) < 3
    assert last["loss"] != last["loss"]  # NaN
    assert 0 <= last["test_acc"] <= 100 and metrics["test_acc_final"] == last["test_acc"]
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == len(metrics["epochs"]) + 1 and ",nan," in history[-1]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def run_cli(spec: Path, out: Path, data_dir: Path, preexec_fn=None) -> subprocess.Popen:
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
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec_fn
    )


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert path.exists(), f"no {path.name} appeared"


def history_rows(out: Path) -> list[dict]:
    lines = (out / "history.csv").read_text().splitlines()
    fields = lines[0].split(",")
    return [{k: v for k, v in zip(fields, line.split(","), strict=True) if k != "seconds"}
            for line in lines[1:]]  # fmt: skip


def test_killed_run_resumes_to_identical_metrics(tmp_path, fmnist_dir):
    """SIGKILL after the first checkpoint, rerun: same metrics as an uninterrupted run."""
    spec = write_spec(tmp_path / "spec.yaml", train={"epochs": 4, "train_subset": 3000})
    assert run_cli(spec, tmp_path / "whole", fmnist_dir).wait() == 0
    killed = run_cli(spec, tmp_path / "killed", fmnist_dir)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    wait_for(checkpoint, killed)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    finished = history_rows(tmp_path / "killed")
    assert 1 <= len(finished) < 4
    assert finished == history_rows(tmp_path / "whole")[: len(finished)]
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
    spec = write_spec(
        tmp_path / "spec.yaml", model={"kind": "conv"}, ep={"nudge_rule": "recompute"}
    )
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


def test_checkpoint_of_another_seed_is_discarded(tmp_path, fmnist_dir, caplog):
    """A directory left by a killed seed-0 run is not resumed under seed 1: the checkpoint
    is discarded with a warning naming the difference, and seed 1 trains from scratch."""
    import torch
    from tqdm import tqdm

    from frernn import spec as run_spec
    from frernn.train import Run

    spec_file = write_spec(tmp_path / "spec.yaml")
    seed0 = Run(run_spec.load(spec_file), tmp_path / "run", fmnist_dir, torch.device("cpu"))
    seed0.run_epoch(tqdm(disable=True))
    seed0.dir.save_checkpoint(seed0.state())
    assert train(spec_file, tmp_path / "run", fmnist_dir, "--set", "seed=1") == 0
    assert "discarding checkpoint" in caplog.text and "spec.seed: 0 -> 1" in caplog.text
    assert "resuming" not in caplog.text
    assert train(spec_file, tmp_path / "fresh", fmnist_dir, "--set", "seed=1") == 0
    resumed, fresh = load_metrics(tmp_path / "run"), load_metrics(tmp_path / "fresh")
    assert without_timings(resumed) == without_timings(fresh)


def test_checkpoint_of_another_frernn_version_is_discarded(tmp_path, fmnist_dir, caplog):
    import torch

    from frernn import spec as run_spec
    from frernn.rundir import RunDir

    spec_file = write_spec(tmp_path / "spec.yaml", train={"epochs": 1})
    old = RunDir(tmp_path / "run", run_spec.load(spec_file))
    old.identity = {**old.identity, "frernn": "0.0.1"}
    old.save_checkpoint({"epochs": [], "model": {"w": torch.zeros(1)}})
    assert train(spec_file, tmp_path / "run", fmnist_dir) == 0
    assert re.search(r"discarding checkpoint .* \(frernn: '0.0.1' -> '[^']+'\)", caplog.text)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_is_one_line_and_rerun_resumes(tmp_path, fmnist_dir, stop):
    spec = write_spec(tmp_path / "spec.yaml", train={"epochs": 4, "train_subset": 3000})
    out = tmp_path / "run"
    interrupted = run_cli(spec, out, fmnist_dir)
    wait_for(out / "checkpoint.pt", interrupted)
    os.kill(interrupted.pid, stop)
    _, err = interrupted.communicate()
    err = err.decode()
    assert interrupted.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("frernn: training stopped") and "run the same command again" in last
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    resumed = run_cli(spec, out, fmnist_dir)
    _, err = resumed.communicate()
    assert resumed.returncode == 0 and b"resuming" in err


def _file_size_limit() -> None:
    """In the child: writes beyond 64 kB fail (EFBIG), as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))


def test_failed_checkpoint_write_is_one_line(tmp_path, fmnist_dir):
    """torch.save failing mid-file (its RuntimeError) is one line naming the file; no partial
    checkpoint or temporary file is left."""
    from frernn import data

    data.load("fashion_mnist", fmnist_dir)  # the tensor cache exists before the limit applies
    spec = write_spec(tmp_path / "spec.yaml", train={"epochs": 1})
    out = tmp_path / "run"
    proc = run_cli(spec, out, fmnist_dir, preexec_fn=_file_size_limit)
    _, err = proc.communicate()
    err = err.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"frernn: error: cannot write {out}/")
    assert sorted(p.name for p in out.iterdir()) == ["history.csv"]


def test_out_naming_a_file_is_refused_before_any_work(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml")
    (tmp_path / "taken").write_text("keep me")
    assert train(spec, tmp_path / "taken", tmp_path / "no-data") == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"frernn: error: --out {tmp_path / 'taken'} is an existing file, not a run directory"
    )
    assert (tmp_path / "taken").read_text() == "keep me"


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"method": "fa"}, "model.feedback: method fa needs model.feedback: asymmetric"),
        ({"model": {"kind": "conv"}}, "ep.nudge_rule: the conv net uses recompute"),
        (
            {
                "model": {"kind": "conv", "feedback": "asymmetric"},
                "ep": {"nudge_rule": "recompute"},
            },
            "model.feedback: the conv net has no asymmetric variant",
        ),
        (
            {"model": {"kind": "conv", "depth": 3}, "ep": {"nudge_rule": "recompute"}},
            "model.depth: the conv net does not use it",
        ),
        ({"model": {"channels": [16]}}, "model.channels: the layered net does not use it"),
        ({"model": {"depth": 2.5}}, "model.depth: 2.5 is not an integer"),
        ({"train": {"train_acc": "both"}}, "train.train_acc"),
    ],
)
def test_spec_mistakes_fail_before_data_loading(tmp_path, capsys, sections, message):
    """Each is one line, raised with no dataset present (so before any data is read)."""
    spec = write_spec(tmp_path / "spec.yaml", **sections)
    assert train(spec, tmp_path / "run", tmp_path / "no-data") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not (tmp_path / "run").exists()


def test_integral_floats_are_integers(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", model={"depth": 2.0}, train={"train_subset": 256.0})
    assert main(["train", str(spec), "--print-spec"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["depth"] == 2 and isinstance(printed["model"]["depth"], int)
    assert printed["train"]["train_subset"] == 256 and isinstance(
        printed["train"]["train_subset"], int
    )


def test_empty_spec_file_is_refused(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    assert train(tmp_path / "empty.yaml", tmp_path / "run", tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"frernn: error: spec file {tmp_path / 'empty.yaml'} is empty " + (
        "(write {} for the all-default spec)"
    )


def test_print_spec_shows_defaults_and_overrides(tmp_path, capsys):
    from frernn.spec import DEFAULT_SPEC, deep_merge

    assert main(["train", "--print-spec", "--set", "ep.beta=0.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == deep_merge(DEFAULT_SPEC, {"ep": {"beta": 0.5}})


def test_train_defaults_one_thread_and_auto_device():
    from frernn.cli import build_parser

    args = build_parser("train").parse_args(["train", "spec.yaml", "--out", "run"])
    assert args.threads == 1 and args.device == "auto"


@pytest.mark.parametrize(
    "optim",
    [
        {"name": "adam", "lr": 1e-2, "weight_decay": 0.0, "schedule": "none"},
        {"name": "adamw", "lr": 1e-2, "weight_decay": 1e-3, "schedule": "cosine"},
        {"name": "sgd", "lr": [0.1, 0.05], "weight_decay": 1e-4, "schedule": "cosine"},
    ],
)
def test_eager_step_equals_optimizer_step(optim, recwarn):
    """frernn's step beneath torch's dynamo wrapper updates exactly as ``optimizer.step()``
    (and the LR schedule sees it: no 'scheduler before optimizer' warning)."""
    import torch

    from frernn.eager import eager_step
    from frernn.train import make_optimizer, make_schedule

    def trained(step) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        groups = [[torch.nn.Parameter(torch.randn(3, 4, generator=gen))] for _ in range(2)]
        opt = make_optimizer({**optim, "clip": None}, groups)
        schedule = make_schedule(optim, opt, epochs=3)
        for _ in range(3):
            for (p,) in groups:
                p.grad = torch.randn(p.shape, generator=gen)
            step(opt)
            if schedule:
                schedule.step()
        return [p.detach().clone() for (p,) in groups]

    for eager, plain in zip(trained(eager_step), trained(lambda o: o.step()), strict=True):
        assert torch.equal(eager, plain)
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
