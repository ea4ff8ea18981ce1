"""Gallery index: open-set identification of unseen faces, search at scale, incremental adds.

1. AT&T faces. A cosine model trained on s1-s30 with bench/verification.py's recipe (or
   ``--model DIR``) identifies unseen people from one photo each. Gallery: photo 1 of each of
   s31-s40 and all photos of s1-s20 (distractors). Queries: the other 9 photos of s31-s40
   (known) and all photos of s21-s30 (unknown: not in the gallery). The decision is the
   index's identification threshold (the model's calibrated pair threshold raised for the
   gallery's size from the calibration classes' "different" pairs); the pair threshold is
   shown beside it. Nothing is tuned on the test people. Baseline: raw pixels
   (cosine of mean-centred pixels at the model's input size), with a threshold calibrated on
   the model's calibration classes, as in bench/verification.py.
2. Scale. Synthetic unit vectors of the model's width, clustered like face embeddings: one
   centre per 10 vectors, each vector ``normalise(centre + 0.8 * N(0, I/d))`` (a within-class
   cosine of about 0.6; between classes about 0). Queries are 200 new vectors drawn around
   existing centres (new photos of known people). For each size: flat (exact) and the
   approximate kinds, built and tuned by the library; build time, index bytes
   (``faiss.serialize_index``), p50 latency of a single top-10 query, and recall@10 against
   flat, as recorded at build and on the new queries. Beside them: one fresh ``Twin.compare``
   (resnet50, 224 px, two photos never seen) timed in interleaved rounds with flat queries.
3. Incremental add. A gallery of generated 640x480 JPEGs is indexed with the same resnet50;
   then batches of new images are added. Each add is set against encoding its images alone
   (``Twin.embed``, empty cache), the first build, and rebuilding the whole gallery.

    .venv/bin/python bench/index_speed.py [--quick] [--model DIR] [--only att,scale,add]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ATT = ROOT.parent / "shared" / "data" / "att-faces"
SAMPLES = ROOT.parent / "shared" / "data" / "samples"
TARGET_RANK1 = 0.90
TARGET_REJECT = 0.90
QUERIES = 200
ROUNDS = 15
PER_CENTRE = 10
SPREAD = 0.8


def _ok(value: float, target: float) -> str:
    return "PASS" if value >= target else "FAIL"


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------ 1. AT&T identification


def train_att(work: Path, quick: bool) -> tuple[Path, float]:
    """Train the cosine head on s1-s30 with bench/verification.py's AT&T recipe."""
    from twinnet.train.config import TrainConfig
    from twinnet.train.fit import train as run_train
    from verification import RECIPES, prepare  # bench/ is on sys.path when run as a script

    recipe = dict(RECIPES["att"])
    if quick:
        recipe["epochs"] = max(1, recipe["epochs"] // 4)
    train, _, _ = prepare("att", work)
    out = work / "att-model"
    cfg = TrainConfig(
        out=str(out), data=str(train), split="classes", valid_pct=recipe["valid_pct"],
        seed=0, arch="resnet18", size=recipe["size"], pretrained=False, frozen_epochs=0,
        epochs=recipe["epochs"], lr=recipe["lr"], bs=recipe["bs"], head="cosine",
        epoch_pairs=recipe["epoch_pairs"], workers=0,
    )  # fmt: skip
    print(f"[att] training the cosine head ({recipe['epochs']} epochs) ...", file=sys.stderr)
    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run_train(cfg)
    return out, time.monotonic() - started


def att_split(work: Path) -> tuple[Path, list[tuple[Path, str]], list[Path]]:
    """The gallery folder, the known queries with their labels, and the unknown queries."""
    if not ATT.is_dir():
        raise SystemExit(f"{ATT} not found (the AT&T faces live in ../shared/data)")
    gallery = work / "att-gallery"
    for i in range(31, 41):
        (gallery / f"s{i}").mkdir(parents=True)
        shutil.copy(ATT / f"s{i}" / "1.pgm", gallery / f"s{i}" / "1.pgm")
    for i in range(1, 21):
        shutil.copytree(ATT / f"s{i}", gallery / f"s{i}")
    known = [(ATT / f"s{i}" / f"{j}.pgm", f"s{i}") for i in range(31, 41) for j in range(2, 11)]
    unknown = [ATT / f"s{i}" / f"{j}.pgm" for i in range(21, 31) for j in range(1, 11)]
    return gallery, known, unknown


def _tally(top: list[str], accepted: list[bool], truth: list[str | None]) -> dict:
    """Confusion counts of open-set answers; ``truth`` None marks an unknown query."""
    c = dict.fromkeys(("correct", "wrong", "k_rejected", "u_rejected", "u_accepted", "top1"), 0)
    for label, ok, want in zip(top, accepted, truth, strict=True):
        if want is None:
            c["u_rejected" if not ok else "u_accepted"] += 1
            continue
        c["top1"] += int(label == want)
        if not ok:
            c["k_rejected"] += 1
        else:
            c["correct" if label == want else "wrong"] += 1
    n_known = sum(t is not None for t in truth)
    c["rank1"] = c["top1"] / n_known
    c["reject"] = c["u_rejected"] / (len(truth) - n_known)
    c["open_acc"] = (c["correct"] + c["u_rejected"]) / len(truth)
    return c


def raw_pixel_answers(spec, gallery: Path, queries: list[Path]) -> tuple[list[str], list[bool]]:
    """Best class and accept/reject of each query by the raw-pixel cosine.

    The threshold is calibrated, as in bench/verification.py, on pairs of the model's own
    calibration classes (part of s1-s30), never on the test people.
    """
    from twinnet.core.calibration import fit_calibration
    from twinnet.core.imaging import build_transforms, decode_image
    from twinnet.data.items import check_images, draw_pairs, scan_folder

    pre = build_transforms(spec)

    def embed(files) -> np.ndarray:
        x = np.stack([pre.to_unit_tensor(decode_image(f)).numpy().ravel() for f in files])
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    calib = spec.split.get("calibration_classes") or spec.split.get("valid_classes") or []
    items, _ = check_images(scan_folder(ATT))
    keep = [i for i, lab in enumerate(items.labels) if items.classes[lab] in set(calib)]
    cal_items = items.subset(keep)
    emb = embed(cal_items.files)
    drawn = draw_pairs(cal_items.labels, 2000, np.random.default_rng([0, 13]), swap=True)
    cos = np.einsum("nd,nd->n", emb[drawn[:, 0]], emb[drawn[:, 1]])
    cal = fit_calibration(drawn[:, 2].astype(bool), cos, "accuracy", method="raw pixels")
    g_items, _ = check_images(scan_folder(gallery))
    g_emb = embed(g_items.files)
    g_labels = np.array([g_items.classes[c] for c in g_items.labels])
    sims = embed(queries) @ g_emb.T
    best = sims.argmax(axis=1)
    top = [str(g_labels[b]) for b in best]
    accepted = [bool(s[b] >= cal.score_threshold) for s, b in zip(sims, best, strict=True)]
    return top, accepted


def with_gallery_calibration(model_dir: Path, work: Path) -> Path:
    """``model_dir``, or a recalibrated copy when its calibration records no impostor tail.

    Older models know only their pair threshold; ``twinnet calibrate`` on the model's own
    calibration classes (part of s1-s30, never the test people) records the tail from which
    the index raises the threshold with the gallery's size.
    """
    from twinnet.core.spec import ModelSpec
    from twinnet.evaluate.calibrate import recalibrate

    spec = ModelSpec.load(model_dir)
    if (spec.calibration or {}).get("impostor_tail"):
        return model_dir
    calib = spec.split.get("calibration_classes") or []
    if not calib:
        raise SystemExit(f"{model_dir} records no calibration classes; retrain it")
    copy = work / "model"
    shutil.copytree(model_dir, copy)
    from verification import copy_classes

    data = copy_classes(ATT, work / "calibration", calib)
    with contextlib.redirect_stdout(io.StringIO()):
        recalibrate(copy, data)
    return copy


def identification(model_dir: Path, work: Path) -> tuple[list[dict], dict]:
    """Rows of the identification table: the model through the index, and raw pixels."""
    from twinnet.index import GalleryIndex
    from twinnet.infer.twin import Twin

    gallery, known, unknown = att_split(work)
    queries = [p for p, _ in known] + unknown
    truth: list[str | None] = [lab for _, lab in known] + [None] * len(unknown)
    twin = Twin.load(with_gallery_calibration(model_dir, work), device="cpu")
    build_s, index = _timed(lambda: GalleryIndex.build(twin, gallery, work / "att-index"))
    ident_s, results = _timed(lambda: index.identify(queries, top_k=5))
    top = [r.matches[0].label for r in results]
    name = f"cosine model ({twin.spec.arch}, {twin.spec.image_size} px), index"
    pair = [r.matches[0].probability >= twin.spec.threshold for r in results]
    rows = [
        {
            "model": f"{name}, identification threshold for {len(index)} images",
            **_tally(top, [r.known for r in results], truth),
        },
        {"model": f"{name}, pair threshold", **_tally(top, pair, truth)},
    ]
    rows.append(
        {"model": "raw pixels", **_tally(*raw_pixel_answers(twin.spec, gallery, queries), truth)}
    )
    info = {
        "gallery": len(index),
        "classes": len(index.labels()),
        "kind": index.info["kind"],
        "threshold": twin.spec.threshold,
        "gallery_threshold": index.info["threshold"],
        "known": len(known),
        "unknown": len(unknown),
        "build_s": build_s,
        "identify_ms": ident_s / len(queries) * 1000,
        "recipe": twin.spec.recipe,
        "dim": twin.spec.embedding_dim,
    }
    return rows, info


def print_identification(
    rows: list[dict], info: dict, trained_s: float | None, model: Path
) -> None:
    r = info["recipe"]
    how = f"trained here in {trained_s:.0f} s" if trained_s is not None else f"--model {model}"
    print(
        f"\n### 1. Identification of unseen AT&T faces\n\nmodel: {how}; recipe {r.get('arch')} "
        f"{r.get('size')} px, {r.get('epochs')} epochs, lr {r.get('lr')}, bs {r.get('bs')}, "
        f"split {r.get('split')} (valid {r.get('valid_pct')}), seed {r.get('seed')}; "
        f"threshold: pair {info['threshold']:.3f}, identification against the gallery "
        f"{info['gallery_threshold']:.3f}"
    )
    print(
        f"gallery: {info['gallery']} images of {info['classes']} people (photo 1 of s31-s40, all "
        f"of s1-s20), index kind {info['kind']}, built in {info['build_s']:.1f} s; queries: "
        f"{info['known']} known (s31-s40, photos 2-10), {info['unknown']} unknown (s21-s30); "
        f"identify {info['identify_ms']:.1f} ms/query (encoder included)\n"
    )
    print(
        "| model | rank-1 (known) | rejection (unknown) | open-set acc | known→correct "
        "| known→wrong label | known→rejected | unknown→rejected | unknown→accepted |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for x in rows:
        print(
            f"| {x['model']} | {x['rank1']:.3f} | {x['reject']:.3f} | {x['open_acc']:.3f} | "
            f"{x['correct']} | {x['wrong']} | {x['k_rejected']} | {x['u_rejected']} | "
            f"{x['u_accepted']} |"
        )
    m, b = rows[0], rows[-1]
    print(
        f"\nrank-1 {m['rank1']:.3f} (target >= {TARGET_RANK1}: {_ok(m['rank1'], TARGET_RANK1)}); "
        f"rejection {m['reject']:.3f} (target >= {TARGET_REJECT}: "
        f"{_ok(m['reject'], TARGET_REJECT)}); vs raw pixels: rank-1 x{m['rank1'] / max(b['rank1'], 1e-9):.2f}, "
        f"open-set accuracy x{m['open_acc'] / max(b['open_acc'], 1e-9):.2f}"
    )


# ------------------------------------------------------------------ 2. scale


def clustered(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors around random ``centres``, made in chunks to bound memory."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centres[rng.integers(0, len(centres), m)]
        x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(SPREAD / np.sqrt(dim))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _centres(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    c = rng.standard_normal((max(1, n // PER_CENTRE), dim), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def _latency(search: Callable[[np.ndarray], object], queries: np.ndarray) -> tuple[float, float]:
    """p50 seconds of single-query searches with faiss's default threads, and with one.

    The two alternate query by query, so background load falls on both alike.
    """
    import faiss

    default = faiss.omp_get_max_threads()
    search(queries[:1])
    times: dict[int, list[float]] = {default: [], 1: []}
    try:
        for q in queries:
            for threads, ts in times.items():
                faiss.omp_set_num_threads(threads)
                t0 = time.perf_counter()
                search(q[None])
                ts.append(time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(default)
    return statistics.median(times[default]), statistics.median(times[1])


def round_robin(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call, timed in interleaved rounds so load falls on each alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def resnet50_twin(work: Path):
    """A resnet50 cosine model at 224 px with seeded random weights (speed needs no training)."""
    import torch

    from twinnet.core.artifacts import save_model_dir
    from twinnet.core.model import build_model
    from twinnet.core.spec import ModelSpec
    from twinnet.infer.twin import Twin

    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet50", image_size=224, head="cosine")
    model_dir = save_model_dir(build_model(spec).eval(), spec, work / "resnet50")
    return Twin.load(model_dir, device="cpu")


def photo_pairs() -> list[tuple[bytes, bytes]]:
    """Pairs of ~1024x768 JPEGs: the shared samples, or generated photos without them."""
    photos = [p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))] if SAMPLES.is_dir() else []
    rng = np.random.default_rng(1)
    while len(photos) < 8:
        photos.append(_jpeg(rng, (1024, 768)))
    return [(photos[2 * i], photos[2 * i + 1]) for i in range(len(photos) // 2)]


def _jpeg(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    from PIL import Image

    low = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(low).resize(size, Image.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def scale(sizes: list[int], dim: int, extra: dict, twin50, rounds: int) -> None:
    """Build, time and measure each kind at each size; print each row as it is measured."""
    import faiss

    from twinnet.index import vectors as V

    pairs = itertools.cycle(photo_pairs())
    alone = round_robin({"compare": lambda: _fresh_compare(twin50, pairs)}, rounds)["compare"]
    _print_scale_header(dim)
    versus, flat_one = {}, 0.0
    for n in sizes:
        rng = np.random.default_rng([7, n])
        centres = _centres(n, dim, rng)
        x = clustered(n, dim, centres, rng)
        queries = clustered(QUERIES, dim, centres, rng)
        ids = np.arange(n, dtype=np.int64)
        variants = [("flat", {}), ("ivf", {}), ("hnsw", {})] + ([("hnsw", extra)] if extra else [])
        auto = V.choose_kind("auto", n)[0]
        truth, flat_p50 = None, 1.0
        for kind, given in variants:
            print(f"[scale] {n:,} {kind} {given or ''} ...", file=sys.stderr, flush=True)
            params = dict(given)
            t0 = time.perf_counter()
            index, recorded, n_q = V.create(kind, x, ids, params)
            build_s = time.perf_counter() - t0
            size = len(faiss.serialize_index(index))
            p50, p50_one = _latency(
                lambda q, k=kind, p=params, i=index: V.search(i, k, p, q, 10), queries
            )
            found = V.search(index, kind, params, queries, 10)[1]
            if truth is None:
                truth, flat_p50 = found, p50
            label = kind + (" (auto)" if kind == auto and not given else "")
            label += "".join(f", {k} {v}" for k, v in given.items())
            _print_scale_row(
                {
                    "n": n, "kind": label, "build_s": build_s, "mb": size / 1e6,
                    "p50_ms": p50 * 1e3, "p50_one_ms": p50_one * 1e3, "speedup": flat_p50 / p50,
                    "recorded": recorded, "n_q": n_q, "recall": V._recall(found, truth),
                    "params": {k: v for k, v in params.items() if k not in given},
                }
            )  # fmt: skip
            if kind == "flat" and n == sizes[-1]:
                versus = flat_versus_compare(index, queries, twin50, pairs, rounds)
                flat_one = p50_one
            del index
        del x
    _print_versus(sizes[-1], versus, alone, flat_one, twin50)


def _fresh_compare(twin50, pairs: Iterator[tuple[bytes, bytes]]) -> None:
    """One compare of the next pair, as if never seen: the cache is emptied first."""
    twin50.cache.clear()
    twin50.compare(*next(pairs))


def flat_versus_compare(index, queries, twin50, pairs, rounds: int) -> dict:
    """Median seconds of one exact top-10 query and of one fresh compare, interleaved."""
    from twinnet.index import vectors as V

    cycle = {"q": 0}

    def query() -> None:
        cycle["q"] = (cycle["q"] + 1) % len(queries)
        V.search(index, "flat", {}, queries[cycle["q"]][None], 10)

    return round_robin({"query": query, "compare": lambda: _fresh_compare(twin50, pairs)}, rounds)


def _print_scale_header(dim: int) -> None:
    print(
        f"\n### 2. Search at scale\n\nsynthetic clustered unit vectors, d={dim}: one centre per "
        f"{PER_CENTRE} vectors, normalise(centre + {SPREAD} * N(0, I/d)); {QUERIES} new queries "
        "around existing centres; recall@10 against flat; 'at build' is what the index "
        "recorded on its held-out sample; p50 of single top-10 queries, with faiss's default "
        "threads and with one\n"
    )
    print(
        "| N | kind | tuned | build s | index MB | p50 ms | p50 ms, 1 thread | x flat speed "
        "| recall@10 at build | recall@10 new queries |\n"
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )


def _print_scale_row(r: dict) -> None:
    tuned = ", ".join(f"{k} {v}" for k, v in r["params"].items()) or "-"
    rec = "-" if r["recorded"] is None else f"{r['recorded']:.3f} ({r['n_q']})"
    mark = "" if r["kind"].startswith("flat") else (" ✓" if r["recall"] >= 0.95 else " ✗")
    print(
        f"| {r['n']:,} | {r['kind']} | {tuned} | {r['build_s']:.1f} | {r['mb']:.0f} | "
        f"{r['p50_ms']:.3f} | {r['p50_one_ms']:.3f} | {r['speedup']:.1f} | {rec} | "
        f"{r['recall']:.3f}{mark} |",
        flush=True,
    )


def _print_versus(n: int, versus: dict, alone: float, flat_one: float, twin50) -> None:
    q, c = versus["query"], versus["compare"]
    what = f"{twin50.spec.arch}, {twin50.spec.image_size} px, {twin50.precision}"
    print(
        f"| - | Twin.compare, fresh pair ({what}), before any index | - | - | - | "
        f"{alone * 1e3:.1f} | - | - | - | - |"
    )
    print(
        f"| - | Twin.compare, fresh pair, interleaved with flat {n:,} queries | - | - | - | "
        f"{c * 1e3:.1f} | - | - | - | - |"
    )
    print(
        f"\nflat {n:,} query / fresh compare, interleaved ({ROUNDS} rounds, medians): "
        f"{q * 1e3:.2f} ms / {c * 1e3:.1f} ms = {q / c:.3f} (goal < 1: {'PASS' if q < c else 'FAIL'})"
    )
    print(
        f"flat {n:,} p50 with one faiss thread / compare before any index: "
        f"{flat_one * 1e3:.2f} ms / {alone * 1e3:.1f} ms = {flat_one / alone:.3f}"
    )
    print("recall@10 target of the approximate kinds: >= 0.95 (✓ met, ✗ not met)")


# ------------------------------------------------------------------ 3. incremental add


def write_images(
    folder: Path, classes: int, per_class: int, rng: np.random.Generator
) -> list[Path]:
    files = []
    for c in range(classes):
        (folder / f"c{c:02d}").mkdir(parents=True)
        for j in range(per_class):
            f = folder / f"c{c:02d}" / f"{j}.jpg"
            f.write_bytes(_jpeg(rng, (640, 480)))
            files.append(f)
    return files


def add_rows(twin50, work: Path, n: int, batch: int, rounds: int) -> dict:
    """Seconds of the first build, each add, encoding each batch alone, and a full rebuild."""
    from twinnet.index import GalleryIndex

    rng = np.random.default_rng(3)
    gallery = work / "add-gallery"
    write_images(gallery, n // 10, 10, rng)
    more = []
    for r in range(rounds):
        folder = work / f"add-more-{r}"
        more.append((folder, write_images(folder, batch // 10, 10, rng)))
    twin50.cache.clear()
    build_s, index = _timed(lambda: GalleryIndex.build(twin50, gallery, work / "add-index"))
    encode, add = [], []
    for folder, files in more:
        twin50.cache.clear()
        encode.append(_timed(lambda f=files: twin50.embed([str(p) for p in f]))[0])
        twin50.cache.clear()
        s, update = _timed(lambda d=folder: index.add(d))
        assert update.added == len(files), update
        add.append(s)
    everything = work / "add-all"
    shutil.copytree(gallery, everything)
    for r, (folder, _) in enumerate(more):
        for sub in folder.iterdir():
            shutil.copytree(sub, everything / f"{r}-{sub.name}")
    twin50.cache.clear()
    rebuild_s, again = _timed(lambda: GalleryIndex.build(twin50, everything, work / "add-again"))
    return {
        "n": n, "batch": batch, "rounds": rounds, "build_s": build_s,
        "encode_s": statistics.median(encode), "add_s": statistics.median(add),
        "total": len(again), "rebuild_s": rebuild_s, "kind": index.info["kind"],
    }  # fmt: skip


def print_add(a: dict, twin50) -> None:
    print(
        f"\n### 3. Incremental add\n\n{twin50!r}; generated 640x480 JPEGs; index kind "
        f"{a['kind']}; adds and encodes: medians of {a['rounds']} batches of {a['batch']} new "
        "images, each with an empty cache\n"
    )
    print("| step | images | s | ms/image | x encode alone |\n|---|---:|---:|---:|---:|")
    steps = [
        ("encode alone (Twin.embed)", a["batch"], a["encode_s"]),
        ("index add", a["batch"], a["add_s"]),
        ("first build", a["n"], a["build_s"]),
        ("full rebuild instead of the adds", a["total"], a["rebuild_s"]),
    ]
    for name, k, s in steps:
        print(f"| {name} | {k} | {s:.2f} | {s / k * 1e3:.1f} | {s / a['encode_s']:.2f} |")
    print(
        f"\nadd / encode alone: {a['add_s'] / a['encode_s']:.2f} (goal ≈ 1); add / first build: "
        f"{a['add_s'] / a['build_s']:.2f}; add / full rebuild: {a['add_s'] / a['rebuild_s']:.2f}"
    )


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes up to 100k, smaller runs")
    parser.add_argument("--model", metavar="DIR", help="a trained AT&T cosine model: no training")
    parser.add_argument("--only", default="att,scale,add", help="comma-separated parts")
    parser.add_argument("--sizes", help="comma-separated vector counts (default 10k,100k,1M)")
    parser.add_argument(
        "--hnsw",
        default="32,40",
        metavar="M,EFC",
        help="HNSW M and efConstruction of an extra row beside the library's; 'none': no row",
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.only.split(",")}
    if args.sizes:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
    else:
        sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    hnsw_extra = {}
    if args.hnsw != "none":
        m, efc = (int(v) for v in args.hnsw.split(","))
        hnsw_extra = {"m": m, "ef_construction": efc}
    import faiss
    import torch

    print(
        f"CPU: {torch.get_num_threads()} torch threads, {faiss.omp_get_max_threads()} faiss "
        f"threads; faiss {faiss.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="twinnet-index-bench-") as tmp:
        work = Path(tmp)
        dim = 128
        if "att" in parts:
            trained_s = None
            if args.model:
                model_dir = Path(args.model)
            else:
                model_dir, trained_s = train_att(work, args.quick)
            rows, info = identification(model_dir, work)
            dim = info["dim"]
            print_identification(rows, info, trained_s, model_dir)
        twin50 = resnet50_twin(work) if parts & {"scale", "add"} else None
        if "scale" in parts:
            scale(sizes, dim, hnsw_extra, twin50, ROUNDS)
        if "add" in parts:
            n, batch, rounds = (100, 20, 2) if args.quick else (400, 100, 3)
            print_add(add_rows(twin50, work, n, batch, rounds), twin50)
    return 0


if __name__ == "__main__":
    sys.exit(main())
