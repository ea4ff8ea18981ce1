"""``twinnet``: one entry point, one subcommand for each stage.

Each module in this package registers the subcommands of one stage and stays thin: it
parses arguments, calls the library and prints. Library errors (:class:`TwinnetError`)
become a one-line ``error:`` message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from twinnet.core.version import __version__
from twinnet.errors import TwinnetError

__all__ = ["main", "build_parser"]

#: Subcommand modules, in the order ``--help`` lists them.
_MODULES = ("train", "infer", "index", "serve", "deploy", "app")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every stage's subcommands."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="twinnet",
        description="Train, evaluate, explain and serve twin (Siamese) image networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"twinnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TwinnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
