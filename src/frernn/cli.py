"""The ``frernn`` command: each concern module registers its own sub-command."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from frernn.errors import FrernnError

COMMAND_MODULES = ("frernn.train", "frernn.data", "frernn.aggregate", "frernn.report")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per registering module."""
    parser = argparse.ArgumentParser(prog="frernn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the chosen command; user mistakes become one line on stderr, exit 2."""
    args = build_parser().parse_args(argv)
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
