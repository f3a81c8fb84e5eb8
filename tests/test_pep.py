"""P-EP (method pep): the update against BPTT, training through `frernn train`, spec and plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from frernn import experiments
from frernn.cli import main
from frernn.methods.pep import PrototypicalEP, mse_loss
from frernn.models.pep import ConvPEPNet, PEPNet

REPO = Path(__file__).resolve().parents[1]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def bptt(net, x: torch.Tensor, target: torch.Tensor, steps: int, weight=None) -> list:
    """Autograd through ``steps`` free steps of ``net`` from zero; the output error of the
    MSE loss, optionally divided by ``weight(out)`` per output unit."""
    params = [p for group in net.layer_parameters() for p in group]
    with torch.enable_grad():
        out = net.free_phase(x, steps)[-1]
        error = (out - target) / len(x)
        if weight is not None:
            error = error / weight(out)
        return list(torch.autograd.grad(out, params, grad_outputs=error.detach()))


def pep_update(net, x, y, T: int, K: int, beta: float) -> list[torch.Tensor]:
    PrototypicalEP(net, T, K, beta).train_step(x, y)
    return [p.grad.clone() for group in net.layer_parameters() for p in group]


def fc_case():
    gen = torch.Generator().manual_seed(0)
    net = PEPNet(20, 2, 16, 4, gen).double()
    x = torch.rand(8, 1, 4, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (8,), generator=gen)
    return net, x, y, torch.nn.functional.one_hot(y, 4).double()


def test_fc_update_is_the_bptt_gradient_at_small_beta():
    """float64, 2 hidden layers: as beta -> 0 the P-EP update (nudge outside rho) becomes the
    BPTT gradient of the free phase whose output error is divided by rho'(h_out) = 4 s (1 - s)."""
    net, x, y, target = fc_case()
    reference = bptt(net, x, target, 200, weight=lambda s: 4 * s * (1 - s))
    agreement = {}
    for beta in (0.1, 1e-3):
        update = pep_update(net, x, y, 200, 200, beta)
        agreement[beta] = [cosine(u, r) for u, r in zip(update, reference, strict=True)]
    assert min(agreement[1e-3]) > 0.99999, agreement
    assert min(agreement[1e-3]) > min(agreement[0.1])
    for u, r in zip(update, reference, strict=True):
        assert u.norm() / r.norm() == pytest.approx(1.0, abs=0.01)
    plain = bptt(net, x, target, 200)
    flat = torch.cat([u.flatten() for u in update])
    assert cosine(flat, torch.cat([p.flatten() for p in plain])) > 0.8


def test_conv_update_is_the_bptt_gradient_at_small_beta():
    """float64 conv net with its outputs inside (0, 1), where the hard sigmoid's rho' is 1:
    the P-EP update (unpooling with each phase's indices) is the plain BPTT gradient."""
    gen = torch.Generator().manual_seed(0)
    net = ConvPEPNet((1, 16, 16), [4, 6], 4, gen).double()
    with torch.no_grad():
        net.fc.weight.mul_(0.2)
        net.fc.bias.fill_(0.5)
    x = torch.rand(8, 1, 16, 16, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (8,), generator=gen)
    out = net.free_phase(x, 100)[-1]
    assert bool(((out > 0) & (out < 1)).all()), "outputs must be unsaturated for this check"
    reference = bptt(net, x, torch.nn.functional.one_hot(y, 4).double(), 100)
    update = pep_update(net, x, y, 100, 100, 1e-3)
    for u, r in zip(update, reference, strict=True):
        assert cosine(u, r) > 0.9999
        assert u.norm() / r.norm() == pytest.approx(1.0, abs=0.01)


