"""The ``frernn`` command: each concern module registers its own sub-command; this module
holds the user-facing help and imports only the module of the command that runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import textwrap
from dataclasses import dataclass

from frernn.errors import FrernnError

DESCRIPTION = """\
Train and evaluate FRE-RNNs (recurrent nets trained by Equilibrium Propagation with
down-scaled feedback and residual connections) and reproduce the paper's tables.
The whole reproduction runs through Snakemake (see README.md); these commands are
its steps, usable on their own."""

EPILOG = """\
examples:
  frernn train spec.yaml --out runs/a --set ep.beta=0.1
  frernn status table2
  frernn train --help          (each command has its own help)"""


@dataclass(frozen=True)
class Command:
    """One sub-command: the module that implements it and its help for users."""

    module: str
    summary: str
    description: str
    example: str


COMMANDS = {
    "train": Command(
        "frernn.train",
        "train one run spec; writes metrics.json, history.csv and model.pt",
        "Train one run (a YAML/JSON spec; every key has a default, see --print-spec) into a "
        "run directory. One log line per epoch; a checkpoint after every epoch, so rerunning "
        "the same command after a kill or Ctrl-C resumes the same run.",
        "frernn train spec.yaml --out runs/a --set ep.beta=0.1 --set model.depth=3\n"
        "  frernn train --print-spec --set method=bp",
    ),
    "train-pack": Command(
        "frernn.packed",
        "train the runs of a manifest as packs, each into its own run directory",
        'Train the runs listed in a JSON manifest {"runs": [{"spec": PATH, "out": DIR}]}; '
        "runs of equal shapes (pack key) train as one batched pack. Every run directory gets "
        "the files frernn train writes; finished runs are skipped, the others resume.",
        "frernn train-pack pack.json --data-dir data",
    ),
    "evaluate": Command(
        "frernn.evaluate",
        "reload a finished run's model.pt and re-measure its test accuracy",
        "Rebuild the net of a finished run directory from its model.pt and measure the test "
        "accuracy again (on CPU it equals the recorded final accuracy).",
        "frernn evaluate results/runs/table2/<run_id>/seed0 --data-dir data",
    ),
    "status": Command(
        "frernn.status",
        "show what a workflow target has done: finished, running, failed, not started",
        "Count the runs of a target (a table or figure block of config.yaml, 'runs' for "
        "all) as finished, running (with its last epoch), failed (with its log tail) or not "
        "started, and estimate the time left. Safe while the workflow runs.",
        "frernn status table2 --set scale=quick --set dataset_substitute=fashion_mnist",
    ),
    "data": Command(
        "frernn.data",
        "fetch or import datasets into the data directory",
        "Make a dataset available: fetch it (Debian's files, else a checksummed download) or "
        "import a directory holding its original files; every file is verified.",
        "frernn data fetch fashion_mnist --data-dir data",
    ),
    "aggregate": Command(
        "frernn.aggregate",
        "write runs.csv or one table/figure CSV from finished runs",
        "Aggregate the metrics.json of a target's runs into a CSV (mean, std, n, the "
        "published value); what the workflow's aggregate rules run.",
        "frernn aggregate table2 --config results/workflow_config.json --out table2.csv",
    ),
    "report": Command(
        "frernn.report",
        "execute the notebooks and write results/report.html",
        "Execute one parameterised notebook, install its kernel, or write the HTML report "
        "from a results directory; what the workflow's notebook rules run.",
        "frernn report html --results results",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen command's module is imported (start-up time): without a
    known command the sub-commands are listed from their summaries alone."""
    parser = argparse.ArgumentParser(
        prog="frernn",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command not in COMMANDS:
        for name, info in COMMANDS.items():
            subparsers.add_parser(name, help=info.summary)
        return parser
    info = COMMANDS[command]
    importlib.import_module(info.module).register_cli(subparsers)
    sub = subparsers.choices[command]
    summary = f"{info.summary[0].upper()}{info.summary[1:]}."
    sub.description = f"{summary}\n\n{textwrap.fill(info.description, 78)}"
    sub.epilog = f"example:\n  {info.example}"
    sub.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the chosen command; user mistakes become one line on stderr, exit 2."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args) or 0
    except FrernnError as exc:
        print(f"frernn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"frernn: {command} stopped (interrupted)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
