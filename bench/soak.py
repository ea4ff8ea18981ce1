"""Soak: good and hostile requests mixed, for minutes, against every engine; memory must stay flat.

Each engine serves the same cosine model (resnet18 at 64 px, seeded random weights) with a
gallery index, so comparisons and identifications both run:

* ``torchserve`` — ``twinnet serve`` (TorchServe alone);
* ``container`` — ``twinnet container serve`` (the SageMaker entrypoint: the waitress gateway
  in front of TorchServe), on ``/invocations``;
* ``container-ray`` — the same gateway in front of Ray Serve (``TWINNET_ENGINE=ray``).

``--clients`` threads (16) send closed-loop requests for ``--seconds`` each engine: one in
``--bad-every`` (5) is hostile, cycling through a truncated JPEG, a missing ``right``, a
``cam`` value that is code, a file that is no image, a truncated identification query, a
body over the size cap and a JSON body nested 5,000 deep; the others are good comparisons
(with and without CAM) and identifications of ~200 KB photos, each photo sent several times
so the embedding cache fills and then holds. Every answer is checked: a good request must
get 200 with the contract's keys, a hostile one a 4xx with the error object.

After a warm-up (``--warmup`` seconds of the same traffic, so caches and allocator pools
have filled), the resident memory of every process of the server is read at the start, the
middle and the end of the soak. The table prints requests, wrong answers, dropped
connections, and per process role the RSS at those three points; ``end - mid`` is what a
leak would show (a leak of 2.6 KB a rejected request grows a worker by several MB in two
minutes at the rates here).

    .venv/bin/python bench/soak.py                 # 3 engines x 3 minutes, ~12 minutes
    .venv/bin/python bench/soak.py --quick         # 45 s each
    .venv/bin/python bench/soak.py --engines container --seconds 300
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

ENGINES = ("torchserve", "container", "container-ray")
MIB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(seed: int) -> bytes:
    """A 640x480 JPEG of about 200 KB: smooth colour plus noise, so it is a real decode."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None] * rng.random(3)
    pixels = np.clip(base + rng.normal(0, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ---------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Kind:
    name: str
    files: dict | None = None
    data: dict | None = None
    json_body: str | None = None
    good: bool = False


def kinds(photos: list[bytes]) -> tuple[list[Kind], list[Kind]]:
    """(good kinds, hostile kinds) over the photos."""
    a, b, c = photos[0], photos[1], photos[2]
    good = [
        Kind("compare", {"left": a, "right": b}, {"cam": "false"}, good=True),
        Kind("compare+cam", {"left": b, "right": c}, {"cam": "true"}, good=True),
        Kind("identify", {"query": c}, {"top_k": "3"}, good=True),
    ]
    hostile = [
        Kind("truncated JPEG", {"left": a[: len(a) // 3], "right": b}),
        Kind("missing right", {"left": a}),
        Kind("cam is code", {"left": a, "right": b}, {"cam": "__import__('os')"}),
        Kind("not an image", {"left": b"%PDF-1.7\n" + a[:4000], "right": b}),
        Kind("truncated query", {"query": c[: len(c) // 4]}),
        Kind("over the size cap", {"left": a * 40, "right": b}),
        Kind("nested JSON", json_body="[" * 5000 + "]" * 5000),
    ]
    return good, hostile


def files_for(kind: Kind, variant: int, photos: list[bytes]) -> dict:
    """The kind's multipart files, rotating through the photos so the cache sees several."""
    if not kind.good:
        return {k: (k, v) for k, v in (kind.files or {}).items()}
    rot = photos[variant % len(photos) :] + photos[: variant % len(photos)]
    swap = dict(zip(photos[:3], rot[:3], strict=True))
    return {k: (k, swap.get(v, v)) for k, v in (kind.files or {}).items()}


@dataclass
class Tally:
    requests: int = 0
    hostile: int = 0
    wrong: int = 0
    dropped: int = 0
    examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, hostile: bool, wrong: str | None, dropped: bool) -> None:
        with self.lock:
            self.requests += 1
            self.hostile += hostile
            self.dropped += dropped
            if wrong:
                self.wrong += 1
                if len(self.examples) < 5:
                    self.examples.append(wrong)


def check(kind: Kind, resp: requests.Response) -> str | None:
    """None when the answer is the contract's, else what is wrong with it."""
    try:
        body = resp.json()
    except ValueError:
        return f"{kind.name}: {resp.status_code} with a body that is not JSON"
    if kind.good:
        if resp.status_code != 200:
            return f"{kind.name}: {resp.status_code} {str(body)[:120]}"
        want = {"known", "matches"} if kind.name == "identify" else {"same", "probability"}
        return None if want <= set(body) else f"{kind.name}: keys {sorted(body)}"
    if not 400 <= resp.status_code < 500 or "error" not in body:
        return f"{kind.name}: {resp.status_code} {str(body)[:120]}"
    return None


def client(url: str, stop_at: float, tally: Tally, seed: int, photos: list[bytes], bad_every: int):
    good, hostile = kinds(photos)
    session = requests.Session()
    turn = itertools.count(seed)
    while time.monotonic() < stop_at:
        n = next(turn)
        hostile_turn = n % bad_every == 0
        kind = hostile[(n // bad_every) % len(hostile)] if hostile_turn else good[n % len(good)]
        try:
            if kind.json_body is not None:
                resp = session.post(
                    url, data=kind.json_body, headers={"Content-Type": "application/json"},
                    timeout=120,
                )  # fmt: skip
            else:
                resp = session.post(
                    url, files=files_for(kind, n, photos), data=kind.data or {}, timeout=120
                )
        except requests.RequestException as exc:
            tally.add(hostile_turn, None, True)
            session.close()
            session = requests.Session()
            if len(tally.examples) < 5:
                tally.examples.append(f"{kind.name}: {exc.__class__.__name__}")
            continue
        tally.add(hostile_turn, check(kind, resp), False)


def load(url: str, seconds: float, clients: int, photos: list[bytes], bad_every: int) -> Tally:
    tally = Tally()
    stop_at = time.monotonic() + seconds
    threads = [
        threading.Thread(target=client, args=(url, stop_at, tally, i * 7919, photos, bad_every))
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


# ---------------------------------------------------------------------------- servers
def role(proc: psutil.Process, gateway: int | None) -> str:
    if proc.pid == gateway:
        return "gateway"
    cmd = " ".join(proc.cmdline())
    if "model_service_worker" in cmd:
        return "workers"
    if "ServeReplica" in cmd:
        return "replicas"
    if "java" in proc.name() or "org.pytorch.serve" in cmd:
        return "frontend"
    if "ProxyActor" in cmd:
        return "ray proxy"
    return "other"


def memory(root_pids: list[int], gateway: int | None) -> dict[str, float]:
    """RSS MiB per role over the given processes and all their descendants (and sessions)."""
    seen: dict[int, psutil.Process] = {}
    for pid in root_pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            seen[pid] = p
            for child in p.children(recursive=True):
                seen[child.pid] = child
    # a server in a session of its own (TorchServe's launcher, Ray) counts whole; this
    # script's own session (a container started from here) counts by descent only
    sessions = {os.getsid(pid) for pid in seen if _alive(pid)} - {os.getsid(0)}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(p.pid) in sessions:
                seen.setdefault(p.pid, p)
    out: dict[str, float] = {}
    for p in seen.values():
        with contextlib.suppress(psutil.Error):
            r = role(p, gateway)
            out[r] = out.get(r, 0.0) + p.memory_info().rss / MIB
    return out


def _alive(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).is_running()
    return False


def prepare_model(work: Path) -> tuple[Path, Path, Path]:
    """(model directory, index directory, unpacked SageMaker model directory)."""
    import torch

    from twinnet.container.package import package
    from twinnet.core.artifacts import save_model_dir
    from twinnet.core.model import build_model
    from twinnet.core.spec import ModelSpec
    from twinnet.data.datasets import make_shapes_dataset
    from twinnet.infer.twin import Twin

    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", image_size=64, head="cosine", embedding_dim=64)
    model = save_model_dir(build_model(spec).eval(), spec, work / "model")
    gallery = make_shapes_dataset(work / "gallery", classes=4, per_class=3, size=64)
    Twin.load(model, precision="fp32").index(gallery, work / "index")
    tarball = package(model, work / "model.tar.gz", index=work / "index")
    unpacked = work / "opt-ml-model"
    unpacked.mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    return model, work / "index", unpacked


@contextlib.contextmanager
def serving(engine: str, work: Path, model: Path, index: Path, unpacked: Path):
    """Yield ``(url, root pids, gateway pid)`` of a running server; stop it afterwards."""
    if engine == "torchserve":
        from twinnet.engines import server

        ports = [free_port() for _ in range(3)]
        info = server.start(
            model, port=ports[0], management_port=ports[1], metrics_port=ports[2], auth=False,
            root=work / "state", index=index, timeout=600,
        )  # fmt: skip
        try:
            yield f"{info.inference_url}/predictions/twin", [info.pid], None
        finally:
            server.stop(root=work / "state")
        return
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "TWINNET_HOST": "127.0.0.1"}
    if engine == "container-ray":
        env["TWINNET_ENGINE"] = "ray"
    log = (work / f"{engine}.log").open("wb")
    cmd = [sys.executable, "-m", "twinnet", "container", "serve", "--model-dir", str(unpacked)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{engine} exited: {(work / f'{engine}.log').read_text()[-2000:]}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{engine}: /ping not 200 in 600 s")
            time.sleep(0.5)
        yield f"{url}/invocations", [proc.pid], proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def soak(engine: str, work: Path, args: argparse.Namespace, photos: list[bytes], parts) -> dict:
    with serving(engine, work / engine, *parts) as (url, pids, gateway):
        print(f"# {engine}: ready at {url}; warming up {args.warmup:.0f} s", flush=True)
        warm = load(url, args.warmup, args.clients, photos, args.bad_every)
        start = memory(pids, gateway)
        first = load(url, args.seconds / 2, args.clients, photos, args.bad_every)
        mid = memory(pids, gateway)
        second = load(url, args.seconds / 2, args.clients, photos, args.bad_every)
        end = memory(pids, gateway)
    tallies = (first, second)
    row = {
        "engine": engine,
        "requests": sum(t.requests for t in tallies),
        "hostile": sum(t.hostile for t in tallies),
        "wrong": sum(t.wrong for t in (warm, *tallies)),
        "dropped": sum(t.dropped for t in (warm, *tallies)),
        "examples": [e for t in (warm, *tallies) for e in t.examples][:5],
        "rss": {r: (start.get(r, 0.0), mid.get(r, 0.0), end.get(r, 0.0)) for r in sorted(end)},
        "rate": sum(t.requests for t in tallies) / args.seconds,
    }
    print(f"# {engine}: {row['requests']} requests, {row['wrong']} wrong, {row['dropped']} dropped")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated")
    parser.add_argument("--seconds", type=float, default=180, help="soak per engine")
    parser.add_argument("--warmup", type=float, default=30, help="same traffic before measuring")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--bad-every", type=int, default=5, help="one hostile request in N")
    parser.add_argument("--quick", action="store_true", help="45 s each, 15 s warm-up")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = 45, 15
    engines = [e for e in args.engines.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            parser.error(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    photos = [photo(i) for i in range(6)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="twinnet-soak-") as tmp:
        work = Path(tmp)
        parts = prepare_model(work)
        for engine in engines:
            (work / engine).mkdir()
            rows.append(soak(engine, work, args, photos, parts))
    print(
        f"\nsoak: {args.clients} clients, 1 request in {args.bad_every} hostile, "
        f"{args.seconds:.0f} s after {args.warmup:.0f} s of warm-up; RSS in MiB\n"
    )
    print(
        "| engine | requests | hostile | req/s | wrong | dropped | process | start | mid | end | end - mid |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        for n, (name, (s, m, e)) in enumerate(r["rss"].items()):
            head = (
                f"| {r['engine']} | {r['requests']} | {r['hostile']} | {r['rate']:.1f} | "
                f"{r['wrong']} | {r['dropped']} "
                if n == 0
                else "| | | | | | "
            )
            print(f"{head}| {name} | {s:.1f} | {m:.1f} | {e:.1f} | {e - m:+.1f} |")
        for example in r["examples"]:
            print(f"#   {r['engine']}: {example}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
