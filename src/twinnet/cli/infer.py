"""Subcommands of the infer stage: ``twinnet compare`` (alias ``invoke``), ``search``, ``export``.

``compare`` runs wherever :func:`twinnet.clients.backends.open_backend` points (a model directory,
a TorchServe URL or a SageMaker endpoint of any mode); ``invoke NAME A B`` is ``compare
--endpoint NAME A B``, the same code path; ``search`` ranks in process with cached embeddings,
or compares pair by pair on a server (queued at once on an async endpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from twinnet.clients.backends import open_backend, resize_method
from twinnet.core.result import CompareResult
from twinnet.data.items import list_images
from twinnet.errors import TwinnetError
from twinnet.infer.explain import save_cam_picture
from twinnet.infer.runtime import PRECISIONS
from twinnet.infer.twin import Twin

__all__ = ["register", "run_compare", "run_search", "print_compare"]

MODEL_ENV = "TWINNET_MODEL"


def _add_local_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-m",
        "--model",
        default=os.environ.get(MODEL_ENV),
        metavar="DIR",
        help=f"model directory (default: ${MODEL_ENV})",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="encoder precision; auto: int8 when the model has a quantized encoder and the CPU "
        "has VNNI, else bf16 where the CPU has native support, else fp32",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_pair_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("left", metavar="A", help="first image file")
    p.add_argument("right", metavar="B", help="second image file")
    p.add_argument(
        "--cam", metavar="OUT.png", help="write both images with their Grad-CAM heatmaps here"
    )


def add_aws_options(p: argparse.ArgumentParser) -> None:
    """``--region``, ``--profile`` and ``--async-timeout`` of a command that can use an endpoint."""
    p.add_argument("--region", help="AWS region of the endpoint (default: AWS_DEFAULT_REGION)")
    p.add_argument("--profile", help="AWS profile from ~/.aws (default: AWS_PROFILE or 'default')")
    p.add_argument(
        "--async-timeout", type=float, default=900.0, metavar="SECONDS",
        help="async endpoint: how long to wait for the answers (default 900; one scaled to "
        "zero takes minutes to start)",
    )  # fmt: skip


class AsyncProgress:
    """``answered/total`` on stderr while an async endpoint works: one rewritten line on a
    tty, else a line at the start, at the end, and at most every 10 s in between."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.said_at: float | None = None

    def __call__(self, answered: int, total: int, elapsed: float) -> None:
        line = f"async endpoint: {answered}/{total} answered ({elapsed:.0f} s)"
        done = answered == total
        if self.tty:
            self.stream.write(f"\r{line}\033[K" + ("\n" if done else ""))
        elif self.said_at is None or done or elapsed - self.said_at >= 10:
            self.stream.write(line + "\n")
            self.said_at = elapsed
        self.stream.flush()


def remote_backend(args: argparse.Namespace):
    """The server or endpoint that ``--url`` / ``--endpoint`` (and their options) name."""
    return open_backend(
        url=args.url,
        endpoint=args.endpoint,
        region=args.region,
        token=args.token,
        model_name=args.model_name,
        profile=args.profile,
        progress=AsyncProgress(),
        timeout_s=args.async_timeout,
    )


