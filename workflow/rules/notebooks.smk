# One papermill notebook per page of the config (PLAN.pages(): every default-target block and
# the Fig. 3 graphs), its figure and table, and the report page. Outputs carry report()
# annotations for `snakemake --report`. `rule all` asks for PAGE_TARGETS (pages.smk).


from pathlib import Path


include: "pages.smk"


localrules:
    notebook_kernel,
    page_epochs,
    page_notebook,
    report_page,
    partial_report,


rule notebook_kernel:
    output:
        f"{NOTEBOOK_KERNEL}/share/jupyter/kernels/frernn/kernel.json",
    log:
        "results/logs/notebooks/kernel.log",
    conda:
        "../../envs/frernn.yaml"
    params:
        prefix=lambda wildcards, output: str(Path(output[0]).parents[4]),
    shell:
        "frernn report kernel --prefix {params.prefix} > {log} 2>&1"


rule page_epochs:
    input:
        config="results/workflow_config.json",
        runs=lambda wc: PLAN.metrics_files(wc.name),
    output:
        "results/epochs/{name}.csv",
    log:
        "results/logs/aggregate/{name}.epochs.log",
    wildcard_constraints:
        name="|".join(p.name for p in PAGES.values() if p.generic) or "^$",
    conda:
        "../../envs/frernn.yaml"
    shell:
        "frernn aggregate {wildcards.name} --epochs --config {input.config}"
        " --results results --out {output} > {log} 2>&1"


rule page_notebook:
    input:
        unpack(page_inputs),
        kernel=rules.notebook_kernel.output,
    output:
        notebook="results/notebooks/{name}.ipynb",
        html=page_report("results/notebooks/{name}.html", "notebook"),
        table=page_report("results/tables/{name}.html", "table"),
        pdf="results/figures/{name}.pdf",
        png=page_report("results/figures/{name}.png", "figure"),
    log:
        notebook="results/logs/notebooks/{name}.ipynb",
        stderr="results/logs/notebooks/{name}.log",
    wildcard_constraints:
        name="|".join(PAGES),
    conda:
        "../../envs/frernn.yaml"
    params:
        kernel=lambda wildcards, input: str(Path(input.kernel[0]).parents[4]),
        parameters=page_parameters,
        description=lambda wc: PAGES[wc.name].description,
    shell:
        "frernn report notebook {input.notebook} --out {output.notebook} --html {output.html}"
        " --log {log.notebook} --kernel-prefix {params.kernel}"
        " {params.parameters:q} 2> {log.stderr}"


rule report_page:
    input:
        config="results/workflow_config.json",
        runs="results/runs.csv",
        csvs=expand("results/{name}.csv", name=PAGES),
        tables=expand("results/tables/{name}.html", name=PAGES),
        notebooks=expand("results/notebooks/{name}.html", name=PAGES),
        figures=expand("results/figures/{name}.png", name=PAGES),
        # P-EP re-run (not in the default target): the report shows it once it exists
        reruns=lambda wc: [str(p) for p in nb.reruns("table1")],
    output:
        report(
            "results/report.html",
            caption="../report/report.rst",
            category="Report",
            labels={"page": "report", "file": "verdicts, tables and figures"},
        ),
    log:
        "results/logs/report.log",
    conda:
        "../../envs/frernn.yaml"
    shell:
        "frernn report html --results results --config {input.config} --out {output}"
        " > {log} 2>&1"


# Whatever has finished, while a run goes on (`snakemake partial_report --nolock`) or after
# `--keep-going` left failures: results/partial/{report.html,status.csv,<target>.csv}, each page
# drawn by its notebook from the partial CSVs. It has no output files, so it runs every time it
# is asked for; the strict targets stay as they are.
rule partial_report:
    input:
        config="results/workflow_config.json",
        kernel=rules.notebook_kernel.output,
    log:
        "results/logs/partial_report.log",
    conda:
        "../../envs/frernn.yaml"
    params:
        kernel=lambda wildcards, input: str(Path(input.kernel[0]).parents[4]),
    shell:
        "frernn report partial --config {input.config} --results results"
        " --out results/partial --kernel-prefix {params.kernel} > {log} 2>&1"
