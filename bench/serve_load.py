"""Closed-loop load against real servers: TorchServe and Ray Serve, tuned options vs a naive archive.

Starts each server itself (loopback, token auth on), sends real ~1024x768 JPEG pairs from
N client threads that each wait for their answer before sending the next (closed loop), and
prints pairs/s and p50/p99 latency per engine, configuration, workload and concurrency, the
cold start (seconds from launching the server to the first answer) and the resident memory
of each engine, then ratios against the baselines measured in the same run.

The engines take turns by workload, in alternating order (A then B for the first workload,
B then A for the next, ...), each turn on a server started afresh and stopped after it, so
that a drift in the load of a shared machine falls on every engine alike, and no idle server
takes CPU from the one measured (an idle Ray instance uses about 0.1 CPU-second per second).
The cold start shown is the median of an engine's turns; the memory, the most of them.

Engines (``--engines``), on the same model and the same photos:

* ``torchserve`` — ``twinnet serve`` (the serve stage's TorchServe launcher);
* ``ray`` — ``twinnet serve --engine ray`` (Ray Serve on a Ray instance of its own), with
  the ``tuned`` options only: ``naive`` is TorchServe's own default plan.

Configurations (``--configs``):

* ``tuned`` — ``twinnet archive`` defaults: batch size 8, 10 ms batch delay, one worker (or
  replica) per CPU with one torch thread each (threads = CPUs / workers), precision ``auto``:
  the int8 encoder that ``twinnet quantize`` added to the model (calibrated on 128 pet photos)
  where the CPU has VNNI, else bf16 where the CPU has it;
* ``bf16`` — the same with ``--precision bf16``: the float fast path;
* ``naive`` — batch size 1, fp32, TorchServe's default workers (one per core) and threads
  (torch's default: all cores, in every worker).

Workloads, because the embedding cache makes a repeated image almost free:

* ``repeat`` — pairs drawn from four photos (a gallery compared again and again: every image
  is encoded once, then served from the cache);
* ``verify`` — one of four enrolled photos against a photo never seen before (one encoder
  pass per pair: verification against a reference);
* ``unique`` — two never-seen photos per pair (two encoder passes per pair: the FLOP-bound
  worst case). A never-seen photo is a sample photo with a numbered JPEG comment: its bytes
  (the cache key) are new, so the server decodes and encodes it in full. No photo is sent
  twice in a run, so no answer comes from a cache.

Memory: the sum of RSS (and of PSS, which counts shared pages once) over the server's
processes (its whole session: TorchServe's launcher, JVM and workers; Ray's driver, GCS,
raylet, agents, Serve's controller and proxy and the replicas), idle after the first answer
and again after the load.

Ray / TorchServe ratios (tuned) per workload and concurrency; the targets, on ``unique``:
throughput at 16 clients at least 1.0x, p99 latency at 4 clients at most 1.2x. Each
``unique`` rate is also shown as a fraction of the bf16 floor: this CPU's bf16 3x3
convolution rate (measured at the start) divided by a resnet50 pair's 16.4 GFLOP.

Scale-out (with ``ray`` among the engines; ``--no-scale-out`` skips it): a Ray cluster of a
head and one more node on this machine (``ray.cluster_utils.Cluster``, loopback, half the
CPUs each), the model served there with ``--address`` and 2 replicas of one CPU each, so one
lands on each node (the table shows each replica's node). Four clients send ``unique`` pairs;
one replica's process is killed (SIGKILL) and the run reports the seconds until a
replacement replica is RUNNING and until the answer rate is back to 90% of its rate before
the kill, with the errors in between.

Run (about 15 minutes on 2 cores)::

    python bench/serve_load.py                      # resnet50 at 224 px, random seeded weights
    python bench/serve_load.py --quick              # unique photos, tuned, 5 s per cell
    python bench/serve_load.py --engines torchserve,ray --clients 1,4,16 --requests 200
    python bench/serve_load.py --duration 10 --workloads repeat unique --configs tuned
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests
from PIL import Image

from twinnet.contract.encode import encode_multipart
from twinnet.engines.ray import server as ray_server
from twinnet.engines.server import read_keys, start, stop
from twinnet.engines.state import ServerInfo
from twinnet.engines.torchserve.archive import ServeOptions, build_archive, usable_cpus
from twinnet.errors import TwinnetError

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "samples"
PETS = SAMPLES.with_name("oxford-pets-sample")
WORKLOADS = ("repeat", "verify", "unique")
CONFIGS = ("tuned", "bf16", "naive")
ENGINES = ("torchserve", "ray")
#: Targets for Ray Serve against TorchServe (tuned, ``unique``).
TARGET_RATE_16 = 1.0
TARGET_P99_4 = 1.2
REPLICA = "ray::ServeReplica:twin:TwinDeployment"
MIB = 2**20


@dataclass
class Stats:
    """One (engine, config, workload, concurrency) cell."""

    engine: str
    config: str
    workload: str
    concurrency: int
    pairs: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per role, in the cell

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


@dataclass
class EngineRun:
    """Cold starts and memory of one (engine, config): each turn starts a server afresh; the
    memory is the most any of them held."""

    engine: str
    config: str
    cold_starts: list[float] = field(default_factory=list)
    processes: int = 0
    rss_idle_mib: float = 0.0
    pss_idle_mib: float = 0.0
    rss_load_mib: float = 0.0
    pss_load_mib: float = 0.0

    @property
    def cold_s(self) -> float:
        return statistics.median(self.cold_starts) if self.cold_starts else float("nan")


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


def unique_photo(bases: list[bytes], i: int) -> bytes:
    """Photo number ``i``: a base's pixels with bytes no other number has.

    A JPEG comment segment (``FF FE``) holding the number goes right after the start-of-image
    marker: the server must still decode and encode it (the cache keys on the bytes), while
    building it costs the client one copy.
    """
    base = bases[i % len(bases)]
    if base[:2] != b"\xff\xd8":
        raise ValueError("unique photos need JPEG bases")
    payload = f"twinnet-bench {i}".encode()
    return base[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + base[2:]


class UniquePool:
    """Never-seen photos, numbered for the whole run, so no photo is ever sent twice."""

    def __init__(self, bases: list[bytes]) -> None:
        self.bases = bases
        self.lock = threading.Lock()
        self.index = 0

    def take(self) -> bytes:
        with self.lock:
            i = self.index
            self.index += 1
        return unique_photo(self.bases, i)


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
def post(session: Any, url: str, token: str, body: bytes, ctype: str) -> tuple[bool, int]:
    """One request; ``(answered 200, batch size)``, never raises."""
    try:
        resp = session.post(
            url, data=body, timeout=120,
            headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
        )  # fmt: skip
        return resp.status_code == 200, int(resp.headers.get("X-Twinnet-Batch-Size", 0))
    except requests.RequestException:
        return False, 0


def closed_loop(
    url: str,
    token: str,
    source: PairSource,
    concurrency: int,
    duration: float,
    stats: Stats,
    limit: int | None = None,
) -> None:
    """``concurrency`` threads, each sending its next request as soon as it has an answer,
    for ``duration`` seconds (answers after it are not counted) or, with ``limit``, until
    ``limit`` requests have been sent and answered."""
    start_t = time.perf_counter()
    stop_at = start_t + duration if limit is None else float("inf")
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)
    tickets = iter(range(limit)) if limit is not None else None
    last = [start_t]

    def client() -> None:
        session = requests.Session()
        barrier.wait()
        while True:
            if tickets is not None:
                with lock:
                    if next(tickets, None) is None:
                        break
            body, ctype = source.body()
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            ok, batch = post(session, url, token, body, ctype)
            t1 = time.perf_counter()
            with lock:
                if t1 <= stop_at:  # count only answers inside the window
                    last[0] = max(last[0], t1)
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
    if limit is None:
        stop_at = start_t + duration
    for t in threads:
        t.join()
    stats.seconds = (min(time.perf_counter(), stop_at) if limit is None else last[0]) - start_t


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


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


# ---------------------------------------------------------------------------- servers
def make_model(root: Path, arch: str, size: int) -> Path:
    """Seeded random weights, with the int8 encoder of ``twinnet quantize`` (pet photos)."""
    import torch

    from twinnet.core.artifacts import save_model_dir
    from twinnet.core.model import build_model
    from twinnet.core.spec import ModelSpec
    from twinnet.infer.quantize import quantize_model

    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, image_size=size)
    model_dir = save_model_dir(build_model(spec).eval(), spec, root / f"{arch}-{size}")
    if PETS.is_dir():
        a = quantize_model(model_dir, PETS)["agreement"]
        print(f"# quantized: {a['pairs'] - a['changed_decisions']}/{a['pairs']} held-out "
              "decisions as fp32's", flush=True)  # fmt: skip
    return model_dir


def bf16_floor() -> float:
    """Pairs/s that this CPU's bf16 3x3 convolution rate allows a resnet50 pair (16.4 GFLOP)."""
    import torch

    from inference_speed import GFLOP_PAIR, flop_rates  # bench/ is on sys.path as a script

    _, conv = flop_rates(torch.bfloat16, 2.0)
    return conv / GFLOP_PAIR


