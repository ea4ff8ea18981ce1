"""A gallery index in an archive: shipped in ``index/`` beside the model files, and refused
when it cannot serve (a concat model, another model's index, another precision)."""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile

import pytest

pytest.importorskip("faiss")
pytest.importorskip("model_archiver")

from twinnet.cli import main  # noqa: E402
from twinnet.engines.torchserve.archive import build_archive  # noqa: E402
from twinnet.errors import TwinnetError  # noqa: E402

pytestmark = pytest.mark.unit

INDEX_FILES = {"index.json", "model.json", "gallery.sqlite", "vectors.npy", "faiss.index"}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    from twinnet.data.datasets import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("gallery"), classes=3, per_class=2, size=64)


@pytest.fixture(scope="module")
def index_dir(random_cosine_dir, gallery, tmp_path_factory):
    """An index of ``gallery`` built with the cosine model at fp32."""
    from twinnet.infer.twin import Twin

    out = tmp_path_factory.mktemp("built") / "idx"
    from twinnet.index import GalleryIndex

    GalleryIndex.build(Twin.load(random_cosine_dir, device="cpu", precision="fp32"), gallery, out)
    return out


def _entries(mar) -> dict[str, bytes]:
    with zipfile.ZipFile(mar) as z:
        return {n: z.read(n) for n in z.namelist() if not n.endswith("/")}


def test_the_archive_ships_the_index_beside_the_model_at_its_precision(
    random_cosine_dir, index_dir, tmp_path
):
    mar = build_archive(random_cosine_dir, tmp_path / "store", workers=1, index=index_dir)
    entries = _entries(mar)
    shipped = {n.split("/", 1)[1] for n in entries if n.startswith("index/")}
    assert shipped == INDEX_FILES
    for name in INDEX_FILES:
        assert entries[f"index/{name}"] == (index_dir / name).read_bytes()
    assert "twinnet.json" in entries and "handler.py" in entries
    # precision auto became the index's, so queries are embedded as its gallery was
    config = entries["model-config.yaml"].decode()
    assert "precision: fp32" in config
    # Without --index nothing of the kind is in the archive.
    plain = build_archive(random_cosine_dir, tmp_path / "plain", workers=1)
    assert not [n for n in _entries(plain) if n.startswith("index/")]
    assert "precision: auto" in _entries(plain)["model-config.yaml"].decode()


def test_an_index_of_another_model_is_refused(index_dir, tmp_path):
    import torch

    from twinnet.core.artifacts import save_model_dir
    from twinnet.core.model import build_model
    from twinnet.core.spec import ModelSpec

    torch.manual_seed(1)  # other weights, same architecture and preprocessing
    spec = ModelSpec(arch="resnet18", image_size=64, head="cosine", embedding_dim=64)
    other = save_model_dir(build_model(spec).eval(), spec, tmp_path / "other")
    with pytest.raises(TwinnetError, match="does not belong to .*different model"):
        build_archive(other, tmp_path / "store", index=index_dir)
    assert not (tmp_path / "store" / "twin.mar").exists()


def test_a_concat_model_is_refused_with_what_to_run(random_model_dir, index_dir, tmp_path):
    with pytest.raises(TwinnetError, match=r"--index needs a cosine model.*--head cosine"):
        build_archive(random_model_dir, tmp_path / "store", index=index_dir)


def test_another_explicit_precision_is_refused(random_cosine_dir, index_dir, tmp_path):
    with pytest.raises(TwinnetError, match=r"built at precision fp32.*drop --precision bf16"):
        build_archive(random_cosine_dir, tmp_path / "store", precision="bf16", index=index_dir)
    # the index's own precision, named, is fine
    build_archive(random_cosine_dir, tmp_path / "store", precision="fp32", index=index_dir)


def test_not_an_index_is_refused(random_cosine_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TwinnetError, match="not a gallery index"):
        build_archive(random_cosine_dir, tmp_path / "store", index=tmp_path / "empty")


def test_package_and_the_cli_take_index(random_cosine_dir, index_dir, tmp_path, capsys):
    from twinnet.container.package import package

    tarball = package(random_cosine_dir, tmp_path / "model.tar.gz", index=index_dir)
    with tarfile.open(tarball) as tar:
        (member,) = tar.getmembers()
        tar.extract(member, tmp_path / "unpacked", filter="data")
    assert INDEX_FILES <= {
        n.split("/", 1)[1] for n in _entries(tmp_path / "unpacked" / member.name) if "/" in n
    }

    code = main(["archive", str(random_cosine_dir), "--out", str(tmp_path / "s"), "--index", str(index_dir)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "index/faiss.index" in _entries(out.strip())

    # serve takes --index with a model directory only: an archive keeps what it was built with
    code = main(["serve", str(tmp_path / "s"), "--index", str(index_dir)])
    _, err = capsys.readouterr()
    assert code == 2 and "--index goes with a model directory" in err

    code = main(["package", str(tmp_path / "s"), "--index", str(index_dir)])
    _, err = capsys.readouterr()
    assert code == 2 and "not a twinnet model directory" in err


def test_the_index_must_not_change_while_it_is_archived(random_cosine_dir, index_dir, tmp_path):
    from twinnet.contract import gallery as shipped

    checked = shipped.check_index(random_cosine_dir, index_dir)
    meta = json.loads((index_dir / "index.json").read_text())
    copy = tmp_path / "idx"
    shutil.copytree(index_dir, copy)
    (copy / "index.json").write_text(json.dumps({**meta, "generation": meta["generation"] + 1}))
    moved = type(checked)(copy, checked.generation, checked.precision, checked.count)
    with pytest.raises(TwinnetError, match="changed while it was being archived"):
        shipped.stage_index(moved, tmp_path / "stage")


def test_the_deploy_digest_follows_the_index_content_not_its_path(
    random_cosine_dir, index_dir, tmp_path
):
    """Adding images to the same index folder must make `deploy` ship a new artifact."""
    from twinnet.aws.plan import artifact_digest
    from twinnet.data.datasets import make_shapes_dataset
    from twinnet.index import GalleryIndex
    from twinnet.infer.twin import Twin

    copy = tmp_path / "idx"
    shutil.copytree(index_dir, copy)
    before = artifact_digest(random_cosine_dir, {"index": str(copy)})
    assert before == artifact_digest(random_cosine_dir, {"index": str(copy)})
    assert before != artifact_digest(random_cosine_dir, {})
    more = make_shapes_dataset(tmp_path / "more", classes=1, per_class=2, size=64, seed=7)
    twin = Twin.load(random_cosine_dir, device="cpu", precision="fp32")
    GalleryIndex.open(copy, twin=twin).add(more)
    assert artifact_digest(random_cosine_dir, {"index": str(copy)}) != before
