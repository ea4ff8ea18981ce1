"""Identify in the app: which class of a gallery index an uploaded image shows, if any.

Two ways in, said in the app's environment:

- ``twinnet app --index INDEX_DIR`` (``TWINNET_APP_INDEX``): queries are embedded in the
  app's process, by the app's own model when it is the one the index was built with (so one
  copy sits in memory), otherwise by the model directory the index records, which then has
  to be on the app's machine.
- ``twinnet app --url URL | --endpoint NAME --identify`` (``TWINNET_APP_IDENTIFY``): the
  server answers, from the index its archive or package carries (``--index`` at serve,
  package or deploy time); the app holds neither model nor index.

Kept free of Streamlit so it can be tested directly; ``app.py`` only lays it out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from twinnet.app.kit import ENV, ImageInput, remote_payload
from twinnet.core.imaging import decode_image
from twinnet.core.spec import ModelSpec
from twinnet.errors import TwinnetError
from twinnet.index import GalleryIndex
from twinnet.index.store import META

if TYPE_CHECKING:
    from twinnet.core.spec import ModelSpec
    from twinnet.index import GalleryIndex, Identification
    from twinnet.infer.twin import Twin

__all__ = [
    "OpenedIndex",
    "Row",
    "check_startup",
    "identify",
    "identify_remote",
    "index_from_env",
    "index_stamp",
    "markdown_escape",
    "open_index",
    "remote_from_env",
    "require_cosine",
    "result_key",
    "rows",
    "thumbnail",
    "verdict",
]

#: Characters that Streamlit's Markdown would otherwise read as formatting in a class label.
_MARKDOWN = set("\\`*_{}[]()<>#+-.!|:~$")


def index_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The index directory ``twinnet app --index`` was started with, or ``None``."""
    env = os.environ if env is None else env
    return env.get(ENV["index"], "").strip() or None


def remote_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``twinnet app --identify`` asked for the server's own identification."""
    env = os.environ if env is None else env
    return env.get(ENV["identify"], "").strip() not in ("", "0")


def index_stamp(path: str | os.PathLike[str]) -> float:
    """Changes whenever the index is rebuilt or updated (each version rewrites ``index.json``)."""
    try:
        return (Path(path) / META).stat().st_mtime
    except OSError:
        return 0.0


def require_cosine(spec: ModelSpec, model: str) -> None:
    """Raise when ``spec`` cannot identify: only a cosine head gives per-image embeddings."""
    if not spec.has_embeddings:
        raise TwinnetError(
            f"--index needs a cosine model: {model} ({spec.name!r}) has a {spec.head} head, "
            "which scores pairs and gives no per-image embedding to search a gallery index "
            "with. Start the app with the cosine model the index was built with, or without "
            "--index; train one with `twinnet train DATA_DIR --out MODEL_DIR --head cosine`."
        )


def check_startup(index_dir: str | os.PathLike[str], model_dir: str | None = None) -> None:
    """Fail before the app starts when ``--index`` cannot work, rather than in the page.

    Opening reads the index (not the model), so the index's own errors (faiss missing, a
    folder that is no index, an unreadable one) are said at once, and a concat model is
    refused before Streamlit starts.
    """
    GalleryIndex.open(index_dir)
    if model_dir:
        require_cosine(ModelSpec.load(model_dir), model_dir)


@dataclass(frozen=True)
class OpenedIndex:
    """A gallery index ready for queries, and which model embeds them (said on the page).

    Attributes:
        index: the opened index.
        model: the model that embeds queries: "the app's model" or a model directory.
    """

    index: GalleryIndex
    model: str


def _readable_model(path: str | None) -> bool:
    return bool(path) and Path(str(path), "twinnet.json").is_file()


