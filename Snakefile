# Reproduces the tables and figures of "Toward Practical Equilibrium Propagation" (SPEC.md).
# The experiments are data (config.yaml); grid expansion and run ids live in frernn.experiments.
import json
import os
import re

from snakemake.utils import min_version, validate

from frernn import experiments

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

PLAN = experiments.build_plan(config)
DEVICE = experiments.resolve_device(config["device"])
DATA_DIR = config["data_dir"]
PACKS = PLAN.packs(experiments.resolve_pack(config["pack"], DEVICE))
UNPACKED_RUN_IDS = "|".join(map(re.escape, PLAN.unpacked_run_ids(PACKS))) or "(?!)"
# GPU jobs share a GPU by slot lock files (frernn.gpu); the environment, unlike params, hands
# the number of slots to every job without making a change of it rerun finished ones.
GPU_SLOTS = str(config["gpu_slots"])
os.environ["FRERNN_GPU_SLOTS"] = GPU_SLOTS


envvars:
    "FRERNN_GPU_SLOTS",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/notebooks.smk"


rule all:
    default_target: True
    input:
        expand("results/{target}.csv", target=PLAN.targets(default_only=True)),
        NOTEBOOK_TARGETS,
