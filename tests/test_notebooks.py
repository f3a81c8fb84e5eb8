"""Every notebook executed by papermill on a real ``frernn`` kernel, on hand-made contract CSVs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from contract_csvs import write_results
from matplotlib.image import imread

from frernn import notebooks
from frernn.errors import FrernnError

REPO = Path(__file__).resolve().parents[1]
TABLES = ("table1", "table2", "tableS1")
FIGURES = ("fig2", "fig3", "fig4", "fig5", "fig6", "figS8")

pytestmark = pytest.mark.slow


def _parameters(results: Path, name: str, csv: Path | None = None) -> dict[str, str]:
    params = {"csv_path": str(csv or results / f"{name}.csv"), "scale": "quick", "dataset": ""}
    if name in FIGURES:
        params |= {
            ext + "_path": str(results / "figures" / f"{name}.{ext}") for ext in ("pdf", "png")
        }
    return params


def _execute(results: Path, kernel: Path, name: str, case: str, params: dict[str, str]) -> Path:
    """Run notebook ``name``; return the log path (the executed notebook kept on failure)."""
    log = results / "logs" / f"{name}-{case}.ipynb"
    out = results / "notebooks" / f"{name}-{case}"
    notebooks.execute(
        REPO / "notebooks" / f"{name}.ipynb",
        out.with_suffix(".ipynb"),
        out.with_suffix(".html"),
        params,
        log,
        kernel,
    )
    return log


@pytest.fixture(scope="session")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Execute all notebooks once (kernel start-up dominates), plus two failing runs."""
    root = tmp_path_factory.mktemp("notebooks")
    results = write_results(root / "results")
    kernel = root / "kernel"
    kernel_json = notebooks.install_kernel(kernel)
    for name in TABLES + FIGURES:
        _execute(results, kernel, name, "ok", _parameters(results, name))
    (results / "empty.csv").write_text("")
    errors = {}
    for name, csv in (("fig5", results / "absent.csv"), ("table2", results / "empty.csv")):
        with pytest.raises(FrernnError) as info:
            _execute(results, kernel, name, "bad", _parameters(results, name, csv))
        errors[name] = str(info.value)
    return {"results": results, "kernel_json": kernel_json, "errors": errors}


def test_repo_notebooks_are_parameterised_and_carry_no_outputs() -> None:
    found = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
    assert found == sorted(TABLES + FIGURES)
    for name in found:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), name
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "csv_path" in tagged[0].source, name
        assert (name in FIGURES) == ("png_path" in tagged[0].source), name
        source = "\n".join(c.source for c in code)
        assert "torch" not in source and "frernn.train" not in source, name


def test_kernel_is_the_projects_own_interpreter(executed: dict) -> None:
    spec = json.loads(executed["kernel_json"].read_text())
    assert spec["argv"][0] == sys.executable
    nb = nbformat.read(executed["results"] / "notebooks" / "fig2-ok.ipynb", as_version=4)
    assert nb.metadata.kernelspec.name == notebooks.KERNEL_NAME


@pytest.mark.parametrize("name", FIGURES)
def test_figure_notebook_writes_valid_pdf_and_png(executed: dict, name: str) -> None:
    results = executed["results"]
    pdf = (results / "figures" / f"{name}.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"%%EOF" in pdf[-64:] and len(pdf) > 2000
    image = imread(results / "figures" / f"{name}.png")
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01
    html = (results / "notebooks" / f"{name}-ok.html").read_text()
    assert "data:image/png;base64" in html and "scale:</strong> quick" in html


@pytest.mark.parametrize("name", TABLES)
def test_table_notebook_shows_reproduced_and_published(executed: dict, name: str) -> None:
    nb = nbformat.read(executed["results"] / "notebooks" / f"{name}-ok.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    table = outputs[-1]["data"]["text/html"]
    assert "reproduced" in table and "published" in table and "final epoch" in table
    expected = {"table1": "98.39 ± 0.04 (100.00)", "table2": "CIFAR-10", "tableS1": "β = 0.001"}
    assert expected[name] in table
    assert "#f9dcc4" not in table and "#d9efe6" not in table  # quick scale: nothing compared


def test_missing_or_empty_csv_fails_naming_the_file(executed: dict) -> None:
    results, errors = executed["results"], executed["errors"]
    assert f"missing CSV {results / 'absent.csv'}" in errors["fig5"]
    assert f"empty CSV {results / 'empty.csv'}" in errors["table2"]
    log = nbformat.read(results / "logs" / "fig5-bad.ipynb", as_version=4)
    assert any(o.output_type == "error" for c in log.cells for o in c.get("outputs", []))
    assert not (results / "notebooks" / "fig5-bad.ipynb").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", FIGURES)
def test_smoke_pipeline_draws_every_figure(smoke_pipeline: Path, name: str) -> None:
    """The workflow's notebooks, on a real kernel, wrote each figure as valid PNG and PDF."""
    figures = smoke_pipeline / "results" / "figures"
    assert imread(figures / f"{name}.png").size > 0
    assert (figures / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    executed = nbformat.read(smoke_pipeline / "results/notebooks" / f"{name}.ipynb", as_version=4)
    assert any(cell.get("outputs") for cell in executed.cells if cell.cell_type == "code")
    assert (smoke_pipeline / "results/notebooks" / f"{name}.html").stat().st_size > 0


@pytest.mark.slow
def test_smoke_pipeline_report_holds_every_table_figure_and_claim(smoke_pipeline: Path) -> None:
    page = (smoke_pipeline / "results" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES)
    for name in TABLES + FIGURES:
        assert f"id='{name}'" in page, name
    assert "smoke" in page and "fashion_mnist" in page.replace("Fashion-MNIST", "fashion_mnist")
    assert "not comparable" in page
