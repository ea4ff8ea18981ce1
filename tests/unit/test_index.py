"""Gallery index: exact search, class aggregation, the open-set verdict, updates, atomic writes.

Index logic runs on hand-made unit vectors (no model); the checks that need a model's
fingerprint or real image bytes use the untrained resnet18 cosine model at 64 px.
"""

from __future__ import annotations

import math
import shutil
import threading

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from twinnet.core.spec import ModelSpec  # noqa: E402
from twinnet.errors import TwinnetError  # noqa: E402
from twinnet.index import (  # noqa: E402
    AUTO_FLAT_MAX,
    TARGET_RECALL,
    GalleryIndex,
    aggregate,
    check_top_k,
    from_embeddings,
    store,  # noqa: E402
)
from twinnet.index.vectors import choose_kind  # noqa: E402

pytestmark = pytest.mark.unit

DIM = 16


def _spec(threshold: float = 0.5, dim: int = DIM) -> ModelSpec:
    """A cosine spec whose calibration is p = sigmoid(10 * cos - 5): p(0.5) = 0.5."""
    return ModelSpec(
        arch="resnet18",
        image_size=64,
        head="cosine",
        embedding_dim=dim,
        threshold=threshold,
        calibration={"scale": 10.0, "bias": -5.0},
    )


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _random_gallery(n: int = 300, classes: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    vecs = _unit(rng.normal(size=(n, DIM)))
    labels = [f"c{i % classes}" for i in range(n)]
    paths = [f"/gallery/c{i % classes}/{i}.png" for i in range(n)]
    return vecs, labels, paths


def _at_cosine(axis: np.ndarray, other: np.ndarray, cos: float) -> np.ndarray:
    """A unit vector at cosine ``cos`` to the unit vector ``axis`` (``other`` is orthogonal)."""
    return (cos * axis + np.sqrt(1 - cos**2) * other).astype(np.float32)


def _beside(folder) -> list[str]:
    """What a folder holds, but for the writers' lock file."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def _sigmoid(z: float) -> float:
    return float(1 / (1 + np.exp(-z)))


# ------------------------------------------------------------------ search and aggregation


def test_exact_search_equals_a_brute_force_numpy_ranking(tmp_path):
    vecs, labels, paths = _random_gallery()
    index = from_embeddings(tmp_path / "idx", vecs, labels, _spec(), "fp", paths=paths)
    assert index.info["kind"] == "flat" and index.info["recall_at_10"] is None
    queries = _unit(np.random.default_rng(1).normal(size=(7, DIM)))
    cos, ids = index.neighbours(queries, 20)
    truth = vecs.astype(np.float64) @ queries.astype(np.float64).T
    for q in range(len(queries)):
        order = np.argsort(-truth[:, q], kind="stable")[:20]
        assert ids[q].tolist() == order.tolist()  # ids are rows: the gallery was built in order
        np.testing.assert_allclose(cos[q], truth[order, q], atol=1e-5)
    # And the same after a removal: ids stay stable, the ranking skips the removed rows.
    index.remove(label="c3")
    keep = np.array([lab != "c3" for lab in labels])
    cos, ids = GalleryIndex.open(tmp_path / "idx").neighbours(queries, 20)
    for q in range(len(queries)):
        order = np.flatnonzero(keep)[np.argsort(-truth[keep, q], kind="stable")[:20]]
        assert ids[q].tolist() == order.tolist()


def test_aggregate_keeps_the_best_image_of_each_class():
    cos = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = ["a", "a", "b", "a", "c"]
    paths = ["a1", "a2", "b1", "a3", "c1"]
    assert aggregate(cos, labels, paths, 2) == [("a", 0.9, "a1"), ("b", 0.7, "b1")]
    assert aggregate(cos, labels, paths, 5) == [
        ("a", 0.9, "a1"),
        ("b", 0.7, "b1"),
        ("c", 0.5, "c1"),
    ]


def test_many_photos_of_one_class_do_not_fill_the_top_k(tmp_path):
    """60 near-copies of class a (more than the 50 neighbours first searched), then b and c."""
    axis, other = np.eye(DIM)[0], np.eye(DIM)[1]
    rows, labels, paths = [], [], []
    for i in range(60):
        rows.append(_at_cosine(axis, other, 0.99 - i * 0.001))
        labels.append("a")
        paths.append(f"a/{i}.png")
    for label, cos in (("b", 0.8), ("c", 0.7)):
        rows.append(_at_cosine(axis, np.eye(DIM)[2], cos))
        labels.append(label)
        paths.append(f"{label}/0.png")
    index = from_embeddings(tmp_path / "idx", np.stack(rows), labels, _spec(), "fp", paths=paths)
    (result,) = index.identify_embeddings(axis, top_k=3)
    assert [m.label for m in result.matches] == ["a", "b", "c"]
    assert result.matches[0].path == "a/0.png"  # the best image of a
    assert result.matches[0].cosine == pytest.approx(0.99, abs=1e-5)
    for m, cos in zip(result.matches, (0.99, 0.8, 0.7), strict=True):
        assert m.probability == pytest.approx(_sigmoid(10 * cos - 5), abs=1e-5)
    assert result.known


def test_unknown_when_no_class_reaches_the_threshold(tmp_path):
    axis = np.eye(DIM)[0]
    rows = [_at_cosine(axis, np.eye(DIM)[i + 1], cos) for i, cos in enumerate((0.3, 0.2, 0.1))]
    gallery = np.stack(rows)
    index = from_embeddings(tmp_path / "lo", gallery, ["a", "b", "c"], _spec(), "fp")
    (result,) = index.identify_embeddings(axis, top_k=2)
    assert not result.known  # sigmoid(10 * 0.3 - 5) = 0.12 < 0.5
    assert [m.label for m in result.matches] == ["a", "b"]  # still ranked, for people to see
    assert result.matches[0].probability == pytest.approx(_sigmoid(-2), abs=1e-5)
    d = result.to_dict()
    assert set(d) == {"known", "matches", "threshold", "model"}
    assert d["known"] is False and d["threshold"] == 0.5 and d["model"] == "twin"
    assert set(d["matches"][0]) == {"label", "probability", "path"}

    # The threshold is the model's: cos 0.6 gives p = 0.73, known at 0.5 and not at 0.9.
    near = np.stack([_at_cosine(axis, np.eye(DIM)[1], 0.6)])
    assert (
        from_embeddings(tmp_path / "a", near, ["a"], _spec(0.5), "fp")
        .identify_embeddings(axis)[0]
        .known
    )
    strict = from_embeddings(tmp_path / "b", near, ["a"], _spec(0.9), "fp")
    (result,) = strict.identify_embeddings(axis)
    assert not result.known and result.threshold == 0.9


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_measure_and_reach_their_recall(tmp_path, kind):
    vecs, labels, _ = _random_gallery(n=2000, classes=50)
    index = from_embeddings(tmp_path / kind, vecs, labels, _spec(), "fp", kind=kind)
    info = GalleryIndex.open(tmp_path / kind).info
    assert info["kind"] == kind and info["recall_queries"] == 200
    assert info["recall_at_10"] >= TARGET_RECALL
    # Each gallery vector finds itself first.
    cos, ids = index.neighbours(vecs[:50], 1)
    assert (ids[:, 0] == np.arange(50)).mean() >= TARGET_RECALL


def test_auto_kind_is_exact_up_to_the_limit_then_approximate():
    assert choose_kind("auto", AUTO_FLAT_MAX)[0] == "flat"
    kind, reason = choose_kind("auto", AUTO_FLAT_MAX + 1)
    assert kind == "ivf" and "approximate" in reason
    with pytest.raises(TwinnetError, match="unknown index kind"):
        choose_kind("lsh", 10)


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.5, True, "3", None])
def test_bad_top_k_is_refused(tmp_path, bad):
    vecs, labels, _ = _random_gallery(n=20)
    index = from_embeddings(tmp_path / "idx", vecs, labels, _spec(), "fp")
    with pytest.raises(TwinnetError, match="top_k"):
        index.identify_embeddings(vecs[0], top_k=bad)
    with pytest.raises(TwinnetError, match="top_k"):
        check_top_k(bad)


def test_queries_of_the_wrong_width_are_refused(tmp_path):
    vecs, labels, _ = _random_gallery(n=20)
    index = from_embeddings(tmp_path / "idx", vecs, labels, _spec(), "fp")
    with pytest.raises(TwinnetError, match=r"shape \(N, 16\)"):
        index.identify_embeddings(np.ones(8, np.float32))


# ------------------------------------------------------------------ remove, export, threads


def test_remove_by_label_and_by_path(tmp_path):
    vecs, labels, paths = _random_gallery(n=60, classes=3)
    index = from_embeddings(tmp_path / "idx", vecs, labels, _spec(), "fp", paths=paths)
    assert index.remove(label="c1") == 20
    assert len(index) == 40 and "c1" not in index.labels()
    reopened = GalleryIndex.open(tmp_path / "idx")
    assert len(reopened) == 40 and set(reopened.labels()) == {"c0", "c2"}
    for result in reopened.identify_embeddings(vecs[:30], top_k=3):
        assert "c1" not in [m.label for m in result.matches]
    assert reopened.remove(path="/gallery/c0/0.png") == 1  # one image
    assert reopened.remove(path="/gallery/c2") == 20  # a folder
    assert reopened.labels() == {"c0": 19}
    with pytest.raises(TwinnetError, match="no image labelled 'c9'"):
        reopened.remove(label="c9")
    with pytest.raises(TwinnetError, match="exactly one"):
        reopened.remove()
    # The first handle is stale now: it refuses to overwrite the newer version.
    with pytest.raises(TwinnetError, match="changed on disk"):
        index.remove(label="c0")


def test_remove_from_an_hnsw_index_rebuilds_it(tmp_path):
    vecs, labels, _ = _random_gallery(n=300, classes=3)
    index = from_embeddings(tmp_path / "idx", vecs, labels, _spec(), "fp", kind="hnsw")
    assert index.remove(label="c0") == 100
    _, ids = GalleryIndex.open(tmp_path / "idx").neighbours(vecs, 5)
    assert not np.isin(ids, np.arange(0, 300, 3)).any()


def test_export_writes_id_label_path_and_embedding(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    vecs, labels, paths = _random_gallery(n=30, classes=3)
    index = from_embeddings(tmp_path / "idx", vecs, labels, _spec(), "fp", paths=paths)
    index.remove(label="c2")
    table = pq.read_table(index.export(tmp_path / "out.parquet"))
    assert table.column_names == ["id", "label", "path", "embedding"]
    keep = [i for i, lab in enumerate(labels) if lab != "c2"]
    assert table.column("id").to_pylist() == keep
    assert table.column("label").to_pylist() == [labels[i] for i in keep]
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist()), vecs[keep])


def test_reads_from_many_threads_see_whole_versions_during_removals(tmp_path):
    vecs, labels, paths = _random_gallery(n=400, classes=8)
    index = from_embeddings(tmp_path / "idx", vecs, labels, _spec(), "fp", paths=paths)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                for result in index.identify_embeddings(vecs[:20], top_k=8):
                    for m in result.matches:  # each path belongs to its label, in one version
                        assert m.path.split("/")[2] == m.label
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for c in range(7):
        index.remove(label=f"c{c}")
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert index.labels() == {"c7": 50}


# ------------------------------------------------------------------ atomic writes


def test_an_interrupted_write_leaves_the_old_index_loadable(tmp_path, monkeypatch):
    vecs, labels, paths = _random_gallery(n=60, classes=3)
    path = tmp_path / "idx"
    index = from_embeddings(path, vecs, labels, _spec(), "fp", paths=paths)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    with pytest.raises(OSError, match="No space"):
        index.remove(label="c0")
    with pytest.raises(OSError, match="No space"):  # a rebuild over it, too
        from_embeddings(path, vecs[:5], labels[:5], _spec(), "fp")
    monkeypatch.undo()

    assert len(index) == 60  # the handle kept the version on disk
    reopened = GalleryIndex.open(path)
    assert len(reopened) == 60 and set(reopened.labels()) == {"c0", "c1", "c2"}
    assert reopened.identify_embeddings(vecs[0])[0].matches[0].label == "c0"
    assert _beside(tmp_path) == ["idx"]  # no temporary left behind
    assert index.remove(label="c0") == 20  # and it can still be updated


def test_a_failed_swap_puts_the_old_version_back(tmp_path, monkeypatch):
    vecs, labels, _ = _random_gallery(n=30, classes=3)
    path = tmp_path / "idx"
    index = from_embeddings(path, vecs, labels, _spec(), "fp")
    real, calls = store.os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new version onto INDEX_DIR, after the old one moved aside
            raise OSError("interrupted")
        return real(src, dst)

    monkeypatch.setattr(store.os, "replace", second_fails)
    with pytest.raises(OSError, match="interrupted"):
        index.remove(label="c1")
    monkeypatch.undo()
    assert len(GalleryIndex.open(path)) == 30
    assert _beside(tmp_path) == ["idx"]


def test_a_missing_index_names_the_version_an_interruption_left(tmp_path):
    vecs, labels, _ = _random_gallery(n=10)
    from_embeddings(tmp_path / "idx", vecs, labels, _spec(), "fp")
    shutil.move(tmp_path / "idx", tmp_path / ".idx.old-1234")
    with pytest.raises(TwinnetError, match=r"rename it back"):
        GalleryIndex.open(tmp_path / "idx")
    with pytest.raises(TwinnetError, match="not a gallery index"):
        GalleryIndex.open(tmp_path / "elsewhere")


def test_build_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.txt").write_text("mine")
    vecs, labels, _ = _random_gallery(n=10)
    with pytest.raises(TwinnetError, match="not a gallery index"):
        from_embeddings(tmp_path / "photos", vecs, labels, _spec(), "fp")
    assert (tmp_path / "photos" / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------ the model


@pytest.fixture(scope="module")
def twin(random_cosine_dir):
    from twinnet.infer.twin import Twin

    return Twin.load(random_cosine_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from twinnet.data.datasets import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), classes=2, per_class=3, size=64)


def test_a_different_model_or_preprocessing_is_refused(tmp_path, twin, random_cosine_dir, images):
    import torch

    from twinnet.core.artifacts import save_model_dir
    from twinnet.core.model import build_model
    from twinnet.infer.twin import Twin

    vecs, labels, _ = _random_gallery(n=10, classes=2)
    spec = _spec(dim=twin.spec.embedding_dim)
    vecs = _unit(np.random.default_rng(0).normal(size=(10, spec.embedding_dim)))
    path = tmp_path / "idx"
    from_embeddings(path, vecs, labels, spec, twin.fingerprint, model_dir=random_cosine_dir)
    GalleryIndex.open(path, twin=twin)  # the model it was built with: accepted

    torch.manual_seed(0)  # the same weights at another input size: other preprocessing
    other_spec = ModelSpec(arch="resnet18", image_size=96, head="cosine", embedding_dim=64)
    other_dir = save_model_dir(build_model(other_spec).eval(), other_spec, tmp_path / "other")
    other = Twin.load(other_dir, device="cpu", precision="fp32")
    assert other.fingerprint != twin.fingerprint
    with pytest.raises(TwinnetError, match="different model or preprocessing"):
        GalleryIndex.open(path, twin=other)
    # A model loaded from a moved model directory is checked the same way.
    with pytest.raises(TwinnetError, match="different model or preprocessing"):
        GalleryIndex.open(path, model_dir=other_dir).identify(images / "circle_0" / "0.png")


def test_a_concat_model_is_refused_with_what_to_run(tmp_path, random_model_dir, images):
    from twinnet.infer.twin import Twin

    concat = Twin.load(random_model_dir, device="cpu", precision="fp32")
    with pytest.raises(TwinnetError, match=r"needs a cosine model.*--head cosine"):
        GalleryIndex.build(concat, images, tmp_path / "idx")
    with pytest.raises(TwinnetError, match="needs a cosine model"):
        from_embeddings(tmp_path / "idx", np.eye(2), ["a", "b"], concat.spec, "fp")
    assert not (tmp_path / "idx").exists()


def test_add_skips_images_whose_bytes_are_in_and_encodes_only_new_ones(
    tmp_path, twin, random_cosine_dir, images
):
    from twinnet.infer.twin import Twin

    path = tmp_path / "idx"
    built = GalleryIndex.build(twin, images, path, model_dir=random_cosine_dir)
    assert len(built) == 6 and built.last_update.added == 6

    fresh = Twin.load(random_cosine_dir, device="cpu", precision="fp32")  # empty cache
    index = GalleryIndex.open(path, twin=fresh)
    update = index.add(images)
    assert (update.added, update.duplicates) == (0, 6) and len(index) == 6
    assert fresh.cache.misses == 0  # nothing was encoded

    more = tmp_path / "more"
    (more / "renamed").mkdir(parents=True)
    shutil.copy(images / "circle_0" / "0.png", more / "renamed" / "copy.png")  # same bytes
    shutil.copy(images / "circle_0" / "1.png", more / "renamed" / "again.png")
    from twinnet.data.datasets import make_shapes_dataset

    make_shapes_dataset(more, classes=1, per_class=2, size=64, seed=5)  # 2 new images
    update = index.add(more)
    assert (update.added, update.duplicates) == (2, 2)
    assert fresh.cache.misses == 2  # only the new images went through the encoder
    reopened = GalleryIndex.open(path)
    assert len(reopened) == 8 and reopened.labels() == {"circle_0": 5, "square_1": 3}


def test_an_interrupted_add_leaves_the_old_index(
    tmp_path, twin, random_cosine_dir, images, monkeypatch
):
    from twinnet.data.datasets import make_shapes_dataset

    path = tmp_path / "idx"
    index = GalleryIndex.build(twin, images, path, model_dir=random_cosine_dir)
    more = make_shapes_dataset(tmp_path / "more", classes=1, per_class=2, size=64, seed=3)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(KeyboardInterrupt):
        index.add(more)
    monkeypatch.undo()
    assert len(index) == 6 and len(GalleryIndex.open(path)) == 6
    assert index.add(more).added == 2  # the same handle goes on working


def test_fp32_and_auto_without_bf16_share_a_fingerprint(random_cosine_dir, monkeypatch):
    """An index built at ``auto`` on a CPU without native bf16 records fp32 and must reopen."""
    from twinnet.infer import runtime
    from twinnet.infer.twin import Twin

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    auto = Twin.load(random_cosine_dir, device="cpu", precision="auto", cache_mb=0)
    fp32 = Twin.load(random_cosine_dir, device="cpu", precision="fp32", cache_mb=0)
    assert auto.precision == "fp32" and auto.runtime.channels_last
    assert auto.fingerprint == fp32.fingerprint


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_recorded_recall_is_what_new_queries_get(tmp_path, kind):
    """Recall is measured on queries that are not in the index, as a new photo is not:
    a gallery vector finds itself, so measuring on those overstates recall."""
    rng = np.random.default_rng(1)
    dim = 128
    centres = _unit(rng.normal(size=(3000, dim)))

    def around(n: int) -> np.ndarray:
        picks = centres[rng.integers(0, len(centres), n)]
        return _unit(picks + 0.8 * rng.normal(size=(n, dim)) / np.sqrt(dim))

    vecs = around(30000)
    labels = [f"c{i}" for i in range(len(vecs))]
    index = from_embeddings(tmp_path / kind, vecs, labels, _spec(dim=dim), "fp", kind=kind)
    recorded = GalleryIndex.open(tmp_path / kind).info["recall_at_10"]
    queries = around(300)
    truth = np.argsort(-(queries @ vecs.T), axis=1)[:, :10]
    _, found = index.neighbours(queries, 10)
    new = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recorded >= TARGET_RECALL
    assert new >= TARGET_RECALL - 0.015, (recorded, new)
    assert abs(recorded - new) <= 0.02, (recorded, new)  # what is said is what is got


def test_the_identification_threshold_rises_with_the_gallery_from_the_calibration(tmp_path):
    """A stranger meets every gallery image, so the pair threshold is raised with the size."""
    from twinnet.core.calibration import Calibration
    from twinnet.index import identification_threshold

    cal = Calibration(
        scale=10.0, bias=-5.0, threshold=0.5, method="held-out classes", target="accuracy",
        pairs=1000, eer=0.1, score_threshold=0.5, accuracy=0.9,
        impostor_tail=((0.1, 0.3), (0.01, 0.6), (0.001, 0.8)),
    )  # fmt: skip
    spec = _spec(0.5)
    spec.calibration = cal.to_dict()
    vecs, labels, _ = _random_gallery(n=50, classes=50)
    # 50 images: each may be passed at 0.05 / 50 = 1e-3, i.e. from cosine 0.8, p = 0.953.
    assert identification_threshold(spec, 50) == pytest.approx(1 / (1 + math.exp(-3.0)))
    near = _at_cosine(vecs[7], _unit(np.eye(DIM)[None, 0] - vecs[7][0] * vecs[7])[0], 0.7)
    index = from_embeddings(tmp_path / "raised", vecs, labels, spec, "fp")
    (result,) = index.identify_embeddings(near[None])
    assert result.matches[0].label == labels[7]
    assert result.matches[0].probability == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-3)
    assert not result.known and result.threshold == pytest.approx(0.9526, abs=1e-4)
    assert index.info["threshold"] == result.threshold and index.info["pair_threshold"] == 0.5
    # The same model without the tail (an older calibration) decides at the pair threshold.
    spec.calibration = {k: v for k, v in cal.to_dict().items() if k != "impostor_tail"}
    (old,) = from_embeddings(tmp_path / "pair", vecs, labels, spec, "fp").identify_embeddings(
        near[None]
    )
    assert old.known and old.threshold == 0.5