def serve_options(config: str, args: argparse.Namespace) -> ServeOptions:
    if config in ("tuned", "bf16"):
        return ServeOptions(
            batch_size=args.batch_size, max_batch_delay=args.max_batch_delay,
            workers=args.workers, threads=args.threads,
            precision="auto" if config == "tuned" else "bf16",
        )  # fmt: skip
    return ServeOptions(batch_size=1, max_batch_delay=0, precision="fp32", plan="torchserve")


def start_server(
    engine: str, config: str, model_dir: Path, root: Path, args: argparse.Namespace
) -> ServerInfo:
    """Launch one server and return once it is ready (the archive is built before)."""
    if engine == "torchserve":
        port, mport, metport = free_ports(3)
        return start(
            root / f"store-{config}", port=port, management_port=mport, metrics_port=metport,
            root=root / f"state-{engine}-{config}", timeout=600,
        )  # fmt: skip
    return start_ray(
        model_dir, root=root / f"state-{engine}-{config}", name="twin",
        options=serve_options(config, args), timeout=600,
    )  # fmt: skip


def start_ray(model_dir: Path, **kwargs: Any) -> ServerInfo:
    """``twinnet serve --engine ray`` on a free port; a failed start is said and tried once more."""
    for attempt in (1, 2):
        (port,) = free_ports(1)
        try:
            return ray_server.start(model_dir, port=port, **kwargs)
        except TwinnetError as exc:
            if attempt == 2:
                raise
            print(f"# ray: start failed, trying once more: {str(exc).splitlines()[0]}", flush=True)
    raise AssertionError("unreachable")


