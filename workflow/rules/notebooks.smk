# Papermill notebooks that redraw every table and figure from the aggregated CSVs, and the
# report page. Self-contained: `rule all` asks for NOTEBOOK_TARGETS.

from pathlib import Path

NOTEBOOK_TABLES = ["table1", "table2", "tableS1"]
NOTEBOOK_FIGURES = ["fig2", "fig3", "fig4", "fig5", "fig6", "figS8"]
REPORT_EXTRA_TABLES = [
    t for t in ["conv_corrected"] if t in PLAN.targets(default_only=True)
]
NOTEBOOK_KERNEL = "results/notebooks/.kernel"
NOTEBOOK_PARAMS = (
    f"-p scale={config.get('scale', 'paper')}"
    f" -p dataset={config.get('dataset_substitute') or ''}"
)


NOTEBOOK_TARGETS = [
    *expand(
        "results/notebooks/{name}.{ext}",
        name=NOTEBOOK_TABLES + NOTEBOOK_FIGURES,
        ext=["ipynb", "html"],
    ),
    *expand("results/figures/{name}.{ext}", name=NOTEBOOK_FIGURES, ext=["pdf", "png"]),
    "results/report.html",
]


localrules:
    notebook_kernel,
    table_notebook,
    figure_notebook,
    report,


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


rule table_notebook:
    input:
        notebook="notebooks/{name}.ipynb",
        csv="results/{name}.csv",
        kernel=rules.notebook_kernel.output,
    output:
        notebook="results/notebooks/{name}.ipynb",
        html="results/notebooks/{name}.html",
    log:
        notebook="results/logs/notebooks/{name}.ipynb",
        stderr="results/logs/notebooks/{name}.log",
    wildcard_constraints:
        name="|".join(NOTEBOOK_TABLES),
    conda:
        "../../envs/frernn.yaml"
    params:
        kernel=lambda wildcards, input: str(Path(input.kernel[0]).parents[4]),
        notebook=NOTEBOOK_PARAMS,
    shell:
        "frernn report notebook {input.notebook} --out {output.notebook} --html {output.html}"
        " --log {log.notebook} --kernel-prefix {params.kernel}"
        " -p csv_path={input.csv} {params.notebook} 2> {log.stderr}"


rule figure_notebook:
    input:
        notebook="notebooks/{name}.ipynb",
        csv="results/{name}.csv",
        kernel=rules.notebook_kernel.output,
    output:
        notebook="results/notebooks/{name}.ipynb",
        html="results/notebooks/{name}.html",
        pdf="results/figures/{name}.pdf",
        png="results/figures/{name}.png",
    log:
        notebook="results/logs/notebooks/{name}.ipynb",
        stderr="results/logs/notebooks/{name}.log",
    wildcard_constraints:
        name="|".join(NOTEBOOK_FIGURES),
    conda:
        "../../envs/frernn.yaml"
    params:
        kernel=lambda wildcards, input: str(Path(input.kernel[0]).parents[4]),
        notebook=NOTEBOOK_PARAMS,
    shell:
        "frernn report notebook {input.notebook} --out {output.notebook} --html {output.html}"
        " --log {log.notebook} --kernel-prefix {params.kernel}"
        " -p csv_path={input.csv} -p pdf_path={output.pdf} -p png_path={output.png}"
        " {params.notebook} 2> {log.stderr}"


rule report:
    input:
        runs="results/runs.csv",
        csvs=expand(
            "results/{name}.csv",
            name=NOTEBOOK_TABLES + NOTEBOOK_FIGURES + REPORT_EXTRA_TABLES,
        ),
        notebooks=expand(
            "results/notebooks/{name}.html", name=NOTEBOOK_TABLES + NOTEBOOK_FIGURES
        ),
        figures=expand("results/figures/{name}.png", name=NOTEBOOK_FIGURES),
        # P-EP re-run (not in the default target): the report shows it once it exists
        pep=lambda wc: [p for p in ("results/table1_pep.csv",) if Path(p).exists()],
    output:
        "results/report.html",
    log:
        "results/logs/report.log",
    conda:
        "../../envs/frernn.yaml"
    shell:
        "frernn report html --results results --out {output} > {log} 2>&1"
