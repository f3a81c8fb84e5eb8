"""Start-up cost of frernn's commands, measured in one run (fresh interpreters, interleaved).

    python benchmarks/startup.py [--repeats R] [--data-dir D]

- floor: ``python -c 'import torch'``;
- ``frernn --help`` now (imports no command module) and as before (every command module);
- a tiny ``frernn train`` job (1 epoch, 500 training images, one thread): per-job overhead =
  wall clock minus the training time it records, now and as before (the compiler stack,
  torch._dynamo, imported as the first optimiser step used to).
Medians and ranges over the repeats; the machine's load is part of every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_NOW = "from frernn.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass"
HELP_BEFORE = "import frernn.train, frernn.data, frernn.aggregate, frernn.report\n" + HELP_NOW
SPEC = (
    "dataset: fashion_mnist\n"
    "train: {epochs: 1, batch_size: 100, train_subset: 500, test_subset: 200}\n"
)


def wall(code: str) -> float:
    """Seconds a fresh interpreter takes to run ``code``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def train_job(work: Path, data_dir: Path, before: bool, index: int) -> tuple[float, float]:
    """(wall, overhead) of one tiny training job in a fresh interpreter."""
    out = work / f"run{index}{'b' if before else 'a'}"
    argv = ["train", str(work / "spec.yaml"), "--out", str(out), "--data-dir", str(data_dir)]
    code = ("import torch._dynamo\n" if before else "") + (
        f"import sys\nfrom frernn.cli import main\nsys.exit(main({argv!r}))"
    )
    seconds = wall(code)
    trained = json.loads((out / "metrics.json").read_text())["wall_seconds"]
    return seconds, seconds - trained


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s  [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, help="default: a fresh one (Debian's files)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir = args.data_dir or work / "data"
        (work / "spec.yaml").write_text(SPEC)
        train_job(work, data_dir, before=False, index=-1)  # data import, tensor cache, disk cache
        rows: dict[str, list[float]] = {}
        for i in range(args.repeats):
            for name, seconds in (
                ("import torch (floor)", wall("import torch")),
                ("frernn --help, before", wall(HELP_BEFORE)),
                ("frernn --help, now", wall(HELP_NOW)),
            ):
                rows.setdefault(name, []).append(seconds)
            for before in (True, False):
                total, overhead = train_job(work, data_dir, before, i)
                label = "before" if before else "now"
                rows.setdefault(f"train job wall, {label}", []).append(total)
                rows.setdefault(f"train job overhead, {label}", []).append(overhead)
    print(f"{args.repeats} repeats, {os.cpu_count()} CPUs, OMP_NUM_THREADS=1 (median [range])")
    for name, values in rows.items():
        print(f"  {name:<28}{summary(values)}")
    ratio = statistics.median(rows["train job overhead, before"]) / statistics.median(
        rows["train job overhead, now"]
    )
    print(f"  per-job overhead before/now: {ratio:.2f}x")


if __name__ == "__main__":
    main()
