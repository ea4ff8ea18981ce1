"""The reference for the Omniglot recipe: a plain PyTorch loop, scored as twinnet is scored.

About a hundred lines with no fastai, no sampler and no held-out calibration: resnet18 at
48 px, concat pooling, BatchNorm, a 128-d projection and L2; NormFace (cosine softmax at scale
16 over every training character) on random batches of 64; AdamW one-cycle at 3e-3, weight
decay 5e-4; small random rotation, scale, shift and brightness; bf16 autocast; its threshold
taken from pairs of training characters. It trains on the same alphabet-disjoint split as
``bench/verification.py --only omniglot`` and is scored by twinnet's own pair and N-way
functions on the same seeded pairs and episodes, so its row sits beside the recipes' rows.

    .venv/bin/python bench/omniglot_loop.py [--epochs 10] [--data OMNIGLOT_DIR] [--test DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from twinnet.core.metrics import best_threshold  # noqa: E402
from twinnet.data.items import draw_pairs, scan_folder  # noqa: E402
from twinnet.evaluate.verification import pair_metrics, way_metrics  # noqa: E402
from verification import OMNIGLOT, prepare_omniglot  # noqa: E402

SIZE, BS, LR, WD, SCALE = 48, 64, 3e-3, 5e-4, 16.0


def load(folder: Path):
    items = scan_folder(folder, "folder")
    x = np.stack(
        [np.asarray(Image.open(f).convert("L").resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255
         for f in items.files]
    )  # fmt: skip
    return items, torch.from_numpy(x)[:, None]


class Net(torch.nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
        self.bn = torch.nn.BatchNorm1d(1024)
        self.fc = torch.nn.Linear(1024, 128)
        self.bn2 = torch.nn.BatchNorm1d(128)
        self.proxy = torch.nn.Parameter(torch.randn(classes, 128) * 0.01)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(((x - 0.5) / 0.5).expand(-1, 3, -1, -1))
        f = torch.cat([F.adaptive_avg_pool2d(f, 1), F.adaptive_max_pool2d(f, 1)], 1).flatten(1)
        return F.normalize(self.bn2(self.fc(self.bn(f.float()))), dim=1)


def augment(x: torch.Tensor) -> torch.Tensor:
    n = len(x)
    angle = (torch.rand(n) - 0.5) * 2 * math.radians(10)
    scale = 1 + (torch.rand(n) - 0.5) * 0.2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / scale, -torch.sin(angle) / scale
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / scale, torch.cos(angle) / scale
    theta[:, :, 2] = (torch.rand(n, 2) - 0.5) * 0.2
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    return (x * (1 + (torch.rand(n, 1, 1, 1) - 0.5) * 0.2)).clamp(0, 1)


def fit(x: torch.Tensor, y: torch.Tensor, classes: int, epochs: int) -> Net:
    net = Net(classes).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WD)
    steps = len(x) // BS
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=epochs * steps)
    for epoch in range(epochs):
        net.train()
        perm, total = torch.randperm(len(x)), 0.0
        for i in range(steps):
            idx = perm[i * BS : (i + 1) * BS]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                e = net.embed(augment(x[idx]).contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(SCALE * e.float() @ F.normalize(net.proxy, dim=1).T, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {epoch} loss {total / steps:.3f}", file=sys.stderr, flush=True)
    return net.eval()


@torch.no_grad()
def embed(net: Net, x: torch.Tensor) -> np.ndarray:
    return torch.cat([net.embed(x[i : i + 512]) for i in range(0, len(x), 512)]).numpy()


@dataclass
class _Answer:
    logits: tuple[float, float] = (0.0, 0.0)
    same: bool = False
    index: int = 0


class Scored:
    """What twinnet's pair and N-way functions ask of a model, over precomputed embeddings."""

    def __init__(self, emb: np.ndarray, files: list[Path], threshold: float) -> None:
        self.emb, self.row = emb, {str(f): i for i, f in enumerate(files)}
        self.spec = type("Spec", (), {"threshold": threshold})()

    def _cos(self, a: str, b: str) -> float:
        return float(self.emb[self.row[a]] @ self.emb[self.row[b]])

    def compare_batch(self, pairs):
        t = self.spec.threshold
        return [_Answer((0.0, 30 * (c - t)), c >= t) for c in (self._cos(a, b) for a, b in pairs)]

    def search(self, query, gallery, top_k=1):
        return [_Answer(index=int(np.argmax([self._cos(query, g) for g in gallery])))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--data", type=Path, default=OMNIGLOT)
    ap.add_argument("--test", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="twinnet-loop-") as work:
        train_dir, test_dir = prepare_omniglot(Path(work), args.data, args.test)
        train, x = load(train_dir)
        started = time.monotonic()
        net = fit(x, torch.from_numpy(train.labels).long(), len(train.classes), args.epochs)
        seconds = time.monotonic() - started
        e = embed(net, x)
        drawn = draw_pairs(train.labels, 4000, np.random.default_rng(5), swap=True)
        threshold = best_threshold(
            drawn[:, 2].astype(bool), np.sum(e[drawn[:, 0]] * e[drawn[:, 1]], 1)
        )[0]
        test, xt = load(test_dir)
        scored = Scored(embed(net, xt), list(test.files), threshold)
        pm = pair_metrics(scored, test, pairs=4000, seed=0)
        drawn = draw_pairs(test.labels, 4000, np.random.default_rng([0, 10]), swap=True)
        cos = np.array([scored._cos(str(test.files[a]), str(test.files[b])) for a, b, _ in drawn])
        best = best_threshold(drawn[:, 2].astype(bool), cos)[1]
        way = way_metrics(scored, test, 20, 400, 0)["way_accuracy"]
    print(
        "| recipe | train s | pair acc (calibrated) | best acc | acc - best | AUC | EER | 20-way |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| plain PyTorch loop | {seconds:.0f} | {pm['accuracy']:.4f} | {best:.4f} | "
        f"{pm['accuracy'] - best:+.4f} | {pm['auc']:.4f} | {pm['eer']:.4f} | {way:.4f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
