"""Packed training: several runs of equal shapes trained in one process; ``frernn train-pack``.

A pack is a list of (resolved spec, run directory). Members whose ``pack_key`` is equal are
trained together; every member's directory ends up with the files ``frernn train`` writes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from frernn import spec as run_spec
from frernn.errors import FrernnError
from frernn.gpu import job_device
from frernn.methods import Learner
from frernn.methods.backprop import Backprop
from frernn.methods.ep import LayeredEP
from frernn.models.layered import LayeredFRERNN
from frernn.models.layered_pack import LayeredPack
from frernn.spec import pack_key
from frernn.train import Run, accuracies, interruptible, load_data


def group_by_key(members: list[tuple[dict[str, Any], Path]]) -> list[list[int]]:
    """Member indices grouped by ``pack_key``, groups and members in manifest order."""
    groups: dict[tuple, list[int]] = {}
    for index, (spec, _) in enumerate(members):
        groups.setdefault(pack_key(spec), []).append(index)
    return list(groups.values())


def finished_metrics(spec: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """The metrics of a run directory that finished this very spec, else None (a directory
    finished with another spec is trained again, as ``frernn train`` does)."""
    path = Path(out) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else None
    return metrics if metrics is not None and metrics.get("spec") == spec else None


class PackedTraining:
    """The epoch loop of a pack of layered runs: one batched training step for all members
    still training, while each member's ``Run`` does its own bookkeeping (data order,
    optimiser, clipping, schedule, records, checkpoint, divergence, outputs)."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self._learner: tuple[tuple[int, ...], Learner] | None = None

    def learner(self, active: list[Run]) -> Learner:
        """The learning rule on a ``LayeredPack`` of the active members (rebuilt when a member
        finished or diverged)."""
        key = tuple(id(run) for run in active)
        if self._learner is None or self._learner[0] != key:
            first = active[0].learner
            pack = LayeredPack([run.learner.net for run in active])
            if isinstance(first, LayeredEP):
                packed = LayeredEP(pack, first.T, first.K, first.nudge, first.rule)
                packed.cuda_graphs = first.cuda_graphs
            else:
                packed = Backprop(pack, **first.forward_options)
            self._learner = key, packed
        return self._learner[1]

    def execute(self) -> list[dict[str, Any]]:
        """Resume or start every member, train until each is done, write their outputs."""
        for run in self.runs:
            run.start()
        while active := [run for run in self.runs if not run.done()]:
            self.epoch(active)
        return [run.finish() for run in self.runs]

    def epoch(self, active: list[Run]) -> None:
        """One epoch of every active member (they may be at different epochs after a resume)."""
        start = time.perf_counter()
        learner = self.learner(active)
        tallies = [run.new_tally() for run in active]
        for batch in zip(*(run.epoch_batches() for run in active), strict=True):
            step(learner, active, batch, tallies)
        evaluated: dict[int, list[float]] = {}

        def accuracy_of(k: int):
            def of(x: torch.Tensor, y: torch.Tensor) -> float:
                if id(x) not in evaluated:
                    evaluated[id(x)] = accuracies(learner, x, y)
                return evaluated[id(x)][k]

            return of

        for k, (run, tally) in enumerate(zip(active, tallies, strict=True)):
            loss, train_acc = run.epoch_means(tally)
            run.keep(run.close_epoch(loss, train_acc, start, accuracy_of(k)))


def step(
    learner: Learner,
    active: list[Run],
    batch: tuple[tuple[torch.Tensor, torch.Tensor], ...],
    tallies: list[list[torch.Tensor]],
) -> None:
    """One training step of a pack: each member's batch, one batched ``train_step``, then each
    member's own clipping, optimiser step and tally."""
    xs = torch.stack([xb for xb, _ in batch])
    ys = torch.stack([yb for _, yb in batch])
    for run in active:
        run.optimizer.zero_grad(set_to_none=True)
    losses, logits = learner.train_step(xs, ys)
    for k, run in enumerate(active):
        run.update(tallies[k], losses[k], logits[k], ys[k])


def packable(runs: list[Run]) -> bool:
    """Whether the runs can train as one batched pack (layered nets, EP/BP/FA)."""
    return len(runs) > 1 and all(isinstance(run.learner.net, LayeredFRERNN) for run in runs)


def train_pack(
    members: list[tuple[dict[str, Any], Path]], data_dir: Path, device: str = "auto"
) -> list[dict[str, Any]]:
    """Train every (resolved spec, run directory) not finished yet; metrics per member.

    Members sharing a ``pack_key`` are trained as one pack (layered nets batched, conv nets
    one after another in this process) on one device; finished members are skipped and the
    others resume from their own checkpoints.
    """
    outs = [Path(out).resolve() for _, out in members]
    if len(set(outs)) != len(outs):
        raise FrernnError("train-pack: two members write the same run directory")
    metrics: list[dict[str, Any] | None] = [finished_metrics(spec, out) for spec, out in members]
    with job_device(device) as name:
        torch_device = torch.device(name)
        for group in group_by_key(members):
            todo = [k for k in group if metrics[k] is None]
            if not todo:
                continue
            data = load_data(members[todo[0]][0], data_dir, torch_device)
            runs = [Run(*members[k], data_dir, torch_device, data=data) for k in todo]
            done = PackedTraining(runs).execute() if packable(runs) else [r.execute() for r in runs]
            for k, m in zip(todo, done, strict=True):
                metrics[k] = m
    return metrics


def read_manifest(path: Path) -> list[tuple[dict[str, Any], Path]]:
    """(resolved spec, run directory) of each entry of a manifest ``{"runs": [{spec, out}]}``;
    relative paths are relative to the working directory."""
    try:
        manifest = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FrernnError(f"manifest not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise FrernnError(f"manifest {path} is not valid JSON: {exc}") from None
    runs = manifest.get("runs") if isinstance(manifest, dict) else None
    if not isinstance(runs, list) or not runs:
        raise FrernnError(f"manifest {path}: expected {{'runs': [{{'spec': ..., 'out': ...}}]}}")
    members = []
    for k, entry in enumerate(runs):
        if not isinstance(entry, dict) or set(entry) != {"spec", "out"}:
            raise FrernnError(f"manifest {path}: runs[{k}] needs exactly the keys spec and out")
        members.append((run_spec.load(entry["spec"]), Path(entry["out"])))
    return members


def _command(args: argparse.Namespace) -> int:
    members = read_manifest(args.manifest)
    what = f"every unfinished run of {args.manifest}"
    results = interruptible(
        args.threads, what, lambda: train_pack(members, args.data_dir, args.device)
    )
    if results is None:
        return 130
    for (spec, out), m in zip(members, results, strict=True):
        print(
            f"{out}: {run_spec.run_id(spec)} seed {spec['seed']}: "
            f"best test {m['test_acc_best']:.2f}% diverged={m['diverged']}"
        )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``frernn train-pack MANIFEST.json [--data-dir D] [--device ...] [--threads N]``."""
    from frernn.data import default_data_dir

    p = subparsers.add_parser("train-pack", help="train the runs of a manifest as packs")
    p.add_argument("manifest", type=Path, help='JSON {"runs": [{"spec": PATH, "out": DIR}, ...]}')
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's choice)")
    p.set_defaults(func=_command)
