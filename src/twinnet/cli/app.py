"""``twinnet app``: start the Streamlit app on loopback, with a backend chosen up front.

The choice travels to the script in ``TWINNET_APP_*`` environment variables (see
:data:`twinnet.app.kit.ENV`). Streamlit runs headless: no browser is opened and no usage
statistics are sent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from twinnet.app.identify import check_startup
from twinnet.app.kit import ENV, choice_to_env, is_loopback
from twinnet.clients.backends import BackendChoice
from twinnet.core.artifacts import is_model_dir
from twinnet.errors import TwinnetError

__all__ = ["register", "build_command", "exposure_warning", "run_app"]

#: Largest upload the app accepts, in MB (phone photos are a few MB; servers take 6 MB).
MAX_UPLOAD_MB = 25


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``twinnet app`` to the `twinnet` parser."""
    p = sub.add_parser(
        "app",
        help="open the web app: compare two images, see why, search a gallery, identify",
        description=(
            "Start the Streamlit app. Give one backend (or none, and choose it in the app's "
            "sidebar). The app listens on 127.0.0.1 unless --host says otherwise."
        ),
    )
    backend = p.add_mutually_exclusive_group()
    backend.add_argument("--model", metavar="MODEL_DIR", help="compare in process with this model")
    backend.add_argument("--url", help="a TorchServe server, e.g. http://127.0.0.1:8080")
    backend.add_argument("--endpoint", metavar="NAME", help="a SageMaker endpoint")
    p.add_argument("--region", help="AWS region of --endpoint (default: the AWS configuration's)")
    p.add_argument(
        "--samples",
        metavar="DIR",
        help="a folder of sample images to offer (default: MODEL_DIR/samples when present)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--index",
        metavar="INDEX_DIR",
        help="a gallery index (`twinnet index build`): adds the Identify mode, run in the app",
    )
    where.add_argument(
        "--identify",
        action="store_true",
        help=(
            "with --url or --endpoint: adds the Identify mode, answered by that server "
            "(a model served, packaged or deployed with --index)"
        ),
    )
    p.add_argument("--port", type=int, default=8501, help="port to listen on (default 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.set_defaults(func=run_app)


def _check(args: argparse.Namespace) -> None:
    """Fail before Streamlit starts when the choice cannot work."""
    if not 0 < args.port < 65536:
        raise TwinnetError(f"--port must be between 1 and 65535, got {args.port}")
    if args.model:
        if not is_model_dir(args.model):
            raise TwinnetError(
                f"{args.model} is not a model directory (no twinnet.json); "
                "train one with `twinnet train` or give the right path"
            )
    if args.url and not args.url.startswith(("http://", "https://")):
        raise TwinnetError(f"--url must start with http:// or https://, got {args.url}")
    if getattr(args, "identify", False) and not (args.url or args.endpoint):
        raise TwinnetError(
            "--identify asks a server that holds a gallery index: give --url or --endpoint "
            "(or --index INDEX_DIR to identify in the app's process)"
        )
    if args.region and not args.endpoint:
        raise TwinnetError("--region goes with --endpoint")
    if args.samples and not Path(args.samples).is_dir():
        raise TwinnetError(f"--samples {args.samples} is not a folder")
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise TwinnetError("the app needs Streamlit: pip install 'twinnet[app]'") from None
    if getattr(args, "index", None):
        check_startup(args.index, model_dir=args.model)


def build_command(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The ``streamlit run`` command line and its environment for parsed ``twinnet app`` args."""
    from twinnet.app import page as app_module

    env = {k: v for k, v in (os.environ if environ is None else environ).items()}
    for name in ENV.values():  # only this command line decides
        env.pop(name, None)
    choice = None
    if args.model:
        choice = BackendChoice("model", str(Path(args.model).resolve()))
    elif args.url:
        choice = BackendChoice("url", args.url)
    elif args.endpoint:
        choice = BackendChoice("endpoint", args.endpoint, region=args.region)
    env.update(choice_to_env(choice))
    if args.samples:
        env[ENV["samples"]] = str(Path(args.samples).resolve())
    if getattr(args, "index", None):
        env[ENV["index"]] = str(Path(args.index).resolve())
    if getattr(args, "identify", False):
        env[ENV["identify"]] = "1"
    if not is_loopback(args.host):
        env[ENV["locked"]] = "1"
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(Path(app_module.__file__).resolve()),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--server.maxUploadSize",
        str(MAX_UPLOAD_MB),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
        "--global.developmentMode",
        "false",
    ]
    return argv, env


def exposure_warning(host: str) -> str | None:
    """What to tell the operator when ``host`` is reachable from other machines."""
    if is_loopback(host):
        return None
    return (
        f"warning: binding {host} exposes the app to the network without authentication; "
        "its backend is fixed to this command line's and it reads no folders from this machine"
    )


def run_app(args: argparse.Namespace) -> int:
    """Replace this process with Streamlit, so stopping ``twinnet app`` stops the server."""
    _check(args)
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    argv, env = build_command(args)
    print(f"twinnet app: http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    if os.name == "posix":
        os.execve(argv[0], argv, env)
    return subprocess.call(argv, env=env)  # pragma: no cover - non-POSIX
