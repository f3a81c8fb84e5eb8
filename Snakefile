# Reproduces the tables and figures of "Toward Practical Equilibrium Propagation" (SPEC.md).
# The experiments are data (config.yaml); grid expansion and run ids live in frernn.experiments.
import json
import re
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from frernn import experiments
from frernn.errors import FrernnError

min_version("9.0")


configfile: "config.yaml"


try:  # every config and run-spec mistake stops here, as one line, before any job
    validate(config, "workflow/schemas/config.schema.yaml")
    PLAN = experiments.build_plan(config)
except (WorkflowError, FrernnError) as exc:
    sys.exit(f"frernn: error: {experiments.config_error(exc)}")
for note in PLAN.notes:
    print(f"frernn: {note}", file=sys.stderr)
DEVICE = experiments.resolve_device(config["device"])
DATA_DIR = config["data_dir"]
PACKS = PLAN.packs(experiments.resolve_pack(config["pack"], DEVICE))
UNPACKED_RUN_IDS = "|".join(map(re.escape, PLAN.unpacked_run_ids(PACKS))) or "(?!)"
experiments.export_job_environment(DEVICE, DATA_DIR, config["gpu_slots"])


report: "workflow/report/workflow.rst"


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/notebooks.smk"


rule all:
    default_target: True
    input:
        expand("results/{target}.csv", target=PLAN.targets(default_only=True)),
        PAGE_TARGETS,