def test_graphed_step_equals_eager():
    """The static-buffer path CUDA graphs take (run eagerly here) gives the eager update."""
    net, x, y, _ = fc_case()
    eager = pep_update(net, x, y, 20, 5, 0.5)
    learner = PrototypicalEP(net, 20, 5, 0.5)
    learner.graph_calls(capture=False)
    learner.train_step(x, y)
    learner.train_step(x, y)  # a replay: the static buffers are rewritten, not stale
    graphed = [p.grad for group in net.layer_parameters() for p in group]
    for a, b in zip(eager, graphed, strict=True):
        torch.testing.assert_close(a, b)


def test_loss_is_half_squared_error():
    out, target = torch.tensor([[0.5, 0.0]]), torch.tensor([[1.0, 0.0]])
    assert float(mse_loss(out, target)) == pytest.approx(0.125)


def write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


P2H = {
    "dataset": "fashion_mnist",
    "method": "pep",
    "model": {"kind": "layered", "depth": 2, "width": 512},
    "ep": {"T": 100, "K": 20, "nudge": 0.5},
    "optim": {"name": "sgd", "lr": [0.2, 0.05, 0.005]},
    "train": {"epochs": 2, "batch_size": 20, "train_subset": 600, "test_subset": 200},
}
P2H_MEASURED = 66.0  # best test % of this spec measured here (Fashion-MNIST subset, seed 0)


def train(spec: Path, out: Path, data_dir: Path, *extra: str) -> int:
    return main(["train", str(spec), "--out", str(out), "--data-dir", str(data_dir), *extra])


def test_p2h_learns_fashion_mnist(tmp_path, fmnist_dir, one_thread):
    """P-2h at its published settings, 2 epochs on 600 real Fashion-MNIST images: far above
    chance (10 %), within 5 points of the accuracy measured here, the metrics contract kept."""
    assert train(write(tmp_path / "spec.yaml", P2H), tmp_path / "run", fmnist_dir) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert not metrics["diverged"]
    assert metrics["test_acc_best"] > P2H_MEASURED - 5.0, metrics["epochs"]
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["epochs"][1]["loss"] < metrics["epochs"][0]["loss"]
    assert (tmp_path / "run" / "history.csv").is_file()


def test_conv_pep_trains(tmp_path, fmnist_dir, one_thread):
    """The conv P-EP net runs through `frernn train` with its per-layer SGD rates."""
    spec = {
        **P2H,
        "model": {"kind": "conv", "channels": [32, 64]},
        "ep": {"T": 8, "K": 4, "nudge": 0.4},
        "optim": {"name": "sgd", "lr": [0.15, 0.035, 0.015]},
        "train": {"epochs": 1, "batch_size": 20, "train_subset": 60, "test_subset": 40},
    }
    assert train(write(tmp_path / "spec.yaml", spec), tmp_path / "run", fmnist_dir) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["spec"]["method"] == "pep"
    assert 0.0 <= metrics["test_acc_best"] <= 100.0
    assert len(metrics["epochs"]) == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.topology=residual", "model.topology: method pep supports only chain"),
        ("diagnostics.dynamics=true", "diagnostics: not available for method pep"),
        ("ep.nudge=0", "ep.nudge: method pep needs a positive nudge"),
        ("optim.lr=[0.1]", "optim.lr has 1 rates but the net has 3 layers"),
    ],
)
def test_bad_pep_spec_is_one_line(tmp_path, capsys, fmnist_dir, override, message):
    spec = write(tmp_path / "spec.yaml", P2H)
    assert train(spec, tmp_path / "run", fmnist_dir, "--set", override) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def plan() -> experiments.Plan:
    return experiments.build_plan(yaml.safe_load((REPO / "config.yaml").read_text()))


