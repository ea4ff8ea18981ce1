"""``twinnet index`` and ``twinnet identify`` through the CLI, on generated images.

The model is the untrained resnet18 cosine model at 64 px: these tests check the plumbing
(shapes, own-image retrieval, incremental adds), not accuracy.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("faiss")

from twinnet.cli import main  # noqa: E402
from twinnet.data.datasets import make_shapes_dataset  # noqa: E402
from twinnet.infer.twin import Twin  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("gallery"), classes=4, per_class=5, size=64)


@pytest.fixture
def encoded(monkeypatch) -> list[int]:
    """Images that went through the encoder, counted per forward pass (the real one runs)."""
    counts: list[int] = []
    real = Twin._encode

    def counting(self, batch, *args, **kwargs):
        counts.append(int(batch.shape[0]))
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(Twin, "_encode", counting)
    return counts


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _info(capsys, index) -> dict:
    code, out, _ = _run(capsys, "index", "info", index, "--json")
    assert code == 0
    return json.loads(out)


def test_build_identify_add_remove_export(tmp_path, capsys, gallery, random_cosine_dir, encoded):
    index = tmp_path / "idx"
    code, out, err = _run(capsys, "index", "build", random_cosine_dir, gallery, "--out", index)
    assert code == 0, err
    assert "indexed 20 images of 4 classes" in out and "kind:      flat" in out
    assert sum(encoded) == 20

    # A gallery image finds its own class first, through its own picture.
    query = gallery / "square_1" / "2.png"
    code, out, err = _run(capsys, "identify", query, "--index", index, "--top-k", "3", "--json")
    assert code == 0, err
    (line,) = out.splitlines()
    result = json.loads(line)
    assert set(result) == {"query", "known", "matches", "threshold", "model"}
    assert result["model"] == "twin" and result["threshold"] == 0.5
    assert isinstance(result["known"], bool)
    assert len(result["matches"]) == 3
    assert [set(m) for m in result["matches"]] == [{"label", "probability", "path"}] * 3
    assert len({m["label"] for m in result["matches"]}) == 3  # one row per class
    best = result["matches"][0]
    assert best["label"] == "square_1" and best["path"] == str(query.resolve())
    probs = [m["probability"] for m in result["matches"]]
    assert probs == sorted(probs, reverse=True)
    assert result["known"] == (best["probability"] >= result["threshold"])
    # The probability is the model's own: that of comparing the two images.
    twin = Twin.load(random_cosine_dir, precision=_info(capsys, index)["model"]["precision"])
    for m in result["matches"]:
        assert m["probability"] == pytest.approx(
            twin.compare(query, m["path"]).probability, abs=1e-4
        )

    # Several queries give one JSON line each; text output names the verdict.
    other = gallery / "circle_0" / "0.png"
    code, out, _ = _run(capsys, "identify", query, other, "--index", index, "--json")
    assert [json.loads(x)["query"] for x in out.splitlines()] == [str(query), str(other)]
    code, out, _ = _run(capsys, "identify", other, "--index", index)
    assert code == 0 and "known" in out.splitlines()[0] and "circle_0" in out

    # Adding the same folder adds nothing and encodes nothing.
    encoded.clear()
    code, out, err = _run(capsys, "index", "add", index, gallery)
    assert code == 0, err
    assert "added 0 image(s)" in out and "skipped 20" in out
    assert sum(encoded) == 0 and _info(capsys, index)["count"] == 20

    # Five new images beside copies of three old ones: only the five are encoded.
    more = tmp_path / "more"
    make_shapes_dataset(more, classes=1, per_class=5, size=64, seed=11)
    (more / "square_1").mkdir()
    for i in range(3):
        shutil.copy(gallery / "square_1" / f"{i}.png", more / "square_1" / f"old{i}.png")
    code, out, err = _run(capsys, "index", "add", index, more)
    assert code == 0, err
    assert "added 5 image(s); the index holds 25" in out and "skipped 3" in out
    assert sum(encoded) == 5
    code, out, _ = _run(capsys, "identify", more / "circle_0" / "4.png", "--index", index, "--json")
    assert json.loads(out)["matches"][0]["path"] == str((more / "circle_0" / "4.png").resolve())

    # Remove a class; export what is left.
    code, out, _ = _run(capsys, "index", "remove", index, "--label", "square_1")
    assert code == 0 and "removed 5 image(s); the index holds 20" in out
    code, out, _ = _run(capsys, "identify", query, "--index", index, "--json", "--top-k", "10")
    assert "square_1" not in {m["label"] for m in json.loads(out)["matches"]}
    pq = pytest.importorskip("pyarrow.parquet")
    code, out, _ = _run(capsys, "index", "export", index, "--out", tmp_path / "g.parquet")
    assert code == 0
    table = pq.read_table(tmp_path / "g.parquet")
    assert table.num_rows == 20 and table.column_names == ["id", "label", "path", "embedding"]
    assert len(table.column("embedding")[0]) == 64


def test_info_reports_an_approximate_kind_and_its_recall(
    tmp_path, capsys, gallery, random_cosine_dir
):
    index = tmp_path / "idx"
    argv = ("index", "build", random_cosine_dir, gallery, "--out", index, "--kind", "hnsw")
    code, out, err = _run(capsys, *argv, "--precision", "fp32")
    assert code == 0, err
    assert "kind:      hnsw" in out and "recall@10" in out
    info = _info(capsys, index)
    assert info["kind"] == "hnsw" and info["recall_at_10"] >= 0.95
    assert info["model"]["precision"] == "fp32"
    code, out, _ = _run(capsys, "index", "info", index)
    assert "recall@10" in out and "20 of 4 classes" in out
    # Queries load the model at the precision the index was built with.
    code, out, err = _run(
        capsys, "identify", gallery / "cross_3" / "1.png", "--index", index, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["matches"][0]["label"] == "cross_3"


def test_cli_errors_are_one_line_with_what_to_do(
    tmp_path, capsys, gallery, random_model_dir, random_cosine_dir
):
    code, _, err = _run(
        capsys, "index", "build", random_model_dir, gallery, "--out", tmp_path / "c"
    )
    assert code == 2 and "needs a cosine model" in err and "--head cosine" in err

    index = tmp_path / "idx"
    assert _run(capsys, "index", "build", random_cosine_dir, gallery, "--out", index)[0] == 0
    query = gallery / "circle_0" / "0.png"
    for bad in ("0", "1001"):
        code, _, err = _run(capsys, "identify", query, "--index", index, "--top-k", bad)
        assert code == 2 and err.startswith("error: top_k must be between 1 and 1000")
    code, _, err = _run(capsys, "identify", tmp_path / "nope.png", "--index", index)
    assert code == 2 and "no such file" in err
    code, _, err = _run(capsys, "identify", query, "--index", tmp_path / "none")
    assert code == 2 and "twinnet index build" in err
    code, _, err = _run(capsys, "index", "remove", index, "--label", "nobody")
    assert code == 2 and "no image labelled 'nobody'" in err

    # The model moved: identify says so, and --model points at its new place.
    moved = tmp_path / "moved_model"
    shutil.copytree(random_cosine_dir, moved)
    shutil.move(index, tmp_path / "idx2")
    index2 = tmp_path / "idx2"
    code, _, err = _run(capsys, "identify", query, "--index", index2, "--model", tmp_path / "gone")
    assert code == 2 and "is gone" in err
    code, out, err = _run(capsys, "identify", query, "--index", index2, "--model", moved, "--json")
    assert code == 0, err
