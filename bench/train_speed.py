"""Training throughput: fastai's loop against a plain PyTorch loop, and bf16 against fp32.

1. For each configuration the same pre-built batches of pairs go through one optimiser step
   each, once in a fastai ``Learner.fit`` (the callbacks, the default fastai Adam as
   ``twinnet train`` uses it) and once in a hand-written loop with ``torch.optim.Adam``.
2. The cosine head's training step (class-balanced images, CosFace loss) in ``Learner.fit``,
   with and without the CPU bf16 autocast callback that ``twinnet train`` adds on CPUs with
   native bf16 (``--precision fp32`` turns it off): same batches, same settings.

Rounds alternate between the two sides (in ABBA order), after a warm-up of each, and the
fastest round of each counts, which keeps a shared machine's noise out of the ratio.

    python bench/train_speed.py [--rounds 4] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from twinnet.core.model import build_model
from twinnet.core.spec import ModelSpec
from twinnet.train.fastai_compat import quiet_fastai_import

quiet_fastai_import()

from fastai.callback.core import Callback  # noqa: E402
from fastai.data.core import DataLoaders  # noqa: E402
from fastai.data.load import DataLoader  # noqa: E402
from fastai.learner import Learner  # noqa: E402
from fastai.losses import CrossEntropyLossFlat  # noqa: E402

from twinnet.infer.runtime import cpu_has_native_bf16  # noqa: E402
from twinnet.train.fastai_parts import EmbeddingNet, bf16_callback, twin_splitter  # noqa: E402
from twinnet.train.losses import build_metric_loss  # noqa: E402

#: (arch, image size, pairs per batch, timed batches per round)
CONFIGS = [("resnet18", 64, 32, 8), ("resnet50", 224, 8, 3)]
LR = 1e-4


def make_batches(size: int, bs: int, n: int, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """``n`` batches of normalised-looking pairs and balanced targets."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(bs, 3, size, size, generator=gen),
            torch.randn(bs, 3, size, size, generator=gen),
            torch.arange(bs) % 2,
        )
        for _ in range(n)
    ]


def plain_loop(model: torch.nn.Module, batches) -> float:
    """Seconds for one optimiser step per batch, the textbook way."""
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    start = time.perf_counter()
    for left, right, y in batches:
        loss = F.cross_entropy(model(left, right), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - start


class _TrainTimer(Callback):
    """Times the training phase alone (not the validation pass fastai runs after it)."""

    def before_train(self) -> None:
        self.start = time.perf_counter()

    def after_train(self) -> None:
        self.seconds = time.perf_counter() - self.start


def fastai_loop(model: torch.nn.Module, batches) -> float:
    """Seconds for the same steps through ``Learner.fit``."""
    train_dl = DataLoader(batches, bs=None, device="cpu")
    valid_dl = DataLoader(batches[:1], bs=None, device="cpu")
    timer = _TrainTimer()
    learn = Learner(
        DataLoaders(train_dl, valid_dl),
        model,
        loss_func=CrossEntropyLossFlat(),
        splitter=twin_splitter,
        cbs=timer,
    )
    with learn.no_logging():
        learn.fit(1, LR)
    return timer.seconds


def bench(arch: str, size: int, bs: int, n: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch, image_size=size))
    batches = make_batches(size, bs, n)
    warm = batches[:1]
    plain_loop(model, warm)
    fastai_loop(model, warm)
    best = {"plain": float("inf"), "fastai": float("inf")}
    loops = {"plain": plain_loop, "fastai": fastai_loop}
    for r in range(rounds):
        order = ("plain", "fastai") if r % 2 == 0 else ("fastai", "plain")  # ABBA: no order bias
        for name in order:
            best[name] = min(best[name], loops[name](model, batches))
    images = 2 * bs * n  # two images per pair
    return {
        "plain": images / best["plain"],
        "fastai": images / best["fastai"],
        "overhead": best["fastai"] / best["plain"] - 1.0,
    }


def metric_loop(net: torch.nn.Module, loss, batches, bf16: bool) -> float:
    """Seconds for one cosine-head step per batch through ``Learner.fit``."""
    train_dl = DataLoader(batches, bs=None, device="cpu")
    valid_dl = DataLoader(batches[:1], bs=None, device="cpu")
    timer = _TrainTimer()
    cbs = [timer, bf16_callback()] if bf16 else [timer]
    learn = Learner(DataLoaders(train_dl, valid_dl), net, loss_func=loss, cbs=cbs)
    with learn.no_logging():
        learn.fit(1, LR)
    return timer.seconds


def bench_precision(arch: str, size: int, bs: int, n: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, image_size=size, head="cosine")
    net = EmbeddingNet(build_model(spec))
    loss = build_metric_loss("cosface", 16, spec.embedding_dim)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(bs, 3, size, size, generator=gen), torch.arange(bs) // 4 % 16)
        for _ in range(n)
    ]
    for bf16 in (False, True):
        metric_loop(net, loss, batches[:1], bf16)
    best = {False: float("inf"), True: float("inf")}
    for r in range(rounds):
        for bf16 in (False, True) if r % 2 == 0 else (True, False):
            best[bf16] = min(best[bf16], metric_loop(net, loss, batches, bf16))
    images = bs * n
    return {"fp32": images / best[False], "bf16": images / best[True]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per loop")
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64 px only")
    args = parser.parse_args()
    configs = CONFIGS[:1] if args.quick else CONFIGS
    print(f"training throughput on the CPU, {torch.get_num_threads()} torch threads")
    print(
        f"{'model':<18}{'pairs/batch':>12}{'plain img/s':>13}{'fastai img/s':>14}{'overhead':>10}"
    )
    for arch, size, bs, n in configs:
        r = bench(arch, size, bs, n, args.rounds)
        name = f"{arch}@{size}"
        print(
            f"{name:<18}{bs:>12}{r['plain']:>13.1f}{r['fastai']:>14.1f}{r['overhead']:>+10.1%}",
            flush=True,
        )
    native = cpu_has_native_bf16()
    print(f"\ncosine head, fastai loop, bf16 autocast vs fp32 (native bf16 on this CPU: {native})")
    print(f"{'model':<18}{'images/batch':>13}{'fp32 img/s':>12}{'bf16 img/s':>12}{'speed-up':>10}")
    for arch, size, bs, n in configs:
        bs = bs * 2  # the same images per batch as the pair rows
        r = bench_precision(arch, size, bs, n, args.rounds)
        name = f"{arch}@{size}"
        print(
            f"{name:<18}{bs:>13}{r['fp32']:>12.1f}{r['bf16']:>12.1f}{r['bf16'] / r['fp32']:>9.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
