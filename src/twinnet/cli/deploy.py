"""Subcommands of the deploy stage: package, deploy, endpoints, teardown.

(``twinnet invoke`` is ``twinnet compare --endpoint``: see :mod:`twinnet.cli.infer`.)
Each handler parses, calls :mod:`twinnet.aws` and prints. AWS settings come from the
standard places (environment variables, ``~/.aws``, ``AWS_ENDPOINT_URL``), with
``--profile`` and ``--region`` on top.
"""

from __future__ import annotations

import argparse
import json
import sys

from twinnet.aws.endpoints import list_endpoints
from twinnet.aws.modes import ASYNC, MODES, REALTIME, SERVERLESS, AsyncOutput, Serverless
from twinnet.aws.resources import DEFAULT_INSTANCE_TYPE, validate_endpoint_name
from twinnet.aws.rollout import deploy
from twinnet.aws.scaling import parse_autoscale
from twinnet.aws.session import open_session
from twinnet.aws.teardown import teardown
from twinnet.cli.infer import add_quantize_option, quantize_first
from twinnet.container.package import package
from twinnet.contract.options import RESPONSE_FORMATS
from twinnet.errors import TwinnetError

__all__ = [
    "register",
    "run_package",
    "run_deploy",
    "run_endpoints",
    "run_teardown",
    "parse_env",
]


def _add_aws_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION or the profile's)")
    p.add_argument("--profile", help="AWS profile from ~/.aws (default: AWS_PROFILE or 'default')")


def _add_archive_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=None, help="TorchServe batch size")
    p.add_argument(
        "--max-batch-delay", type=int, default=None, help="ms TorchServe waits to fill a batch"
    )
    p.add_argument(
        "--response-format",
        choices=RESPONSE_FORMATS,
        default="object",
        help="answer for requests that name no format: object (default), or list: the AWS "
        "sample's flat [neg, pos, *maps], so its clients work unchanged",
    )
    p.add_argument(
        "--index",
        metavar="INDEX_DIR",
        help="ship this gallery index (built with the same cosine model) in the archive, so "
        "/invocations also answers identification requests",
    )


def _archive_options(args: argparse.Namespace) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    if args.response_format != "object":  # the default adds nothing, so digests stay as they were
        out["response_format"] = args.response_format
    if args.index:
        out["index"] = args.index
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise TwinnetError("--batch-size must be at least 1")
        out["batch_size"] = args.batch_size
    if args.max_batch_delay is not None:
        if args.max_batch_delay < 0:
            raise TwinnetError("--max-batch-delay must not be negative")
        out["max_batch_delay"] = args.max_batch_delay
    return out


