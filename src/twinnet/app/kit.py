"""The app's UI logic, kept free of Streamlit so it can be tested directly.

``app.py`` only lays out widgets. Here: the backend the command line handed over, reading
and checking images, cache keys for results, ranking a gallery, and turning failures into
one-line messages for the page. Backends live in :mod:`twinnet.clients.backends`, AWS in
:mod:`twinnet.aws` (whose wording of AWS errors the page shows as it is).
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from twinnet.aws.session import describe_error
from twinnet.clients.backends import KINDS, Backend, BackendChoice
from twinnet.core.imaging import decode_image
from twinnet.data.items import IMAGE_SUFFIXES, list_images
from twinnet.errors import ImageError, TwinnetError

__all__ = [
    "ENV",
    "IMAGE_TYPES",
    "SAMPLES_DIR",
    "MAX_GALLERY",
    "ImageInput",
    "Match",
    "choice_from_env",
    "choice_to_env",
    "is_loopback",
    "is_locked",
    "list_images",
    "list_samples",
    "load_folder",
    "decode_preview",
    "remote_payload",
    "result_key",
    "gallery_key",
    "rank_gallery",
    "user_message",
]

#: Environment variables through which ``twinnet app`` hands its choices to the script.
ENV = {
    "model": "TWINNET_APP_MODEL",
    "url": "TWINNET_APP_URL",
    "endpoint": "TWINNET_APP_ENDPOINT",
    "region": "TWINNET_APP_REGION",
    "samples": "TWINNET_APP_SAMPLES",
    "index": "TWINNET_APP_INDEX",
    "identify": "TWINNET_APP_IDENTIFY",
    "locked": "TWINNET_APP_LOCKED",
}
#: File types the uploaders accept: the suffixes training and search read, without the dot.
IMAGE_TYPES = tuple(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
#: Folder inside a model directory whose images the app offers as samples.
SAMPLES_DIR = "samples"
#: Most images a gallery folder contributes; more would make one search take minutes on CPU.
MAX_GALLERY = 200
#: Remote payloads above this are re-encoded; servers refuse requests over 6 MB.
REMOTE_LIMIT = 5_000_000


# --------------------------------------------------------------------------- backend choice


def choice_from_env(env: Mapping[str, str] | None = None) -> BackendChoice | None:
    """The backend ``twinnet app`` was started with, or ``None`` when it named none."""
    env = os.environ if env is None else env
    region = env.get(ENV["region"]) or None
    for kind in KINDS:
        value = env.get(ENV[kind], "").strip()
        if value:
            return BackendChoice(kind, value, region=region if kind == "endpoint" else None)
    return None


def choice_to_env(choice: BackendChoice | None) -> dict[str, str]:
    """The inverse of :func:`choice_from_env` (the token is never passed on)."""
    if choice is None:
        return {}
    env = {ENV[choice.kind]: choice.target}
    if choice.region:
        env[ENV["region"]] = choice.region
    return env


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the app on this machine."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_locked(env: Mapping[str, str] | None = None) -> bool:
    """Locked apps (bound beyond loopback) keep the operator's backend and read no server paths."""
    env = os.environ if env is None else env
    return env.get(ENV["locked"], "").strip().lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageInput:
    """One encoded image and the name it is shown (and reported in errors) under."""

    name: str
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], name: str | None = None) -> ImageInput:
        path = Path(path)
        try:
            return cls(name or path.name, path.read_bytes())
        except OSError as exc:
            raise ImageError(f"{name or path}: cannot read ({exc.strerror or exc})") from None


def list_samples(folder: str | os.PathLike[str] | None) -> list[Path]:
    """Sample images offered by the app: ``folder/samples`` of a model directory, or ``folder``.

    A model directory may carry a ``samples/`` folder (sub-folders allowed, e.g. one per
    class); any other folder given with ``twinnet app --samples`` is used as it is.
    """
    if not folder:
        return []
    root = Path(folder)
    if (root / SAMPLES_DIR).is_dir():
        root = root / SAMPLES_DIR
    elif (root / "twinnet.json").is_file() or not root.is_dir():
        return []
    return list_images(root)