def test_table1_pep_block_outside_the_default_target():
    """Three published rows and their protocol-matched twins, 5 seeds, not trained by default."""
    p = plan()
    cells = p.cells["table1_pep"]
    assert len({c.run_id for c in cells}) == 6
    assert "table1_pep" not in p.targets(default_only=True)
    assert not set(p.run_ids("table1_pep")) & set(p.run_ids("runs"))
    specs = {c.row: p.runs[c.run_id].spec for c in cells}
    p3h = specs["3HL-512 P-EP"]
    assert (p3h["ep"]["T"], p3h["ep"]["K"], p3h["ep"]["nudge"]) == (180, 20, 0.5)
    assert (p3h["train"]["epochs"], p3h["train"]["batch_size"], p3h["optim"]["name"]) == (
        100,
        20,
        "sgd",
    )
    matched = specs["3HL-512 P-EP matched"]
    assert matched["ep"] == p3h["ep"]
    assert (matched["train"]["batch_size"], matched["optim"]["name"]) == (500, "adam")
    assert specs["Conv P-EP"]["model"]["kind"] == "conv"


def test_pep_cost_model():
    """P-3h (100 epochs, 200 steps a sample) costs more than P-2h and than FRE-RNN's 3HL EP."""
    p = plan()
    by_row = {c.row: p.runs[c.run_id].spec for c in p.cells["table1_pep"]}
    fre = {c.row: p.runs[c.run_id].spec for c in p.cells["table1"]}
    for estimate in (experiments.cpu_seconds, experiments.gpu_seconds):
        p3h, p2h = estimate(by_row["3HL-512 P-EP"]), estimate(by_row["2HL-512 P-EP"])
        assert p3h > 2 * p2h > 0
        assert p3h > 10 * estimate(fre["3HL-512 EP"])


def test_pep_run_id_ignores_fre_rnn_keys():
    """ep.beta (FRE-RNN's feedback scale) does not apply to P-EP: one run, its beta in the id."""
    base = {**P2H, "scale": "paper"}
    ids = {
        experiments.run_id(experiments.canonical(experiments.resolve(dict(base, ep=ep))))
        for ep in ({"T": 100, "K": 20, "nudge": 0.5}, {"T": 100, "K": 20, "nudge": 0.5, "beta": 2})
    }
    assert len(ids) == 1
    assert "-pep-L2-w512-chain-symm-b0.5-T100K20-" in ids.pop()


def fake_metrics(spec: dict, epoch_seconds: float, device: str) -> dict:
    """metrics.json of a finished run whose epochs each took ``epoch_seconds``."""
    epochs = [
        {"epoch": e, "loss": 0.1, "train_acc": 90.0, "test_acc": 88.0, "seconds": epoch_seconds}
        for e in range(1, spec["train"]["epochs"] + 1)
    ]
    return {
        "spec": spec,
        "dataset": spec["dataset"],
        "test_acc_best": 88.0,
        "test_acc_final": 88.0,
        "train_acc_best": 90.0,
        "diverged": False,
        "wall_seconds": epoch_seconds * len(epochs),
        "device": device,
        "epochs": epochs,
    }


