"""The Snakemake workflow: dry-run job counts, config validation, lint, env pins, smoke run."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import run_snakemake, workflow_copy

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_COLUMNS = [
    "table", "row", "method", "dataset", "paper_dataset", "substitute", "scale", "run_id",
    "n", "n_expected", "missing", "test_best_mean", "test_best_std", "test_final_mean",
    "test_final_std", "train_best_mean", "train_best_std", "diverged", "wall_seconds_mean",
    "test_best_seeds", "train_acc", "shared_with", "paper_scale", "scale_fraction", "scale_note",
    "paper_test_mean", "paper_test_std", "paper_train", "paper_wall_seconds", "diff", "se_diff",
    "t", "df", "p", "comparison", "comparison_note",
]  # fmt: skip


def snakemake(cwd: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return run_snakemake(cwd, *args, timeout=timeout)


@pytest.fixture(scope="module")
def dry_dir(tmp_path_factory) -> Path:
    return workflow_copy(tmp_path_factory.mktemp("dry"))


def job_counts(cwd: Path, *args: str) -> dict[str, int]:
    """Jobs per rule of a dry run."""
    proc = snakemake(cwd, "-n", "--quiet", "rules", "--config", "device=cpu", "--", *args)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}


@pytest.mark.parametrize(
    ("target", "jobs"),
    [("results/table2.csv", 140), ("results/table1.csv", 40), ("results/tableS1.csv", 140)],
)
def test_dry_run_trains_each_configuration_seed_once(dry_dir, target, jobs):
    counts = job_counts(dry_dir, target)
    assert counts["train"] == jobs and counts["aggregate"] == 1


def test_all_holds_every_target_and_trains_nothing_twice(dry_dir):
    proc = snakemake(dry_dir, "--summary", "--config", "device=cpu")
    assert proc.returncode == 0, proc.stderr
    outputs = [line.split("\t")[0] for line in proc.stdout.splitlines()[1:]]
    expected = ["runs", "table1", "table2", "tableS1", "fig2", "fig3", "fig4", "fig5", "fig6"]
    assert {f"results/{t}.csv" for t in [*expected, "figS8"]} <= set(outputs)
    assert "results/table1_dlr_intended.csv" not in outputs
    runs = [Path(o).parts for o in outputs if o.endswith("/metrics.json")]
    assert len(runs) == len(set(runs)) == 720
    blocks_per_run: dict[str, set[str]] = {}
    for _, _, block, rid, _, _ in runs:
        blocks_per_run.setdefault(rid, set()).add(block)
    assert all(len(b) == 1 for b in blocks_per_run.values())
    assert len(blocks_per_run) == 144


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"seedz": [0]}, "seedz"),
        ({"experiments": {"figS8": {"base": {"ep": {"beta": "high"}}}}}, "beta"),
        ({"experiments": {"fig4": {"grid": [{"ep.betta": [0.1]}]}}}, "ep.betta"),
    ],
)
def test_config_mistakes_stop_before_any_job(tmp_path, config, message):
    cwd = workflow_copy(tmp_path / "wf")
    (cwd / "bad.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(cwd, "-n", "--configfile", "bad.yaml", "--config", "device=cpu")
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Job stats" not in proc.stdout + proc.stderr and not (cwd / "results").exists()


def test_lint_is_clean(dry_dir):
    proc = snakemake(dry_dir, "--lint", "--config", "device=cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_conda_env_pins_match_pyproject():
    env = yaml.safe_load((ROOT / "envs/frernn.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(pip) == sorted(project["dependencies"])
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert project["requires-python"] == ">=3.11" and python == "python=3.11"
    deploy = (ROOT / "envs/frernn.post-deploy.sh").read_text()
    assert "pip install --no-deps -e ." in deploy


@pytest.mark.slow
def test_smoke_table2_end_to_end(smoke_pipeline):
    table = pd.read_csv(smoke_pipeline / "results/table2.csv")
    assert list(table.columns) == SUMMARY_COLUMNS and len(table) == 28
    assert (table["n"] == 2).all() and table["missing"].isna().all()
    assert table["substitute"].all() and (table["scale"] == "smoke").all()
    assert (table["dataset"] == "fashion_mnist").all() and table["paper_test_mean"].notna().all()
    assert (table["comparison"] == "not judged").all() and table["diff"].isna().all()
    assert table["test_best_mean"].between(0, 100).all()
    assert (table["test_best_mean"] >= table["test_final_mean"]).all()
    run = next((smoke_pipeline / "results/runs").glob("table2/*/seed1"))
    for name in ("metrics.json", "history.csv", "spec.yaml", "train.log", "benchmark.tsv"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "spec.yaml").read_text())["seed"] == 1
    runs = pd.read_csv(smoke_pipeline / "results/runs.csv")
    finished = list((smoke_pipeline / "results/runs").glob("*/*/*/metrics.json"))
    assert len(runs) == len(finished) > 56
    assert set(runs["scale"]) == {"smoke"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["table1", "tableS1", "fig4", "fig5", "fig6", "figS8"])
def test_smoke_pipeline_writes_every_table(smoke_pipeline, name):
    table = pd.read_csv(smoke_pipeline / f"results/{name}.csv")
    assert len(table) > 0
    if "test_best_mean" in table.columns:
        assert table["test_best_mean"].dropna().between(0, 100).all()
