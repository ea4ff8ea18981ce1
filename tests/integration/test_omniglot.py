"""``--recipe small-grey`` on real handwriting: verification of alphabets never seen in training.

Trains on three Omniglot background alphabets and tests on two others (alphabet-disjoint, as
the few-shot literature does), with the preset's command shortened to a minute of training.
The model's pair accuracy, at the threshold it fitted in training on its own held-out
characters, and its 5-way one-shot accuracy must clear raw pixels on the same pairs and
episodes, where raw pixels even get their best threshold chosen on the test pairs.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from twinnet.cli import main
from twinnet.core.spec import ModelSpec

pytestmark = pytest.mark.integration

TRAIN_ALPHABETS = ("Japanese_(hiragana)", "Tifinagh", "Gujarati")  # 155 characters
TEST_ALPHABETS = ("Latin", "Greek")  # 50 characters
PAIRS = 2000
TRIALS = 400


def _copy(src, dst, alphabets) -> None:
    for folder in sorted(src.iterdir()):
        if folder.name.split("__")[0] in alphabets:
            shutil.copytree(folder, dst / folder.name)


@pytest.fixture(scope="module")
def omniglot(shared_data, tmp_path_factory):
    src = shared_data / "omniglot-background"
    if not src.is_dir():
        pytest.skip(f"Omniglot background alphabets not present at {src}")
    base = tmp_path_factory.mktemp("omniglot")
    _copy(src, base / "train", TRAIN_ALPHABETS)
    _copy(src, base / "test", TEST_ALPHABETS)
    out = base / "model"
    argv = ["train", str(base / "train"), "--out", str(out), "--recipe", "small-grey"]
    assert main([*argv, "--epochs", "6", "--workers", "0"]) == 0
    return out, base / "test"


def _raw_pixels(items, spec) -> np.ndarray:
    from twinnet.core.imaging import build_transforms, decode_image

    pre = build_transforms(spec)
    x = np.stack([pre.to_unit_tensor(decode_image(f)).numpy().ravel() for f in items.files])
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _way(emb: np.ndarray, labels: np.ndarray, way: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
    correct = 0
    for _ in range(TRIALS):
        classes = rng.choice(len(by_class), way, replace=False)
        query, support = rng.choice(by_class[classes[0]], 2, replace=False)
        gallery = [support] + [rng.choice(by_class[c]) for c in classes[1:]]
        correct += int(np.argmax(emb[gallery] @ emb[query]) == 0)
    return correct / TRIALS


def test_small_grey_recipe_verifies_unseen_alphabets_well_above_raw_pixels(omniglot):
    from twinnet.core.metrics import best_threshold
    from twinnet.data.items import draw_pairs
    from twinnet.evaluate.verification import evaluation_items
    from twinnet.infer.twin import Twin

    out, test = omniglot
    spec = ModelSpec.load(out)
    assert spec.recipe["recipe"] == "small-grey" and spec.recipe["augment"] == "affine"
    assert spec.recipe["loss"] == "cosface" and spec.recipe["sampler"] == "random"
    assert spec.image_size == 48 and spec.arch == "resnet18"
    assert spec.readout == spec.metrics["readout"]["kept"]  # what its held-out characters chose
    held = spec.split["calibration_classes"]
    assert len(held) == 31 and not {c.split("__")[0] for c in held} & set(TEST_ALPHABETS)

    twin = Twin.load(out)
    items = evaluation_items(test, spec)
    assert len(items.classes) == 50
    emb = twin.embed([str(f) for f in items.files]).numpy()
    raw = _raw_pixels(items, spec)
    drawn = draw_pairs(items.labels, PAIRS, np.random.default_rng([0, 10]), swap=True)
    same = drawn[:, 2].astype(bool)

    def cos(e):
        return np.einsum("nd,nd->n", e[drawn[:, 0]], e[drawn[:, 1]])

    results = twin.compare_batch([(str(items.files[a]), str(items.files[b])) for a, b, _ in drawn])
    accuracy = float(np.mean([r.same for r in results] == same))  # the model's own threshold
    raw_best = best_threshold(same, cos(raw))[1]  # raw pixels at their best test threshold
    way, raw_way = _way(emb, items.labels, 5, 1), _way(raw, items.labels, 5, 1)
    print(f"pairs {accuracy:.3f} vs raw {raw_best:.3f}; 5-way {way:.3f} vs raw {raw_way:.3f}")
    assert accuracy >= raw_best + 0.08, (accuracy, raw_best)
    assert way >= raw_way + 0.15, (way, raw_way)
    assert way >= 0.75
