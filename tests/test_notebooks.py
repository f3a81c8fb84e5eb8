"""The notebooks, executed by papermill on a real ``frernn`` kernel from ``notebooks/`` (as
Jupyter does) on hand-made contract CSVs; the plotting API they stand on; the generic page of
a block added to config.yaml, through Snakemake, and Snakemake's own report of it."""

from __future__ import annotations

import copy
import json
import shutil
import sys
import zipfile
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from conftest import SMOKE_CONFIG, run_snakemake, workflow_copy
from contract_csvs import summary_tables, write_results
from matplotlib.image import imread

from frernn import claims, experiments, figures, notebooks, plotstyle, report, tables
from frernn.errors import FrernnError

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
PAGES = experiments.build_plan(CONFIG).pages()
PAPER = [p.name for p in PAGES if not p.generic]  # the paper notebooks
GENERIC = [p for p in PAGES if p.generic]  # conv_corrected: drawn by the generic template


def _code(name: str) -> str:
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def _epochs(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-epoch CSV (frernn aggregate --epochs) of a contract summary table."""
    keys = ["table", "row", "method", "paper_dataset", "run_id", *tables.grid_columns(summary)]
    rows = [
        {**row[keys].to_dict(), "epoch": epoch, "test_acc_mean": row["test_best_mean"] - 3 + epoch}
        | {"test_acc_std": 0.2, "n": 2}
        for _, row in summary.iterrows()
        for epoch in (1, 2, 3)
    ]
    return pd.DataFrame(rows)


def _contract_tree(root: Path) -> Path:
    """A checkout-like tree: Snakefile, config.yaml, notebooks/, contract CSVs in results/."""
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copy(REPO / "config.yaml", root / "config.yaml")
    (root / "Snakefile").write_text("")
    results = write_results(root / "results")
    sweep = summary_tables("quick", "")["tableS1"]
    sweep.to_csv(results / "experiment.csv", index=False)
    (results / "epochs").mkdir()
    _epochs(sweep).to_csv(results / "epochs" / "experiment.csv", index=False)
    for page in GENERIC:
        _epochs(pd.read_csv(results / f"{page.name}.csv")).to_csv(
            results / "epochs" / f"{page.name}.csv", index=False
        )
    table1 = pd.read_csv(results / "table1.csv")  # a P-EP re-run: Table 1 shows it once it exists
    pep = table1[table1["row"] == "2HL-512 EP"].assign(
        table="table1_pep", row="2HL-512 P-EP matched", method="P-EP"
    )
    pep.to_csv(results / "table1_pep.csv", index=False)
    return root


@pytest.fixture(scope="session")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every notebook run once from notebooks/ with its default (root-relative) paths."""
    root = _contract_tree(tmp_path_factory.mktemp("checkout"))
    kernel = root / "kernel"
    kernel_json = notebooks.install_kernel(kernel)
    monkey = pytest.MonkeyPatch()
    monkey.chdir(root / "notebooks")
    out = root / "executed"
    try:
        for name in [*PAPER, "experiment"]:
            notebooks.execute(
                Path(f"{name}.ipynb"),
                out / f"{name}.ipynb",
                out / f"{name}.html",
                {"scale": "quick"},
                out / "logs" / f"{name}.ipynb",
                kernel,
            )
        for page in GENERIC:  # with the workflow's parameters for its page
            notebooks.execute(
                Path("experiment.ipynb"),
                out / f"{page.name}.ipynb",
                out / f"{page.name}.html",
                notebooks.parameters(page, "results", "quick", ""),
                out / "logs" / f"{page.name}.ipynb",
                kernel,
            )
        error = None
        try:
            notebooks.execute(
                Path("fig5.ipynb"),
                out / "bad.ipynb",
                out / "bad.html",
                {"scale": "quick", "csv_path": "results/absent.csv"},
                out / "logs" / "bad.ipynb",
                kernel,
            )
        except FrernnError as exc:
            error = str(exc)
    finally:
        monkey.undo()
    return {"root": root, "out": out, "error": error, "kernel_json": kernel_json}


def _outputs(executed: dict, name: str) -> list:
    nb = nbformat.read(executed["out"] / f"{name}.ipynb", as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _shown(executed: dict, name: str) -> str:
    """Everything a notebook displayed, as text and HTML."""
    parts = []
    for output in _outputs(executed, name):
        data = output.get("data", {})
        parts += [data.get("text/html", ""), data.get("text/markdown", ""), output.get("text", "")]
    return "\n".join(parts)


def test_each_page_of_the_config_has_its_notebook_stored_without_outputs() -> None:
    assert {p.notebook for p in PAGES} == {*PAPER, experiments.GENERIC_NOTEBOOK}
    stored = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
    assert stored == sorted([*PAPER, experiments.GENERIC_NOTEBOOK])
    for name in stored:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), name
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        for parameter in ("csv_path", "table_path", "png_path", "pdf_path", "results_dir"):
            assert f'{parameter} = "results' in tagged[0].source, (name, parameter)
        source = _code(name)
        assert "torch" not in source and "frernn.train" not in source, name
        assert "notebooks.verdicts(" in source and "figures.save(fig" in source, name
        story = [c.source for c in nb.cells if c.cell_type == "markdown"]
        assert len(story) >= 4 and len(story[0]) > 300, name  # the figure's story, told


def test_paper_notebooks_differ_in_what_they_show() -> None:
    figure_code = {}
    for name in PAPER:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        figure_code[name] = max((c.source for c in nb.cells if c.cell_type == "code"), key=len)
    assert len(set(figure_code.values())) == len(PAPER)
    assert all(len(code.splitlines()) >= 8 for code in figure_code.values())
    titles = {nbformat.read(REPO / "notebooks" / f"{n}.ipynb", 4).cells[0].source for n in PAPER}
    assert len(titles) == len(PAPER)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*PAPER, "experiment", *(p.name for p in GENERIC)])
