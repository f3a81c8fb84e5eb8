"""The ``frernn`` command: each concern module registers its own sub-command."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from frernn.errors import FrernnError

COMMAND_MODULES = {
    "train": "frernn.train",
    "train-pack": "frernn.packed",
    "data": "frernn.data",
    "aggregate": "frernn.aggregate",
    "report": "frernn.report",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen command's module is imported (start-up time)."""
    parser = argparse.ArgumentParser(prog="frernn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    chosen = [command] if command in COMMAND_MODULES else list(COMMAND_MODULES)
    for name in chosen:
        importlib.import_module(COMMAND_MODULES[name]).register_cli(subparsers)
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


if __name__ == "__main__":
    sys.exit(main())
