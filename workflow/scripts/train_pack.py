"""Snakemake script of one packed training job: writes every member's spec.yaml and the
manifest, runs ``frernn train-pack`` with its output in the pack's log, and gives each member's
train.log the pack log's name and the lines about that member."""

import os
import re
import subprocess
import sys
from pathlib import Path

from frernn.io import atomic_write_json, atomic_write_text

job = snakemake  # noqa: F821 - injected by Snakemake
pack_log, *member_logs = (Path(f) for f in job.log)
manifest = Path(job.params.manifest)
runs = []
for member in job.params.members:
    run_dir = Path(member["dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "spec.yaml", member["spec"])
    runs.append({"spec": str(run_dir / "spec.yaml"), "out": str(run_dir)})
atomic_write_json(manifest, {"runs": runs})

# device and data directory come from the environment the Snakefile exported, not params,
# so changing them reruns nothing (experiments.export_job_environment)
command = ["frernn", "train-pack", str(manifest), "--data-dir", os.environ["FRERNN_DATA_DIR"]]
command += ["--device", os.environ["FRERNN_DEVICE"], "--threads", str(job.threads)]
with pack_log.open("w") as log:
    log.write(f"{' '.join(command)}\n")
    log.flush()
    returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode

lines = pack_log.read_text().splitlines()
for member, member_log in zip(runs, member_logs, strict=True):
    mentions = re.compile(re.escape(member["out"]) + r"(?![\w.-])")  # seed1, not seed10
    own = [line for line in lines if mentions.search(line)]
    atomic_write_text(
        member_log, "\n".join([f"trained in the pack logged in {pack_log}", *own]) + "\n"
    )
sys.exit(returncode)
