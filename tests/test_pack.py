"""Packed training: ``frernn train-pack`` manifests, pack keys, packed == alone (float64)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from frernn import spec as run_spec
from frernn.cli import main
from frernn.methods.ep import LayeredEP
from frernn.models.graph import LayerGraph
from frernn.models.layered import LayeredFRERNN
from frernn.models.layered_pack import LayeredPack
from frernn.spec import pack_key

TINY = {
    "dataset": "mnist",
    "model": {"depth": 2, "width": 16},
    "ep": {"T": 6, "K": 3, "beta": 0.1},
    "train": {"epochs": 2, "batch_size": 100, "train_subset": 300, "test_subset": 100},
}


def write_spec(path: Path, **overrides) -> Path:
    spec = run_spec.deep_merge(TINY, overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


def write_manifest(path: Path, entries: list[tuple[Path, Path]]) -> Path:
    path.write_text(json.dumps({"runs": [{"spec": str(s), "out": str(o)} for s, o in entries]}))
    return path


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def without_timings(metrics: dict) -> dict:
    drop = ("wall_seconds", "device")
    stripped = {k: v for k, v in metrics.items() if k not in drop}
    stripped["epochs"] = [{k: v for k, v in e.items() if k != "seconds"} for e in metrics["epochs"]]
    return stripped


def test_pack_key_ignores_per_run_values_only() -> None:
    base = run_spec.resolve(TINY)
    same = run_spec.resolve(
        run_spec.deep_merge(TINY, {"seed": 3, "ep": {"beta": 0.5}, "optim": {"lr": 0.01}})
    )
    assert pack_key(base) == pack_key(same)
    hash(pack_key(base))
    for other in ({"ep": {"T": 7}}, {"model": {"depth": 3}}, {"train": {"batch_size": 50}}):
        assert pack_key(run_spec.resolve(run_spec.deep_merge(TINY, other))) != pack_key(base)


def test_train_pack_writes_what_train_writes_and_skips_finished(
    tmp_path: Path, fake_data_dir: Path, one_thread
) -> None:
    specs = [write_spec(tmp_path / f"s{k}.yaml", seed=k) for k in range(2)]
    alone = tmp_path / "alone"
    data = ["--data-dir", str(fake_data_dir)]
    assert main(["train", str(specs[1]), "--out", str(alone), *data]) == 0
    outs = [tmp_path / "pack0", tmp_path / "pack1"]
    manifest = write_manifest(tmp_path / "m.json", list(zip(specs, outs, strict=True)))
    assert main(["train-pack", str(manifest), *data]) == 0
    assert sorted(p.name for p in outs[1].iterdir()) == sorted(p.name for p in alone.iterdir())
    assert without_timings(metrics_of(outs[1])) == without_timings(metrics_of(alone))
    before = (outs[0] / "metrics.json").stat().st_mtime_ns
    other = write_spec(tmp_path / "s2.yaml", model={"depth": 3})  # another pack key
    entries = [*zip(specs, outs, strict=True), (other, tmp_path / "pack2")]
    assert main(["train-pack", str(write_manifest(tmp_path / "m2.json", entries)), *data]) == 0
    assert (outs[0] / "metrics.json").stat().st_mtime_ns == before
    assert metrics_of(tmp_path / "pack2")["spec"]["model"]["depth"] == 3
    changed = write_spec(tmp_path / "s3.yaml", seed=7)  # a finished directory, another spec
    assert (
        main(["train-pack", str(write_manifest(tmp_path / "m3.json", [(changed, outs[0])])), *data])
        == 0
    )
    assert metrics_of(outs[0])["spec"]["seed"] == 7


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "manifest not found"),
        ("{", "not valid JSON"),
        ('{"runs": []}', "expected"),
        ('{"runs": [{"spec": "a.yaml"}]}', "runs[0] needs exactly the keys spec and out"),
    ],
)
def test_bad_manifest_is_one_line(tmp_path: Path, capsys, content, message) -> None:
    manifest = tmp_path / "m.json"
    if content is not None:
        manifest.write_text(content)
    assert main(["train-pack", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_two_members_with_one_directory_is_an_error(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    manifest = write_manifest(tmp_path / "m.json", [(spec, tmp_path / "o"), (spec, tmp_path / "o")])
    assert main(["train-pack", str(manifest)]) == 2
    assert "same run directory" in capsys.readouterr().err


@pytest.fixture
def float64(monkeypatch: pytest.MonkeyPatch):
    """Nets and data in float64 (the training code itself is dtype-agnostic)."""
    from frernn import packed, train

    def double(*args):
        data = load(*args)
        return dataclasses.replace(data, train_x=data.train_x.double(), test_x=data.test_x.double())

    load = train.load_data
    monkeypatch.setattr(train, "load_data", double)
    monkeypatch.setattr(packed, "load_data", double)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


CASES = {
    "chain-ep-fixed": {
        "ep": {"nudge_rule": "fixed"},
        "diagnostics": {"dynamics": True, "trajectory": True, "samples": 10},
    },
    "one-layer-ep-recompute": {"model": {"depth": 1}, "ep": {"nudge_rule": "recompute"}},
    "residual-ep-accumulate": {
        "model": {"depth": 4, "topology": "residual"},
        "ep": {"nudge_rule": "accumulate"},
    },
    "agt-ep-accumulate": {
        "model": {"depth": 4, "topology": "agt", "agt_p": 0.5, "feedback": "asymmetric"},
        "ep": {"nudge_rule": "accumulate"},
    },
    "chain-bp": {"method": "bp", "train": {"train_acc": "eval"}},
    "residual-fa": {
        "method": "fa",
        "model": {"depth": 4, "topology": "residual", "feedback": "asymmetric"},
    },
}
MEMBERS = [  # per-run values a pack may mix; the last member diverges (lr 1e308)
    {"seed": 0},
    {"seed": 1, "ep": {"alpha": 0.8, "beta": 0.2}, "optim": {"lr": 3e-3}},
    {"seed": 2, "optim": {"lr": 1e-3, "clip": 0.01}},
    {"seed": 3, "optim": {"lr": 1e308}},
]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["model"]


@pytest.mark.usefixtures("float64", "one_thread")
@pytest.mark.parametrize("case", list(CASES))
def test_packed_members_equal_the_same_runs_alone(tmp_path: Path, fake_data_dir: Path, case):
    """Every member of a pack (one of them diverging) gives the metrics and final weights of
    the same run trained alone, to 1e-12 in float64."""
    from frernn.packed import train_pack
    from frernn.train import train

    shared = run_spec.deep_merge(TINY, CASES[case])
    diagnostics = shared.pop("diagnostics", None)  # per-run: given to the first member only
    members = [{**MEMBERS[0], "diagnostics": diagnostics or {}}, *MEMBERS[1:]]
    specs = [run_spec.resolve(run_spec.deep_merge(shared, m)) for m in members]
    assert len({pack_key(s) for s in specs}) == 1
    packed = train_pack(
        [(s, tmp_path / f"pack{k}") for k, s in enumerate(specs)], fake_data_dir, "cpu"
    )
    for k, spec in enumerate(specs):
        alone = train(spec, tmp_path / f"alone{k}", fake_data_dir, "cpu")
        assert packed[k]["diverged_epoch"] == alone["diverged_epoch"] == (1 if k == 3 else None)
        for got, want in zip(packed[k]["epochs"], alone["epochs"], strict=True):
            assert (got["train_acc"], got["test_acc"]) == (want["train_acc"], want["test_acc"])
            assert got["loss"] == pytest.approx(want["loss"], abs=1e-12, nan_ok=True)
        if k < 3:
            got_w, want_w = weights(tmp_path / f"pack{k}"), weights(tmp_path / f"alone{k}")
            assert got_w.keys() == want_w.keys()
            for name in want_w:
                torch.testing.assert_close(got_w[name], want_w[name], rtol=0, atol=1e-12)
        assert sorted(p.name for p in (tmp_path / f"pack{k}").iterdir()) == sorted(
            p.name for p in (tmp_path / f"alone{k}").iterdir()
        )
        if (tmp_path / f"alone{k}" / "dynamics.json").exists():
            got, want = (
                json.loads((tmp_path / f"{w}{k}" / "dynamics.json").read_text())
                for w in ("pack", "alone")
            )
            for phase in ("before", "after"):
                assert got[phase] == pytest.approx(want[phase], rel=1e-9, nan_ok=True)


def run_pack_cli(manifest: Path, data_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "frernn.cli", "train-pack", str(manifest)]
    cmd += ["--data-dir", str(data_dir), "--device", "cpu", "--threads", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.usefixtures("one_thread")
def test_killed_pack_resumes_every_member_to_identical_metrics(
    tmp_path: Path, fmnist_dir: Path
) -> None:
    """SIGKILL once a member checkpointed, rerun: each member as in an uninterrupted pack."""
    train = {"epochs": 4, "batch_size": 100, "train_subset": 2000, "test_subset": 500}
    specs = [
        write_spec(tmp_path / f"s{k}.yaml", dataset="fashion_mnist", seed=k, train=train)
        for k in range(3)
    ]
    manifests = {
        name: write_manifest(
            tmp_path / f"{name}.json", [(s, tmp_path / name / f"m{k}") for k, s in enumerate(specs)]
        )
        for name in ("whole", "killed")
    }
    assert main(["train-pack", str(manifests["whole"]), "--data-dir", str(fmnist_dir)]) == 0
    killed = run_pack_cli(manifests["killed"], fmnist_dir)
    checkpoints = [tmp_path / "killed" / f"m{k}" / "checkpoint.pt" for k in range(3)]
    deadline = time.monotonic() + 120
    while not any(c.exists() for c in checkpoints) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert any(c.exists() for c in checkpoints), "no checkpoint appeared"
    assert not any((tmp_path / "killed" / f"m{k}" / "metrics.json").exists() for k in range(3))
    resumed = run_pack_cli(manifests["killed"], fmnist_dir)
    _, err = resumed.communicate()
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert b"resuming" in err
    for k in range(3):
        whole, again = tmp_path / "whole" / f"m{k}", tmp_path / "killed" / f"m{k}"
        assert without_timings(metrics_of(again)) == without_timings(metrics_of(whole))
        assert not checkpoints[k].exists()


@pytest.mark.usefixtures("one_thread")
def test_graph_plumbing_stand_in_runs_packs() -> None:
    """The CUDA-graph buffer plumbing (rerun stand-in on CPU) gives a pack the eager weights."""
    results = []
    for graphed in (False, True):
        nets = [
            LayeredFRERNN(20, 10, LayerGraph.chain(3), 8, "symmetric", 1.0, 0.1, gen(s))
            for s in range(3)
        ]
        learner = LayeredEP(LayeredPack(nets, sample_dims=1), 8, 4, 0.2, "fixed")
        if graphed:
            learner.graph_calls(capture=False)
        optimizers = [torch.optim.Adam(net.parameters(), 1e-2) for net in nets]
        for step in range(3):
            x = torch.rand(3, 16, 20, generator=gen(10 + step))
            y = torch.randint(0, 10, (3, 16), generator=gen(20 + step))
            learner.train_step(x, y)
            for opt in optimizers:
                opt.step()
        results.append(torch.cat([p.detach().flatten() for n in nets for p in n.parameters()]))
        results.append(learner.predict(torch.rand(5, 20, generator=gen(99))).flatten())
    assert torch.equal(results[0], results[2]) and torch.equal(results[1], results[3])
    assert not torch.equal(results[0][:10], results[0][-10:])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.usefixtures("one_thread")
def test_device_agreement_check_passes_cpu_against_cpu(fake_data_dir: Path, capsys) -> None:
    """The CPU-vs-CUDA agreement script of gpu_check.sh, run as CPU vs CPU: zero difference."""
    args = ["--devices", "cpu", "cpu", "--epochs", "1", "--data-dir", str(fake_data_dir)]
    args += ["--set", "dataset=mnist", "--set", "model.width=16", "--set", "ep.T=6"]
    args += ["--set", "train.train_subset=200", "--set", "train.test_subset=100"]
    assert load_benchmark("agreement").main(args) == 0
    out = capsys.readouterr().out
    assert "diff 0.00" in out and "relative diff 0.0e+00" in out and "PASS" in out


def load_benchmark(name: str):
    """A script of benchmarks/ as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("one_thread")
