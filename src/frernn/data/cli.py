"""``frernn data fetch|import``: the dataset step that runs before any training job."""

from __future__ import annotations

import argparse
from pathlib import Path

from frernn.data.catalog import DATASET_NAMES, default_data_dir
from frernn.data.install import import_dir
from frernn.data.loading import prepare


def _fetch(args: argparse.Namespace) -> int:
    prepare(args.name, args.data_dir, download=True)
    print(f"{args.name}: ready in {args.data_dir}")
    return 0


def _import(args: argparse.Namespace) -> int:
    import_dir(args.name, args.source, args.data_dir)
    prepare(args.name, args.data_dir, download=False)
    print(f"{args.name}: imported from {args.source} into {args.data_dir}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``frernn data fetch NAME`` and ``frernn data import NAME SRC`` (both ``--data-dir D``)."""
    parser = subparsers.add_parser("data", help="fetch or import datasets into the data dir")
    commands = parser.add_subparsers(dest="data_command", required=True)
    fetch = commands.add_parser("fetch", help="make a dataset available (Debian files, download)")
    fetch.set_defaults(func=_fetch)
    imp = commands.add_parser("import", help="install a dataset from a directory of its files")
    imp.set_defaults(func=_import)
    for command in (fetch, imp):
        command.add_argument("name", metavar="NAME", help=" | ".join(DATASET_NAMES))
    imp.add_argument("source", metavar="SRC", type=Path, help="directory with the original files")
    for command in (fetch, imp):
        command.add_argument(
            "--data-dir",
            type=Path,
            default=default_data_dir(),
            help="data directory (default: $FRERNN_DATA_DIR, else ./data)",
        )