def smoke_results(
    root: Path, pep_device: str = "cpu (x86_64, 1 threads)", scale: str = "smoke"
) -> Path:
    """Contract CSVs (smoke scale on Fashion-MNIST, or paper scale), with table1 and table1_pep
    from the real aggregator over metrics.json files: FRE-RNN EP 2 s per epoch, P-EP 30 s
    (published protocol), 8 s (matched)."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from contract_csvs import write_results

    from frernn import aggregate

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    substitute = "fashion_mnist" if scale == "smoke" else ""
    config |= {"scale": scale, "dataset_substitute": substitute or None}
    p = experiments.build_plan(config)
    results = write_results(root, scale=scale, substitute=substitute)
    for block in ("table1", "table1_pep"):
        for cell in p.cells[block]:
            seconds = 2.0 if block == "table1" else 8.0 if cell.row.endswith("matched") else 30.0
            device = pep_device if block == "table1_pep" else "cpu (x86_64, 1 threads)"
            for seed in p.seeds:
                spec = {**p.runs[cell.run_id].spec, "seed": seed}
                path = results / p.run_dir(cell.run_id, seed) / "metrics.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(fake_metrics(spec, seconds, device)))
                if spec["diagnostics"]["alignment"]:  # the conv rows measure it
                    cosines = {"before": {"conv1": 0.5}, "after": {"conv1": 0.9}}
                    (path.parent / "alignment.json").write_text(json.dumps(cosines))
        frame = aggregate.build(block, p, results, aggregate.reference_plan(config))
        frame.to_csv(results / f"{block}.csv", index=False)
    return results


def test_report_shows_the_same_machine_comparison(tmp_path):
    """The report's P-EP section from aggregated smoke-scale tables: per family the ratios of
    time per epoch and per run, steps per sample, and Table 1 with the re-run P-EP rows."""
    from contract_csvs import write_pages

    from frernn import claims, notebooks, report, tables

    results = smoke_results(tmp_path / "results")
    write_pages(results, yaml.safe_load((REPO / "config.yaml").read_text()))
    page = report.build(results)
    section = page[page.index("id='pep-speed'") :]
    section = section[: section.index("</table>")]
    assert "P-EP re-run here" in section
    assert section.count("15.0x") == 6  # 30 s / 2 s, per epoch and per run (1 epoch each)
    assert section.count("4.0x") == 3  # the protocol-matched P-EP, 8 s / 2 s
    for steps in ("15 / 120", "28 / 200", "30 / 210"):
        assert steps in section
    assert "nan" not in section.lower()
    table1 = page[page.index("id='table1'") :]  # the table1 notebook appends the re-run
    assert "2HL-512 P-EP matched" in table1[: table1.index("</table>")]
    shown = notebooks.with_reruns(
        tables.read_csv(results / "table1.csv"), "table1", results, "smoke"
    )
    assert shown["row"].str.endswith("P-EP matched").sum() == 3
    verdict = next(v for v in claims.evaluate(report_frames(results)) if "P-EP" in v.claim)
    assert verdict.verdict == claims.INDICATIVE and verdict.points_to == claims.HOLDS  # smoke
    assert "2HL-512: 15.0x by wall clock per run on this machine" in verdict.evidence


def test_paper_scale_same_machine_pep_is_judged(tmp_path):
    """Every seed of both sides at paper scale on MNIST, one device: judged on wall clock per run
    (P-3h: 100 epochs x 30 s over 50 x 2 s = 30x; P-2h 15x; conv 15x), so the claim holds."""
    from frernn import claims

    frames = report_frames(smoke_results(tmp_path / "results", scale="paper"))
    verdict = next(v for v in claims.evaluate(frames) if "P-EP" in v.claim)
    assert verdict.verdict == claims.HOLDS and not verdict.basis, verdict
    assert "3HL-512: 30.0x by wall clock per run on this machine" in verdict.evidence
    assert "per epoch 15.0x, protocol-matched P-EP 4.0x per epoch" in verdict.evidence


def report_frames(results: Path) -> dict:
    from frernn import tables

    return {n: tables.read_csv(results / f"{n}.csv") for n in ("table1", "table1_pep")}


def test_unfinished_or_other_machine_pep_falls_back_to_steps(tmp_path):
    """P-EP timed on another device: no wall-clock ratio ("not comparable", never "nan x"); the
    verdict is judged on relaxation steps per sample (8x / 7.1x / 7x: does not hold)."""
    from frernn import speed

    results = smoke_results(tmp_path / "results", pep_device="cuda:0 (NVIDIA H100)")
    frames = report_frames(results)
    table = speed.comparison(frames["table1"], frames["table1_pep"])
    assert not table["same_machine"].any()
    shown = speed.render(table)
    assert (shown["ratio / run"] == speed.NOT_COMPARABLE).all()
    ok, evidence = speed.verdict(table)
    assert not ok
    assert "2HL-512: 8.0x by relaxation steps per sample" in evidence
    assert "3HL-512: 7.1x" in evidence and "Conv: 7.0x" in evidence
    assert "nan" not in evidence.lower()
    ok, evidence = speed.verdict(speed.comparison(frames["table1"], None))
    assert not ok and "P-EP not re-run here" in evidence
