# Reproduces the tables and figures of "Toward Practical Equilibrium Propagation" (SPEC.md).
# The experiments are data (config.yaml); grid expansion and run ids live in frernn.experiments.
import json

from snakemake.utils import min_version, validate

from frernn import experiments

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

PLAN = experiments.build_plan(config)
DEVICE = experiments.resolve_device(config["device"])
DATA_DIR = config["data_dir"]


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
