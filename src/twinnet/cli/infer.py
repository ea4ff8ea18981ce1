"""Subcommands of the infer stage: ``twinnet compare`` and ``twinnet search``.

``compare`` runs wherever :func:`twinnet.backends.open_backend` points (a model directory,
a TorchServe URL or a SageMaker endpoint); ``search`` runs in process.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import TwinnetError
from ..result import CompareResult

__all__ = ["register", "run_compare", "run_search"]

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
        choices=("auto", "bf16", "fp32"),
        help="encoder precision; auto uses bf16 where the CPU has native support",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the `twinnet` parser."""
    p = sub.add_parser(
        "compare",
        help="are two images the same class?",
        description="Compare two images with a local model, a TorchServe URL or a SageMaker endpoint.",
    )
    p.add_argument("left", help="first image file")
    p.add_argument("right", help="second image file")
    p.add_argument(
        "--cam", metavar="OUT.png", help="write both images with their Grad-CAM heatmaps here"
    )
    _add_local_options(p)
    p.add_argument("--url", help="TorchServe base URL, e.g. http://localhost:8080")
    p.add_argument("--token", help="TorchServe inference token")
    p.add_argument("--model-name", default="twin", help="model name on the server")
    p.add_argument("--endpoint", help="SageMaker endpoint name")
    p.add_argument("--region", help="AWS region of the endpoint")
    p.set_defaults(func=run_compare)

    s = sub.add_parser(
        "search",
        help="rank a folder of images against one image",
        description="Rank every image under GALLERY_DIR by the probability that it shows QUERY's class.",
    )
    s.add_argument("query", help="the image to look for")
    s.add_argument("gallery", metavar="GALLERY_DIR", help="folder of images (searched recursively)")
    s.add_argument("--top-k", type=int, default=5, help="how many matches to print (default 5)")
    _add_local_options(s)
    s.set_defaults(func=run_search)


def _open_twin(args: argparse.Namespace):
    from ..inference import Twin

    if not args.model:
        raise TwinnetError(f"no model: pass --model DIR or set ${MODEL_ENV}")
    return Twin.load(args.model, device=args.device, precision=args.precision)


def run_compare(args: argparse.Namespace) -> int:
    """``twinnet compare A B``: print the verdict; optionally write the Grad-CAM picture."""
    from ..backends import open_backend

    for path in (args.left, args.right):
        if not Path(path).is_file():
            raise TwinnetError(f"{path}: no such file")
    remote = bool(args.url or args.endpoint)
    if remote:
        backend = open_backend(
            url=args.url,
            endpoint=args.endpoint,
            region=args.region,
            token=args.token,
            model_name=args.model_name,
        )
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
        from ..explain import save_cam_picture

        resize_method = getattr(getattr(backend, "spec", None), "resize_method", "squish")
        save_cam_picture(Path(args.left), Path(args.right), result, args.cam, resize_method)
    print_compare(result, args.json, args.cam)
    return 0


def print_compare(result: CompareResult, as_json: bool, cam: str | None = None) -> None:
    """Print one verdict: the contract's JSON, or a line people read (shared with ``invoke``)."""
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
    twin = _open_twin(args)
    hits = twin.search(Path(args.query), args.gallery, top_k=args.top_k)
    if args.json:
        rows = [
            {"rank": r, "index": h.index, "path": str(h.item), "probability": h.probability}
            for r, h in enumerate(hits, 1)
        ]
        print(json.dumps({"query": str(args.query), "model": twin.name, "hits": rows}))
    else:
        for r, h in enumerate(hits, 1):
            print(f"{r:>3}  {h.probability:.4f}  {h.item}")
    return 0
