# Tables and figure data from the finished runs (local: they only read small JSON files).


localrules:
    workflow_config,
    aggregate,


rule workflow_config:
    output:
        "results/workflow_config.json",
    log:
        "results/logs/workflow_config.log",
    conda:
        "../../envs/frernn.yaml"
    params:
        config=lambda wc: json.dumps(config),
    shell:
        "printf '%s\\n' {params.config:q} > {output} 2> {log}"


rule aggregate:
    input:
        config="results/workflow_config.json",
        runs=lambda wc: PLAN.metrics_files(wc.target),
    output:
        "results/{target}.csv",
    log:
        "results/logs/aggregate/{target}.log",
    wildcard_constraints:
        target="|".join(PLAN.targets()),
    conda:
        "../../envs/frernn.yaml"
    shell:
        "frernn aggregate {wildcards.target} --config {input.config}"
        " --results results --out {output} > {log} 2>&1"
