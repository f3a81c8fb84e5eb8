"""results/report.html from hand-made CSVs and figures; the `frernn report` command wiring."""

from __future__ import annotations

import argparse
import base64
import copy
import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from contract_csvs import TABLE_NOTEBOOKS, write_pages, write_results

from frernn import claims, experiments, figures, notebooks, report, tables
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
    write_pages(results, config or CONFIG)
    return results


def _run_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    report.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_report_page_has_banner_claims_tables_and_embedded_figures(tmp_path: Path) -> None:
    results = _results(tmp_path, scale="paper")
    (results / "notebooks").mkdir()
    (results / "notebooks" / "fig5.html").write_text("<html></html>")
    _run_cli(["report", "html", "--results", str(results)])
    page = (results / "report.html").read_text()
    assert "<b>scale</b>: paper — the paper's run specs" in page and "<b>device</b>: cpu" in page
    assert "torch 2.14.1, frernn 0.1.0" in page
    assert "<b>total compute</b>: 0:14:14" in page  # 7 experiments × (30+30+31+31) s
    assert "substituted" not in page
    for claim in claims.CLAIMS:
        assert html.escape(claim.text) in page
    assert page.count(f">{claims.HOLDS}</span>") == 6
    assert tables.MATCH_CSS in page and tables.MISMATCH_CSS.split(";")[0] in page
    assert "-0.06 (t = -1.15, p = 0.29)" in page  # 2HL-512 BP: 98.2 ± 0.1 vs 98.26 ± 0.06
    note = "train % in brackets (its best epoch) = running: running accuracy over the epoch"
    assert page.count(note) == len(TABLE_NOTEBOOKS)
    assert report.CLAIMS_LEGEND in page and report.TABLES_LEGEND in page
    for p in PAGES:
        assert f"<section id='{p.name}'><h2>{html.escape(p.name + ': ' + p.description)}" in page
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


@pytest.mark.parametrize("substitute", ["fashion_mnist", ""])
def test_quick_scale_report_judges_and_colours_nothing(tmp_path: Path, substitute: str) -> None:
    results = _results(tmp_path, scale="quick", substitute=substitute)
    page = report.build(results)
    assert ("<b>substituted</b>: every experiment ran on fashion_mnist" in page) == bool(substitute)
    if substitute:
        assert "MNIST (ran on Fashion-MNIST)" in page and "CIFAR-10 (ran on Fashion-MNIST)" in page
    assert "98.39 ± 0.04 (100.00)" in page  # published beside ours, without a verdict
    assert claims.HOLDS not in page and claims.FAILS not in page
    assert tables.MATCH_CSS not in page and tables.MISMATCH_CSS not in page
    assert "agrees" not in page and "differs" not in page
    assert page.count(f">{claims.INDICATIVE}</span>") == 7  # P-EP: steps per sample too
    basis = "quick scale, not the paper's (train.epochs 2 (paper 50))"
    assert f"<b>scale</b>: quick — {html.escape(basis)}" in page


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


def test_partial_report_names_failed_and_unfinished_runs(tmp_path: Path) -> None:
    from run_dirs import write_run
    from test_aggregate import CONFIG, cell

    from frernn import experiments, partial

    plan = experiments.build_plan(CONFIG)
    rid = cell(plan, "table2", row="5-symm EP").run_id
    results = tmp_path / "results"
    for seed in (0, 1):
        write_run(results, plan, rid, seed, [96.0 + seed])
    crashed = results / plan.run_dir(rid, 2) / "train.log"
    crashed.parent.mkdir(parents=True)
    crashed.write_text("INFO epoch 1\nTraceback (most recent call last):\nRuntimeError: boom\n")
    config = copy.deepcopy(CONFIG)  # the paper notebooks draw the pages of the blocks it has
    for name, block in config["experiments"].items():
        block["notebook"] = name
    kernel = tmp_path / "kernel"
    notebooks.install_kernel(kernel)
    status = partial.write(config, results, results / "partial", tmp_path, kernel)
    by_run = status.set_index("run")
    assert by_run.loc[f"{rid}/seed2", "status"] == "failed"
    assert by_run.loc[f"{rid}/seed2", "detail"] == "RuntimeError: boom"
    assert (status["status"] == "finished").sum() == 2
    assert (status["status"] == "not finished").sum() == len(status) - 3
    table2 = pd.read_csv(results / "partial" / "table2.csv").set_index("row")
    assert table2.loc["5-symm EP", "n"] == 2 and table2.loc["5-symm EP", "missing"].endswith(
        "seed2"
    )
    assert not (results / "partial" / "fig5.csv").exists()  # nothing finished there
    page = (results / "partial" / "report.html").read_text()
    assert "2 of" in page and "<b>1 failed</b>" in page and f"{rid}/seed2" in page
    assert "RuntimeError: boom" in page and "Not drawn: no finished run yet." in page
    drawn = results / "partial" / "figures" / "table2.png"  # by the table2 notebook
    assert (
        drawn.is_file() and "5-symm EP" in (drawn.parent.parent / "tables/table2.html").read_text()
    )
    assert "<section id='table2'>" in page and page.count("data:image/png;base64,") == 2  # + fig3
    assert not (results / "partial" / "figures" / "table1.png").exists()  # nothing finished
    assert not (results / "table2.csv").exists()  # the strict targets are left alone


