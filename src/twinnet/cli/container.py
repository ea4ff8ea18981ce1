"""``twinnet container serve``: the serving image's entrypoint, kept free of torch.

The container's own process only opens SageMaker's port and supervises the model server,
so its command line is parsed without importing the other stages (which bring torch,
half a gigabyte a process): :func:`twinnet.cli.main` builds only this parser for
``twinnet container ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twinnet.container.main import serve
from twinnet.engines.registry import engine_names

__all__ = ["register", "run_container_serve"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``twinnet container`` to the ``twinnet`` parser."""
    _register_container(sub)


def _register_container(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "container",
        help="the serving container's entrypoint",
        description="Commands run inside the SageMaker serving image.",
    )
    csub = c.add_subparsers(dest="container_command", metavar="COMMAND")
    cs = csub.add_parser(
        "serve",
        help="run the model server in the foreground for SageMaker",
        description=(
            "Serve the .mar found in MODEL_DIR on SAGEMAKER_BIND_TO_PORT (default 8080): "
            "/ping and /invocations, token authorization off. Settings come from TWINNET_* "
            "and SAGEMAKER_* environment variables."
        ),
    )
    cs.add_argument("--model-dir", default="/opt/ml/model", help="default /opt/ml/model")
    cs.add_argument(
        "--engine", choices=engine_names(), default=None,
        help="the serving engine (default: TWINNET_ENGINE, else torchserve); ray runs Ray "
        "Serve on a local Ray instance and also serves a model directory",
    )  # fmt: skip
    # SageMaker starts images as `docker run IMAGE serve`: with this command as the
    # ENTRYPOINT, that appends one more "serve", accepted here and ignored.
    cs.add_argument("sagemaker_mode", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    cs.set_defaults(func=run_container_serve)
    c.set_defaults(func=lambda args: (c.print_help(), 2)[1])


def run_container_serve(args: argparse.Namespace) -> int:
    """``twinnet container serve``: the image's ENTRYPOINT; returns the model server's exit status."""
    return serve(Path(args.model_dir), engine=args.engine)