def load_folder(folder: str, limit: int = MAX_GALLERY) -> tuple[list[ImageInput], int]:
    """Read a gallery folder; returns the images (named by relative path) and how many were left out."""
    root = Path(folder).expanduser()
    if not folder.strip() or not root.is_dir():
        raise TwinnetError(f"{folder}: not a folder; give the path of a folder of images")
    paths = list_images(root)
    if not paths:
        raise TwinnetError(
            f"{folder}: holds no images ({', '.join(IMAGE_TYPES)}); choose another folder"
        )
    images = [ImageInput.from_path(p, str(p.relative_to(root))) for p in paths[:limit]]
    return images, max(0, len(paths) - limit)


def decode_preview(image: ImageInput, max_side: int = 1024) -> Image.Image:
    """Decode an input (EXIF rotation applied) and shrink it for display; raises ImageError."""
    img = decode_image(image.data, name=image.name, draft=(max_side, max_side))
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.BILINEAR)
    return img


def remote_payload(image: ImageInput, limit: int = REMOTE_LIMIT, max_side: int = 2048) -> bytes:
    """The bytes to send to a server: the file itself, or a smaller JPEG when it is over ``limit``.

    Phone photos often exceed the 6 MB request limit; the network sees a few hundred pixels
    anyway, so a 2048 px JPEG (with the EXIF rotation already applied) answers the same.
    """
    if len(image.data) <= limit:
        return image.data
    img = decode_image(image.data, name=image.name, draft=(max_side, max_side))
    img.thumbnail((max_side, max_side), Image.BILINEAR)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


# --------------------------------------------------------------------------- results


def result_key(choice: BackendChoice, left: ImageInput, right: ImageInput, cam: bool) -> str:
    """Cache key of one comparison: backend, both images' bytes, and whether CAMs were asked for."""
    return f"compare|{choice.key}|{left.digest}|{right.digest}|{int(bool(cam))}"


def gallery_key(choice: BackendChoice, query: ImageInput, gallery: Iterable[ImageInput]) -> str:
    """Cache key of one gallery search (the order of the gallery matters for names only)."""
    h = hashlib.sha256()
    for item in gallery:
        h.update(item.name.encode("utf-8", "replace") + b"\0" + item.digest.encode() + b"\0")
    return f"gallery|{choice.key}|{query.digest}|{h.hexdigest()}"


@dataclass(frozen=True)
class Match:
    """One gallery image's place in a ranking."""

    index: int
    name: str
    probability: float
    same: bool


def rank_gallery(
    backend: Backend,
    query: ImageInput,
    gallery: Sequence[ImageInput],
    remote: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[Match]:
    """Every gallery image ranked by the probability that it matches the query, best first.

    An in-process model searches with cached embeddings (``Twin.search``); a remote backend
    has no search, so the query is compared with each image in turn (``remote`` shrinks
    what is sent to what a server accepts).
    """
    if not gallery:
        raise TwinnetError("the gallery is empty; upload images or give a folder")
    if backend.search is not None and backend.spec is not None:
        threshold = float(backend.spec.threshold)
        hits = backend.search(query.data, [g.data for g in gallery], top_k=None)
        matches = [
            Match(h.index, gallery[h.index].name, h.probability, h.probability >= threshold)
            for h in hits
        ]
    else:
        payload = remote_payload(query) if remote else query.data
        matches = []
        for i, item in enumerate(gallery):
            r = backend.compare(payload, remote_payload(item) if remote else item.data)
            matches.append(Match(i, item.name, float(r.probability), bool(r.same)))
            if progress is not None:
                progress(i + 1, len(gallery))
    return sorted(matches, key=lambda m: (-m.probability, m.index))


# --------------------------------------------------------------------------- errors


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def user_message(exc: BaseException) -> str | None:
    """A one-line message for failures a user can act on, or ``None`` for real bugs.

    AWS failures are worded by :func:`twinnet.aws.session.describe_error`, as everywhere
    else. Exceptions from botocore and requests are recognised by module, so neither
    library has to be installed for the in-process backend.
    """
    if isinstance(exc, TwinnetError):
        return str(exc)
    module = type(exc).__module__
    if module.startswith("botocore"):
        return describe_error("AWS request", exc)
    if module.startswith(("requests", "urllib3")):
        names = _names(exc)
        if names & {"ConnectionError", "NewConnectionError", "MaxRetryError"}:
            return "the server did not answer; check the URL and that the server is running"
        if names & {"Timeout", "ReadTimeout", "ConnectTimeout"}:
            return "the server did not answer in time; it may be overloaded, try again"
        return f"request failed: {exc}"
    if isinstance(exc, OSError):
        return f"{exc.__class__.__name__}: {exc}"
    return None