def processes(info: ServerInfo) -> list[psutil.Process]:
    """The server's processes: its session (and, for Ray, every process naming its directory)."""
    if info.engine == "ray":
        return list(ray_server.server_processes(info))
    procs = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) == info.pid:
                procs.append(proc)
    return procs


def role(proc: psutil.Process) -> str:
    """What a server process does: the model (workers, replicas), HTTP, or the rest."""
    with contextlib.suppress(psutil.Error):
        cmd = " ".join(proc.cmdline())
        if "ServeReplica" in cmd or "model_service_worker" in cmd:
            return "model"
        if "ProxyActor" in cmd or "HAProxyManager" in cmd or proc.name() in ("java", "haproxy"):
            return "http"
    return "other"


def cpu_by_role(procs: list[psutil.Process]) -> dict[str, float]:
    """CPU seconds (user + system) used so far, per :func:`role`."""
    out = {"model": 0.0, "http": 0.0, "other": 0.0}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[role(proc)] += t.user + t.system
    return out


def memory(info: ServerInfo) -> tuple[int, float, float]:
    """``(processes, RSS MiB, PSS MiB)`` summed over the server's session (and, for Ray, every
    process naming its Ray directory)."""
    procs = processes(info)
    rss = pss = 0
    count = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            full = proc.memory_full_info()
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
            count += 1
    return count, rss / MIB, pss / MIB


@dataclass
class Server:
    """One running server and what its clients need."""

    run: EngineRun
    info: ServerInfo
    state: Path
    url: str = ""
    token: str = ""