def test_gpu_check_pack_runs_step_on_cpu(tmp_path: Path, fake_data_dir: Path, capsys) -> None:
    """gpu_check.sh step 3 (runs alone and packed), at a tiny size on the CPU."""
    args = ["--device", "cpu", "--runs", "1", "3", "--epochs", "1", "--out", str(tmp_path)]
    args += ["--data-dir", str(fake_data_dir), "--set", "dataset=mnist"]
    args += ["--set", "model.width=16", "--set", "ep.T=6", "--set", "train.train_subset=200"]
    assert load_benchmark("pack_runs").main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1 run(s) x 1 epochs on cpu") and lines[1].startswith("3 run(s)")
    assert len(list(tmp_path.glob("R3/run*/metrics.json"))) == 3


@pytest.mark.usefixtures("one_thread")
def test_packing_benchmark_table_on_cpu(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """benchmarks/packing.py at its smallest: one row per (R, mode), R = 1 the reference."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    args = ["--synthetic", "--runs", "1", "2", "--batches", "1", "--repeats", "1", "--depth", "1"]
    assert load_benchmark("packing").main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[:2] for row in rows[1:]] == [
        ["| 1", "eager"],
        ["| 1", "graphs"],
        ["| 2", "eager"],
        ["| 2", "graphs"],
    ]
    assert rows[1].split(" | ")[6] == "1.00x" and rows[3].split(" | ")[8] == "1.00"


def test_sigterm_stops_a_pack_with_one_line(tmp_path: Path, fake_data_dir: Path) -> None:
    """SIGTERM (a Slurm time limit) ends train-pack with exit 130 and one line, no metrics."""
    specs = [write_spec(tmp_path / f"s{k}.yaml", seed=k, train={"epochs": 400}) for k in range(2)]
    outs = [tmp_path / f"m{k}" for k in range(2)]
    manifest = write_manifest(tmp_path / "m.json", list(zip(specs, outs, strict=True)))
    proc = run_pack_cli(manifest, fake_data_dir)
    deadline = time.monotonic() + 120
    while not (outs[0] / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "run the same command again to resume" in err.decode().splitlines()[-1]
    assert not any((out / "metrics.json").exists() for out in outs)