@pytest.mark.slow
def test_partial_target_after_a_deliberately_failed_smoke_run(tmp_path: Path, fmnist_dir) -> None:
    import yaml
    from conftest import SMOKE_CONFIG, run_snakemake, workflow_copy

    from frernn import experiments

    cwd = workflow_copy(tmp_path / "wf")
    config = yaml.safe_load((cwd / "config.yaml").read_text())
    plan = experiments.build_plan(
        config | {"scale": "smoke", "dataset_substitute": "fashion_mnist"}
    )
    rid = plan.cells["tableS1"][0].run_id  # the cheapest configuration, both seeds
    broken = plan.run_dir(rid, 0)
    (cwd / "results" / broken / "spec.yaml").mkdir(parents=True)  # the job cannot write its spec
    jobs = [f"results/{plan.run_dir(rid, seed)}/metrics.json" for seed in (0, 1)]
    args = [*SMOKE_CONFIG, f"data_dir={fmnist_dir}", "device=cpu"]
    targets = [*jobs, "results/workflow_config.json"]
    proc = run_snakemake(cwd, *targets, "--keep-going", "--cores", "2", *args, timeout=600)
    assert proc.returncode != 0 and (cwd / jobs[1]).is_file() and not (cwd / jobs[0]).exists()
    proc = run_snakemake(cwd, "partial_report", "--cores", "1", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = pd.read_csv(cwd / "results/partial/status.csv").set_index("run")
    name = broken.split("/", 2)[2]  # runs/<block>/<run_id>/seed0 -> <run_id>/seed0
    assert status.loc[name, "status"] == "failed"
    assert "Snakemake reports the job failed" in status.loc[name, "detail"]
    s1 = pd.read_csv(cwd / "results/partial/tableS1.csv")
    assert s1["n"].tolist() == [1] + [0] * (len(s1) - 1)
    assert s1["missing"].iloc[0] == name and (status["status"] == "finished").sum() == 1
    page = (cwd / "results/partial/report.html").read_text()
    assert "<b>1 failed</b>" in page and name in page and claims.HOLDS not in page
    assert (cwd / "results/partial/figures/fig6.png").is_file()


def test_fig6_marks_the_epoch_a_seed_diverged() -> None:
    from contract_csvs import figure_data

    fig6 = figure_data()["fig6"]
    hit = (fig6["panel"] == "T-sweep") & (fig6["beta"] == 4) & (fig6["T"] == 100)
    curve = fig6[hit].sort_values("epoch").reset_index(drop=True)
    curve.loc[curve["epoch"] == 3, "diverged"] = 1
    fig, axes = figures.panels(1, 1)
    error = 100 - curve["test_acc_mean"]
    figures.band(
        axes[0, 0], curve["epoch"], error, curve["test_acc_std"], "k", "", curve["diverged"]
    )
    marks = [
        line
        for line in axes[0, 0].get_lines()
        if line.get_marker() == "x" and len(line.get_xdata())
    ]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [3]
    assert marks[0].get_ydata()[0] == pytest.approx(100 - (90 + 3 - 8 - 20))
    cells = json.loads((REPO / "notebooks" / "fig6.ipynb").read_text())["cells"]
    assert any('diverged=curve.get("diverged")' in "".join(c["source"]) for c in cells)


def test_train_accuracy_note_says_how_it_was_measured() -> None:
    both = tables.train_accuracy_note(pd.DataFrame({"train_acc": ["running", "eval", "eval"]}))
    assert "eval: an evaluation pass over the whole training set after each epoch" in both
    assert "running: running accuracy over the epoch's training batches" in both
    assert "not recorded" in tables.train_accuracy_note(pd.DataFrame({"n": [1]}))


def test_rows_sharing_runs_with_another_table_say_so() -> None:
    from contract_csvs import summary_tables

    t2 = summary_tables("paper", "")["table2"]
    conv = t2["row"].str.startswith("Conv") & (t2["paper_dataset"] == "mnist")
    t2.loc[conv, "shared_with"] = "table1"
    shown = tables.comparison_table(t2).data
    runs = shown[("MNIST", "runs")]
    assert set(runs[runs != ""]) == {"same runs as table1"} and (runs != "").sum() == 2
