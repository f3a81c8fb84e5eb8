# One job per (configuration, seed); the run spec comes from the expanded config (PLAN).


rule train:
    input:
        lambda wc: f"results/data/{PLAN.run(wc.run_id).spec['dataset']}.ready",
    output:
        "results/runs/{block}/{run_id}/seed{seed}/metrics.json",
    params:
        spec=lambda wc: PLAN.spec_text(wc.run_id, int(wc.seed)),
        run_dir=lambda wc, output: subpath(output[0], parent=True),
    log:
        "results/runs/{block}/{run_id}/seed{seed}/train.log",
    benchmark:
        "results/runs/{block}/{run_id}/seed{seed}/benchmark.tsv"
    wildcard_constraints:
        block="[A-Za-z0-9_]+",
        run_id="[^/]+",
        seed=r"\d+",
    threads: config["threads"]
    resources:
        mem_mb=lambda wc: PLAN.resources(wc.run_id, DEVICE, config["runtime"])["mem_mb"],
        runtime=lambda wc: PLAN.resources(wc.run_id, DEVICE, config["runtime"])["runtime"],
        **({"gpu": 1} if DEVICE == "cuda" else {}),
    conda:
        "../../envs/frernn.yaml"
    shell:
        "printf '%s' {params.spec:q} > {params.run_dir}/spec.yaml && "
        "frernn train {params.run_dir}/spec.yaml --out {params.run_dir}"
        " --data-dir {DATA_DIR:q} --device {DEVICE} > {log} 2>&1"