def parse_env(items: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` pairs from repeated ``--env`` options."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TwinnetError(f"--env expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _autoscale(text: str):
    """argparse ``type=`` for ``--autoscale``: parse early so a typo fails before any AWS call."""
    try:
        return parse_autoscale(text)
    except TwinnetError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--autoscale: ")) from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the `twinnet` parser."""
    _register_package(sub)
    _register_deploy(sub)
    _register_endpoints(sub)


def _register_package(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "package",
        help="build model.tar.gz for SageMaker",
        description="Build model.tar.gz (the TorchServe .mar at its root) from a model directory.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--out", default="model.tar.gz", help="tarball to write (default model.tar.gz)")
    _add_archive_options(p)
    add_quantize_option(p)
    p.set_defaults(func=run_package)


def _register_deploy(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "deploy",
        help="deploy a model to a SageMaker endpoint: real-time, serverless or asynchronous",
        description=(
            "Package MODEL_DIR, upload it to S3 and create the endpoint, or update it in place "
            "when it exists. Safe to re-run; a failure rolls back what the run created. "
            "Modes: realtime (instances billed by the hour), serverless (billed per request, "
            "scales to zero, 1-6 GB, 4 MB requests; the model's memory is measured against "
            "--memory-mb first), async (requests and answers in S3; --autoscale 0:N scales "
            "to zero on the queue's backlog)."
        ),
    )
    d.add_argument("model_dir", metavar="MODEL_DIR")
    d.add_argument("--endpoint", required=True, metavar="NAME", help="endpoint name")
    d.add_argument("--bucket", required=True, help="existing S3 bucket for model.tar.gz")
    d.add_argument("--role", required=True, metavar="ARN", help="SageMaker execution role ARN")
    d.add_argument("--image", required=True, metavar="URI", help="serving image in ECR")
    d.add_argument(
        "--mode", choices=MODES, default=REALTIME, help="how SageMaker hosts it (default realtime)"
    )
    d.add_argument(
        "--instance-type",
        default=None,
        help=f"realtime and async instances (default {DEFAULT_INSTANCE_TYPE})",
    )
    d.add_argument(
        "--count",
        type=int,
        default=None,
        help="instances (realtime, async; default 1, or the autoscale minimum)",
    )
    d.add_argument(
        "--autoscale",
        type=_autoscale,
        metavar="MIN:MAX[:TARGET]",
        help="scale between MIN and MAX instances, tracking TARGET invocations per instance "
        "per minute (realtime, default 70) or queued requests per instance (async, default "
        "5; MIN may be 0); implies --wait",
    )
    s = d.add_argument_group("serverless (--mode serverless)")
    s.add_argument(
        "--memory-mb", type=int, default=None, help="1024-6144 in steps of 1024 (default 2048)"
    )
    s.add_argument(
        "--max-concurrency", type=int, default=None, help="invocations at once, 1-200 (default 5)"
    )
    s.add_argument(
        "--provisioned-concurrency", type=int, default=None,
        help="invocations kept warm (no cold start; billed while provisioned)",
    )  # fmt: skip
    a = d.add_argument_group("asynchronous (--mode async)")
    a.add_argument("--output", metavar="S3URI", help="s3://BUCKET/PREFIX for the answers")
    a.add_argument("--failure-output", metavar="S3URI", help="s3:// prefix for failures")
    a.add_argument("--sns-topic", metavar="ARN", help="SNS topic told of each answer and failure")
    a.add_argument(
        "--max-concurrent-invocations", type=int, default=None, metavar="N",
        help="requests one instance takes at once (SageMaker's default if unset)",
    )  # fmt: skip
    d.add_argument("--wait", action="store_true", help="wait until the endpoint is InService")
    d.add_argument("--prefix", default="twinnet", help="S3 key prefix (default twinnet)")
    d.add_argument(
        "--env", action="append", metavar="KEY=VALUE", help="container environment (repeatable)"
    )
    _add_archive_options(d)
    _add_aws_options(d)
    d.set_defaults(func=run_deploy)


def _register_endpoints(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("endpoints", help="list twinnet endpoints and their status")
    e.add_argument("--json", action="store_true", help="print JSON")
    _add_aws_options(e)
    e.set_defaults(func=run_endpoints)

    t = sub.add_parser(
        "teardown",
        help="delete an endpoint and everything deploy created for it",
        description="Delete the endpoint, its endpoint configs, models and autoscaling.",
    )
    t.add_argument("endpoint", metavar="NAME")
    t.add_argument(
        "--delete-artifacts", action="store_true", help="also delete model.tar.gz from S3"
    )
    _add_aws_options(t)
    t.set_defaults(func=run_teardown)


def run_package(args: argparse.Namespace) -> int:
    """``twinnet package MODEL_DIR --out model.tar.gz``."""
    quantize_first(args)
    out = package(args.model_dir, args.out, **_archive_options(args))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


class _Progress:
    """Deploy progress on stderr; the wait status rewrites one line on a terminal."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_wait = ""
        self.open_line = False

    def __call__(self, event: str, message: str) -> None:
        if event == "wait":
            state = message.rsplit(" (", 1)[0]
            if self.tty:
                self.stream.write(f"\r  {message}\033[K")
                self.open_line = True
            elif state != self.last_wait:
                self.stream.write(f"  {message}\n")
            self.last_wait = state
        else:
            if self.open_line:
                self.stream.write("\n")
                self.open_line = False
            self.stream.write(f"{'  rollback: ' if event == 'rollback' else ''}{message}\n")
        self.stream.flush()


def _mode_settings(args: argparse.Namespace) -> tuple[Serverless | None, AsyncOutput | None]:
    """The serverless or async settings, refused when given for another mode."""
    sized = {"--memory-mb": args.memory_mb, "--max-concurrency": args.max_concurrency,
             "--provisioned-concurrency": args.provisioned_concurrency}  # fmt: skip
    if args.mode == SERVERLESS and args.instance_type is not None:
        raise TwinnetError(
            "--instance-type: a serverless endpoint has no instances (--memory-mb sizes it)"
        )
    queued = {"--output": args.output, "--failure-output": args.failure_output,
              "--sns-topic": args.sns_topic,
              "--max-concurrent-invocations": args.max_concurrent_invocations}  # fmt: skip
    for mode, options in ((SERVERLESS, sized), (ASYNC, queued)):
        given = [name for name, value in options.items() if value is not None]
        if given and args.mode != mode:
            raise TwinnetError(f"{', '.join(given)}: only with --mode {mode}")
    serverless = async_output = None
    if args.mode == SERVERLESS:
        serverless = Serverless(
            memory_mb=args.memory_mb or Serverless.memory_mb,
            max_concurrency=args.max_concurrency or Serverless.max_concurrency,
            provisioned=args.provisioned_concurrency,
        )
    if args.mode == ASYNC and args.output:
        async_output = AsyncOutput(
            args.output, args.failure_output, args.sns_topic, args.max_concurrent_invocations
        )
    return serverless, async_output


def run_deploy(args: argparse.Namespace) -> int:
    """``twinnet deploy MODEL_DIR --endpoint NAME --bucket B --role ARN --image URI``."""
    # deploy() checks every argument before it looks for credentials.
    serverless, async_output = _mode_settings(args)
    result = deploy(
        args.model_dir,
        endpoint=args.endpoint,
        bucket=args.bucket,
        role=args.role,
        image=args.image,
        instance_type=args.instance_type or DEFAULT_INSTANCE_TYPE,
        count=args.count,
        autoscale=args.autoscale,
        wait=args.wait,
        prefix=args.prefix,
        env=parse_env(args.env),
        region=args.region,
        profile=args.profile,
        report=_Progress(),
        package_options=_archive_options(args),
        mode=args.mode,
        serverless=serverless,
        async_output=async_output,
    )
    print(f"endpoint {result.endpoint} ({result.mode}): {result.action}, {result.status}")
    print(f"  model {result.model}, endpoint config {result.endpoint_config}")
    print(f"  artifact {result.artifact}")
    if result.autoscale:
        print(f"  autoscaling {result.autoscale.describe(result.mode)}")
    if result.status != "InService":
        print(f"  not waiting; follow it with `twinnet endpoints --region {result.region}`")
    return 0


def run_endpoints(args: argparse.Namespace) -> int:
    """``twinnet endpoints``: one line per twinnet endpoint."""
    session = open_session(region=args.region, profile=args.profile)
    rows = list_endpoints(session)
    if args.json:
        print(json.dumps([vars(r) for r in rows]))
        return 0
    if not rows:
        print(f"no twinnet endpoints in {session.region_name}")
        return 0
    header = ("NAME", "MODE", "STATUS", "INSTANCES", "TYPE", "BACKLOG", "MODEL", "MODIFIED (UTC)")
    table = [header] + [
        (
            r.name,
            r.mode,
            r.status,
            "" if r.instances is None else str(r.instances),
            r.instance_type,
            "" if r.backlog is None else f"{r.backlog:g}",
            r.model,
            r.modified,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def run_teardown(args: argparse.Namespace) -> int:
    """``twinnet teardown NAME [--delete-artifacts]``: say what was deleted."""
    validate_endpoint_name(args.endpoint)
    session = open_session(region=args.region, profile=args.profile)
    kept: list[str] = []

    def collect(event: str, message: str) -> None:
        if event == "kept":
            kept.append(message)

    deleted = teardown(
        args.endpoint, delete_artifacts=args.delete_artifacts, session=session, report=collect
    )
    print(f"deleted {len(deleted)} resource(s) of {args.endpoint}:")
    for what in deleted:
        print(f"  {what}")
    if kept:
        print(f"left {len(kept)} resource(s) in place:")
        for what in kept:
            print(f"  {what}")
    if not args.delete_artifacts:
        print("  (model.tar.gz kept in S3; add --delete-artifacts to delete it)")
    return 0