def launch(
    run: EngineRun, model_dir: Path, root: Path, pool: UniquePool, args: argparse.Namespace
) -> Server:
    """Start one server; record its cold start (launch to first answer) and idle memory."""
    engine, config = run.engine, run.config
    if engine == "torchserve":
        build_archive(model_dir, root / f"store-{config}", options=serve_options(config, args))
    t0 = time.perf_counter()
    info = start_server(engine, config, model_dir, root, args)
    server = Server(run, info, root / f"state-{engine}-{config}")
    server.token = read_keys(info.key_file)["inference"]
    server.url = f"{info.inference_url}/predictions/twin"
    ok, _ = post(requests, server.url, server.token, *encode_multipart(pool.take(), pool.take()))
    cold = time.perf_counter() - t0
    if not ok:
        stop(root=server.state)
        raise RuntimeError(f"{engine}/{config}: the first request failed")
    run.cold_starts.append(cold)
    run.processes, rss, pss = memory(info)
    run.rss_idle_mib, run.pss_idle_mib = max(run.rss_idle_mib, rss), max(run.pss_idle_mib, pss)
    print(
        f"# {engine}/{config}: cold start {cold:.1f} s (launch to first answer), "
        f"{run.processes} processes, RSS {rss:.0f} MiB idle",
        flush=True,
    )
    return server


def run_turn(
    run: EngineRun,
    workload: str,
    model_dir: Path,
    root: Path,
    bases: list[bytes],
    pool: UniquePool,
    args: argparse.Namespace,
) -> list[Stats]:
    """One server, started for this turn: every concurrency of ``workload``, then its memory."""
    server = launch(run, model_dir, root, pool, args)
    results: list[Stats] = []
    try:
        session = requests.Session()
        src = PairSource(workload, bases, pool)
        for conc in args.clients:
            for _ in range(args.warmup):
                post(session, server.url, server.token, *src.body())
            stats = Stats(run.engine, run.config, workload, conc)
            procs = processes(server.info)
            before = cpu_by_role(procs)
            closed_loop(server.url, server.token, src, conc, args.duration, stats, args.requests)
            after = cpu_by_role(procs)
            stats.cpu = {k: after[k] - before[k] for k in after}
            results.append(stats)
            print(
                f"  {run.engine:10} {run.config:6} {workload:7} c={conc:<3} "
                f"{stats.rate:6.2f} pairs/s  p50 {stats.pct(0.5):6.3f} s  "
                f"p99 {stats.pct(0.99):6.3f} s  batch {stats.mean_batch:4.1f}  "
                f"n={stats.pairs} err={stats.errors}  load {load_avg()}",
                flush=True,
            )
        _, rss, pss = memory(server.info)
        run.rss_load_mib, run.pss_load_mib = max(run.rss_load_mib, rss), max(run.pss_load_mib, pss)
    finally:
        stop(root=server.state)
    return results


# ---------------------------------------------------------------------------- scale-out
def _replica_nodes(nodes: dict[int, str]) -> dict[int, str]:
    """``{replica pid: node id}`` of the cluster's replicas (``nodes``: raylet pid -> node id):
    a replica is a worker process of its node's raylet."""
    out = {}
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == REPLICA and proc.ppid() in nodes:
                out[proc.pid] = nodes[proc.ppid()]
    return out


def _running(serve: Any) -> int:
    with contextlib.suppress(Exception):
        app = serve.status().applications.get("twin")
        if app is not None:
            return sum(int(d.replica_states.get("RUNNING", 0)) for d in app.deployments.values())
    return 0


def _rate(events: list[tuple[float, bool]], end: float, window: float) -> float:
    return sum(1 for t, ok in events if ok and end - window < t <= end) / window


