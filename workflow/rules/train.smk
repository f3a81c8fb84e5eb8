# One job per (configuration, seed); the run spec comes from the expanded config (PLAN).
# Only the resolved spec is a param (Snakemake reruns a job when a param changes); device,
# data directory and threads reach the job through the environment and `threads`, and the
# dataset marker is ancient(): changing where or how a run trains never retrains it.


rule train:
    input:
        lambda wc: ancient(f"results/data/{PLAN.run(wc.run_id).spec['dataset']}.ready"),
    output:
        "results/runs/{block}/{run_id}/seed{seed}/metrics.json",
    log:
        "results/runs/{block}/{run_id}/seed{seed}/train.log",
    benchmark:
        "results/runs/{block}/{run_id}/seed{seed}/benchmark.tsv"
    wildcard_constraints:
        block="[A-Za-z0-9_]+",
        run_id="[^/]+",
        seed=r"\d+",
    conda:
        "../../envs/frernn.yaml"
    threads: config["threads"]
    resources:
        **({"gpu": 1} if DEVICE == "cuda" else {}),
        mem_mb=lambda wc: PLAN.mem_mb(wc.run_id),
        runtime=lambda wc: PLAN.runtime(wc.run_id, DEVICE),
    params:
        spec=lambda wc: PLAN.spec_text(wc.run_id, int(wc.seed)),
        run_dir=lambda wc, output: subpath(output[0], parent=True),
    shell:
        "printf '%s' {params.spec:q} > {params.run_dir}/spec.yaml && "
        "frernn train {params.run_dir}/spec.yaml --out {params.run_dir}"
        ' --data-dir "$FRERNN_DATA_DIR" --device "$FRERNN_DEVICE" --threads {threads}'
        " > {log} 2>&1"
