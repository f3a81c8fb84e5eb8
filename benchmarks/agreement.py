"""Do two devices train the same run alike? (CPU vs CUDA in benchmarks/gpu_check.sh)

    python benchmarks/agreement.py [--devices cpu cuda] [--epochs 3] [--data-dir D]
                                   [--set key.path=value ...]

The same spec and seed is trained on both devices by ``frernn.train.train``; the check passes
when the final test accuracies are within ``--max-acc-diff`` points (0.3) and the first update
(the EP gradients of the first batch from the identical initial net) agrees to ``--max-update-diff``
(1e-4 of the update's scale: float32 rounding of two different kernel libraries).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from frernn import data as datasets
from frernn import spec as run_spec
from frernn.train import load_data, seeded_learner, train


def first_update(spec: dict, data_dir: Path, device: str) -> dict[str, torch.Tensor]:
    """Gradients of the run's first training batch from its initial net, on ``device``."""
    dev = torch.device(device)
    data = load_data(spec, data_dir, dev)
    learner = seeded_learner(spec, data.info, dev)
    shuffle = torch.Generator().manual_seed(spec["seed"] + 1)
    xb, yb = next(
        datasets.batches(data.train_x, data.train_y, spec["train"]["batch_size"], shuffle)
    )
    learner.train_step(xb, yb)
    return {k: p.grad.detach().cpu().double() for k, p in learner.net.named_parameters()}


def agreement(spec: dict, data_dir: Path, devices: tuple[str, str]) -> dict[str, float]:
    """Final test accuracy of the run on each device, their difference, and the relative
    difference of the first update."""
    with tempfile.TemporaryDirectory() as tmp:
        finals = [
            train(spec, Path(tmp) / device, data_dir, device)["test_acc_final"]
            for device in devices
        ]
    a, b = (first_update(spec, data_dir, device) for device in devices)
    scale = max(float(g.abs().max()) for g in a.values())
    update = max(float((a[k] - b[k]).abs().max()) for k in a) / scale
    return {
        "acc_a": finals[0],
        "acc_b": finals[1],
        "acc_diff": abs(finals[0] - finals[1]),
        "update_diff": update,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs=2, default=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=datasets.default_data_dir())
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--max-acc-diff", type=float, default=0.3)
    parser.add_argument("--max-update-diff", type=float, default=1e-4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = {"dataset": "fashion_mnist", "ep": {"beta": 0.1}, "train": {"epochs": args.epochs}}
    spec = run_spec.resolve(base, args.set)
    result = agreement(spec, args.data_dir, tuple(args.devices))
    ok = result["acc_diff"] <= args.max_acc_diff and result["update_diff"] <= args.max_update_diff
    a, b = args.devices
    print(
        f"agreement {a} vs {b}, {args.epochs} epochs, seed {spec['seed']}: test accuracy "
        f"{result['acc_a']:.2f}% vs {result['acc_b']:.2f}% (diff {result['acc_diff']:.2f}, "
        f"limit {args.max_acc_diff}); first update relative diff {result['update_diff']:.1e} "
        f"(limit {args.max_update_diff:.0e}): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
