"""The app's Identify mode (``twinnet app --index``), driven through Streamlit's AppTest.

A real gallery index of generated shapes, real models, and every answer checked against
``GalleryIndex.identify`` on the same bytes in process: a gallery image, an image of a
class the gallery lacks, noise, a bad upload, a gallery image that has gone, a remote
backend, and ``twinnet app --index`` refusing what cannot work before Streamlit starts.
"""

from __future__ import annotations

import io
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("faiss")
pytest.importorskip("streamlit")

from twinnet.app import kit as appkit  # noqa: E402
from twinnet.index import GalleryIndex  # noqa: E402
from twinnet.infer.twin import Twin  # noqa: E402

pytestmark = pytest.mark.integration

APP = str(Path(__file__).resolve().parents[2] / "src" / "twinnet" / "app" / "page.py")
TIMEOUT = 180
GALLERY_CLASSES = 4
ROW = re.compile(r"#(\d+) (.+)  \n(\d+\.\d)% · (reaches|below) the threshold")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cosine_dir(trained_model_dir: Path) -> Path:
    """The suite's trained cosine model (shapes at 32 px): it tells unseen classes apart."""
    return trained_model_dir


@pytest.fixture(scope="module")
def shapes(cosine_dir: Path) -> list[Path]:
    """The class folders the model was trained on (corrupt files left out)."""
    return sorted(p for p in (cosine_dir.parent / "data").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def gallery(shapes: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first four classes, eight images each; the other classes stay unseen."""
    root = tmp_path_factory.mktemp("gallery")
    for folder in shapes[:GALLERY_CLASSES]:
        (root / folder.name).mkdir()
        for f in sorted(folder.glob("*.png"))[:8]:
            if f.name != "corrupt.png":
                shutil.copy(f, root / folder.name / f.name)
    return root


@pytest.fixture(scope="module")
def index_dir(cosine_dir: Path, gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``twinnet index build`` of the gallery with the model, as a user would make it."""
    from twinnet.cli import main

    out = tmp_path_factory.mktemp("index") / "idx"
    assert main(["index", "build", str(cosine_dir), str(gallery), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def library(index_dir: Path) -> GalleryIndex:
    """The library itself, to check that the page shows what the index answers."""
    return GalleryIndex.open(index_dir)


# --------------------------------------------------------------------------- helpers


def new_app(monkeypatch: pytest.MonkeyPatch, **env: str):
    """An AppTest of the real script, started as ``twinnet app`` would start it."""
    from streamlit.testing.v1 import AppTest

    for name in appkit.ENV.values():
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(appkit.ENV[key], value)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def to_identify(at):
    at.radio(key="mode").set_value("Identify").run()
    assert not at.exception, at.exception
    return at


def identify(at, name: str, data: bytes, top_k: int | None = None):
    uploader = next(u for u in at.file_uploader if u.label == "Image to identify")
    uploader.set_value((name, data, "image/png"))
    if top_k is not None:
        at.number_input(key="identify_top_k").set_value(top_k)
    at.run()
    at.button(key="identify").click().run()
    assert not at.exception, at.exception
    return at


def plain(markdown: str) -> str:
    """Markdown source as the reader sees it: bold markers and backslash escapes removed."""
    return re.sub(r"\\(.)", r"\1", re.sub(r"(?<!\\)\*\*", "", markdown))


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def shown_rows(at) -> list[tuple[int, str, str, bool]]:
    """(rank, label, percent, reaches the threshold) of each match row on the page."""
    found = [ROW.fullmatch(plain(m.value)) for m in at.markdown]
    return [(int(m[1]), m[2], m[3], m[4] == "reaches") for m in found if m]


def expected_rows(result) -> list[tuple[int, str, str, bool]]:
    return [
        (rank, m.label, f"{m.probability * 100:.1f}", m.probability >= result.threshold)
        for rank, m in enumerate(result.matches, 1)
    ]


def shown_verdict(at) -> str:
    """The verdict line: a success naming the class, or a warning saying unknown."""
    lines = [plain(s.value) for s in at.success] + [plain(w.value) for w in at.warning]
    (line,) = lines
    return line


def expected_verdict(result) -> str:
    if result.known:
        best = result.matches[0]
        return f"Identified: {best.label} · p(same) {best.probability * 100:.1f}%"
    return f"unknown — no gallery class reaches the threshold ({result.threshold:.2f})"


def noise_png(seed: int = 0, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- identify


@pytest.mark.parametrize("trained_model_dir", ["cosine"], indirect=True)
def test_a_gallery_image_is_identified_as_its_class(
    monkeypatch: pytest.MonkeyPatch, cosine_dir: Path, index_dir: Path, gallery: Path, library
) -> None:
    at = new_app(monkeypatch, model=str(cosine_dir), index=str(index_dir))
    assert at.radio(key="mode").options == ["Compare two images", "Search a gallery", "Identify"]
    to_identify(at)
    (caption,) = [c.value for c in at.caption if c.value.startswith("Gallery index")]
    assert f"32 images of {GALLERY_CLASSES} classes" in caption
    assert "the app's model" in caption  # the loaded model is shared, not loaded twice

    label = sorted(p.name for p in gallery.iterdir())[1]
    query = sorted((gallery / label).glob("*.png"))[2]
    data = query.read_bytes()
    assert at.button(key="identify").disabled  # nothing to identify yet
    assert not at.success and not at.warning, "nothing is computed before Identify is pressed"
    identify(at, "query.png", data)
    assert not errors(at)

    expected = library.identify([data], top_k=5)[0]
    assert expected.known and expected.matches[0].label == label
    assert expected.matches[0].path == str(query.resolve())
    assert shown_verdict(at) == expected_verdict(expected)
    rows = shown_rows(at)
    assert rows == expected_rows(expected) and rows[0][1] == label
    assert len(rows) == GALLERY_CLASSES  # every class once, however many images it has
    # One thumbnail per match, plus the query's preview.
    assert len(at.image) == 1 + len(rows)

    # Fewer classes asked for: the page shows what the index answers for that top-k.
    identify(at, "query.png", data, top_k=2)
    assert shown_rows(at) == expected_rows(library.identify([data], top_k=2)[0])


@pytest.mark.parametrize("trained_model_dir", ["cosine"], indirect=True)
@pytest.mark.parametrize("query", ["unseen class", "noise"])
def test_an_image_outside_the_gallery_gets_the_indexs_verdict(
    monkeypatch: pytest.MonkeyPatch, cosine_dir: Path, index_dir: Path, shapes, library, query
) -> None:
    if query == "noise":
        data = noise_png()
    else:
        data = sorted(shapes[GALLERY_CLASSES].glob("*.png"))[0].read_bytes()
    at = to_identify(new_app(monkeypatch, model=str(cosine_dir), index=str(index_dir)))
    identify(at, "query.png", data)
    assert not errors(at)
    expected = library.identify([data], top_k=5)[0]
    # Whatever the index says, the page says the same: known with its class, or unknown.
    assert shown_verdict(at) == expected_verdict(expected)
    assert shown_rows(at) == expected_rows(expected)
    if not expected.known:
        assert not at.success and not any(row[3] for row in shown_rows(at))


@pytest.mark.parametrize("trained_model_dir", ["cosine"], indirect=True)
def test_a_bad_upload_is_an_error_and_the_next_one_works(
    monkeypatch: pytest.MonkeyPatch, cosine_dir: Path, index_dir: Path, gallery: Path, library
) -> None:
    at = to_identify(new_app(monkeypatch, model=str(cosine_dir), index=str(index_dir)))
    uploader = next(u for u in at.file_uploader if u.label == "Image to identify")
    uploader.set_value(("notes.png", b"these are my notes, not a picture", "image/png"))
    at.run()
    assert not at.exception
    assert any("notes.png" in e and "not a readable image" in e for e in errors(at))
    assert at.button(key="identify").disabled

    data = next(gallery.glob("*/*.png")).read_bytes()
    identify(at, "good.png", data)
    assert not errors(at)
    expected = library.identify([data], top_k=5)[0]
    assert shown_verdict(at) == expected_verdict(expected)
    assert shown_rows(at)[0][1] == expected.matches[0].label


# --------------------------------------------------------------------------- the model


@pytest.fixture
def moved_index(random_cosine_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """An index whose model directory and one gallery image are gone since it was built."""
    model = tmp_path / "model"
    shutil.copytree(random_cosine_dir, model)
    gallery = tmp_path / "gallery"
    from twinnet.data.datasets import make_shapes_dataset

    make_shapes_dataset(gallery, classes=3, per_class=3, size=64)
    index = tmp_path / "idx"
    GalleryIndex.build(Twin.load(model), gallery, index, model_dir=model)
    gone = gallery / "circle_0" / "1.png"
    kept = tmp_path / "gone.png"
    shutil.move(gone, kept)
    shutil.rmtree(model)
    return index, kept


def test_a_remote_backend_without_the_model_here_says_so(
    monkeypatch: pytest.MonkeyPatch, moved_index: tuple[Path, Path]
) -> None:
    index, _ = moved_index
    port = closed_port()
    at = to_identify(new_app(monkeypatch, url=f"http://127.0.0.1:{port}", index=str(index)))
    (message,) = errors(at)
    assert message.startswith("With --index, Identify runs in the app's process")
    assert "--identify instead of --index" in message
    assert f"TorchServe at http://127.0.0.1:{port}" in message
    assert "not on this machine" in message and f"--index {index}" in message
    assert not at.file_uploader, "nothing to upload while Identify cannot run"
    # The other modes still work from the same page.
    at.radio(key="mode").set_value("Compare two images").run()
    assert not at.exception and not errors(at)


def test_a_remote_backend_identifies_with_the_indexs_model(
    monkeypatch: pytest.MonkeyPatch, random_cosine_dir: Path, tmp_path: Path
) -> None:
    from twinnet.data.datasets import make_shapes_dataset

    gallery = make_shapes_dataset(tmp_path / "gallery", classes=3, per_class=3, size=64)
    index = tmp_path / "idx"
    GalleryIndex.build(Twin.load(random_cosine_dir), gallery, index, model_dir=random_cosine_dir)
    port = closed_port()
    at = to_identify(new_app(monkeypatch, url=f"http://127.0.0.1:{port}", index=str(index)))
    (caption,) = [c.value for c in at.caption if c.value.startswith("Gallery index")]
    assert str(random_cosine_dir.resolve()) in caption
    data = (gallery / "square_1" / "2.png").read_bytes()
    identify(at, "q.png", data)
    assert not errors(at)
    expected = GalleryIndex.open(index).identify([data], top_k=5)[0]
    assert shown_verdict(at) == expected_verdict(expected)
    assert shown_rows(at) == expected_rows(expected)


def test_a_gallery_image_that_is_gone_shows_its_label_without_a_picture(
    monkeypatch: pytest.MonkeyPatch, random_cosine_dir: Path, moved_index: tuple[Path, Path]
) -> None:
    # The app's model is the one the index was built with, so the index shares it, although
    # the directory the index recorded is gone.
    index, gone = moved_index
    at = to_identify(new_app(monkeypatch, model=str(random_cosine_dir), index=str(index)))
    assert not errors(at)
    data = gone.read_bytes()
    identify(at, "gone.png", data)
    assert not errors(at)
    rows = shown_rows(at)
    assert rows[0][1] == "circle_0"  # its own picture, still in the index
    assert [c.value for c in at.caption].count("(gallery image not readable here)") == 1
    assert len(at.image) == 1 + len(rows) - 1


def test_without_an_index_the_app_has_no_identify_mode(
    monkeypatch: pytest.MonkeyPatch, random_cosine_dir: Path
) -> None:
    at = new_app(monkeypatch, model=str(random_cosine_dir))
    assert at.radio(key="mode").options == ["Compare two images", "Search a gallery"]


# --------------------------------------------------------------------------- the server's index


@pytest.fixture(scope="module")
def served_index(random_cosine_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """TorchServe with an archive that carries a gallery index (``twinnet serve --index``)."""
    from twinnet.data.datasets import make_shapes_dataset
    from twinnet.engines import server

    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17")
    base = tmp_path_factory.mktemp("served-index")
    gallery = make_shapes_dataset(base / "gallery", classes=3, per_class=3, size=64)
    twin = Twin.load(random_cosine_dir, device="cpu", precision="fp32")
    index = GalleryIndex.build(twin, gallery, base / "idx", model_dir=random_cosine_dir)
    with pytest.MonkeyPatch.context() as mp:
        # The client finds the token of a local server in the state root, as a user's would.
        mp.setenv("TWINNET_HOME", str(base / "home"))
        ports = [closed_port() for _ in range(3)]
        info = server.start(
            random_cosine_dir,
            port=ports[0],
            management_port=ports[1],
            metrics_port=ports[2],
            default_workers=1,
            index=index.path,
            precision="fp32",
        )
        try:
            yield f"http://127.0.0.1:{info.port}", gallery, index
        finally:
            server.stop(port=info.port)


def test_identify_asks_the_server_that_holds_the_index(
    monkeypatch: pytest.MonkeyPatch, served_index
) -> None:
    url, gallery, index = served_index
    at = new_app(monkeypatch, url=url, identify="1")
    assert at.radio(key="mode").options == ["Compare two images", "Search a gallery", "Identify"]
    to_identify(at)
    (caption,) = [c.value for c in at.caption if c.value.startswith("The gallery index")]
    assert f"TorchServe at {url}" in caption
    data = (gallery / "triangle_2" / "2.png").read_bytes()
    identify(at, "q.png", data, top_k=2)
    assert not errors(at)
    expected = GalleryIndex.open(index.path).identify([data], top_k=2)[0]
    assert shown_verdict(at) == expected_verdict(expected)
    assert shown_rows(at) == expected_rows(expected)
    # The gallery is on this machine, so each match shows its picture beside the query's.
    assert len(at.image) == 1 + len(expected.matches)

    # A bad upload is named before any request; the next good one is answered.
    uploader = next(u for u in at.file_uploader if u.label == "Image to identify")
    uploader.set_value(("broken.png", b"not an image", "image/png"))
    at.run()
    assert any("broken.png" in e and "not a readable image" in e for e in errors(at))
    assert at.button(key="identify").disabled
    other = (gallery / "square_1" / "1.png").read_bytes()
    identify(at, "q2.png", other)
    assert not errors(at)
    # (the page keeps the top-k set before)
    expected = GalleryIndex.open(index.path).identify([other], top_k=2)[0]
    assert shown_rows(at) == expected_rows(expected)


def test_identify_without_a_server_that_answers_is_an_error(
    monkeypatch: pytest.MonkeyPatch, random_cosine_dir: Path
) -> None:
    port = closed_port()
    at = to_identify(new_app(monkeypatch, url=f"http://127.0.0.1:{port}", identify="1"))
    identify(at, "q.png", noise_png())
    (message,) = errors(at)
    assert message.startswith("cannot connect to") and str(port) in message
    assert not at.success and not at.warning
    # A model in process cannot be asked: the page says what to choose instead.
    at = to_identify(new_app(monkeypatch, model=str(random_cosine_dir), identify="1"))
    assert any("Identify asks the server" in i.value for i in at.info)
    assert not at.file_uploader or all(u.label != "Image to identify" for u in at.file_uploader)


# --------------------------------------------------------------------------- command line


def _app(capsys, *argv: str) -> tuple[int, str]:
    from twinnet.cli import main

    code = main(["app", *map(str, argv)])
    return code, capsys.readouterr().err


def test_the_command_line_refuses_what_cannot_identify(
    capsys, random_model_dir: Path, moved_index: tuple[Path, Path], tmp_path: Path
) -> None:
    index, _ = moved_index
    code, err = _app(capsys, "--model", random_model_dir, "--index", index)
    assert code == 2 and err.startswith("error: --index needs a cosine model")
    assert "concat head" in err and "Traceback" not in err
    code, err = _app(capsys, "--index", tmp_path)
    assert code == 2 and "is not a gallery index" in err and "twinnet index build" in err
    code, err = _app(capsys, "--model", random_model_dir, "--identify")
    assert code == 2 and err.startswith("error: --identify asks a server") and "--url" in err


def test_the_command_line_hands_the_index_to_the_app(moved_index: tuple[Path, Path]) -> None:
    from twinnet.cli import build_parser
    from twinnet.cli.app import build_command

    index, _ = moved_index
    args = build_parser().parse_args(["app", "--url", "http://127.0.0.1:8080", "--index", "x"])
    _, env = build_command(args, environ={"TWINNET_APP_INDEX": str(index)})
    assert env["TWINNET_APP_INDEX"] == str(Path("x").resolve())
    assert "TWINNET_APP_IDENTIFY" not in env
    args = build_parser().parse_args(["app"])
    _, env = build_command(args, environ={"TWINNET_APP_INDEX": str(index)})
    assert "TWINNET_APP_INDEX" not in env  # only this command line decides
    args = build_parser().parse_args(["app", "--endpoint", "pets", "--identify"])
    _, env = build_command(args, environ={})
    assert env["TWINNET_APP_IDENTIFY"] == "1" and "TWINNET_APP_INDEX" not in env
    with pytest.raises(SystemExit):  # one way to identify at a time
        build_parser().parse_args(["app", "--url", "http://h", "--identify", "--index", "x"])
