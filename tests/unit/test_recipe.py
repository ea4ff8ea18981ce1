"""The training recipe's rules: presets, the calibration hold-out, samplers and augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twinnet.errors import TwinnetError
from twinnet.train.augment import AffineJitter, SmallAffine, batch_augmentations
from twinnet.train.config import (
    CALIB_MAX_CLASSES,
    PRESETS,
    TrainConfig,
    calibration_classes,
    check_config,
    resolve_defaults,
)

pytestmark = pytest.mark.unit


def test_plain_command_resolves_to_the_samples_pet_recipe():
    cfg = resolve_defaults(TrainConfig(out="m"))
    assert (cfg.arch, cfg.size, cfg.pretrained, cfg.bs) == ("resnet50", 224, True, 32)
    assert (cfg.frozen_epochs, cfg.epochs, cfg.lr) == (4, 4, 1e-3)
    assert (cfg.loss, cfg.augment, cfg.wd) == ("cosface", "fastai", None)
    assert cfg.sampler == "balanced"  # as before presets: 4 images of each class in a batch


def test_pair_losses_default_to_balanced_batches():
    cfg = resolve_defaults(TrainConfig(out="m", loss="multisimilarity"))
    assert cfg.sampler == "balanced"
    # the preset's random batches give way when a pair loss is asked for
    cfg = resolve_defaults(TrainConfig(out="m", recipe="small-grey", loss="contrastive"))
    assert cfg.sampler == "balanced"
    check_config(cfg)
    cfg = resolve_defaults(TrainConfig(out="m", head="concat"))
    assert cfg.loss == "pair-ce"


def test_small_grey_preset_resolves_to_its_measured_values():
    cfg = resolve_defaults(TrainConfig(out="m", recipe="small-grey"))
    assert (cfg.arch, cfg.size, cfg.pretrained) == ("resnet18", 48, False)
    assert (cfg.frozen_epochs, cfg.epochs, cfg.lr, cfg.bs) == (0, 10, 3e-3, 64)
    assert (cfg.loss, cfg.sampler, cfg.augment, cfg.wd) == ("cosface", "random", "affine", None)
    check_config(cfg)


def test_options_given_beat_the_preset():
    cfg = resolve_defaults(
        TrainConfig(out="m", recipe="small-grey", size=32, epochs=3, loss="normface", augment=True)
    )
    assert (cfg.size, cfg.epochs, cfg.loss) == (32, 3, "normface")
    assert cfg.augment == "affine"  # --aug means "on": the preset's policy
    assert resolve_defaults(TrainConfig(out="m", recipe="small-grey", augment=False)).augment == (
        "none"
    )


def test_unknown_preset_and_impossible_sampler_are_refused():
    with pytest.raises(TwinnetError, match="--recipe must be one of small-grey"):
        resolve_defaults(TrainConfig(out="m", recipe="huge"))
    cfg = resolve_defaults(TrainConfig(out="m", loss="contrastive", sampler="random"))
    with pytest.raises(TwinnetError, match="needs class-balanced batches"):
        check_config(cfg)


def test_every_preset_names_real_fields():
    fields = set(TrainConfig.__dataclass_fields__)
    for preset in PRESETS.values():
        assert set(preset) <= fields


@pytest.mark.parametrize(
    ("classes", "pct", "held"),
    [
        (30, 0.2, 6),  # AT&T s1-s30: a fifth, as before
        (7, 0.3, 2),  # digits: at least two
        (100, 0.2, 20),
        (250, 0.2, 50),
        (964, 0.2, CALIB_MAX_CLASSES),  # Omniglot: capped
        (10_000, 0.5, CALIB_MAX_CLASSES),
    ],
)
def test_calibration_hold_out_is_a_share_capped_at_fifty(classes, pct, held):
    assert CALIB_MAX_CLASSES == 50
    assert calibration_classes(classes, pct) == held


def test_affine_policy_never_flips_and_fastai_policy_does():
    names = [type(t).__name__ for t in batch_augmentations("fastai")]
    assert "Flip" in names
    assert [type(t).__name__ for t in batch_augmentations("affine")] == ["SmallAffine"]
    assert batch_augmentations("none") == []
    with pytest.raises(TwinnetError, match="augmentation must be one of"):
        batch_augmentations("mirror")


def test_small_affine_without_movement_is_the_identity():
    x = torch.rand(4, 3, 16, 16)
    still = SmallAffine(AffineJitter(rotate=0, scale=1.0, shift=0, brightness=0))
    assert torch.allclose(still.encodes(x), x, atol=1e-5)


def test_small_affine_moves_each_image_within_its_ranges():
    torch.manual_seed(0)
    # a vertical bar left of centre: a mirror image would put it right of centre
    x = torch.ones(64, 1, 32, 32)
    x[:, :, 8:24, 10:13] = 0.0
    out = SmallAffine(AffineJitter(brightness=0)).encodes(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    ink = 1 - out[:, 0]
    cols = (ink.sum(1) * torch.arange(32)).sum(1) / ink.sum((1, 2))
    # the bar's centre is at 11.5 px; shifts of at most 8% (2.6 px) and a zoom about the
    # centre keep it left of the middle, where a mirror image (at 20.5 px) would not be
    assert cols.max() < 16
    assert cols.std() > 0.3  # images move independently
    # ink is kept (borders extend the white background)
    assert np.allclose(ink.sum((1, 2)).numpy(), float(16 * 3), rtol=0.35)


def test_brightness_changes_whole_images_by_at_most_its_range():
    torch.manual_seed(1)
    x = torch.full((32, 3, 8, 8), 0.5)
    j = AffineJitter(rotate=0, scale=1.0, shift=0, brightness=0.1)
    out = SmallAffine(j).encodes(x)
    delta = out.mean((1, 2, 3)) - 0.5
    assert delta.abs().max() <= 0.1 + 1e-6
    assert delta.std() > 0.02
    assert math.isclose(float(out.std((1, 2, 3)).max()), 0.0, abs_tol=1e-5)


def test_random_sampler_shuffles_every_image_once_per_pass():
    from twinnet.data.items import LabelledImages
    from twinnet.train.loaders import ImageDataset

    labels = np.repeat(np.arange(10), 5)
    items = LabelledImages(
        None, [f"{i}.png" for i in range(50)], labels, [str(c) for c in range(10)]
    )
    ds = ImageDataset(
        items, store=None, seed=0, per_class=4, batch_size=16, n_batches=5, balanced=False
    )
    assert ds.batch_size == 16 and len(ds) == 80
    assert sorted(ds.order[:50].tolist()) == list(range(50))  # a full pass before any repeat
    first = ds.order.copy()
    ds.next_epoch()
    assert not np.array_equal(first, ds.order)  # drawn afresh every epoch
    balanced = ImageDataset(items, store=None, seed=0, per_class=4, batch_size=16, n_batches=5)
    block = labels[balanced.order[:16]].reshape(4, 4)
    assert (block == block[:, :1]).all()  # 4 classes x 4 images
