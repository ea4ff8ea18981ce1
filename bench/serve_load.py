"""Closed-loop load against real TorchServe servers: this project's archive vs a naive one.

Starts each server itself (loopback, token auth on), sends real ~1024x768 JPEG pairs from
N client threads that each wait for their answer before sending the next (closed loop), and
prints pairs/s and p50/p99 latency per concurrency, plus the cold start (seconds from
launching TorchServe to the first answer).

Configurations compared in the same run:

* ``tuned`` — ``twinnet archive`` defaults: batch size 8, 10 ms batch delay, one worker per
  CPU with one torch thread each (threads = CPUs / workers), bf16 encoder where the CPU
  has it;
* ``naive`` — batch size 1, fp32, TorchServe's default workers (one per core) and threads
  (torch's default: all cores, in every worker).

Workloads, because the embedding cache makes a repeated image almost free:

* ``repeat`` — pairs drawn from four photos (a gallery compared again and again: every image
  is encoded once, then served from the cache);
* ``verify`` — one of four enrolled photos against a photo never seen before (one encoder
  pass per pair: verification against a reference);
* ``unique`` — two never-seen photos per pair (two encoder passes per pair: the FLOP-bound
  worst case). A never-seen photo is a sample photo with a numbered JPEG comment: its bytes
  (the cache key) are new, so the server decodes and encodes it in full.

Run (about 10 minutes on 2 cores)::

    python bench/serve_load.py                      # resnet50 at 224 px, random seeded weights
    python bench/serve_load.py --duration 10 --workloads repeat unique --configs tuned
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from twinnet.protocol import encode_multipart
from twinnet.serve.archive import build_archive, usable_cpus
from twinnet.serve.server import read_keys, start, stop

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "samples"
WORKLOADS = ("repeat", "verify", "unique")
CONFIGS = ("tuned", "naive")


@dataclass
class Stats:
    """One (config, workload, concurrency) cell."""

    config: str
    workload: str
    concurrency: int
    pairs: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    reused: int = 0

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    @property
    def mean_batch(self) -> float:
        return statistics.fmean(self.batches) if self.batches else float("nan")


# ---------------------------------------------------------------------------- inputs
def base_photos() -> list[bytes]:
    """The four CC0 cat photos beside the project (about 1024x768), or generated ones."""
    if SAMPLES.is_dir() and len(list(SAMPLES.glob("c*.jpg"))) >= 4:
        return [(SAMPLES / f"c{i}.jpg").read_bytes() for i in range(1, 5)]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(4):
        yy, xx = np.mgrid[0:768, 0:1024]
        arr = np.stack([(xx * rng.uniform(0.1, 0.3) + yy * rng.uniform(0.1, 0.3)) % 255] * 3, -1)
        arr = (arr + rng.normal(0, 20, arr.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def unique_photos(bases: list[bytes], n: int) -> list[bytes]:
    """``n`` JPEGs with distinct bytes and the bases' pixels.

    A JPEG comment segment (``FF FE``) holding the index goes right after the start-of-image
    marker: the server must still decode and encode every one of them (the cache keys on the
    bytes), while building them costs the client nothing during the run.
    """
    out = []
    for i in range(n):
        base = bases[i % len(bases)]
        if base[:2] != b"\xff\xd8":
            raise ValueError("unique_photos needs JPEG bases")
        payload = f"twinnet-bench {i}".encode()
        segment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
        out.append(base[:2] + segment + base[2:])
    return out


class UniquePool:
    """Never-seen photos handed out once each (a wrap-around is counted as ``reused``)."""

    def __init__(self, images: list[bytes]) -> None:
        self.images = images
        self.lock = threading.Lock()
        self.index = 0
        self.reused = 0

    def take(self) -> bytes:
        with self.lock:
            if self.index >= len(self.images):
                self.reused += 1
            img = self.images[self.index % len(self.images)]
            self.index += 1
            return img


class PairSource:
    """Thread-safe supply of multipart bodies for one workload."""

    def __init__(self, workload: str, bases: list[bytes], pool: UniquePool) -> None:
        self.workload = workload
        self.bases = bases
        self.pool = pool
        self.lock = threading.Lock()
        self.count = 0
        self.pairs = [(a, b) for a in range(len(bases)) for b in range(len(bases)) if a != b]

    def body(self) -> tuple[bytes, str]:
        with self.lock:
            n = self.count
            self.count += 1
        if self.workload == "repeat":
            a, b = self.pairs[n % len(self.pairs)]
            left, right = self.bases[a], self.bases[b]
        elif self.workload == "verify":
            left, right = self.bases[n % len(self.bases)], self.pool.take()
        else:
            left, right = self.pool.take(), self.pool.take()
        return encode_multipart(left, right, cam=False)


# ---------------------------------------------------------------------------- load
def closed_loop(
    url: str, token: str, source: PairSource, concurrency: int, duration: float, stats: Stats
) -> None:
    """``concurrency`` threads, each sending its next request as soon as it has an answer."""
    stop_at = time.perf_counter() + duration
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)
    reused_before = source.pool.reused

    def client() -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {token}"}
        barrier.wait()
        while True:
            body, ctype = source.body()
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            try:
                resp = session.post(
                    url, data=body, headers={**headers, "Content-Type": ctype}, timeout=120
                )
                ok = resp.status_code == 200
                batch = int(resp.headers.get("X-Twinnet-Batch-Size", 0))
            except requests.RequestException:
                ok, batch = False, 0
            t1 = time.perf_counter()
            with lock:
                if t1 <= stop_at:  # count only answers inside the window
                    if ok:
                        stats.pairs += 1
                        stats.latencies.append(t1 - t0)
                        stats.batches.append(batch)
                    else:
                        stats.errors += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start_t = time.perf_counter()
    for t in threads:
        t.join()
    stats.seconds = min(time.perf_counter(), stop_at) - start_t
    stats.reused = source.pool.reused - reused_before


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def make_model(root: Path, arch: str, size: int) -> Path:
    import torch

    from twinnet.artifacts import save_model_dir
    from twinnet.model import build_model
    from twinnet.spec import ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, image_size=size)
    return save_model_dir(build_model(spec).eval(), spec, root / f"{arch}-{size}")


def archive_for(config: str, model_dir: Path, store: Path, args: argparse.Namespace) -> Path:
    if config == "tuned":
        return build_archive(
            model_dir, store, batch_size=args.batch_size, max_batch_delay=args.max_batch_delay,
            workers=args.workers, threads=args.threads,
        )  # fmt: skip
    return build_archive(
        model_dir, store, batch_size=1, max_batch_delay=0, precision="fp32", plan="torchserve"
    )


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--model", type=Path, help="a model directory (default: random seeded weights)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--duration", type=float, default=20.0, help="seconds per cell")
    p.add_argument("--warmup", type=int, default=4, help="untimed requests per cell")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batch-delay", type=int, default=10)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--threads", default="auto")
    p.add_argument("--unique", type=int, default=20000, help="never-seen photos per configuration")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    # SIGTERM (and SIGINT, which shells ignore in background jobs) must still stop the servers.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    if args.threads != "auto":
        args.threads = int(args.threads)

    print(
        f"# serve_load: {args.arch}@{args.size}, {usable_cpus()} CPUs, load average {load_avg()}",
        flush=True,
    )
    bases = base_photos()
    sizes = {Image.open(io.BytesIO(b)).size for b in bases}
    print(
        f"# photos: {len(bases)} bases {sorted(sizes)}, generating {args.unique} unique ...",
        flush=True,
    )
    # Each configuration gets a fresh server (an empty cache), so both reuse one pool.
    pool_images = unique_photos(bases, args.unique)
    results: list[Stats] = []
    cold: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="twinnet-bench-") as tmp:
        root = Path(tmp)
        model_dir = args.model or make_model(root, args.arch, args.size)
        for config in args.configs:
            store = root / f"store-{config}"
            archive_for(config, model_dir, store, args)
            port, mport, metport = free_ports(3)
            state = root / f"state-{config}"
            t0 = time.perf_counter()
            info = start(
                store,
                port=port,
                management_port=mport,
                metrics_port=metport,
                root=state,
                timeout=600,
            )
            try:
                token = read_keys(info.key_file)["inference"]
                url = f"{info.inference_url}/predictions/twin"
                body, ctype = encode_multipart(bases[0], bases[1])
                first = requests.post(
                    url,
                    data=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
                    timeout=300,
                )
                cold[config] = time.perf_counter() - t0
                assert first.status_code == 200, first.text
                print(
                    f"# {config}: cold start {cold[config]:.1f} s (launch to first answer)",
                    flush=True,
                )
                pool = UniquePool(pool_images)
                for workload in args.workloads:
                    src = PairSource(workload, bases, pool)
                    for conc in args.concurrency:
                        for _ in range(args.warmup):
                            b, c = src.body()
                            requests.post(
                                url,
                                data=b,
                                headers={"Authorization": f"Bearer {token}", "Content-Type": c},
                                timeout=300,
                            )
                        stats = Stats(config, workload, conc)
                        closed_loop(url, token, src, conc, args.duration, stats)
                        results.append(stats)
                        print(
                            f"  {config:6} {workload:7} c={conc:<3} {stats.rate:6.2f} pairs/s  p50 {stats.pct(0.5):6.3f} s"
                            f"  p99 {stats.pct(0.99):6.3f} s  batch {stats.mean_batch:4.1f}  n={stats.pairs}"
                            f" err={stats.errors} reused={stats.reused}  load {load_avg()}",
                            flush=True,
                        )
            finally:
                stop(root=state)
    print_table(results, cold, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cold_start_s": cold,
                    "cells": [
                        {
                            "config": s.config,
                            "workload": s.workload,
                            "concurrency": s.concurrency,
                            "pairs_per_s": s.rate,
                            "p50_s": s.pct(0.5),
                            "p99_s": s.pct(0.99),
                            "mean_batch": s.mean_batch,
                            "n": s.pairs,
                            "errors": s.errors,
                            "reused": s.reused,
                        }
                        for s in results
                    ],
                },  # fmt: skip
                indent=2,
            )
        )
    return 0


def print_table(results: list[Stats], cold: dict[str, float], args: argparse.Namespace) -> None:
    print()
    print(
        f"resnet: {args.arch} at {args.size} px, {usable_cpus()} CPUs, {args.duration:.0f} s per cell, load average now {load_avg()}"
    )
    print()
    print(
        "| config | workload | clients | pairs/s | p50 (s) | p99 (s) | mean batch | answers | errors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in results:
        print(
            f"| {s.config} | {s.workload} | {s.concurrency} | {s.rate:.2f} | {s.pct(0.5):.3f} | {s.pct(0.99):.3f} "
            f"| {s.mean_batch:.1f} | {s.pairs} | {s.errors}{f' ({s.reused} reused photos)' if s.reused else ''} |"
        )
    print()
    for config, secs in cold.items():
        print(
            f"- cold start ({config}): {secs:.1f} s from launching TorchServe to the first answer"
        )
    by = {(s.config, s.workload, s.concurrency): s for s in results}
    for config in dict.fromkeys(s.config for s in results):
        for workload in dict.fromkeys(s.workload for s in results):
            lo, hi = by.get((config, workload, 1)), by.get((config, workload, 16))
            if lo and hi and lo.rate:
                print(
                    f"- {config}/{workload}: throughput at 16 clients = {hi.rate / lo.rate:.0%} of 1 client"
                )
    for workload in dict.fromkeys(s.workload for s in results):
        for conc in dict.fromkeys(s.concurrency for s in results):
            t, n = by.get(("tuned", workload, conc)), by.get(("naive", workload, conc))
            if t and n and n.rate:
                print(f"- {workload}, {conc} clients: tuned / naive = {t.rate / n.rate:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