def _add_remote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="TorchServe base URL, e.g. http://localhost:8080")
    p.add_argument("--token", help="TorchServe inference token")
    p.add_argument("--model-name", default="twin", help="model name on the server")
    p.add_argument("--endpoint", help="SageMaker endpoint name (real-time, serverless or async)")
    add_aws_options(p)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the `twinnet` parser."""
    p = sub.add_parser(
        "compare",
        help="are two images the same class?",
        description="Compare two images with a local model, a TorchServe URL or a SageMaker endpoint.",
    )
    _add_pair_arguments(p)
    _add_local_options(p)
    _add_remote_options(p)
    _add_no_wait(p)
    p.set_defaults(func=run_compare)

    i = sub.add_parser(
        "invoke",
        help="compare two images on a SageMaker endpoint (compare --endpoint)",
        description="Send two images to a SageMaker endpoint: `twinnet compare --endpoint NAME A B`.",
    )
    i.add_argument("endpoint", metavar="NAME", help="SageMaker endpoint name")
    _add_pair_arguments(i)
    i.add_argument("--json", action="store_true", help="print the JSON response")
    add_aws_options(i)
    _add_no_wait(i)
    i.set_defaults(
        func=run_compare, model=None, url=None, token=None, model_name="twin",
        device="auto", precision="auto",
    )  # fmt: skip

    s = sub.add_parser(
        "search",
        help="rank a folder of images against one image",
        description="Rank every image under GALLERY_DIR by the probability that it shows QUERY's "
        "class: in process with cached embeddings, or pair by pair on a TorchServe server or a "
        "SageMaker endpoint (an async endpoint gets every pair queued at once).",
    )
    s.add_argument("query", help="the image to look for")
    s.add_argument("gallery", metavar="GALLERY_DIR", help="folder of images (searched recursively)")
    s.add_argument("--top-k", type=int, default=5, help="how many matches to print (default 5)")
    _add_local_options(s)
    _add_remote_options(s)
    s.set_defaults(func=run_search)

    e = sub.add_parser(
        "export",
        help="write a model as ONNX graphs for Triton or ONNX Runtime",
        description="Write a model directory as ONNX graphs with a dynamic batch, beside "
        "twinnet-onnx.json (preprocessing, calibration, and ONNX Runtime's measured "
        "difference from PyTorch).",
    )
    e.add_argument("model_dir", metavar="MODEL_DIR")
    e.add_argument("--format", choices=("onnx",), default="onnx", help="(default onnx)")
    e.add_argument("--out", required=True, metavar="DIR")
    e.set_defaults(func=run_export)

    q = sub.add_parser(
        "quantize",
        help="add an int8 encoder to a model directory, checked against fp32",
        description="Calibrate an int8 encoder (ONNX Runtime, static QDQ) on images like those "
        "the model will serve, check it against fp32 on held-out pairs of the same folder, and "
        "install it as MODEL_DIR/encoder.int8.onnx. It is refused, and nothing is written, when "
        "it changes more than 1%% of the held-out decisions. Servers and `Twin.load` then use "
        "it under --precision auto on CPUs with VNNI or AMX; Grad-CAM stays on the float model.",
    )
    q.add_argument("model_dir", metavar="MODEL_DIR")
    q.add_argument(
        "images", metavar="IMAGES_DIR",
        help="images like those served; class subfolders give balanced held-out pairs",
    )  # fmt: skip
    q.add_argument(
        "--calibration", type=int, default=128, metavar="N",
        help="images to calibrate on, at most half of the folder (default 128)",
    )  # fmt: skip
    q.add_argument(
        "--pairs", type=int, default=400, help="held-out pairs to check on (default 400)"
    )
    q.add_argument("--seed", type=int, default=0, help="seeds the split and the pairs")
    q.set_defaults(func=run_quantize)


def _open_twin(args: argparse.Namespace):
    if not args.model:
        raise TwinnetError(f"no model: pass --model DIR or set ${MODEL_ENV}")
    return Twin.load(args.model, device=args.device, precision=args.precision)


def _add_no_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="async endpoint: queue the request, print where the answer will be written, return",
    )


def run_compare(args: argparse.Namespace) -> int:
    """``twinnet compare A B`` (and ``invoke NAME A B``): print the verdict; optionally the Grad-CAM picture."""
    for path in (args.left, args.right):
        if not Path(path).is_file():
            raise TwinnetError(f"{path}: no such file")
    if args.no_wait and not args.endpoint:
        raise TwinnetError("--no-wait is for an async SageMaker endpoint (--endpoint NAME)")
    remote = bool(args.url or args.endpoint)
    if remote:
        backend = remote_backend(args)
        if args.no_wait:
            job = backend.submit_compare(Path(args.left), Path(args.right), cam=bool(args.cam))
            answer = {"inference_id": job.inference_id, "output": job.output,
                      "failure": job.failure, "request": job.request}  # fmt: skip
            if args.json:
                print(json.dumps(answer))
            else:
                print(f"queued {job.inference_id}: the answer will be written to {job.output}")
                if job.failure:
                    print(f"  a failure to {job.failure}")
            return 0
    elif args.device != "auto" or args.precision != "auto":
        backend = _open_twin(args)
    else:
        if not args.model:
            raise TwinnetError(
                f"no model: pass --model DIR, --url or --endpoint, or set ${MODEL_ENV}"
            )
        backend = open_backend(model=args.model)
    result = backend.compare(Path(args.left), Path(args.right), cam=bool(args.cam))
    if args.cam:
        method = resize_method(backend)
        save_cam_picture(Path(args.left), Path(args.right), result, args.cam, method)
    print_compare(result, args.json, args.cam)
    return 0


def print_compare(result: CompareResult, as_json: bool, cam: str | None = None) -> None:
    """Print one verdict: the contract's JSON, or a line people read."""
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    print(
        f"{result.verdict}  probability {result.probability:.4f}  (threshold {result.threshold:.2f})"
    )
    if cam:
        print(f"Grad-CAM picture: {cam}")


