"""One real training job run by Snakemake: its per-epoch log, what reruns it (only the science),
`frernn status` on the half-finished target, and config mistakes as one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SMOKE_CONFIG, run_snakemake, workflow_copy

from frernn import experiments
from frernn.cli import main
from frernn.errors import FrernnError
from frernn.spec import deep_merge

TWO_EPOCHS = {"scales": {"smoke": {"spec": {"train": {"epochs": 2}}}}}


def smoke_plan(cwd: Path, *extra: dict) -> experiments.Plan:
    config = yaml.safe_load((cwd / "config.yaml").read_text())
    for part in extra:
        config = deep_merge(config, part)
    return experiments.build_plan(
        {**config, "scale": "smoke", "dataset_substitute": "fashion_mnist"}
    )


def cheapest_run(plan: experiments.Plan, target: str) -> str:
    return min(plan.run_ids(target), key=lambda r: experiments.cpu_seconds(plan.run(r).spec))


def snakemake(cwd: Path, *args: str, config: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Snakemake on the smoke scale with two epochs per run (``TWO_EPOCHS``); ``config``
    adds or replaces ``--config`` entries."""
    entries = [*SMOKE_CONFIG[1:], f"data_dir={cwd / 'data'}", *config]
    return run_snakemake(cwd, *args, "--configfile", "two_epochs.yaml", "--config", *entries)


@pytest.fixture(scope="module")
def one_job(tmp_path_factory) -> tuple[Path, experiments.Plan, str]:
    """A workflow copy in which Snakemake has trained one fig5 run (seed 0) and nothing else."""
    cwd = workflow_copy(tmp_path_factory.mktemp("one-job"))
    (cwd / "two_epochs.yaml").write_text(yaml.safe_dump(TWO_EPOCHS))
    plan = smoke_plan(cwd, TWO_EPOCHS)
    rid = cheapest_run(plan, "fig5")
    proc = snakemake(cwd, f"results/{plan.run_dir(rid, 0)}/metrics.json", "--cores", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, plan, rid


def test_workflow_job_logs_one_line_per_epoch(one_job):
    cwd, plan, rid = one_job
    log = (cwd / "results" / plan.run_dir(rid, 0) / "train.log").read_text()
    assert re.search(r"epoch 1/2 loss \S+ train \S+% test \S+% \S+ s ETA \d+ s\n", log), log
    assert re.search(r"epoch 2/2 loss ", log)


def scheduled_jobs(proc: subprocess.CompletedProcess) -> set[str]:
    """Rule names of the jobs a dry run would run."""
    return set(re.findall(r"^rule (\w+):", proc.stdout + proc.stderr, re.MULTILINE))


def test_device_data_dir_and_threads_do_not_retrain(one_job, tmp_path):
    """Only the run spec (the science) reruns a finished training job: after changing device,
    data directory and threads, a dry run fetches the data into the new directory (the
    dataset rule's param changed, so Snakemake does see changes) but trains nothing."""
    cwd, plan, rid = one_job
    target = f"results/{plan.run_dir(rid, 0)}/metrics.json"
    moved = ("device=cpu", f"data_dir={tmp_path / 'elsewhere'}", "threads=2")
    proc = snakemake(cwd, target, "-n", config=moved)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert scheduled_jobs(proc) == {"dataset"}, proc.stdout[-3000:]


def start_training(cwd: Path, plan: experiments.Plan, rid: str, seed: int, data_dir: Path):
    """``frernn train`` of one job as the train rule starts it, its output to train.log."""
    run_dir = cwd / "results" / plan.run_dir(rid, seed)
    run_dir.mkdir(parents=True)
    (run_dir / "spec.yaml").write_text(plan.spec_text(rid, seed))
    command = [sys.executable, "-m", "frernn.cli", "train", str(run_dir / "spec.yaml")]
    command += ["--out", str(run_dir), "--data-dir", str(data_dir), "--threads", "1"]
    with (run_dir / "train.log").open("w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), run_dir


def test_status_of_a_half_finished_target(one_job, capsys):
    """fig5 with one run finished, one stopped after its first epoch (killed), one failed and
    the rest not started."""
    cwd, plan, rid = one_job
    killed, killed_dir = start_training(cwd, plan, rid, 1, cwd / "data")
    deadline = time.monotonic() + 120
    while not (killed_dir / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    done = len((killed_dir / "history.csv").read_text().strip().splitlines()) - 1
    assert done >= 1  # a loaded machine may let the kill land after epoch 2
    other = next(r for r in plan.run_ids("fig5") if r != rid)
    failed, _ = start_training(cwd, plan, other, 0, cwd / "config.yaml")  # not a directory
    assert failed.wait() != 0
    merged = deep_merge(yaml.safe_load((cwd / "config.yaml").read_text()), TWO_EPOCHS)
    (cwd / "status_config.yaml").write_text(yaml.safe_dump(merged))
    config = ["--config", str(cwd / "status_config.yaml"), "--results", str(cwd / "results")]
    overrides = ["--set", "scale=smoke", "--set", "dataset_substitute=fashion_mnist"]
    assert main(["status", "fig5", *config, *overrides]) == 0
    out = capsys.readouterr().out
    n = len(plan.run_ids("fig5")) * len(plan.seeds)
    row = next(line for line in out.splitlines() if line.startswith("fig5 "))
    assert row.split()[:6] == ["fig5", str(n), "1", "1", "1", str(n - 3)], out
    assert f"  {plan.run_dir(rid, 1)}: epoch {done}/2, log written" in out
    assert re.search(rf"  {re.escape(plan.run_dir(other, 0))}: .*error.*config\.yaml", out, re.I)


def test_unknown_config_key_is_one_line(one_job):
    cwd, _, _ = one_job
    (cwd / "typo.yaml").write_text("sedes: [0, 1]\n")
    proc = run_snakemake(cwd, "-n", "--configfile", "typo.yaml")
    assert proc.returncode != 0
    assert (
        proc.stderr.strip().splitlines()[-1] == "frernn: error: invalid config: unknown key sedes"
    )
    assert "Failed validating" not in proc.stderr


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"label": "x", "spec": {"method": "fa"}}, "method fa needs model.feedback: asymmetric"),
        (
            {"label": "x", "spec": {"model": {"kind": "conv"}, "ep": {"nudge_rule": "fixed"}}},
            "ep.nudge_rule: the conv net uses recompute",
        ),
    ],
)
def test_spec_combination_mistakes_stop_the_workflow_at_start_up(row, message):
    """What the Snakefile runs before any job: one line naming the block, row and key."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["experiments"]["table1"]["rows"].append(row)
    with pytest.raises(FrernnError) as error:
        experiments.build_plan(config)
    line = experiments.config_error(error.value)
    assert (
        line.startswith("config experiments.table1 row 'x': invalid run spec:") and message in line
    )
    assert "\n" not in line


def test_seed_cut_is_stated():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    quick = experiments.build_plan({**config, "scale": "quick", "seeds": [3, 4, 5, 6]})
    assert quick.seeds == [3, 4, 5]
    assert quick.notes == ["scale quick trains seeds [3, 4, 5], the first 3 of seeds "
                           "[3, 4, 5, 6] (scales.quick.seeds: 3)"]  # fmt: skip
    assert experiments.build_plan({**config, "scale": "paper"}).notes == []
