"""Slurm integration: a real one-node cluster runs a batch job and the smoke pipeline."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from conftest import run_snakemake, workflow_copy

if TYPE_CHECKING:
    from slurm_cluster import SlurmCluster

pytest_plugins = ["slurm_cluster"]

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--config", "scale=smoke", "dataset_substitute=fashion_mnist"]
SLURM_FLAGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--slurm-keep-successful-logs",
]
TOY_SNAKEFILE = """\
localrules:
    gather,


rule gather:
    input:
        "out/cpu.txt",
        "out/gpu.txt",
    output:
        "out/gathered.txt",
    shell:
        "echo ${{SLURM_JOB_ID:-local}} > {output}"


rule work:
    output:
        "out/{kind}.txt",
    resources:
        gpu=lambda wc: int(wc.kind == "gpu"),
    shell:
        "scontrol --oneliner show job $SLURM_JOB_ID > {output};"
        " echo CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-none}} >> {output}"
"""
SBATCH_VARS = ("SBATCH_ACCOUNT", "SBATCH_PARTITION")
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _wait_for_completion(cluster: SlurmCluster, job_id: str, timeout: float = 60) -> None:
    """Poll ``squeue`` until the job has left the pending/running states."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = cluster.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").stdout.strip()
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            assert state == "COMPLETED", f"job {job_id} ended {state}"
            return
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not finish within {timeout} s")


def test_sbatch_runs_a_job_on_the_node(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A batch job with a nested srun step (as the executor's job step does) completes."""
    out = tmp_path / "job.out"
    job_id = slurm_cluster.run(
        "sbatch",
        "--parsable",
        f"--output={out}",
        f"--chdir={tmp_path}",
        "--wrap",
        "srun -n1 hostname && echo SLURM_JOB_ID=$SLURM_JOB_ID",
    ).stdout.strip()
    assert job_id.isdigit()
    _wait_for_completion(slurm_cluster, job_id)
    assert out.read_text().split() == [socket.gethostname(), f"SLURM_JOB_ID={job_id}"]


def _job_record(path: Path) -> dict[str, str]:
    """The ``key=value`` fields a toy job wrote: its ``scontrol show job`` line and its GPUs."""
    return dict(f.split("=", 1) for f in path.read_text().split() if "=" in f)


def test_profile_submits_jobs_with_resources_and_partition(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """``--profile slurm``: rules go through sbatch with the profile's memory, the partition from
    $SBATCH_PARTITION and a GPU when they declare ``gpu=1``; local rules stay local."""
    shutil.copytree(REPO / "slurm", tmp_path / "slurm")
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    env = {**slurm_cluster.env, "SBATCH_PARTITION": "other"}
    proc = _snakemake(tmp_path, "out/gathered.txt", "--profile", "slurm", *SLURM_FLAGS, env=env)
    cpu, gpu = (_job_record(tmp_path / "out" / f"{kind}.txt") for kind in ("cpu", "gpu"))
    assert sorted([cpu["JobId"], gpu["JobId"]]) == sorted(
        i for i, _ in SUBMITTED.findall(proc.stderr)
    )
    for job in (cpu, gpu):
        assert (job["Partition"], job["MinMemoryNode"]) == ("other", "4000M")
    assert gpu["TresPerJob"] == "gres:gpu:1" and gpu["CUDA_VISIBLE_DEVICES"] != "none"
    assert "TresPerJob" not in cpu and cpu["CUDA_VISIBLE_DEVICES"] == "none"
    assert (tmp_path / "out" / "gathered.txt").read_text().strip() == "local"


def _snakemake(workdir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run snakemake in ``workdir``; fail the test with its log tail on error."""
    proc = run_snakemake(workdir, *args, env=env, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def _sbatch_logs(proc: subprocess.CompletedProcess[str], workdir: Path, rule: str) -> list[Path]:
    """The Slurm logs of the jobs of rules named ``rule...`` that Snakemake submitted."""
    logdir = workdir / ".snakemake" / "slurm_logs"
    logs = [Path(log) for _, log in SUBMITTED.findall(proc.stderr)]
    return [log for log in logs if log.relative_to(logdir).parts[0].startswith(f"rule_{rule}")]


@pytest.mark.slow
def test_smoke_tables_through_slurm_match_local(
    slurm_cluster: SlurmCluster, smoke_pipeline: Path, tmp_path: Path
) -> None:
    """The smoke Table S1 with ``pack=shape`` goes through sbatch, one job per pack, and equals
    the local table (packed by seeds); one unpacked conv job of Table 2 through sbatch writes
    the local run's metrics (same seeds, CPU, deterministic)."""
    env = {k: v for k, v in slurm_cluster.env.items() if k not in SBATCH_VARS}
    data = f"data_dir={smoke_pipeline / 'data'}"
    profile = ("--profile", "slurm", *SLURM_FLAGS)
    packed = workflow_copy(tmp_path / "slurm_packed")
    proc = _snakemake(packed, "results/tableS1.csv", *SMOKE, data, "pack=shape", *profile, env=env)
    pack_logs = _sbatch_logs(proc, packed, "train_pack")
    manifests = list((packed / "results/logs/packs").glob("*.manifest.json"))
    assert pack_logs and len(pack_logs) == len(manifests), (pack_logs, manifests)
    runs = sorted((packed / "results" / "runs").rglob("metrics.json"))
    assert len(runs) > len(pack_logs), f"{len(runs)} runs in {len(pack_logs)} packs"
    logged = "\n".join(log.read_text() for log in pack_logs)
    unlogged = [r for r in runs if str(r.relative_to(packed)) not in logged]
    assert not unlogged, f"trained outside the sbatch jobs: {unlogged}"
    local = pd.read_csv(smoke_pipeline / "results" / "tableS1.csv")
    timing = [c for c in local.columns if "seconds" in c]  # wall clocks and seconds per epoch
    pd.testing.assert_frame_equal(
        pd.read_csv(packed / "results" / "tableS1.csv").drop(columns=timing),
        local.drop(columns=timing),
    )

    alone = workflow_copy(tmp_path / "slurm_alone")
    conv = next((smoke_pipeline / "results/runs/table2").glob("*-ep-conv*/seed0/metrics.json"))
    run = conv.relative_to(smoke_pipeline)
    proc = _snakemake(alone, str(run), *SMOKE, data, *profile, env=env)
    assert len(_sbatch_logs(proc, alone, "train")) == 1
    ours, theirs = (json.loads((d / run).read_text()) for d in (alone, smoke_pipeline))
    for key in ("spec", "test_acc_best", "test_acc_final", "train_acc_best", "diverged"):
        assert ours[key] == theirs[key], key
