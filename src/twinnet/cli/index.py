"""Subcommands of identification: ``twinnet index build|add|remove|info|export`` and ``identify``.

A gallery index holds a cosine model's embeddings of a labelled image folder; ``identify``
answers which of its classes a query shows, if any: in process (``--index``), or from a
server whose archive carries the index (``--url``, ``--endpoint``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from twinnet.cli.infer import add_aws_options, remote_backend
from twinnet.contract.protocol import parse_top_k
from twinnet.data.items import list_images
from twinnet.errors import TwinnetError
from twinnet.index import GalleryIndex, check_top_k
from twinnet.infer.runtime import PRECISIONS
from twinnet.infer.twin import Twin

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``index`` (with its actions) and ``identify`` to the ``twinnet`` parser."""
    p = sub.add_parser(
        "index",
        help="build and update a gallery index for identification",
        description="A gallery index: a cosine model's embeddings of a labelled image folder.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    _register_build(actions)
    _register_changes(actions)
    _register_identify(sub)


def _register_build(actions: argparse._SubParsersAction) -> None:
    b = actions.add_parser("build", help="embed a labelled gallery folder into a new index")
    b.add_argument("model_dir", metavar="MODEL_DIR", help="a cosine model directory")
    b.add_argument("gallery", metavar="GALLERY_DIR", help="labelled image folder")
    b.add_argument("--out", required=True, metavar="INDEX_DIR", help="where to write the index")
    b.add_argument(
        "--labels",
        default="folder",
        help="'folder' (class = parent folder) or 'regex:PATTERN' (group 1 of the file name)",
    )
    b.add_argument(
        "--kind",
        default="auto",
        choices=("auto", "flat", "ivf", "hnsw"),
        help="flat: exact; ivf, hnsw: approximate; auto: flat up to 100,000 images, then ivf",
    )
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    b.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="encoder precision (queries use the same); auto: int8 when the model has a "
        "quantized encoder and the CPU has VNNI, else bf16 where the CPU has it",
    )
    b.set_defaults(func=_build)


def _register_changes(actions: argparse._SubParsersAction) -> None:
    """``add``, ``remove``, ``info`` and ``export``: what changes or reads an existing index."""
    a = actions.add_parser("add", help="add the new images of a folder (same bytes are skipped)")
    a.add_argument("index", metavar="INDEX_DIR")
    a.add_argument("folder", metavar="MORE_DIR", help="labelled image folder")
    a.add_argument("--labels", help="how classes are read (default: as at build)")
    _model_option(a)
    a.set_defaults(func=_add)

    r = actions.add_parser("remove", help="remove a class, or an image or folder of images")
    r.add_argument("index", metavar="INDEX_DIR")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("--label", metavar="NAME", help="remove every image of this class")
    what.add_argument("--path", metavar="P", help="remove this image, or every image under it")
    r.set_defaults(func=_remove)

    i = actions.add_parser("info", help="kind, size, measured recall and model of an index")
    i.add_argument("index", metavar="INDEX_DIR")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=_info)

    e = actions.add_parser("export", help="write id, label, path and embedding to Parquet")
    e.add_argument("index", metavar="INDEX_DIR")
    e.add_argument("--out", required=True, metavar="FILE.parquet")
    e.set_defaults(func=_export)


def _register_identify(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser(
        "identify",
        help="which class of a gallery index is this image, if any?",
        description="Open-set identification: the best classes of the index for each query, "
        "with calibrated probabilities; 'unknown' when none reaches the model's threshold, raised "
        "with the gallery's size so a stranger is accepted about 5% of the time.",
    )
    q.add_argument(
        "queries", nargs="+", metavar="QUERY",
        help="image file(s), or folders of them (searched recursively)",
    )  # fmt: skip
    where = q.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", metavar="INDEX_DIR", help="search this index in process")
    where.add_argument(
        "--url", help="a TorchServe server whose archive carries an index (twinnet archive --index)"
    )
    where.add_argument(
        "--endpoint", metavar="NAME", help="a SageMaker endpoint packaged with --index"
    )
    q.add_argument("--top-k", type=int, default=5, help="classes to print per query (default 5)")
    q.add_argument(
        "--json", action="store_true", help="print one JSON object per query (JSON lines)"
    )
    _model_option(q)
    q.add_argument("--token", help="TorchServe inference token (with --url)")
    q.add_argument("--model-name", default="twin", help="model name on the server (with --url)")
    add_aws_options(q)
    q.set_defaults(func=_identify)


def _model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-m",
        "--model",
        metavar="DIR",
        help="the model directory, when it moved since the index was built",
    )