def scale_out(
    model_dir: Path, root: Path, bases: list[bytes], pool: UniquePool, args: argparse.Namespace
) -> dict[str, Any]:
    """Two Ray nodes on this machine, two replicas, one killed under load (see the docstring)."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    per_node = max(1, usable_cpus() // 2)
    ray_tmp = Path(tempfile.mkdtemp(prefix="twinnet-rc-", dir="/tmp"))
    node_args = {"num_cpus": per_node, "node_ip_address": "127.0.0.1"}
    t_cluster = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**node_args, "include_dashboard": False, "temp_dir": str(ray_tmp)},
    )
    out: dict[str, Any] = {"cpus_per_node": per_node}
    state = root / "state-scale-out"
    try:
        worker = cluster.add_node(**node_args)
        nodes = {
            n.all_processes["raylet"][0].process.pid: n.node_id for n in (cluster.head_node, worker)
        }
        out["nodes"] = {"head": cluster.head_node.node_id, "worker": worker.node_id}
        out["cluster_s"] = time.perf_counter() - t_cluster
        print(f"# scale-out: Ray cluster up, nodes {out['nodes']}", flush=True)
        t0 = time.perf_counter()
        options = serve_options("tuned", args)
        info = start_ray(
            model_dir, root=state, name="twin", options=options, replicas=2,
            address=cluster.address, timeout=600,
        )  # fmt: skip
        out["serve_s"] = time.perf_counter() - t0
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        before = _replica_nodes(nodes)
        out["replicas_before"] = {str(pid): node for pid, node in before.items()}
        print(f"# scale-out: served in {out['serve_s']:.1f} s, replicas {before}", flush=True)
        out.update(_kill_under_load(info, before, worker.node_id, nodes, serve, pool, bases, args))
    finally:
        with contextlib.suppress(Exception):
            stop(root=state)
        ray.shutdown()
        cluster.shutdown()
        left = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any(str(ray_tmp) in a for a in (p.info["cmdline"] or []))
        ]
        out["processes_left"] = len(left)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return out


def _kill_under_load(
    info: ServerInfo,
    before: dict[int, str],
    victim_node: str,
    nodes: dict[int, str],
    serve: Any,
    pool: UniquePool,
    bases: list[bytes],
    args: argparse.Namespace,
) -> dict[str, Any]:
    token = read_keys(info.key_file)["inference"]
    url = f"{info.inference_url}/predictions/twin"
    src = PairSource("unique", bases, pool)
    events: list[tuple[float, bool]] = []
    done = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        while not done.is_set():
            ok, _ = post(session, url, token, *src.body())
            with lock:
                events.append((time.perf_counter(), ok))

    clients = [threading.Thread(target=client, daemon=True) for _ in range(args.scale_clients)]
    for t in clients:
        t.start()
    time.sleep(args.scale_baseline + 2)  # 2 s to settle, then the baseline window
    t_kill = time.perf_counter()
    base_rate = _rate(events, t_kill, args.scale_baseline)
    on_node = [pid for pid, node in before.items() if node == victim_node]
    victim = (on_node or list(before))[0]
    victim_node = before[victim]
    os.kill(victim, signal.SIGKILL)
    print(f"# scale-out: killed replica {victim} at {base_rate:.2f} pairs/s", flush=True)
    t_running = t_back = None
    deadline = t_kill + args.scale_timeout
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        if t_running is None:
            fresh = set(_replica_nodes(nodes)) - set(before)
            if fresh and _running(serve) >= 2:
                t_running = now
                deadline = min(deadline, now + args.scale_settle)
        elif now - t_running >= 1.0 and _rate(events, now, args.scale_window) >= 0.9 * base_rate:
            t_back = now
            break
        time.sleep(0.2)
    t_end = time.perf_counter()
    time.sleep(2.0)
    done.set()
    for t in clients:
        t.join(150)
    after = _replica_nodes(nodes)
    recovered = t_back if t_back is not None else t_end
    during = [ok for t, ok in events if t_kill < t <= recovered]
    rates = [
        _rate(events, t_kill + k * 0.5, args.scale_window)
        for k in range(int(args.scale_window * 2), int((recovered - t_kill) * 2) + 1)
    ]
    return {
        "clients": args.scale_clients,
        "scale_window": args.scale_window,
        "timeout_s": args.scale_timeout,
        "settle_s": args.scale_settle,
        "killed": {"pid": victim, "node": victim_node},
        "replicas_after": {str(pid): node for pid, node in after.items()},
        "base_rate": base_rate,
        "lowest_rate": min(rates) if rates else float("nan"),
        "end_rate": _rate(events, t_end, args.scale_window),
        "running_s": None if t_running is None else t_running - t_kill,
        "back_s": None if t_back is None else t_back - t_kill,
        "requests_during": len(during),
        "errors_during": sum(not ok for ok in during),
        "errors_total": sum(not ok for _, ok in events),
        "answers_total": sum(ok for _, ok in events),
    }


# ---------------------------------------------------------------------------- report
def print_table(
    results: list[Stats],
    runs: list[EngineRun],
    scale: dict[str, Any] | None,
    args: argparse.Namespace,
) -> None:
    cell = f"{args.requests} requests" if args.requests else f"{args.duration:.0f} s"
    print()
    print(
        f"resnet: {args.arch} at {args.size} px, {usable_cpus()} CPUs, {cell} per cell, "
        f"load average now {load_avg()}"
    )
    print()
    print(
        "| engine | config | workload | clients | pairs/s | p50 (s) | p99 (s) | mean batch "
        "| answers | errors |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in results:
        print(
            f"| {s.engine} | {s.config} | {s.workload} | {s.concurrency} | {s.rate:.2f} "
            f"| {s.pct(0.5):.3f} | {s.pct(0.99):.3f} | {s.mean_batch:.1f} | {s.pairs} "
            f"| {s.errors} |"
        )
    print()
    print("Where the CPU goes, per pair (ms of CPU time: the model's processes, which decode,")
    print("resize, encode and run the head; the HTTP front end: TorchServe's Java, Ray's HAProxy")
    print("and the actor that runs it, or Serve's proxy; with HAProxy the replicas parse HTTP):")
    print()
    print("| engine | config | workload | clients | model | HTTP front end | other | total |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for s in results:
        if s.pairs and s.cpu:
            per = {k: 1000 * v / s.pairs for k, v in s.cpu.items()}
            print(
                f"| {s.engine} | {s.config} | {s.workload} | {s.concurrency} | {per['model']:.1f} "
                f"| {per['http']:.1f} | {per['other']:.1f} | {sum(per.values()):.1f} |"
            )
    print()
    print("| engine | config | cold start (s), median | cold starts | processes | RSS idle (MiB) "
          "| RSS after load (MiB) | PSS after load (MiB) |")  # fmt: skip
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for r in runs:
        starts = ", ".join(f"{x:.1f}" for x in r.cold_starts)
        print(
            f"| {r.engine} | {r.config} | {r.cold_s:.1f} | {starts} | {r.processes} "
            f"| {r.rss_idle_mib:.0f} | {r.rss_load_mib:.0f} | {r.pss_load_mib:.0f} |"
        )
    print()
    by = {(s.engine, s.config, s.workload, s.concurrency): s for s in results}
    workloads = list(dict.fromkeys(s.workload for s in results))
    concs = list(dict.fromkeys(s.concurrency for s in results))
    for engine, config in dict.fromkeys((s.engine, s.config) for s in results):
        for workload in workloads:
            lo, hi = by.get((engine, config, workload, 1)), by.get((engine, config, workload, 16))
            if lo and hi and lo.rate:
                print(
                    f"- {engine}/{config}/{workload}: throughput at 16 clients = "
                    f"{hi.rate / lo.rate:.0%} of 1 client"
                )
    floor = getattr(args, "floor", 0.0)
    for (engine, config, workload, conc), s in by.items():
        if workload == "unique" and floor and args.arch == "resnet50" and args.size == 224:
            print(
                f"- {engine}/{config}/unique, {conc} clients: {s.rate:.1f} pairs/s = "
                f"{s.rate / floor:.2f} of the bf16 floor ({floor:.0f} pairs/s)"
            )
    for engine in ("torchserve", "ray"):
        for workload in workloads:
            for conc in concs:
                t = by.get((engine, "tuned", workload, conc))
                b = by.get((engine, "bf16", workload, conc))
                if t and b and b.rate:
                    print(
                        f"- {engine} {workload}, {conc} clients: tuned / bf16 = "
                        f"{t.rate / b.rate:.2f}x"
                    )
    for workload in workloads:
        for conc in concs:
            t = by.get(("torchserve", "tuned", workload, conc))
            n = by.get(("torchserve", "naive", workload, conc))
            if t and n and n.rate:
                print(
                    f"- torchserve {workload}, {conc} clients: tuned / naive = {t.rate / n.rate:.1f}x"
                )
    ray_vs_ts(by, workloads, concs, runs)
    if scale is not None:
        print_scale_out(scale)


def ray_vs_ts(
    by: dict[tuple, Stats], workloads: list[str], concs: list[int], runs: list[EngineRun]
) -> None:
    """Ray Serve against TorchServe (tuned), with the targets on ``unique``."""
    pairs = [
        (w, c, by.get(("ray", "tuned", w, c)), by.get(("torchserve", "tuned", w, c)))
        for w in workloads
        for c in concs
    ]
    pairs = [(w, c, r, t) for w, c, r, t in pairs if r and t and t.rate]
    if not pairs:
        return
    print()
    print("| workload | clients | throughput ray / torchserve | p50 ray / torchserve "
          "| p99 ray / torchserve |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for w, c, r, t in pairs:
        print(
            f"| {w} | {c} | {r.rate / t.rate:.2f}x | {r.pct(0.5) / t.pct(0.5):.2f}x "
            f"| {r.pct(0.99) / t.pct(0.99):.2f}x |"
        )
    print()
    r16, t16 = by.get(("ray", "tuned", "unique", 16)), by.get(("torchserve", "tuned", "unique", 16))
    if r16 and t16 and t16.rate:
        ratio = r16.rate / t16.rate
        verdict = "met" if ratio >= TARGET_RATE_16 else "missed"
        print(
            f"- target, unique, 16 clients: throughput ray / torchserve = {ratio:.2f}x "
            f"(>= {TARGET_RATE_16}x: {verdict})"
        )
    r4, t4 = by.get(("ray", "tuned", "unique", 4)), by.get(("torchserve", "tuned", "unique", 4))
    if r4 and t4 and t4.latencies:
        ratio = r4.pct(0.99) / t4.pct(0.99)
        verdict = "met" if ratio <= TARGET_P99_4 else "missed"
        print(
            f"- target, unique, 4 clients: p99 ray / torchserve = {ratio:.2f}x "
            f"(<= {TARGET_P99_4}x: {verdict})"
        )
    for engine in ("torchserve", "ray"):
        cold = {r.config: r.cold_s for r in runs if r.engine == engine}
        if cold.get("tuned") and cold.get("bf16"):
            print(
                f"- {engine} cold start tuned / bf16 = {cold['tuned'] / cold['bf16']:.2f}x "
                f"({cold['tuned']:.1f} s vs {cold['bf16']:.1f} s)"
            )
    mem = {r.engine: r for r in runs if r.config == "tuned"}
    if "ray" in mem and "torchserve" in mem:
        ray_run, ts_run = mem["ray"], mem["torchserve"]
        print(
            f"- cold start ray / torchserve = {ray_run.cold_s / ts_run.cold_s:.1f}x "
            f"({ray_run.cold_s:.1f} s vs {ts_run.cold_s:.1f} s); RSS after load ray / "
            f"torchserve = {ray_run.rss_load_mib / ts_run.rss_load_mib:.1f}x, PSS "
            f"{ray_run.pss_load_mib / ts_run.pss_load_mib:.1f}x"
        )


def print_scale_out(scale: dict[str, Any]) -> None:
    print()
    if "error" in scale:
        print(f"Scale-out: failed: {scale['error']}")
        return
    print(
        f"Scale-out: a Ray cluster of 2 nodes on this machine ({scale['cpus_per_node']} CPU "
        f"each, up in {scale['cluster_s']:.1f} s), 2 replicas served with --address in "
        f"{scale['serve_s']:.1f} s, {scale['clients']} clients sending unique pairs"
    )
    print()
    names = {v: k for k, v in scale["nodes"].items()}
    print("| when | replica pid | node | node id |")
    print("|---|---:|---|---|")
    for when, key in (("before the kill", "replicas_before"), ("after recovery", "replicas_after")):
        for pid, node in scale[key].items():
            print(f"| {when} | {pid} | {names.get(node, '?')} | {node[:12]}... |")
    print()
    killed = scale["killed"]

    print(
        f"- killed replica {killed['pid']} (SIGKILL) on the {names.get(killed['node'], '?')} "
        f"node at {scale['base_rate']:.2f} pairs/s"
    )
    running, back = scale["running_s"], scale["back_s"]
    if running is None:
        print(f"- no replacement replica RUNNING within {scale['timeout_s']:.0f} s")
    else:
        print(f"- replacement replica RUNNING {running:.1f} s after the kill")
    window = f"{scale['scale_window']:.0f}-s rate"
    if back is not None:
        print(
            f"- answer rate back to 90% of before the kill {back:.1f} s after the kill (lowest "
            f"{window} meanwhile {scale['lowest_rate']:.2f} pairs/s)"
        )
    elif running is not None:
        print(
            f"- answer rate not back to 90% of before the kill within {scale['settle_s']:.0f} s "
            f"of the replacement RUNNING (lowest {window} {scale['lowest_rate']:.2f} pairs/s, "
            f"{scale['end_rate']:.2f} pairs/s at the end)"
        )
    print(
        f"- errors during recovery: {scale['errors_during']} of {scale['requests_during']} "
        f"requests; in the whole scale-out run {scale['errors_total']} errors, "
        f"{scale['answers_total']} answers"
    )
    print(f"- Ray processes left after the cluster stopped: {scale['processes_left']}")


# ---------------------------------------------------------------------------- main
def _csv(kind: Any, choices: tuple[str, ...] | None = None) -> Any:
    def parse(text: str) -> list[Any]:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if not items or (choices and any(x not in choices for x in items)):
            shown = " and ".join(choices) if choices else kind.__name__
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {shown}")
        return items

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--model", type=Path, help="a model directory (default: random seeded weights)")
    p.add_argument("--engines", type=_csv(str, ENGINES), default=list(ENGINES))
    p.add_argument("--clients", type=_csv(int), default=[1, 4, 16], help="e.g. 1,4,16")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per cell")
    p.add_argument("--requests", type=int, help="requests per cell, instead of --duration")
    p.add_argument("--warmup", type=int, default=4, help="untimed requests per cell")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batch-delay", type=int, default=10)
    p.add_argument("--workers", type=int, default=None, help="workers, or Ray replicas")
    p.add_argument("--threads", default="auto")
    p.add_argument("--no-scale-out", dest="scale_out", action="store_false")
    p.add_argument("--scale-clients", type=int, default=4)
    p.add_argument("--scale-baseline", type=float, default=10.0, help="seconds before the kill")
    p.add_argument("--scale-window", type=float, default=3.0, help="seconds of a rate window")
    p.add_argument(
        "--scale-timeout", type=float, default=120.0, help="most seconds to a RUNNING replacement"
    )
    p.add_argument(
        "--scale-settle", type=float, default=30.0,
        help="most seconds after that for the rate to come back",
    )  # fmt: skip
    p.add_argument(
        "--quick", action="store_true", help="unique photos, tuned and bf16, 5 s per cell"
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 5.0), min(args.warmup, 2)
        args.workloads, args.configs = ["unique"], ["tuned", "bf16"]
        args.scale_baseline, args.scale_timeout = 5.0, 90.0
    if args.threads != "auto":
        args.threads = int(args.threads)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (and SIGINT, which shells ignore in background jobs) must still stop the servers.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    # Ray on one machine: node addresses stay loopback (read when ray is first imported).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    print(
        f"# serve_load: {args.arch}@{args.size}, {usable_cpus()} CPUs, engines "
        f"{','.join(args.engines)}, load average {load_avg()}",
        flush=True,
    )
    bases = base_photos()
    sizes = {Image.open(io.BytesIO(b)).size for b in bases}
    print(
        f"# photos: {len(bases)} bases {sorted(sizes)}, each sent once as a new photo", flush=True
    )
    pool = UniquePool(bases)
    args.floor = bf16_floor()
    print(f"# bf16 floor: {args.floor:.1f} resnet50 pairs/s", flush=True)
    results: list[Stats] = []
    runs: list[EngineRun] = []
    scale: dict[str, Any] | None = None
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="twinnet-bench-") as tmp:
        root = Path(tmp)
        model_dir = args.model or make_model(root, args.arch, args.size)
        runs = [
            EngineRun(engine, config)
            for engine in args.engines
            for config in args.configs
            if not (engine == "ray" and config == "naive")  # TorchServe's own default plan
        ]
        for i, workload in enumerate(args.workloads):
            for run in runs if i % 2 == 0 else runs[::-1]:  # A B, then B A: drift cancels
                results += run_turn(run, workload, model_dir, root, bases, pool, args)
        rank = {(r.engine, r.config): n for n, r in enumerate(runs)}
        results.sort(key=lambda x: (rank[x.engine, x.config], args.workloads.index(x.workload)))
        if "ray" in args.engines and args.scale_out:
            try:
                scale = scale_out(model_dir, root, bases, pool, args)
            except Exception as exc:  # the tables above still count
                scale = {"error": f"{exc.__class__.__name__}: {exc}"}
    print_table(results, runs, scale, args)
    print(
        f"\n# {pool.index} photos sent, none twice; bench took {time.perf_counter() - t_start:.0f} s"
    )
    if args.json:
        cells = [
            {**{k: v for k, v in asdict(s).items() if k not in ("latencies", "batches")},
             "pairs_per_s": s.rate, "p50_s": s.pct(0.5), "p99_s": s.pct(0.99),
             "mean_batch": s.mean_batch}
            for s in results
        ]  # fmt: skip
        args.json.write_text(
            json.dumps(
                {
                    "cells": cells,
                    "engines": [{**asdict(r), "cold_s": r.cold_s} for r in runs],
                    "scale_out": scale,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
