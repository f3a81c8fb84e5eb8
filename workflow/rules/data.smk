# One local job per dataset: fetch (or import from config["data_sources"]) into DATA_DIR.


localrules:
    dataset,


rule dataset:
    output:
        touch("results/data/{dataset}.ready"),
    params:
        source=lambda wc: config.get("data_sources", {}).get(wc.dataset, ""),
    log:
        "results/logs/data/{dataset}.log",
    wildcard_constraints:
        dataset="mnist|fashion_mnist|cifar10",
    conda:
        "../../envs/frernn.yaml"
    shell:
        "if [ -n {params.source:q} ]; then"
        " frernn data import {wildcards.dataset} {params.source:q} --data-dir {DATA_DIR:q};"
        " else frernn data fetch {wildcards.dataset} --data-dir {DATA_DIR:q}; fi > {log} 2>&1"
