"""cos(update, BP) per layer: the measurement, alignment.json of a run, its table columns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from contract_csvs import write_results
from test_aggregate import cell, plan_for, write_run

from frernn import aggregate, experiments, report, tables
from frernn.alignment import layer_cosines, layer_names, measure
from frernn.data import Data, dataset_info
from frernn.errors import FrernnError
from frernn.methods import build_learner
from frernn.methods.backprop import Backprop
from frernn.methods.ep_conv import ConvEP
from frernn.models.conv import ConvFRERNN
from frernn.models.timing import TIMINGS
from frernn.spec import resolve
from frernn.train import train

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")
INFO = dataset_info("fashion_mnist")


def conv_learner(timing: str = "corrected", nudge: float = 1e-3) -> ConvEP:
    gen = torch.Generator().manual_seed(0)
    net = ConvFRERNN((1, 28, 28), [8, 16], 10, 0.01, generator=gen, timing=TIMINGS[timing])
    return ConvEP(net.double(), T=30, K=30, nudge=nudge)


def images(m: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(m, 1, 28, 28, generator=g, dtype=torch.float64), torch.randint(0, 10, (m,))


def test_conv_cosines_are_those_of_the_two_gradients_and_leave_no_grad():
    learner = conv_learner()
    x, y = images()
    got = layer_cosines(learner, x, y)
    assert list(got) == ["conv1", "conv2", "fc"] == layer_names(learner.net)
    assert all(p.grad is None for p in learner.net.parameters())
    learner.train_step(x, y)
    ep = [torch.cat([p.grad.flatten() for p in g]) for g in learner.parameter_groups()]
    Backprop(learner.net).train_step(x, y)
    bp = [torch.cat([p.grad.flatten() for p in g]) for g in learner.parameter_groups()]
    want = [F.cosine_similarity(a, b, dim=0).item() for a, b in zip(ep, bp, strict=True)]
    assert list(got.values()) == pytest.approx(want, abs=1e-12)
    assert min(got.values()) > 0.99  # small nudge, corrected timing: EP ≈ BP


def test_notebook_timing_and_straight_through_lower_the_cosine_of_the_conv_layers():
    x, y = images()
    corrected = layer_cosines(conv_learner(), x, y)
    lagged = layer_cosines(conv_learner("notebook_table2_mnist"), x, y)
    assert lagged["conv1"] < corrected["conv1"] - 0.01
    net = conv_learner().net
    straight = layer_cosines(Backprop(net, straight_through=True), x, y)
    assert straight["fc"] == pytest.approx(1.0, abs=1e-12)
    assert straight["conv1"] < 0.999
    assert layer_cosines(Backprop(net), x, y) == pytest.approx(dict.fromkeys(straight, 1.0))


def test_layered_nets_have_one_cosine_per_layer():
    spec = resolve({"model": {"depth": 3, "width": 32}, "ep": {"T": 30, "K": 15, "nudge": 1e-3}})
    learner = build_learner(spec, INFO, torch.Generator().manual_seed(0))
    learner.net.double()
    x, y = images(64)
    got = layer_cosines(learner, x, y)
    assert list(got) == ["layer1", "layer2", "layer3", "readout"]
    assert min(got.values()) > 0.999  # measured ≥ 0.9999 (readout: free state ≠ feed-forward)


def test_measure_rebuilds_the_initial_net_and_skips_after_on_divergence():
    spec = resolve(
        {
            "model": {"kind": "conv", "channels": [4, 8]},
            "ep": {"nudge_rule": "recompute"},
            "train": {"batch_size": 16},
            "seed": 3,
        }
    )
    g = torch.Generator().manual_seed(2)
    data = Data(
        torch.rand(40, 1, 28, 28, generator=g),
        torch.randint(0, 10, (40,), generator=g),
        torch.rand(8, 1, 28, 28, generator=g),
        torch.randint(0, 10, (8,), generator=g),
        INFO,
    )
    trained = build_learner(spec, INFO, torch.Generator().manual_seed(3))
    initial = layer_cosines(trained, data.train_x[:16], data.train_y[:16])
    torch.manual_seed(0)
    before_rng = torch.get_rng_state()
    with torch.no_grad():
        for p in trained.net.parameters():
            p.add_(0.1)
    result = measure(spec, data, trained, diverged=False)
    assert torch.equal(torch.get_rng_state(), before_rng)  # training's RNG stream untouched
    assert result["batch"] == 16 and result["layers"] == ["conv1", "conv2", "fc"]
    assert result["before"] == pytest.approx(initial, abs=1e-9)
    assert result["after"] != pytest.approx(initial, abs=1e-6)
    assert measure(spec, data, trained, diverged=True)["after"] == {}


def test_training_run_writes_alignment_json(fake_data_dir: Path, tmp_path: Path):
    spec = resolve(
        {
            "dataset": "fashion_mnist",
            "model": {"kind": "conv", "channels": [4, 8], "timing": "notebook_table1_mnist"},
            "ep": {"T": 4, "K": 2, "nudge_rule": "recompute"},
            "optim": {"name": "sgd", "lr": [0.15, 0.35, 0.9], "weight_decay": 1e-5},
            "train": {"epochs": 1, "batch_size": 16},
            "diagnostics": {"alignment": True},
        }
    )
    train(spec, tmp_path / "run", fake_data_dir)
    written = json.loads((tmp_path / "run" / "alignment.json").read_text())
    assert set(written["before"]) == set(written["after"]) == {"conv1", "conv2", "fc"}
    assert all(-1 <= v <= 1 for v in [*written["before"].values(), *written["after"].values()])
    assert written["method"] == "ep" and "feed-forward twin" in written["reference"]


CONV_CONFIG = {
    "experiments": {
        "table1": {
            "base": {"dataset": "mnist", "diagnostics": {"alignment": True}},
            "rows": [
                {
                    "label": "Conv EP",
                    "spec": {"model": {"kind": "conv"}, "ep": {"nudge_rule": "recompute"}},
                },
                {"label": "2HL-512 EP", "spec": {"diagnostics": {"alignment": False}}},
            ],
        }
    }
}


def test_summary_table_carries_alignment_columns_and_renders_them(tmp_path: Path):
    plan = plan_for(**CONV_CONFIG)
    rid = cell(plan, "table1", row="Conv EP").run_id
    for seed, c1 in enumerate((0.2, 0.4, 0.6)):
        out = write_run(tmp_path, plan, rid, seed, [99.0])
        before = {"conv1": c1, "conv2": 0.9, "fc": 1.0}
        after = {} if seed == 2 else {"conv1": 0.5, "conv2": None, "fc": 0.99}
        (out / "alignment.json").write_text(json.dumps({"before": before, "after": after}))
    df = aggregate.build("table1", plan, tmp_path)
    row = df[df["row"] == "Conv EP"].iloc[0]
    assert row["align_before_conv1_mean"] == pytest.approx(0.4)
    assert row["align_before_conv1_std"] == pytest.approx(0.2)
    assert row["align_after_conv1_mean"] == 0.5 and row["align_after_fc_mean"] == 0.99
    assert "align_after_conv2_mean" not in df.columns  # never measured (None)
    layered = df[df["row"] == "2HL-512 EP"].iloc[0]
    assert math.isnan(layered["align_before_conv1_mean"])
    shown = tables.comparison_table(df).to_html()
    assert "conv1 0.400 ± 0.200 · conv2 0.900 ± 0.000 · fc 1.000 ± 0.000" in shown
    assert "conv1 0.500 ± 0.000 · fc 0.990 ± 0.000" in shown
    assert "cos(update, BP) at init" in shown
    (tmp_path / plan.run_dir(rid, 1) / "alignment.json").unlink()
    with pytest.raises(FrernnError, match="alignment.json is missing"):
        aggregate.build("table1", plan, tmp_path)


def test_layer_order_puts_the_readout_last():
    row = pd.Series({"align_before_fc_mean": 1.0, "align_before_conv10_mean": 0.1})
    row["align_before_conv2_mean"] = 0.2
    assert tables.fmt_alignment(row, "before") == "conv2 0.200 · conv10 0.100 · fc 1.000"


def test_corrected_block_is_a_generic_page_showing_its_cosines(tmp_path: Path):
    """conv_corrected has no notebook of its own: the generic template's summary shows the
    cosines with BP beside the accuracies, and the report gives it a section."""
    from contract_csvs import write_pages

    results = write_results(tmp_path / "results")
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert experiments.build_plan(config).page("conv_corrected").generic
    shown = tables.summary(pd.read_csv(results / "conv_corrected.csv"))
    assert set(shown["cos(update, BP) at init"]) == {"conv1 0.987 ± 0.004"}
    write_pages(results, config)
    assert "<section id='conv_corrected'>" in report.build(results)