def test_notebook_runs_from_notebooks_dir_and_writes_figure_and_table(executed, name) -> None:
    results = executed["root"] / "results"
    assert not [o for o in _outputs(executed, name) if o.output_type == "error"]
    pdf = (results / "figures" / f"{name}.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"%%EOF" in pdf[-64:] and len(pdf) > 2000
    image = imread(results / "figures" / f"{name}.png")
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01
    assert "<table" in (results / "tables" / f"{name}.html").read_text()
    html = (executed["out"] / f"{name}.html").read_text()
    assert "data:image/png;base64" in html and "scale:</strong> quick" in html


@pytest.mark.slow
def test_notebooks_show_published_values_and_their_verdicts(executed) -> None:
    table1 = _shown(executed, "table1")
    assert "98.39 ± 0.04 (100.00)" in table1 and "published" in table1
    assert "EP ≈ BP on MNIST" in table1 and "Residual connections" not in table1
    assert "#f9dcc4" not in table1 and "#d9efe6" not in table1  # quick scale: nothing compared
    assert "2HL-512 P-EP matched" in table1  # the P-EP re-run, appended once it exists
    fragment = (executed["root"] / "results" / "tables" / "table1.html").read_text()
    assert fragment.startswith("<p>train % in brackets (its best epoch) = running")
    assert "2HL-512 P-EP matched" in fragment
    table2 = _shown(executed, "table2")
    assert "CIFAR-10" in table2 and "AGT beats FA at depth 10 on MNIST" in table2
    assert "β = 0.001" in _shown(executed, "tableS1")
    assert "Optimal β grows with depth" in _shown(executed, "tableS1")
    assert "T=10 suffices at β=0.01" in _shown(executed, "fig6")
    assert "No claim of the paper is judged on this page." in _shown(executed, "fig3")
    assert "Best P here: **0.2**" in _shown(executed, "figS8")
    experiment = _shown(executed, "experiment")
    assert "best epoch" in experiment and "final epoch" in experiment
    assert "L10 β=0.1" in experiment
    for page in GENERIC:  # the corrected conv rows: their cosines with BP beside the accuracies
        fragment = (executed["root"] / "results" / "tables" / f"{page.name}.html").read_text()
        assert "conv1 0.987 ± 0.004" in fragment and "cos(update, BP) at init" in fragment


@pytest.mark.slow
def test_kernel_is_the_projects_own_interpreter(executed: dict) -> None:
    spec = json.loads(executed["kernel_json"].read_text())
    assert spec["argv"][0] == sys.executable
    nb = nbformat.read(executed["out"] / "fig2.ipynb", as_version=4)
    assert nb.metadata.kernelspec.name == notebooks.KERNEL_NAME


@pytest.mark.slow
def test_missing_csv_fails_naming_the_file(executed) -> None:
    root = executed["root"]
    assert f"missing CSV {root / 'results' / 'absent.csv'}" in executed["error"]
    log = nbformat.read(executed["out"] / "logs" / "bad.ipynb", as_version=4)
    assert any(o.output_type == "error" for c in log.cells for o in c.get("outputs", []))
    assert not (executed["out"] / "bad.ipynb").exists()


def test_paths_resolve_against_the_checkout_root(tmp_path, monkeypatch) -> None:
    (tmp_path / "Snakefile").write_text("")
    (tmp_path / "config.yaml").write_text("")
    (tmp_path / "notebooks" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "notebooks" / "deep")
    assert notebooks.repo_root() == tmp_path
    assert notebooks.at_root("results/fig4.csv") == tmp_path / "results" / "fig4.csv"
    assert notebooks.at_root("/abs/x.csv") == Path("/abs/x.csv")
    monkeypatch.chdir("/")
    assert notebooks.repo_root() == REPO  # elsewhere: the checkout holding frernn


def test_verdicts_concern_the_pages_their_claims_cite(tmp_path) -> None:
    assert notebooks.cited_pages("Tables 1, 2") == {"table1", "table2"}
    assert notebooks.cited_pages("Fig. 6a–d") == {"fig6"}
    assert notebooks.cited_pages("Table S1") == {"tableS1"}
    assert notebooks.claim_inputs("table1") == ["table1", "table2"]
    assert notebooks.claim_inputs("fig4") == []
    results = write_results(tmp_path / "results", scale="paper")
    verdicts = notebooks.verdicts("table2", results, "paper")
    assert list(verdicts.columns) == ["claim", "where", "verdict", "evidence"]
    assert set(verdicts["where"]) == {"Tables 1, 2", "Table 2"} and len(verdicts) == 3
    assert set(verdicts["verdict"]) == {claims.HOLDS}
    quick = notebooks.verdicts("table2", write_results(tmp_path / "quick"), "quick")
    assert set(quick["verdict"]) == {claims.INDICATIVE}  # gated: not the paper's scale
    assert quick["evidence"].str.contains("Cannot judge: quick scale").all()
    (results / "table1.csv").unlink()  # not aggregated (yet): the claim needing it says so
    alone = notebooks.verdicts("table1", results, "paper").set_index("claim")
    assert alone.loc["EP is ≥10× faster than P-EP", "verdict"] == claims.NOT_COMPARABLE


def test_sweep_axes_drop_zipped_companions_and_pick_the_plot() -> None:
    s1 = summary_tables("quick", "")["tableS1"]
    s1.insert(s1.columns.get_loc("n"), "T", 10 * s1["depth"])
    s1.insert(s1.columns.get_loc("n"), "K", 5 * s1["depth"])
    assert tables.grid_columns(s1) == ["depth", "beta", "T", "K"]
    assert figures.sweep_axes(s1) == ["depth", "beta"] and figures.has_sweep(s1)
    line = s1[s1["depth"] == 2]
    assert figures.sweep_axes(line) == ["beta"] and figures.has_sweep(line)
    flat = s1[(s1["depth"] == 2) & (s1["beta"] == 0.1)]
    assert figures.sweep_axes(flat) == [] and not figures.has_sweep(flat)
    plotstyle.use()
    fig, axes = figures.panels(1, 1)
    image = figures.sweep(axes[0, 0], s1)
    assert image.get_array().shape == (4, 7)
    boxed = [p for p in axes[0, 0].patches if p.get_edgecolor()[:3] != (0, 0, 0)]
    assert len(boxed) == 1 and boxed[0].get_xy() == (-0.5, -0.5)  # best: L2, β=0.001
    with pytest.raises(FrernnError, match="one numeric grid axis"):
        figures.sweep(axes[0, 0], flat)
    two = figures.experiment_figure(s1, _epochs(s1))
    assert len([a for a in two.axes if a.get_label() != "<colorbar>"]) == 2
    assert len(figures.experiment_figure(flat, _epochs(flat)).axes) == 1


def test_summary_reads_one_line_per_configuration() -> None:
    s8 = summary_tables("quick", "")["figS8"]
    table = tables.summary(s8)
    assert list(table.columns) == ["best epoch", "final epoch", "n", "diverged"]
    assert table.loc["P0.2", "best epoch"] == "94.60 ± 0.10"
    assert table.loc["P0.2", "n"] == "2/2"
    with pytest.raises(FrernnError, match="lacks column"):
        tables.summary(s8.drop(columns="test_final_mean"))


OWN_BLOCK = {
    "description": "beta sweep at depth 4 (README example)",
    "base": {
        "model": {"kind": "layered", "depth": 4, "width": 16, "topology": "chain"},
        "ep": {"T": 8, "K": 4, "nudge_rule": "fixed"},
        "train": {"batch_size": 64},
    },
    "label": "b{beta:g}",
    "grid": [{"ep.beta": [0.05, 0.5]}],
}


@pytest.fixture(scope="module")
def own_experiment(tmp_path_factory: pytest.TempPathFactory, fmnist_dir: Path) -> Path:
    """A copy of the workflow with one block added and the paper's blocks out of the target."""
    cwd = workflow_copy(tmp_path_factory.mktemp("own"))
    config = yaml.safe_load((cwd / "config.yaml").read_text())
    extra = {"experiments": {name: {"target": False} for name in config["experiments"]}}
    extra["experiments"]["beta_depth4"] = copy.deepcopy(OWN_BLOCK)
    (cwd / "own.yaml").write_text(yaml.safe_dump(extra))
    args = ["--cores", "2", "--configfile", "own.yaml", *SMOKE_CONFIG, f"data_dir={fmnist_dir}"]
    proc = run_snakemake(cwd, *args, "device=cpu", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for suffix in ("zip", "html"):
        proc = run_snakemake(cwd, "--report", f"results/snakemake-report.{suffix}", *args)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd


@pytest.mark.slow
def test_own_block_gets_csv_notebook_figure_and_report_section(own_experiment: Path) -> None:
    results = own_experiment / "results"
    summary = pd.read_csv(results / "beta_depth4.csv")
    assert list(summary["row"]) == ["b0.05", "b0.5"] and (summary["n"] == 2).all()
    epochs = pd.read_csv(results / "epochs" / "beta_depth4.csv")
    assert set(epochs["row"]) == {"b0.05", "b0.5"} and set(epochs["epoch"]) == {1}
    executed = nbformat.read(results / "notebooks" / "beta_depth4.ipynb", as_version=4)
    shown = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "beta sweep at depth 4" in shown and "b0.05" in shown
    assert imread(results / "figures" / "beta_depth4.png").std() > 0.01
    page = (results / "report.html").read_text()
    assert "<section id='beta_depth4'>" in page and "beta sweep at depth 4" in page
    assert "id='table1'" not in page  # out of the target, out of the page


@pytest.mark.slow
def test_snakemake_report_holds_every_page_by_category(own_experiment: Path) -> None:
    with zipfile.ZipFile(own_experiment / "results" / "snakemake-report.zip") as archive:
        names = archive.namelist()
        index = archive.read("snakemake-report/report.html").decode()  # the zip's stem/
    files = {Path(n).name for n in names}
    assert {"beta_depth4.png", "beta_depth4.html", "fig3.png", "report.html"} <= files
    for text in ("beta_depth4", "fig3", "Report", "beta sweep at depth 4", "scale"):
        assert text in index, text
    assert "smoke" in index  # captions say at which scale
    single = (own_experiment / "results" / "snakemake-report.html").read_text()
    assert "beta_depth4" in single and len(single) > 100_000


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in PAGES])
def test_smoke_pipeline_draws_every_figure(smoke_pipeline: Path, name: str) -> None:
    """The workflow's notebooks, on a real kernel, wrote each figure as valid PNG and PDF."""
    figures_dir = smoke_pipeline / "results" / "figures"
    assert imread(figures_dir / f"{name}.png").size > 0
    assert (figures_dir / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    executed = nbformat.read(smoke_pipeline / "results/notebooks" / f"{name}.ipynb", as_version=4)
    assert any(cell.get("outputs") for cell in executed.cells if cell.cell_type == "code")
    assert (smoke_pipeline / "results/notebooks" / f"{name}.html").stat().st_size > 0


@pytest.mark.slow
def test_smoke_pipeline_report_holds_every_table_figure_and_claim(smoke_pipeline: Path) -> None:
    page = (smoke_pipeline / "results" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(PAGES)
    for p in PAGES:
        assert f"<section id='{p.name}'>" in page, p.name
    assert "smoke" in page and "fashion_mnist" in page.replace("Fashion-MNIST", "fashion_mnist")
    assert "id='pep-speed'" in page and report.CLAIMS_LEGEND in page  # main's report sections
    assert "not comparable" in page
