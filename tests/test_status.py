"""`frernn status` from run directories in each state (the real half-finished workflow run is in
test_workflow_runs.py): the recorded workflow config, states and the time left."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO

from frernn import experiments, status
from frernn.cli import main

SMOKE = {"scale": "smoke", "dataset_substitute": "fashion_mnist"}


@pytest.fixture
def recorded(tmp_path):
    """A results directory with workflow_config.json as the workflow writes it (json.dumps)."""
    config = {**yaml.safe_load((REPO / "config.yaml").read_text()), **SMOKE}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "workflow_config.json").write_text(json.dumps(config))
    return tmp_path / "results", experiments.build_plan(config)


def test_states_from_run_directories(recorded):
    results, plan = recorded
    rid = plan.run_ids("fig5")[0]
    epochs = plan.run(rid).spec["train"]["epochs"]
    dirs = [results / plan.run_dir(rid, seed) for seed in plan.seeds]
    for d in dirs:
        d.mkdir(parents=True)
    (dirs[0] / "metrics.json").write_text("{}")
    (dirs[1] / "history.csv").write_text("epoch,loss,train_acc,test_acc,seconds\n")
    (dirs[1] / "train.log").write_text("INFO frernn.rundir: resuming\nMemoryError: out of memory\n")
    states = [status.run_state(results, rid, plan.run_dir(rid, s), epochs) for s in plan.seeds]
    assert [s.state for s in states] == ["finished", "failed"]
    assert states[1].detail == "MemoryError: out of memory"
    unstarted = status.run_state(results, rid, plan.run_dir(rid, 7), epochs)
    assert unstarted.state == "not started"
    (dirs[1] / "train.log").write_text("INFO frernn.rundir: x epoch 1/1 loss 0.5 ...\n")
    assert status.run_state(results, rid, plan.run_dir(rid, 1), epochs).state == "running"


def test_status_reads_the_recorded_config(recorded, capsys, monkeypatch, tmp_path):
    """Without --config: RESULTS/workflow_config.json (numbers like 1e-06 read as JSON)."""
    results, plan = recorded
    monkeypatch.chdir(tmp_path)
    assert main(["status", "table2"]) == 0
    out = capsys.readouterr().out
    n = len(plan.run_ids("table2")) * len(plan.seeds)
    row = next(line for line in out.splitlines() if line.startswith("table2 "))
    assert row.split()[:6] == ["table2", str(n), "0", "0", "0", str(n)]
    left = status.seconds_left(plan, status.target_states(plan, "table2", results), "cpu")
    assert left == pytest.approx(
        sum(experiments.cpu_seconds(plan.run(r).spec) for r in plan.run_ids("table2")) * 2
    )
    assert "scale smoke, substitute fashion_mnist" in out


def test_unknown_target_is_one_line(recorded, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["status", "table9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("frernn: error: unknown target 'table9'") and "\n" not in err
