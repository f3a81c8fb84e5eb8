# One local job per dataset: fetch (or import from config["data_sources"]) into DATA_DIR.


localrules:
    dataset,


rule dataset:
    output:
        touch("results/data/{dataset}.ready"),
    log:
        "results/logs/data/{dataset}.log",
    wildcard_constraints:
        dataset="mnist|fashion_mnist|cifar10",
    conda:
        "../../envs/frernn.yaml"
    params:
        source=lambda wc: config.get("data_sources", {}).get(wc.dataset, ""),
        data_dir=DATA_DIR,
    shell:
        "if [ -n {params.source:q} ]; then"
        " frernn data import {wildcards.dataset} {params.source:q} --data-dir {params.data_dir:q};"
        " else frernn data fetch {wildcards.dataset} --data-dir {params.data_dir:q}; fi > {log} 2>&1"
