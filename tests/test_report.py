"""results/report.html from hand-made CSVs and figures; the `frernn report` command wiring."""

from __future__ import annotations

import argparse
import base64
import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from contract_csvs import write_results
from matplotlib.figure import Figure

from frernn import claims, experiments, figures, report, tables
from frernn.errors import FrernnError

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
PAGES = experiments.build_plan(CONFIG).pages()


def _results(
    root: Path, config: dict | None = None, extra: dict | None = None, **kwargs: str
) -> Path:
    """Contract CSVs (and ``extra`` frames by name), the workflow config, and per page the
    table and a small real PNG that its notebook would write."""
    results = write_results(root / "results", **kwargs)
    for name, frame in (extra or {}).items():
        frame.to_csv(results / f"{name}.csv", index=False)
    config = config or CONFIG
    (results / "workflow_config.json").write_text(json.dumps(config))
    for page in experiments.build_plan(config).pages():
        data = tables.read_csv(results / f"{page.name}.csv")
        shown = tables.comparison_table(data) if page.name in ("table1", "table2") else data
        tables.save(shown, results / "tables" / f"{page.name}.html")
        fig = Figure(figsize=(1, 1))
        fig.subplots().plot([0, 1], [0, 1])
        png = results / "figures" / f"{page.name}.png"
        figures.save(fig, png.with_suffix(".pdf"), png)
    return results


def _run_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    report.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_report_page_has_banner_claims_tables_and_embedded_figures(tmp_path: Path) -> None:
    results = _results(tmp_path)
    (results / "notebooks").mkdir()
    (results / "notebooks" / "fig5.html").write_text("<html></html>")
    _run_cli(["report", "html", "--results", str(results)])
    page = (results / "report.html").read_text()
    assert "<b>scale</b>: quick" in page and "<b>device</b>: cpu" in page
    assert "torch 2.14.1, frernn 0.1.0" in page
    assert "<b>total compute</b>: 0:14:14" in page  # 7 experiments × (30+30+31+31) s
    assert "substituted" not in page
    for claim, *_ in claims.CLAIMS:
        assert claim.replace("≈", "&asymp;") in page or claim in page
    assert page.count(claims.HOLDS) >= 6
    for p in PAGES:
        assert f"<section id='{p.name}'><h2>{p.name}: {p.description}" in page
    assert "98.10 ± 0.10 (99.60)" in page and "98.39 ± 0.04 (100.00)" in page
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == len(PAGES)
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "href='notebooks/fig5.html'" in page and "href='notebooks/fig4.html'" not in page


def test_own_block_gets_a_section_and_blocks_out_of_the_target_none(tmp_path: Path) -> None:
    config = copy.deepcopy(CONFIG)
    config["experiments"]["fig4"]["target"] = False
    config["experiments"]["mine"] = {"description": "my sweep", "base": {}}
    sweep = pd.read_csv(write_results(tmp_path / "contract") / "tableS1.csv")
    results = _results(tmp_path, config, extra={"mine": sweep.assign(table="mine")})
    page = report.build(results)
    assert "<section id='mine'><h2>mine: my sweep" in page and "id='fig4'" not in page
    assert page.index("id='mine'") < page.index("id='fig3'")
    assert page.count("data:image/png;base64,") == len(PAGES)


def test_compute_time_per_experiment_counts_shared_runs_once() -> None:
    runs = pd.DataFrame(
        {
            "experiment": ["table2", "table2", "table2", "fig5"],
            "run_id": ["a", "a", "b", "c"],
            "seed": [0, 0, 0, 1],
            "wall_seconds": [60.0, 60.0, 3600.0, 30.0],
        }
    )
    table = report.compute_time(runs)
    assert (
        table.loc["table2", "runs"] == 2 and table.loc["table2", "compute (h:mm:ss)"] == "1:01:00"
    )
    assert table.loc["total", "compute (h:mm:ss)"] == "1:01:30"


def test_substituted_run_says_so_and_compares_nothing(tmp_path: Path) -> None:
    results = _results(tmp_path, scale="smoke", substitute="fashion_mnist")
    page = report.build(results)
    assert "<b>substituted</b>: every experiment ran on fashion_mnist" in page
    assert "MNIST (ran on Fashion-MNIST)" in page and "CIFAR-10 (ran on Fashion-MNIST)" in page
    assert "98.39 ± 0.04" not in page
    assert claims.HOLDS not in page.replace("computed: holds", "")


def test_missing_figure_or_csv_is_named(tmp_path: Path) -> None:
    results = _results(tmp_path)
    (results / "figures" / "fig3.png").unlink()
    with pytest.raises(FrernnError, match=r"missing figure .*fig3\.png"):
        report.build(results)
    (results / "tableS1.csv").write_text("")
    with pytest.raises(FrernnError, match=r"empty CSV .*tableS1\.csv"):
        report.build(results)


def test_mixed_scales_are_refused(tmp_path: Path) -> None:
    results = _results(tmp_path)
    runs = pd.read_csv(results / "runs.csv")
    runs.loc[0, "scale"] = "paper"
    runs.to_csv(results / "runs.csv", index=False)
    with pytest.raises(FrernnError, match="exactly one scale"):
        report.build(results)


def test_notebook_parameters_must_be_key_value(tmp_path: Path) -> None:
    argv = ["report", "notebook", "nb.ipynb", "--out", "o", "--html", "h", "--log", "l"]
    with pytest.raises(FrernnError, match="'csv_path' is not KEY=VALUE"):
        _run_cli([*argv, "-p", "csv_path"])
