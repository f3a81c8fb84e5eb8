# The pages of the config (tables and figures) and the inputs, papermill parameters and
# report() annotations of their notebooks; used by notebooks.smk.

from frernn import notebooks as nb

PAGES = {page.name: page for page in PLAN.pages()}
NOTEBOOK_KERNEL = "results/notebooks/.kernel"
PAGE_TARGETS = [
    *expand("results/notebooks/{name}.{ext}", name=PAGES, ext=["ipynb", "html"]),
    *expand("results/figures/{name}.{ext}", name=PAGES, ext=["pdf", "png"]),
    "results/report.html",
]


def page_inputs(wildcards):
    """The notebook drawing a page, its CSV(s) and those its verdicts are judged on."""
    page = PAGES[wildcards.name]
    inputs = {
        "notebook": f"notebooks/{page.notebook}.ipynb",
        "csv": f"results/{page.name}.csv",
        "claims": [
            f"results/{n}.csv" for n in nb.claim_inputs(page.name) if n in PAGES
        ],
        "reruns": [str(p) for p in nb.reruns(page.name)],
    }
    if page.generic:
        inputs["epochs"] = f"results/epochs/{page.name}.csv"
    return inputs


def page_parameters(wildcards):
    """Papermill parameters (-p KEY=VALUE) of a page's notebook."""
    values = nb.parameters(
        PAGES[wildcards.name],
        "results",
        config["scale"],
        config.get("dataset_substitute"),
    )
    return [arg for key, value in values.items() for arg in ("-p", f"{key}={value}")]


def page_report(path, kind):
    """A page output marked for Snakemake's report: one category per page, labelled."""
    return report(
        path,
        caption=f"../report/{kind}.rst",
        category="{name}",
        subcategory=kind,
        labels={"page": "{name}", "file": kind},
    )
