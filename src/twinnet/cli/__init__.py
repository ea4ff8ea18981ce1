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
_MODULES = ("train", "infer", "index", "serve", "deploy", "container", "app")
#: Commands parsed by their own module alone: the serving container's process stays small.
_LIGHT = {"container": "container"}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full argument parser, with every stage's subcommands (``only``: one module's)."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="twinnet",
        description="Train, evaluate, explain and serve twin (Siamese) image networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"twinnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES if only is None else (only,):
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_LIGHT.get(argv[0]) if argv else None)
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
