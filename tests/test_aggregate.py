"""Aggregation of hand-made run directories into runs.csv and the table/figure CSVs."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from run_dirs import write_dynamics, write_run

from frernn import aggregate, experiments
from frernn.errors import FrernnError

CHAIN = {"model": {"width": 64}, "ep": {"nudge": 0.1, "nudge_rule": "fixed"}}
CONFIG = {
    "scale": "paper",
    "seeds": [0, 1, 2],
    "scales": {"paper": {}, "smoke": {"seeds": 2, "spec": {"train": {"epochs": 1}}}},
    "fig3": {"depth": 10, "agt_p": 0.2, "agt_seed": 0},
    "experiments": {
        "table1": {
            "base": {"model": {"width": 512}, "ep": {"beta": 0.01}},
            "rows": [{"label": "2HL-512 EP", "spec": {"ep": {"T": 10, "K": 5}}}],
        },
        "table2": {
            "base": [CHAIN, {"ep": {"beta": 0.1}}],
            "datasets": ["mnist"],
            "rows": [
                {"label": "5-symm EP", "spec": {"model": {"depth": 5}, "ep": {"T": 50, "K": 25}}},
                {"label": "5-symm BP", "spec": {"method": "bp", "model": {"depth": 5}}},
            ],
        },
        "tableS1": {
            "base": CHAIN,
            "grid": [{"model.depth": [2], "ep.T": [20], "ep.K": [10]}, {"ep.beta": [0.01, 4]}],
        },
        "fig2": {
            "output": "trajectory",
            "base": [CHAIN, {"diagnostics": {"trajectory": True}}],
            "rows": [{"label": "symm b0.1", "spec": {"ep": {"beta": 0.1}}}],
        },
        "fig5": {
            "output": "dynamics",
            "base": [CHAIN, {"diagnostics": {"dynamics": True}}],
            "grid": [{"model.feedback": ["symmetric"]}, {"ep.beta": [0.1]}],
        },
        "fig6": {"output": "curves", "rows": [{"label": "depth-sweep", "from": "tableS1"}]},
    },
}


def config_for(**overrides) -> dict:
    return json.loads(json.dumps({**CONFIG, **overrides}))


def plan_for(**overrides) -> experiments.Plan:
    return experiments.build_plan(config_for(**overrides))


def build(target: str, root: Path, **overrides) -> pd.DataFrame:
    """``frernn aggregate TARGET`` for the test config: the plan and its paper reference."""
    config = config_for(**overrides)
    plan = experiments.build_plan(config)
    return aggregate.build(target, plan, root, aggregate.reference_plan(config))


def cell(plan, block: str, **where) -> experiments.Cell:
    return next(c for c in plan.cells[block] if all(getattr(c, k) == v for k, v in where.items()))


def test_summary_mean_std_best_final_divergence_and_paper_diff(tmp_path):
    plan = plan_for()
    rid = cell(plan, "table2", row="5-symm EP").run_id
    for seed, tests in enumerate([[90.0, 97.0, 96.0], [95.0, 98.0, 98.0], [97.0, 99.0, 90.0]]):
        write_run(tmp_path, plan, rid, seed, tests)
    df = build("table2", tmp_path)
    row = df[df["row"] == "5-symm EP"].iloc[0]
    assert row["n"] == 3 and row["n_expected"] == 3 and row["missing"] == ""
    assert row["test_best_mean"] == pytest.approx(98.0)
    assert row["test_best_std"] == pytest.approx(1.0)  # ddof=1 of 97, 98, 99
    assert row["test_final_mean"] == pytest.approx((96 + 98 + 90) / 3)
    assert row["test_final_std"] == pytest.approx(np.std([96, 98, 90], ddof=1))
    assert row["train_best_mean"] == pytest.approx(99.0)
    assert row["diverged"] == 1  # the third run fell from 99 to 90
    assert row["wall_seconds_mean"] == pytest.approx(11.0)
    assert row["paper_test_mean"] == 97.64 and row["paper_test_std"] == 0.10
    assert bool(row["paper_scale"]) and row["scale_note"] == "" and row["scale_fraction"] == 1
    assert row["diff"] == pytest.approx(98.0 - 97.64)
    se = math.sqrt(1.0**2 / 3 + 0.10**2 / 5)  # both sides' std and n (the paper's n = 5)
    assert row["se_diff"] == pytest.approx(se) and row["t"] == pytest.approx(0.36 / se)
    df_welch = se**4 / ((1.0**2 / 3) ** 2 / 2 + (0.10**2 / 5) ** 2 / 4)
    assert row["df"] == pytest.approx(df_welch) and 0.55 < row["p"] < 0.65
    assert row["comparison"] == "agrees"  # |t| = 0.62 <= 2
    assert json.loads(row["test_best_seeds"]) == {"0": 97.0, "1": 98.0, "2": 99.0}
    assert row["train_acc"] == "running" and row["shared_with"] == ""
    bp = df[df["row"] == "5-symm BP"].iloc[0]
    assert bp["n"] == 0 and math.isnan(bp["test_best_mean"]) and bp["paper_test_mean"] == 97.69
    assert bp["missing"] == ";".join(f"{bp['run_id']}/seed{k}" for k in range(3))


def test_missing_seed_is_named_not_averaged(tmp_path):
    plan = plan_for()
    rid = cell(plan, "table2", row="5-symm EP").run_id
    write_run(tmp_path, plan, rid, 0, [80.0])
    row = build("table2", tmp_path).iloc[0]
    assert row["n"] == 1 and row["comparison"] == "not comparable" and pd.isna(row["t"])
    write_run(tmp_path, plan, rid, 2, [90.0])
    row = build("table2", tmp_path).iloc[0]
    assert row["n"] == 2 and row["missing"] == f"{rid}/seed1"
    assert row["test_best_mean"] == 85.0 and row["comparison"] == "differs"  # t = -1.8 / 0.36


def test_grid_table_matches_published_cells(tmp_path):
    plan = plan_for()
    for c in plan.cells["tableS1"]:
        for seed in range(3):
            write_run(tmp_path, plan, c.run_id, seed, [50.0 + seed])
    df = build("tableS1", tmp_path)
    assert list(df[["depth", "T", "K", "beta"]].itertuples(index=False, name=None)) == [
        (2, 20, 10, 0.01),
        (2, 20, 10, 4),
    ]
    assert list(df["paper_test_mean"]) == [97.57, 40.92]
    # 51 ± 1 vs 40.92 ± 8.88: a 2-sd band would call it a match; Welch's t = 2.5 does not
    assert list(df["comparison"]) == ["differs", "differs"]
    assert df["t"].iloc[1] == pytest.approx(10.08 / math.sqrt(1 / 3 + 8.88**2 / 5))
    assert list(df["shared_with"]) == ["fig6", "fig6"]


def test_table1_carries_the_cited_rows(tmp_path):
    df = build("table1", tmp_path)
    cited = df[df["method"] == "P-EP (cited)"]
    assert list(cited["row"]) == ["2HL", "3HL", "conv"]
    assert list(cited["paper_test_mean"]) == [98.05, 97.99, 98.98]
    assert (cited["n"] == 0).all() and cited["test_best_mean"].isna().all()


def test_substitute_tables_show_published_values_without_a_comparison(tmp_path):
    plan = plan_for(dataset_substitute="fashion_mnist")
    rid = cell(plan, "table2", row="5-symm EP").run_id
    for seed in range(3):
        write_run(tmp_path, plan, rid, seed, [80.0 + seed])
    df = build("table2", tmp_path, dataset_substitute="fashion_mnist")
    assert df["substitute"].all() and (df["dataset"] == "fashion_mnist").all()
    assert (df["paper_dataset"] == "mnist").all() and df["paper_scale"].all()
    assert list(df["paper_test_mean"]) == [97.64, 97.69]
    assert df["diff"].isna().all() and df["t"].isna().all()
    assert set(df["comparison"]) == {"not judged"}
    assert "ran on Fashion-MNIST instead of MNIST" in df["comparison_note"].iloc[0]
    table1 = build("table1", tmp_path, dataset_substitute="fashion_mnist")
    assert "P-EP (cited)" in set(table1["method"])


def test_scale_is_read_from_the_run_spec_not_its_name(tmp_path):
    scales = {
        "paper": {"spec": {"train": {"epochs": 2}}},  # called paper, but 2 of 50 epochs
        "full": {},  # any name: the paper's run spec
        "half": {"spec": {"train": {"epochs": 25, "train_subset": 30000}}},
    }
    for scale, seeds in (("paper", 1), ("full", 3), ("half", 2)):
        rid = cell(plan_for(scales=scales, scale=scale), "table2", row="5-symm EP").run_id
        for seed in range(seeds):
            write_run(tmp_path / scale, plan_for(scales=scales, scale=scale), rid, seed, [97.0])
    rows = {s: build("table2", tmp_path / s, scales=scales, scale=s).iloc[0] for s in scales}
    assert not rows["paper"]["paper_scale"] and rows["full"]["paper_scale"]
    assert rows["paper"]["scale_note"] == "train.epochs 2 (paper 50)"
    assert rows["paper"]["comparison"] == "not judged" and rows["full"]["comparison"] == "differs"
    assert (
        rows["half"]["scale_note"]
        == "train.epochs 25 (paper 50); train.train_subset 30000 (paper all)"
    )
    assert rows["paper"]["scale_fraction"] < rows["half"]["scale_fraction"] == 0.5
    experiments_ = json.loads(json.dumps(CONFIG["experiments"]))
    experiments_["tableS1"]["grid"][1]["ep.beta"] = [0.01, 0.1, 4]
    few = {"scales": {"few": {"sweep_points": 2}}, "scale": "few", "experiments": experiments_}
    thinned = build("tableS1", tmp_path, **few)
    assert not thinned["paper_scale"].any()
    assert thinned["scale_note"].iloc[0] == "2 of 3 configurations of the sweep"


def test_refuses_to_mix_scales(tmp_path):
    # a scale that changes no spec key shares the run directories of the paper scale
    scales = {**CONFIG["scales"], "seeds2": {"seeds": 2}}
    paper, other = plan_for(scales=scales), plan_for(scales=scales, scale="seeds2")
    rid = cell(other, "table2", row="5-symm EP").run_id
    assert paper.run_dir(rid, 0) == other.run_dir(rid, 0)
    write_run(tmp_path, other, rid, 0, [50.0])
    with pytest.raises(FrernnError, match="trained at scale 'seeds2', not 'paper'.*never mixes"):
        aggregate.build("table2", paper, tmp_path)


def test_runs_csv_one_row_per_finished_run(tmp_path):
    plan = plan_for()
    s1 = plan.cells["tableS1"]
    write_run(tmp_path, plan, s1[0].run_id, 0, [60.0, 70.0])
    write_run(tmp_path, plan, s1[0].run_id, 1, [65.0])
    write_run(tmp_path, plan, s1[1].run_id, 2, [20.0])
    df = aggregate.build("runs", plan, tmp_path)
    assert len(df) == 3
    first = df.iloc[0]
    assert first["experiment"] == "tableS1" and first["targets"] == "tableS1;fig6"
    assert first["test_acc_best"] == 70.0 and first["test_acc_final"] == 70.0
    assert first["model.depth"] == 2 and first["ep.beta"] == 0.01 and first["scale"] == "paper"
    assert first["torch_version"] == "2.14.1" and not first["substitute"]


def test_curves_dynamics_trajectory_and_graphs(tmp_path):
    plan = plan_for()
    s1 = plan.cells["tableS1"][0].run_id
    write_run(tmp_path, plan, s1, 0, [60.0, 70.0])
    write_run(tmp_path, plan, s1, 1, [62.0, 74.0])
    write_run(tmp_path, plan, s1, 2, [61.0, 10.0], diverge=True)  # loss NaN in epoch 2
    curves = build("fig6", tmp_path)
    first = curves[(curves["beta"] == 0.01) & (curves["epoch"] == 2)].iloc[0]
    assert first["panel"] == "depth-sweep" and first["n"] == 3 and first["depth"] == 2
    assert first["test_acc_mean"] == pytest.approx(154 / 3)  # the diverged seed stays in
    assert first["test_acc_std"] == pytest.approx(np.std([70, 74, 10], ddof=1))
    assert first["diverged"] == 1 and first["diverged_seeds"] == "2"
    assert json.loads(first["seeds"]) == {"0": 70.0, "1": 74.0, "2": 10.0}
    assert (curves[curves["epoch"] == 1]["diverged"] == 0).all()

    dyn = plan.cells["fig5"][0].run_id
    for seed, sr in ((0, 0.5), (1, 0.7), (2, 0.9)):
        out = write_run(tmp_path, plan, dyn, seed, [90.0 + seed])
        d = {m: sr for m in aggregate.DYNAMICS_METRICS}
        before = d | {"conv_time": None, "conv_frac": 0.0} if seed == 1 else d  # none converged
        write_dynamics(out, before, {} if seed == 2 else d)  # seed 2 diverged
    fig5 = build("fig5", tmp_path).set_index(["phase", "metric"])
    conv = fig5.loc[("before", "conv_time")]
    assert conv["mean"] == pytest.approx(0.7) and conv["n"] == 2 and conv["n_none"] == 1
    assert json.loads(conv["seeds"]) == {"0": 0.5, "1": None, "2": 0.9}
    assert fig5.loc[("before", "conv_frac"), "mean"] == pytest.approx(1.4 / 3)
    assert conv["n_runs"] == 3 and conv["n_expected"] == 3 and bool(conv["paper_scale"])
    assert fig5.loc[("before", "sr"), "mean"] == pytest.approx(0.7)
    assert fig5.loc[("after", "sr"), "mean"] == pytest.approx(0.6)
    assert fig5.loc[("after", "conv_time"), "n_none"] == 0
    assert fig5.loc[("after", "test_err"), "mean"] == pytest.approx(9.0)
    assert fig5.loc[("after", "sr"), "n"] == 2 and fig5.loc[("before", "sr"), "n"] == 3
    assert (fig5["feedback"] == "symmetric").all() and (fig5["beta"] == 0.1).all()

    traj = plan.cells["fig2"][0].run_id
    out = write_run(tmp_path, plan, traj, 1, [80.0])
    states = np.arange(20 * 128, dtype=float).reshape(20, 128)
    np.savez(out / "trajectory.npz", states=states, changes=-states)
    fig2 = aggregate.build("fig2", plan, tmp_path)
    assert len(fig2) == 20 * 128 and set(fig2["config"]) == {"symm b0.1"}
    last = fig2.iloc[-1]
    assert (last["step"], last["neuron"], last["activity"]) == (20, 127, states[-1, -1])

    graphs = aggregate.build("fig3", plan, tmp_path)
    residual = graphs[graphs["graph"] == "residual"]
    assert set(graphs["graph"]) == {"residual", "AGT P=0.2"}
    assert {(1, 4), (4, 1), (7, 10)} <= set(zip(residual["src"], residual["dst"], strict=True))
    assert set(graphs["kind"]) == {"input", "forward", "feedback", "readout"}
    assert len(residual) == 2 + 2 * 9 + 2 * 3


def test_missing_diagnostics_file_is_a_clear_error(tmp_path):
    plan = plan_for()
    write_run(tmp_path, plan, plan.cells["fig5"][0].run_id, 0, [90.0])
    with pytest.raises(FrernnError, match=r"dynamics.json is missing"):
        aggregate.build("fig5", plan, tmp_path)


def test_cli_writes_the_csv_atomically(tmp_path):
    config = tmp_path / "workflow_config.json"
    config.write_text(json.dumps(CONFIG))
    parser = argparse.ArgumentParser()
    aggregate.register_cli(parser.add_subparsers())
    out = tmp_path / "tableS1.csv"
    args = parser.parse_args(
        [
            "aggregate",
            "tableS1",
            "--config",
            str(config),
            "--results",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    df = pd.read_csv(out)
    assert list(df.columns[:8]) == [
        "table",
        "row",
        "method",
        "dataset",
        "paper_dataset",
        "substitute",
        "scale",
        "run_id",
    ]
    assert (df["n"] == 0).all() and len(df) == 2
    args = parser.parse_args(
        ["aggregate", "nope", "--config", str(config), "--out", str(tmp_path / "x.csv")]
    )
    with pytest.raises(FrernnError, match="unknown target 'nope'"):
        args.func(args)
    assert not (tmp_path / "x.csv").exists()
    assert yaml.safe_load(config.read_text())["scale"] == "paper"
