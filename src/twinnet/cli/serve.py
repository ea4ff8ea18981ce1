"""Subcommands of the serve stage: ``twinnet archive`` and ``twinnet serve``.

``serve`` starts TorchServe (or Ray Serve, ``--engine ray``) in the background and returns
once the model answers; the server's files (config, token, logs) live in
``$TWINNET_HOME/serve/<port>`` (default ``~/.cache/twinnet/serve/<port>``), where
``twinnet compare --url`` and the app find the inference token.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from twinnet.cli.infer import add_quantize_option, quantize_first
from twinnet.contract.options import RESPONSE_FORMATS, ServeOptions
from twinnet.core.spec import SPEC_FILE
from twinnet.engines import server
from twinnet.engines.base import Engine
from twinnet.engines.registry import DEFAULT_ENGINE, engine_names, engine_of, get_engine
from twinnet.engines.torchserve.archive import build_archive
from twinnet.errors import TwinnetError
from twinnet.infer.runtime import PRECISIONS

__all__ = ["register"]


def _archive_options(p: argparse.ArgumentParser) -> None:
    default = ServeOptions()
    p.add_argument(
        "--batch-size", type=int, default=default.batch_size,
        help=f"requests per batch (default {default.batch_size})",
    )  # fmt: skip
    p.add_argument(
        "--max-batch-delay", type=int, default=default.max_batch_delay,
        help=f"ms to wait to fill a batch (default {default.max_batch_delay})",
    )  # fmt: skip
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: one per CPU; torch threads = CPUs / workers)",
    )
    p.add_argument(
        "--precision", choices=PRECISIONS, default=default.precision,
        help="encoder precision in the workers (default auto: the int8 encoder when the model "
        "has one and the CPU has VNNI, else bf16 where the CPU has it, else fp32)",
    )  # fmt: skip
    p.add_argument(
        "--response-format", choices=RESPONSE_FORMATS, default=default.response_format,
        help="the answer to a request that names no format: the JSON object (default) or "
        "the original sample's flat list, so the sample's clients work unchanged",
    )  # fmt: skip
    p.add_argument(
        "--index", metavar="INDEX_DIR",
        help="ship this gallery index (built with the same cosine model) in the archive, so "
        "the server also answers identification requests",
    )  # fmt: skip


def _options(args: argparse.Namespace):
    """The archive's :class:`~twinnet.contract.options.ServeOptions` from the command line."""
    return ServeOptions(
        batch_size=args.batch_size,
        max_batch_delay=args.max_batch_delay,
        workers=args.workers,
        precision=args.precision,
        response_format=args.response_format,
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the `twinnet` parser."""
    p = sub.add_parser(
        "archive",
        help="build a TorchServe archive (.mar) from a model directory",
        description="Build MODEL_STORE/<name>.mar with the handler, the model directory and "
        "a model-config.yaml (batch size, batch delay, workers, threads, timeouts, default "
        "response format).",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a twinnet model directory")
    p.add_argument(
        "--out", required=True, metavar="MODEL_STORE", help="the model store to write into"
    )
    p.add_argument(
        "--name", default="twin", help="model name, served at /predictions/NAME (default twin)"
    )
    _archive_options(p)
    add_quantize_option(p)
    p.set_defaults(func=_archive)

    p = sub.add_parser(
        "serve",
        help="serve a model with TorchServe or Ray Serve (start, --status, --stop)",
        description="Start TorchServe (or Ray Serve, --engine ray) in the background and wait "
        "until the model is ready. Token authorization is on by default; clients on this "
        "machine find the key.",
    )
    p.add_argument(
        "source", nargs="?", metavar="MODEL_DIR_OR_STORE",
        help="a model directory (archived on the fly), a model store or a .mar",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="inference bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="inference port (default 8080)")
    p.add_argument(
        "--management-port", type=int, default=8081, help="management port (default 8081)"
    )
    p.add_argument("--metrics-port", type=int, default=8082, help="metrics port (default 8082)")
    p.add_argument("--no-auth", action="store_true", help="turn token authorization off")
    p.add_argument("--foreground", action="store_true", help="run in the foreground until Ctrl-C")
    p.add_argument("--name", default=None, help="model name when serving a model directory")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the model")
    _archive_options(p)
    _ray_options(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--status", action="store_true", help="report running servers")
    group.add_argument("--stop", action="store_true", help="stop running servers (all, or --port)")
    p.set_defaults(func=_serve)


def _ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine", choices=engine_names(), default=DEFAULT_ENGINE,
        help="the serving engine (default torchserve); ray serves a model directory with "
        "Ray Serve, on this machine or a Ray cluster",
    )  # fmt: skip
    scale = p.add_mutually_exclusive_group()
    scale.add_argument(
        "--replicas", type=int, default=None, metavar="N",
        help="ray: replicas of the model (default: --workers, else one per CPU; 1 on a cluster)",
    )  # fmt: skip
    scale.add_argument(
        "--autoscale", default=None, metavar="MIN:MAX",
        help="ray: let Ray Serve's autoscaler keep between MIN and MAX replicas",
    )  # fmt: skip
    p.add_argument(
        "--address", default=None, metavar="ray://HOST:10001|auto",
        help="ray: the Ray cluster to serve on (default: a Ray instance on this machine, "
        "loopback only, stopped with the server)",
    )  # fmt: skip


def _engine_options(args: argparse.Namespace) -> tuple[Engine, dict]:
    """The engine and its start options, from the command line."""
    engine = get_engine(args.engine)
    options = dict(
        host=args.host, port=args.port or 8080, auth=not args.no_auth, name=args.name,
        timeout=args.timeout, options=_options(args),
    )  # fmt: skip
    if args.index:
        options["index"] = args.index
    for other in map(get_engine, engine_names()):
        given = [k for k in other.own_options if getattr(args, k) not in (None, False)]
        if other is not engine and other.options_hint and given:
            raise TwinnetError(other.options_hint)
    options.update({k: getattr(args, k) for k in engine.own_options})
    return engine, options


def _archive(args: argparse.Namespace) -> int:
    quantize_first(args)
    mar = build_archive(
        args.model_dir, args.out, name=args.name, options=_options(args), index=args.index
    )
    print(mar)
    return 0


def _print_ready(info) -> None:
    print(f"model ready: {', '.join(info.models)}")
    print(
        f"  inference:  {info.inference_url}/predictions/{info.models[0]}  (also /invocations, /ping)"
    )
    for label, text in engine_of(info).describe(info):
        print(f"  {label + ':':<11} {text}")
    if info.auth:
        print(f"  token:      {info.key_file} (clients on this machine read it)")
    else:
        print("  token:      none (authorization off)")
    print(f"  logs:       {info.log_dir}")
    sys.stdout.flush()


def _serve(args: argparse.Namespace) -> int:
    if args.status:
        entries = server.status(port=args.port)
        if not entries:
            print("no twinnet server is running")
            return 1
        code = 1
        for entry in entries:
            info = entry["info"]
            if not entry["alive"]:
                print(f"port {info.port}: not running (stale record in {info.instance})")
                continue
            code = 0
            what = engine_of(info).unit
            workers = "; ".join(
                f"{m}: {', '.join(s) or f'no {what}'}" for m, s in entry["models"].items()
            )
            engine = f"engine {info.engine}, " if info.engine != DEFAULT_ENGINE else ""
            print(
                f"port {info.port}: running (pid {info.pid}), {info.inference_url}, {engine}auth {'on' if info.auth else 'off'}, {what} [{workers}]"
            )
        return code
    if args.stop:
        stopped = server.stop(port=args.port)
        if not stopped:
            print("no twinnet server is running")
            return 0
        for info in stopped:
            print(f"stopped the server on port {info.port}")
        return 0
    if not args.source:
        raise TwinnetError("give a model directory or model store to serve (or --status / --stop)")
    if not Path(args.source).exists():
        raise TwinnetError(f"{args.source} does not exist")
    if args.index and not (Path(args.source) / SPEC_FILE).is_file():
        raise TwinnetError(
            "--index goes with a model directory, which is archived with it; an archive keeps "
            "what it was built with: `twinnet archive MODEL_DIR --out STORE --index INDEX_DIR`"
        )
    engine, options = _engine_options(args)
    if args.no_auth and args.host not in server.LOOPBACK:
        print(
            f"warning: token authorization is off and the server listens on {args.host}: "
            "anyone who can reach the port can use the model",
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warning above already told the user
        if args.foreground:
            print(f"starting {engine.title} (Ctrl-C stops it) ...", flush=True)
            return engine.run_foreground(args.source, on_ready=_print_ready, **options)
        print(f"starting {engine.title} ...", flush=True)
        info = engine.start(args.source, **options)
    _print_ready(info)
    print("stop it with: twinnet serve --stop")
    return 0