def open_index(
    path: str | os.PathLike[str],
    twin: Twin | None = None,
    model_dir: str | None = None,
    backend: str | None = None,
) -> OpenedIndex:
    """Open the index at ``path`` with the model that will embed queries in this process.

    Args:
        path: the index directory.
        twin: the app's in-process model; attached when the index was built with it.
        model_dir: that model's directory, used when the index's recorded one is gone.
        backend: the app's remote backend, named in the message when no model is here.

    Raises:
        TwinnetError: the app's model is not a cosine model, or no model that can embed
            queries for this index is on this machine.
    """
    index = GalleryIndex.open(path)
    info = index.info["model"]
    if twin is not None:
        require_cosine(twin.spec, model_dir or "the app's model")
        if twin.fingerprint == info["fingerprint"]:
            index.attach(twin)
            return OpenedIndex(index, f"the app's model ({model_dir or twin.spec.name})")
    recorded = info.get("dir")
    if _readable_model(recorded):
        return OpenedIndex(index, str(recorded))
    if model_dir and _readable_model(model_dir):
        # The index moved away from its model: the app's model, loaded as the index was
        # built (device, precision); the index checks on first use that it is the same one.
        return OpenedIndex(GalleryIndex.open(path, model_dir=model_dir), model_dir)
    where = (
        f"was built with the model {recorded}, which is not on this machine"
        if recorded
        else "records no model directory"
    )
    fix = (
        f"start the app with `twinnet app --model MODEL_DIR --index {path}`, where MODEL_DIR "
        "is the model the index was built with"
    )
    if backend:
        raise TwinnetError(
            f"With --index, Identify runs in the app's process (it does not ask {backend}), "
            f"and the index {path} {where}. Copy that model directory here, or {fix}; or, "
            "when the server holds the index itself (served or deployed with --index), "
            "start the app with --identify instead of --index."
        )
    raise TwinnetError(f"the index {path} {where}; {fix}.")


def identify(index: GalleryIndex, image: ImageInput, top_k: int = 5) -> Identification:
    """The index's answer for one uploaded image (raises ImageError naming an unreadable one)."""
    decode_image(image.data, name=image.name)  # a named error before any model work
    return index.identify([image.data], top_k=top_k)[0]


def identify_remote(backend: object, image: ImageInput, top_k: int = 5) -> Identification:
    """The server's answer for one uploaded image (a model served or deployed with ``--index``).

    The upload is read here first, so a file that is no image is named without a round trip;
    large photos travel as a smaller JPEG, as comparisons do.
    """
    decode_image(image.data, name=image.name)
    ask = getattr(backend, "identify", None)
    if ask is None:
        raise TwinnetError(
            "this backend cannot identify: --identify asks a TorchServe server or a "
            "SageMaker endpoint; with a model in the app's process use --index INDEX_DIR"
        )
    return ask(remote_payload(image), top_k=int(top_k))


def verdict(result: Identification) -> str:
    """The page's one-line answer: the best class when it is known, else why it is not."""
    if result.known and result.matches:
        return result.matches[0].label
    return f"unknown — no gallery class reaches the threshold ({result.threshold:.2f})"


@dataclass(frozen=True)
class Row:
    """One shown match: a gallery class, its best image and the probability of "same"."""

    rank: int
    label: str
    probability: float
    path: str
    same: bool


def rows(result: Identification) -> list[Row]:
    """The matches as ranked rows, best first, each marked by whether it reaches the threshold."""
    return [
        Row(rank, m.label, float(m.probability), m.path, m.probability >= result.threshold)
        for rank, m in enumerate(result.matches, 1)
    ]


def thumbnail(path: str | os.PathLike[str], size: int) -> Image.Image | None:
    """The gallery image at ``path`` shrunk to ``size`` px, or ``None`` when it cannot be read.

    Gallery images may have moved since the index was built, or live on another machine;
    the page then shows the match without its picture.
    """
    try:
        img = decode_image(Path(path), draft=(size, size))
    except (OSError, TwinnetError):
        return None
    img = img.copy()
    img.thumbnail((size, size), Image.BILINEAR)
    return img


def result_key(index: str, stamp: float, model: str, image: ImageInput, top_k: int) -> str:
    """Cache key of one identification: index version, model, the image's bytes and top-k."""
    return f"identify|{index}|{stamp}|{model}|{image.digest}|{int(top_k)}"


def markdown_escape(text: str) -> str:
    """``text`` shown as it is by Streamlit's Markdown (class labels are free text)."""
    return "".join(f"\\{c}" if c in _MARKDOWN else c for c in text)
