"""The Snakemake workflow: dry-run job counts, config validation, lint, env pins, smoke run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import SMOKE_CONFIG, run_snakemake, workflow_copy
from snakemake.utils import update_config

from frernn import experiments

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_COLUMNS = [
    "table", "row", "method", "dataset", "paper_dataset", "substitute", "scale", "run_id",
    "n", "n_expected", "missing", "test_best_mean", "test_best_std", "test_final_mean",
    "test_final_std", "train_best_mean", "train_best_std", "diverged", "wall_seconds_mean",
    "epoch_seconds_mean", "steps_per_sample", "devices", "test_best_seeds", "train_acc",
    "shared_with", "paper_scale", "scale_fraction", "scale_note",
    "paper_test_mean", "paper_test_std", "paper_train", "paper_wall_seconds", "diff", "se_diff",
    "t", "df", "p", "comparison", "comparison_note",
]  # fmt: skip


def snakemake(cwd: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return run_snakemake(cwd, *args, timeout=timeout)


@pytest.fixture(scope="module")
def dry_dir(tmp_path_factory) -> Path:
    return workflow_copy(tmp_path_factory.mktemp("dry"))


def job_counts(cwd: Path, *args: str, config: tuple[str, ...] = ("device=cpu",)) -> dict[str, int]:
    """Jobs per rule of a dry run (all packed jobs counted together as ``train_pack``)."""
    proc = snakemake(cwd, "-n", "--quiet", "rules", "--config", *config, "--", *args)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    per_rule = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}
    counts: dict[str, int] = {}
    for name, n in per_rule.items():
        name = "train_pack" if name.startswith("train_pack_") else name
        counts[name] = counts.get(name, 0) + n
    return counts


@pytest.mark.parametrize(
    ("target", "jobs"),
    [("results/table2.csv", 140), ("results/table1.csv", 40), ("results/tableS1.csv", 140)],
)
def test_dry_run_trains_each_configuration_seed_once(dry_dir, target, jobs):
    counts = job_counts(dry_dir, target)
    assert counts["train"] == jobs and counts["aggregate"] == 1


@pytest.mark.parametrize(
    ("config", "target", "packs"),
    [
        (("device=cpu", "pack=seeds"), "results/tableS1.csv", 28),  # 28 configurations x 5 seeds
        (("device=cuda",), "results/tableS1.csv", 4),  # auto = shape: one job per depth
        (("device=cpu", "pack=shape"), "results/table2.csv", 28),  # no two rows share a shape
    ],
)
def test_dry_run_packs_jobs(dry_dir, config, target, packs):
    counts = job_counts(dry_dir, target, config=config)
    assert counts["train_pack"] == packs and "train" not in counts and counts["aggregate"] == 1


def test_longest_packs_are_scheduled_first(dry_dir):
    """A pack's priority is its time limit, so the deep nets do not start last and leave a
    core idle while they finish."""
    config = ("--config", "device=cpu", "pack=seeds")
    proc = snakemake(dry_dir, "-n", *config, "--", "results/tableS1.csv")
    assert proc.returncode == 0, proc.stderr
    job = r"^rule (train_pack_\w+):\n(?:    .*\n)*?    priority: (\d+)"  # its first priority line
    jobs = re.findall(job, proc.stdout, re.M)
    depth = {name: int(re.search(r"_L(\d+)_", name)[1]) for name, _ in jobs}
    priority = {name: int(p) for name, p in jobs}
    assert len(jobs) == 28 and set(depth.values()) == {2, 3, 5, 10}
    deepest = [priority[name] for name in priority if depth[name] == 10]
    assert min(deepest) > max(priority[name] for name in priority if depth[name] == 2)


def test_all_holds_every_target_and_trains_nothing_twice(dry_dir):
    proc = snakemake(dry_dir, "--summary", "--config", "device=cpu")
    assert proc.returncode == 0, proc.stderr
    outputs = [line.split("\t")[0] for line in proc.stdout.splitlines()[1:]]
    expected = ["runs", "table1", "table2", "conv_corrected", "tableS1", "fig2", "fig3", "fig4"]
    expected += ["fig5", "fig6"]
    assert {f"results/{t}.csv" for t in [*expected, "figS8"]} <= set(outputs)
    assert "results/table1_dlr_intended.csv" not in outputs
    runs = [Path(o).parts for o in outputs if o.endswith("/metrics.json")]
    assert len(runs) == len(set(runs)) == 750
    blocks_per_run: dict[str, set[str]] = {}
    for _, _, block, rid, _, _ in runs:
        blocks_per_run.setdefault(rid, set()).add(block)
    assert all(len(b) == 1 for b in blocks_per_run.values())
    assert len(blocks_per_run) == 150


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


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # cuda: pack=auto is shape, 45 pack rules
def test_lint_is_clean(dry_dir, device):
    proc = snakemake(dry_dir, "--lint", "--config", f"device={device}")
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
    assert [c for c in table.columns if not c.startswith("align_")] == SUMMARY_COLUMNS
    assert len(table) == 28
    assert (table["n"] == 2).all() and table["missing"].isna().all()
    assert table["substitute"].all() and (table["scale"] == "smoke").all()
    assert (table["dataset"] == "fashion_mnist").all() and table["paper_test_mean"].notna().all()
    assert (table["comparison"] == "not judged").all() and table["diff"].isna().all()
    assert table["test_best_mean"].between(0, 100).all()
    assert (table["test_best_mean"] >= table["test_final_mean"]).all()
    run = next((smoke_pipeline / "results/runs").glob("table2/*/seed1"))
    for name in ("metrics.json", "history.csv", "spec.yaml", "train.log"):
        assert (run / name).is_file(), name
    assert list((smoke_pipeline / "results/logs/packs").glob("*.benchmark.tsv"))
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


@pytest.mark.slow
def test_smoke_conv_rows_carry_alignment_and_the_corrected_block_is_reported(smoke_pipeline):
    results = smoke_pipeline / "results"
    table1 = pd.read_csv(results / "table1.csv")
    conv = table1[table1["row"].str.startswith("Conv")]
    assert list(conv["method"]) == ["EP", "BP (straight-through)"]
    for phase in ("before", "after"):
        assert conv[f"align_{phase}_conv1_mean"].between(-1, 1).all()
        assert conv[f"align_{phase}_fc_mean"].between(-1, 1).all()
    corrected = pd.read_csv(results / "conv_corrected.csv")
    assert len(corrected) == 6 and (corrected["n"] == 2).all()
    assert corrected["align_before_conv2_mean"].between(-1, 1).all()
    page = (results / "report.html").read_text()
    assert "id='conv_corrected'" in page and "cos(update, BP) at init" in page


SHORT_SMOKE = {"scales": {"smoke": {"spec": {"train": {"epochs": 3, "train_subset": 3000}}}}}


@pytest.mark.slow
def test_unpacked_smoke_table_equals_packed(smoke_pipeline, tmp_path):
    """One job per (configuration, seed) trains Table S1 as the packed smoke pipeline did
    (``pack=seeds``): the table and every run directory hold the same values."""
    cwd = workflow_copy(tmp_path / "wf")
    config = [*SMOKE_CONFIG, f"data_dir={smoke_pipeline / 'data'}", "pack=none"]
    proc = snakemake(cwd, "--cores", "2", *config, "--", "results/tableS1.csv", timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert not (cwd / "results/logs/packs").exists()
    alone, packed = (pd.read_csv(d / "results/tableS1.csv") for d in (cwd, smoke_pipeline))
    same = [c for c in packed.columns if "seconds" not in c]  # wall clocks, seconds per epoch
    pd.testing.assert_frame_equal(alone[same], packed[same])
    runs = list((cwd / "results/runs").glob("*/*/seed*/metrics.json"))
    assert len(runs) == 2 * len(alone)
    for metrics in runs:
        run = metrics.parent.relative_to(cwd)
        for name in ("spec.yaml", "history.csv", "train.log", "benchmark.tsv"):
            assert (cwd / run / name).is_file(), (run, name)
        ours, theirs = (
            json.loads((d / run / "metrics.json").read_text()) for d in (cwd, smoke_pipeline)
        )
        for key in ("spec", "test_acc_best", "test_acc_final", "train_acc_best", "diverged"):
            assert ours[key] == theirs[key], (run, key)


def test_killed_pack_resumes_every_member_from_its_checkpoint(tmp_path, fmnist_dir):
    """A pack killed (with Snakemake) after its first checkpoint continues on the rerun."""
    cwd = workflow_copy(tmp_path / "wf")
    (cwd / "short.yaml").write_text(yaml.safe_dump(SHORT_SMOKE))
    config = ["--configfile", "short.yaml", *SMOKE_CONFIG, f"data_dir={fmnist_dir}", "pack=seeds"]
    merged = yaml.safe_load((cwd / "config.yaml").read_text())
    update_config(merged, {**SHORT_SMOKE, "scale": "smoke", "dataset_substitute": "fashion_mnist"})
    rid = experiments.build_plan(merged).run_ids("tableS1")[0]  # L2, beta 0.001: one pack
    target = f"results/runs/tableS1/{rid}/seed0/metrics.json"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--cores", "1", *config, "--", target]
    first = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_dirs = [cwd / "results/runs/tableS1" / rid / f"seed{k}" for k in (0, 1)]
    deadline = time.monotonic() + 300
    while not any((d / "checkpoint.pt").exists() for d in run_dirs):
        assert first.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not any((d / "metrics.json").exists() for d in run_dirs)
    assert snakemake(cwd, "--unlock", *config).returncode == 0
    proc = snakemake(cwd, "--cores", "1", "--rerun-incomplete", *config, "--", target, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    (pack_log,) = (cwd / "results/logs/packs").glob("*.log")
    assert re.search(rf"resuming \S*{rid}/seed\d after epoch [12]", pack_log.read_text())
    for run_dir in run_dirs:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
        assert not (run_dir / "checkpoint.pt").exists()
