# One local job per dataset: `frernn data fetch` (Debian files, else a checksummed download),
# or `frernn data import` from the directory config["data_sources"] names for it. Either also
# verifies the files and builds the decoded-tensor cache (beside them, or in $FRERNN_CACHE_DIR
# when the data directory is read-only), so the training jobs that follow only read it.


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
        action=lambda wc: (
            ["import", wc.dataset, config["data_sources"][wc.dataset]]
            if wc.dataset in config.get("data_sources", {})
            else ["fetch", wc.dataset]
        ),
        data_dir=DATA_DIR,
    shell:
        "frernn data {params.action:q} --data-dir {params.data_dir:q} > {log} 2>&1"