def run_search(args: argparse.Namespace) -> int:
    """``twinnet search QUERY GALLERY_DIR``: print the best matches, best first."""
    if not Path(args.query).is_file():
        raise TwinnetError(f"{args.query}: no such file")
    if not Path(args.gallery).is_dir():
        raise TwinnetError(f"{args.gallery}: not a directory")
    if args.top_k < 1:
        raise TwinnetError("--top-k must be at least 1")
    if args.url or args.endpoint:
        name, hits = _remote_search(args)
    else:
        twin = _open_twin(args)
        name, hits = twin.name, twin.search(Path(args.query), args.gallery, top_k=args.top_k)
    if args.json:
        rows = [
            {"rank": r, "index": h.index, "path": str(h.item), "probability": h.probability}
            for r, h in enumerate(hits, 1)
        ]
        print(json.dumps({"query": str(args.query), "model": name, "hits": rows}))
    else:
        for r, h in enumerate(hits, 1):
            print(f"{r:>3}  {h.probability:.4f}  {h.item}")
    return 0


def _remote_search(args: argparse.Namespace):
    """Rank a gallery on a server: one comparison per gallery image (all queued at once on
    an async endpoint), ordered by probability; returns the model's name and the hits."""
    from twinnet.core.result import Hit

    gallery = list_images(args.gallery)
    if not gallery:
        raise TwinnetError(f"{args.gallery} holds no images")
    backend = remote_backend(args)
    query = Path(args.query)
    many = getattr(backend, "compare_many", None)
    if many is not None:
        results = many([(query, item) for item in gallery])
    else:
        results = [backend.compare(query, item) for item in gallery]
    order = sorted(range(len(gallery)), key=lambda i: (-results[i].probability, i))
    hits = [Hit(index=i, item=gallery[i], probability=results[i].probability) for i in order]
    return (results[0].model if results else ""), hits[: args.top_k]


def run_export(args: argparse.Namespace) -> int:
    """``twinnet export MODEL_DIR --out DIR``: the model as ONNX graphs."""
    from twinnet.infer.onnx_export import export_onnx

    info = json.loads(export_onnx(args.model_dir, args.out).read_text())
    gap = info["onnxruntime_max_relative_difference"]
    graphs = ", ".join(info["graphs"].values())
    checked = f"ONNX Runtime within {gap:.1e} of PyTorch" if gap is not None else "not checked"
    print(f"wrote {graphs} and twinnet-onnx.json to {args.out} ({checked})")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    """``twinnet quantize MODEL_DIR IMAGES_DIR``: the int8 encoder, or a refusal with the figure."""
    quantize_into(args.model_dir, args.images, args.calibration, args.pairs, args.seed)
    return 0


def add_quantize_option(p: argparse.ArgumentParser) -> None:
    """``--quantize IMAGES_DIR`` of ``archive`` and ``package``: quantize before building."""
    p.add_argument(
        "--quantize", metavar="IMAGES_DIR",
        help="first add an int8 encoder calibrated on these images (as `twinnet quantize`)",
    )  # fmt: skip


def quantize_first(args: argparse.Namespace) -> None:
    """Run ``--quantize`` when it was given (see :func:`add_quantize_option`)."""
    if args.quantize:
        quantize_into(args.model_dir, args.quantize)


def quantize_into(
    model_dir: str, images: str, calibration: int = 128, pairs: int = 400, seed: int = 0
) -> None:
    """Add the int8 encoder to ``model_dir`` and say how it agreed with fp32 (also for
    ``archive --quantize`` and ``package --quantize``)."""
    from twinnet.infer.quantize import quantize_model

    if not Path(images).is_dir():
        raise TwinnetError(f"{images}: not a directory of images")
    rec = quantize_model(
        model_dir, images, calibration=calibration, pairs=pairs, seed=seed,
        say=lambda line: print(line, file=sys.stderr, flush=True),
    )  # fmt: skip
    same = ", ".join(
        f"{name} {m['agreement']['pairs'] - m['agreement']['changed_decisions']}/"
        f"{m['agreement']['pairs']} (max |dp| {m['agreement']['max_abs_probability_difference']:.4f})"
        for name, m in rec["engines"].items()
    )
    print(
        f"wrote {Path(model_dir) / rec['file']}: held-out decisions as fp32's: {same}; "
        f"calibrated on {rec['calibration_images']} images",
        file=sys.stderr,
    )
