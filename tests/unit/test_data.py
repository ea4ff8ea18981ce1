"""Labelled folders, splits, pair sampling, unreadable files and the data-set sources."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twinnet.core.imaging import build_transforms
from twinnet.core.spec import ModelSpec
from twinnet.data.items import (
    IMAGE_SUFFIXES,
    UnreadableImagesWarning,
    check_images,
    draw_class_batches,
    draw_pairs,
    scan_folder,
    split_items,
)
from twinnet.errors import DataError, TwinnetError
from twinnet.evaluate.verification import roc_auc
from twinnet.train.loaders import ImageDataset, ImageStore, PairDataset

pytestmark = pytest.mark.unit

#: Uneven classes: 2, 3, 5 and 10 images.
LABELS = np.repeat(np.arange(4), [2, 3, 5, 10])


def _write(path: Path, size: int = 12, mode: str = "RGB", value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, 0, 255 - value)).save(path)
    return path


# --------------------------------------------------------------------------- class batches
def test_class_batches_hold_per_class_images_of_distinct_classes():
    rng = np.random.default_rng(0)
    flat = draw_class_batches(LABELS, n_batches=50, per_class=4, classes_per_batch=3, rng=rng)
    batches = flat.reshape(50, 3, 4)
    for batch in batches:
        classes = LABELS[batch]
        assert (classes == classes[:, :1]).all()  # each block is one class
        assert len(set(classes[:, 0].tolist())) == 3  # three different classes
        for block in batch:  # no repeats when a class has enough images
            if (LABELS == LABELS[block[0]]).sum() >= 4:
                assert len(set(block.tolist())) == 4
    # every class with 2+ images is drawn at some point, and the draw is seeded
    assert set(LABELS[flat].tolist()) == {0, 1, 2, 3}
    again = draw_class_batches(LABELS, 50, 4, 3, np.random.default_rng(0))
    assert np.array_equal(flat, again)


def test_class_batches_skip_classes_that_give_no_positive():
    labels = np.array([0, 1, 1, 2, 2, 2])  # class 0 has one image
    flat = draw_class_batches(labels, 20, 2, 2, np.random.default_rng(1))
    assert 0 not in set(labels[flat].tolist())
    with pytest.raises(DataError, match="at least 2 classes"):
        draw_class_batches(np.array([0, 1, 1]), 2, 2, 2, np.random.default_rng(1))


def test_image_dataset_redraws_training_batches_each_pass(tmp_path):
    files = [_write(tmp_path / f"c{c}" / f"{i}.png") for c in range(4) for i in range(5)]
    items = scan_folder(tmp_path)
    assert len(items) == len(files)
    store = ImageStore(build_transforms(ModelSpec(arch="resnet18", image_size=16)))
    train = ImageDataset(items, store, seed=3, per_class=2, batch_size=4, n_batches=6)
    first = train.order.copy()
    assert len(train) == 24
    train.next_epoch()
    assert not np.array_equal(first, train.order)
    x, y = train[0]
    assert x.shape == (3, 16, 16) and int(y) == items.labels[train.order[0]]
    valid = ImageDataset(items, store, seed=3)
    assert sorted(valid.order.tolist()) == list(range(len(items)))


def test_one_list_of_image_suffixes_and_no_fastai_in_the_sampling_module():
    import subprocess
    import sys

    from twinnet.infer import twin as inference

    assert inference.IMAGE_SUFFIXES is IMAGE_SUFFIXES and ".pbm" in IMAGE_SUFFIXES
    code = "import sys, twinnet.data.items, twinnet.evaluate.verification; print('fastai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- pairs


def test_pairs_are_balanced_and_labelled_correctly():
    pairs = draw_pairs(LABELS, 1000, np.random.default_rng(0))
    assert pairs.shape == (1000, 3)
    assert pairs[:, 2].sum() == 500
    left, right, same = pairs.T
    assert np.array_equal(LABELS[left] == LABELS[right], same.astype(bool))
    assert not np.any(left == right), "an image was paired with itself"
    # every class takes part, on both sides
    assert set(LABELS[left]) == set(LABELS[right]) == {0, 1, 2, 3}


def test_pairs_are_deterministic_for_a_seed_and_differ_between_seeds():
    a = draw_pairs(LABELS, 200, np.random.default_rng(7))
    b = draw_pairs(LABELS, 200, np.random.default_rng(7))
    c = draw_pairs(LABELS, 200, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_swap_puts_each_class_on_both_sides():
    labels = np.array([0, 0, 1, 1])
    pairs = draw_pairs(labels, 400, np.random.default_rng(0), swap=True)
    diff = pairs[pairs[:, 2] == 0]
    first_class_left = np.mean(labels[diff[:, 0]] == 0)
    assert 0.35 < first_class_left < 0.65


def test_odd_pair_count_differs_by_at_most_one():
    pairs = draw_pairs(LABELS, 101, np.random.default_rng(0))
    assert pairs[:, 2].sum() == 50


def test_validation_pairs_are_fixed_and_training_pairs_are_redrawn(tmp_path):
    for c in range(3):
        for i in range(4):
            _write(tmp_path / f"c{c}" / f"{i}.png", value=40 * c + i)
    items = scan_folder(tmp_path)
    store = ImageStore(build_transforms(ModelSpec(arch="resnet18", image_size=16)))
    valid1 = PairDataset(items, store, 64, seed=3, train=False)
    valid2 = PairDataset(items, store, 64, seed=3, train=False)
    assert np.array_equal(valid1.pairs, valid2.pairs)

    train = PairDataset(items, store, 64, seed=3, train=True)
    first = train.pairs.copy()
    train.next_epoch()
    assert not np.array_equal(first, train.pairs)
    again = PairDataset(items, store, 64, seed=3, train=True)
    assert np.array_equal(again.pairs, first), "training pairs must depend only on seed and epoch"
    left, right, same = train[0]
    assert left.shape == right.shape == (3, 16, 16)
    assert int(same) in (0, 1)


# --------------------------------------------------------------------------- folders and splits


def test_folder_labels_use_the_parent_folder_and_skip_non_images(tmp_path):
    _write(tmp_path / "cat" / "a.png")
    _write(tmp_path / "cat" / "b.jpg")
    _write(tmp_path / "dog" / "nested" / "c.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    _write(tmp_path / "loose.png")  # no class folder
    _write(tmp_path / ".hidden" / "d.png")
    items = scan_folder(tmp_path)
    assert items.classes == ["cat", "dog/nested"]
    assert items.counts() == {"cat": 2, "dog/nested": 1}


def test_regex_labels_take_the_pets_file_name_convention(tmp_path):
    for name in ("Abyssinian_1.jpg", "Abyssinian_22.jpg", "great_pyrenees_3.jpg", "README.txt"):
        (tmp_path / name).write_bytes(b"x")
    items = scan_folder(tmp_path, r"regex:^(.*)_\d+\.jpg$")
    assert items.counts() == {"Abyssinian": 2, "great_pyrenees": 1}


@pytest.mark.parametrize("labels", ["regex:no_group", "regex:(", "name"])
def test_bad_label_sources_are_clear_errors(tmp_path, labels):
    with pytest.raises(DataError, match="labels"):
        scan_folder(tmp_path, labels)


def _items(n_classes: int = 10, per_class: int = 6):
    from twinnet.data.items import LabelledImages

    labels = np.repeat(np.arange(n_classes), per_class)
    files = [Path(f"/x/{i}.png") for i in range(len(labels))]
    return LabelledImages(Path("/x"), files, labels, [f"k{c}" for c in range(n_classes)])


def test_class_split_leaks_no_class():
    items = _items(10)
    split = split_items(items, "classes", valid_pct=0.3, seed=1)
    train, valid = set(split.train.classes), set(split.valid.classes)
    assert not train & valid
    assert train | valid == set(items.classes)
    assert len(valid) == 3
    assert not set(split.train.files) & set(split.valid.files)
    assert split_items(items, "classes", 0.3, seed=1).valid.classes == split.valid.classes
    assert split_items(items, "classes", 0.3, seed=2).valid.classes != split.valid.classes


def test_random_split_is_seeded_and_covers_every_file():
    items = _items(5, 10)
    a = split_items(items, "random", valid_pct=0.2, seed=0)
    b = split_items(items, "random", valid_pct=0.2, seed=0)
    assert a.valid.files == b.valid.files
    assert len(a.valid) == 10
    assert sorted(map(str, a.train.files + a.valid.files)) == sorted(map(str, items.files))


def test_too_few_classes_or_images_is_a_clear_error():
    with pytest.raises(DataError, match="at least 2 classes"):
        split_items(_items(1, 5), "random")
    with pytest.raises(DataError, match="no class with at least 2 images"):
        split_items(_items(5, 1), "random")
    with pytest.raises(DataError, match="at least 4 classes"):
        split_items(_items(3, 5), "classes")


# --------------------------------------------------------------------------- bad and grey files


def test_unreadable_files_are_dropped_with_one_warning_listing_them(tmp_path):
    for c in ("a", "b"):
        for i in range(3):
            _write(tmp_path / c / f"{i}.png", value=60 * i)
    (tmp_path / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "b" / "empty.jpg").write_bytes(b"")
    good = tmp_path / "a" / "0.png"
    (tmp_path / "b" / "truncated.png").write_bytes(good.read_bytes()[:40])
    items = scan_folder(tmp_path)
    pre = build_transforms(ModelSpec(arch="resnet18", image_size=16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept, cache = check_images(items, pre)
    ours = [w for w in caught if issubclass(w.category, UnreadableImagesWarning)]
    assert len(ours) == 1
    message = str(ours[0].message)
    for name in ("corrupt.png", "empty.jpg", "truncated.png"):
        assert name in message
    assert len(kept) == 6 and kept.counts() == {"a": 3, "b": 3}
    assert set(cache) == set(kept.files)


def test_grey_images_become_rgb_tensors_identical_to_inference(tmp_path):
    path = _write(tmp_path / "g" / "face.pgm", size=20, mode="L", value=90)
    pre = build_transforms(ModelSpec(arch="resnet18", image_size=16))
    items, cache = check_images(scan_folder(tmp_path), pre)
    cached = ImageStore(pre, cache)(path)
    fresh = ImageStore(pre)(path)
    assert cached.shape == (3, 16, 16)
    assert np.array_equal(cached.numpy(), fresh.numpy())
    from twinnet.core.imaging import decode_image

    assert np.array_equal(fresh.numpy(), pre.to_unit_tensor(decode_image(path)).numpy())


# --------------------------------------------------------------------------- metrics and sources


def test_roc_auc_matches_hand_worked_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    # one tie between a positive and a negative counts one half: (1 + 0.5 + 1 + 1) / 4
    assert roc_auc([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9]) == 0.875
    assert np.isnan(roc_auc([1, 1], [0.3, 0.4]))


def test_digits_export_writes_the_real_scikit_learn_digits(tmp_path):
    from twinnet.data.datasets import export_digits

    root = export_digits(tmp_path / "digits")
    items = scan_folder(root)
    assert items.classes == [str(d) for d in range(10)]
    assert len(items) == 1797
    with Image.open(items.files[0]) as img:
        assert img.size == (32, 32) and img.mode == "L"
    assert export_digits(root) == root  # second call reuses the export


@pytest.mark.parametrize(
    "url", ["http://pets.invalid/oxford-iiit-pet.tgz", "http://192.0.2.1/p.tgz"]
)
def test_pets_download_fails_fast_and_names_data_dir_when_unreachable(url):
    from twinnet.data.datasets import download_pets

    start = time.monotonic()
    with pytest.raises(TwinnetError, match="--data"):
        download_pets(url, timeout=2.0)
    assert time.monotonic() - start < 10


def test_image_dataset_batches_stay_whole_with_few_classes(tmp_path):
    """Fewer classes than a batch wants: each laid-out batch still has per_class of each."""
    for c in range(3):
        for i in range(6):
            _write(tmp_path / f"c{c}" / f"{i}.png", value=40 * c)
    items = scan_folder(tmp_path)
    store = ImageStore(build_transforms(ModelSpec(arch="resnet18", image_size=16)))
    ds = ImageDataset(items, store, seed=0, per_class=4, batch_size=32, n_batches=5)
    assert ds.batch_size == 12  # 3 classes of 4, not the 32 asked for
    blocks = items.labels[ds.order].reshape(5, 3, 4)
    assert (blocks == blocks[..., :1]).all()
    assert all(len(set(b[:, 0].tolist())) == 3 for b in blocks)
