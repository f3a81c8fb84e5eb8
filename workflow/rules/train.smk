# One job per (configuration, seed), or with --config pack=seeds|shape one job per pack of
# runs (PLAN.packs): its outputs are every member's metrics.json, and `train` keeps the rest.
# Only the resolved specs are params (Snakemake reruns a job when a param changes); device,
# data directory and GPU slots reach the job through the environment, threads as `threads`,
# and the dataset marker is ancient(): changing where or how a run trains never retrains it.


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
        run_id=UNPACKED_RUN_IDS,
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


for pack in PACKS:
    members = PLAN.pack_members(pack)
    runtime = PLAN.pack_runtime(pack, DEVICE)

    rule:
        name:
            f"train_pack_{pack.pack_id}"
        input:
            ancient(f"results/data/{PLAN.run(pack.run_ids[0]).spec['dataset']}.ready"),
        output:
            [f"{m['dir']}/metrics.json" for m in members],
        log:
            f"results/logs/packs/{pack.pack_id}.log",
            [f"{m['dir']}/train.log" for m in members],
        benchmark:
            f"results/logs/packs/{pack.pack_id}.benchmark.tsv"
        conda:
            "../../envs/frernn.yaml"
        threads: config["threads"]
        priority: runtime  # longest first: no long pack left running alone at the end
        resources:
            **({"gpu": 1} if DEVICE == "cuda" else {}),
            mem_mb=PLAN.pack_mem_mb(pack),
            runtime=runtime,
        params:
            members=members,
            manifest=f"results/logs/packs/{pack.pack_id}.manifest.json",
        script:
            "../scripts/train_pack.py"