def _open(args: argparse.Namespace):
    return GalleryIndex.open(args.index, model_dir=getattr(args, "model", None))


def _build(args: argparse.Namespace) -> int:
    twin = Twin.load(args.model_dir, device=args.device, precision=args.precision)
    gallery = GalleryIndex.build(
        twin, args.gallery, args.out, labels=args.labels, kind=args.kind, model_dir=args.model_dir
    )
    info = gallery.info
    print(f"indexed {info['count']} images of {info['classes']} classes into {args.out}")
    _print_skipped(gallery.last_update)
    _print_kind(info)
    return 0


def _print_skipped(update) -> None:
    if update.duplicates:
        print(f"skipped {update.duplicates} image(s) whose bytes are already in")
    if update.unreadable:
        print(f"skipped {update.unreadable} unreadable image(s)")


def _print_kind(info: dict) -> None:
    print(f"kind:      {info['kind']} ({info['kind_reason']})")
    if info.get("recall_at_10") is not None:
        params = ", ".join(f"{k} {v}" for k, v in sorted(info["params"].items()))
        print(
            f"recall@10: {info['recall_at_10']:.3f} against exact search "
            f"({info['recall_queries']} sample queries; {params})"
        )


def _add(args: argparse.Namespace) -> int:
    gallery = _open(args)
    update = gallery.add(args.folder, labels=args.labels)
    print(f"added {update.added} image(s); the index holds {len(gallery)}")
    _print_skipped(update)
    return 0


def _remove(args: argparse.Namespace) -> int:
    gallery = _open(args)
    n = gallery.remove(label=args.label, path=args.path)
    print(f"removed {n} image(s); the index holds {len(gallery)}")
    return 0


def _info(args: argparse.Namespace) -> int:
    info = _open(args).info
    if args.json:
        print(json.dumps(info))
        return 0
    model = info["model"]
    print(f"index:     {info['path']}")
    print(f"images:    {info['count']} of {info['classes']} classes")
    print(f"model:     {model['name']} ({model['dir'] or 'directory not recorded'})")
    print(
        f"           {model['arch']}, {model['image_size']} px, {model['embedding_dim']}-d, "
        f"{model['precision']} on {model['device']}; fingerprint {model['fingerprint']}"
    )
    print(
        f"threshold: {info['threshold']:.4f} for identification against {info['count']} images "
        f"(pair threshold {info['pair_threshold']:.4f})"
    )
    _print_kind(info)
    print(f"updated:   {info.get('updated', info['created'])}")
    return 0


def _export(args: argparse.Namespace) -> int:
    gallery = _open(args)
    out = gallery.export(args.out)
    print(f"wrote {len(gallery)} rows (id, label, path, embedding) to {out}")
    return 0


def _queries(names: list[str]) -> list[str]:
    """The query files: files as given, folders expanded to their images in order."""
    out: list[str] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise TwinnetError(f"{name} holds no images")
            out += [str(p) for p in found]
        elif path.is_file():
            out.append(name)
        else:
            raise TwinnetError(f"{name}: no such file")
    return out


def _identify(args: argparse.Namespace) -> int:
    remote = bool(args.url or args.endpoint)
    top_k = parse_top_k(args.top_k) if remote else check_top_k(args.top_k)
    queries = _queries(args.queries)
    if remote:
        backend = remote_backend(args)
        many = getattr(backend, "identify_many", None)
        if many is not None:  # an async endpoint gets every query queued at once
            results = many([Path(q) for q in queries], top_k=top_k)
        else:
            results = [backend.identify(Path(q), top_k=top_k) for q in queries]
    else:
        results = _open(args).identify([Path(q) for q in queries], top_k=top_k)
    for query, result in zip(queries, results, strict=True):
        if args.json:
            print(json.dumps({"query": query, **result.to_dict()}))
            continue
        verdict = "known" if result.known else "unknown: no class reaches the threshold"
        print(f"{query}: {verdict} (threshold {result.threshold:.2f})")
        for rank, m in enumerate(result.matches, 1):
            print(f"  {rank:>3}  {m.probability:.4f}  {m.label}  {m.path}")
    return 0
