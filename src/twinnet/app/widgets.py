"""The app's building blocks: cached backends, the sidebar, image pickers, error handling.

:mod:`twinnet.app.page` lays out the three modes with them. Kept free of page layout, and the
logic under them (free of Streamlit) is :mod:`twinnet.app.kit`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import streamlit as st
from PIL import Image

from twinnet.app import kit as appkit
from twinnet.app.kit import ImageInput
from twinnet.aws.endpoints import EndpointInfo
from twinnet.aws.endpoints import list_endpoints as listed_endpoints
from twinnet.aws.session import default_region
from twinnet.clients.backends import Backend, BackendChoice
from twinnet.infer.cache import LruCache

if TYPE_CHECKING:
    pass

log = logging.getLogger("twinnet.app.widgets")
T = TypeVar("T")

KIND_LABELS = {
    "model": "In process (model directory)",
    "url": "TorchServe URL",
    "endpoint": "SageMaker endpoint",
}
MODES = ("Compare two images", "Search a gallery")
#: The extra mode of an app started with ``twinnet app --index INDEX_DIR``.
IDENTIFY = "Identify"
NO_SAMPLE = "(none)"
#: The session cache of computed results (comparisons and searches).
RESULTS = "_twinnet_results"
GRID = 5
#: Display widths in pixels: previews stay small enough to keep the verdict on screen.
PREVIEW_WIDTH = 260
OVERLAY_WIDTH = 360
THUMB_WIDTH = 180


# --------------------------------------------------------------------------- plumbing


def session_cache(name: str, capacity: int) -> LruCache[str, Any]:
    """A per-session LRU (results, decoded previews) that survives reruns.

    Results hold numpy CAM maps and PIL images; keeping them in the session, rather than in
    ``st.cache_data``, avoids pickling them on every hit and shares nothing between users.
    """
    if name not in st.session_state:
        st.session_state[name] = LruCache(capacity)
    return st.session_state[name]


def failure_message(what: str, exc: Exception) -> str:
    """The one line the page shows for a failure; an unexpected one also goes to the log."""
    message = appkit.user_message(exc)
    if message is None:
        log.exception("unexpected error while %s", what)
        message = (
            f"unexpected error while {what} ({exc.__class__.__name__}: {exc}); "
            "the app's log has the details"
        )
    return message


def attempt(what: str, fn: Callable[[], T]) -> T | None:
    """Run ``fn``; show any failure as one line in the page instead of a traceback."""
    try:
        return fn()
    except Exception as exc:
        st.error(failure_message(what, exc))
        return None


def run_once(key: str, pressed: bool, spinner: str, what: str, fn: Callable[[], T]) -> T | None:
    """The session's result for ``key``: computed by ``fn`` when the button was pressed."""
    results = session_cache(RESULTS, 64)
    if pressed and key not in results:
        with st.spinner(spinner):
            found = attempt(what, fn)
        if found is not None:
            results.put(key, found)
    return results.get(key)


def can_run(choice: BackendChoice | None, ready: bool) -> bool:
    """Whether the page has all it needs; says what is missing when it is the backend."""
    if choice is None:
        st.info("Choose a backend in the sidebar.")
    return ready and choice is not None


def backend_stamp(choice: BackendChoice) -> float:
    """Changes when a model directory is rewritten, so a retrained model gets reloaded."""
    if choice.kind != "model":
        return 0.0
    files = [
        Path(choice.target) / n for n in ("twinnet.json", "encoder.safetensors", "head.safetensors")
    ]
    return max((p.stat().st_mtime for p in files if p.is_file()), default=0.0)


@st.cache_resource(show_spinner="Opening the backend…", max_entries=4)
def _open_backend(choice: BackendChoice, stamp: float) -> Backend:
    return choice.open()


def get_backend(choice: BackendChoice) -> Backend:
    """The (cached) backend; raises TwinnetError when it cannot be opened.

    An endpoint's client checks, before its first request, that the endpoint is InService.
    """
    return _open_backend(choice, backend_stamp(choice))


def list_endpoints(region: str) -> list[EndpointInfo]:
    """The region's twinnet endpoints, newest first (AWS failures become TwinnetError)."""
    return listed_endpoints(region=region or None)[::-1]


# --------------------------------------------------------------------------- sidebar


def endpoint_picker(initial: BackendChoice | None) -> BackendChoice | None:
    """Region, then an endpoint chosen from those the region lists (or typed in)."""
    region = (initial.region if initial and initial.kind == "endpoint" else None) or (
        default_region()
    )
    region = st.sidebar.text_input("AWS region", value=region, key="region").strip()
    listed_key = f"_twinnet_endpoints|{region}"
    if st.sidebar.button("Refresh endpoint list", key="refresh_endpoints") or (
        listed_key not in st.session_state
    ):
        # Listing costs AWS calls: once per region and session, again on Refresh.
        try:
            st.session_state[listed_key] = (list_endpoints(region), None)
        except Exception as exc:
            st.session_state[listed_key] = (None, failure_message("listing endpoints", exc))
    endpoints, problem = st.session_state[listed_key]
    if problem:
        st.sidebar.error(f"cannot list endpoints: {problem}")
    endpoints = endpoints or []
    names = [e.name for e in endpoints]
    status = {e.name: e.status for e in endpoints}
    if initial and initial.kind == "endpoint" and initial.target not in names:
        names.insert(0, initial.target)
    if not names and not problem:
        st.sidebar.info(f"no SageMaker endpoints in {region}; deploy one with `twinnet deploy`")
    name = st.sidebar.selectbox(
        "Endpoint",
        names,
        index=0 if names else None,
        format_func=lambda n: (
            n if status.get(n, "InService") == "InService" else f"{n} ({status[n]})"
        ),
        accept_new_options=True,
        placeholder="type an endpoint name",
        key="endpoint",
    )
    if not name:
        return None
    return BackendChoice("endpoint", str(name), region=region or None)


def sidebar() -> BackendChoice | None:
    """The backend choice: fixed when the app is locked, otherwise chosen here."""
    initial = attempt("reading the command line's backend", appkit.choice_from_env)
    st.sidebar.header("Backend")
    if appkit.is_locked():
        if initial is None:
            st.sidebar.error("this app was started without a backend; restart it with one")
        else:
            st.sidebar.info(f"Answers come from {initial.label}.")
        return initial
    kinds = list(KIND_LABELS)
    kind = st.sidebar.radio(
        "Comparisons run",
        kinds,
        index=kinds.index(initial.kind) if initial else 0,
        format_func=KIND_LABELS.get,
        key="backend_kind",
    )
    same_kind = initial is not None and initial.kind == kind
    if kind == "model":
        target = st.sidebar.text_input(
            "Model directory",
            value=initial.target if same_kind else "",
            placeholder="runs/digits",
            key="model_dir",
        ).strip()
        return BackendChoice("model", target) if target else None
    if kind == "url":
        target = st.sidebar.text_input(
            "TorchServe URL",
            value=initial.target if same_kind else "http://127.0.0.1:8080",
            key="url",
        ).strip()
        token = st.sidebar.text_input(
            "Inference token",
            type="password",
            help="Leave empty for a local `twinnet serve`: its token is read automatically.",
            key="token",
        ).strip()
        return BackendChoice("url", target, token=token or None) if target else None
    return endpoint_picker(initial)


# --------------------------------------------------------------------------- inputs


def samples_for(choice: BackendChoice | None) -> list[Path]:
    """Samples from ``twinnet app --samples`` or from the model directory's ``samples/``."""
    folder = os.environ.get(appkit.ENV["samples"]) or (
        choice.target if choice and choice.kind == "model" else None
    )
    return appkit.list_samples(folder)


def sample_names(samples: list[Path]) -> dict[str, Path]:
    root = Path(os.path.commonpath([p.parent for p in samples])) if samples else Path()
    return {str(p.relative_to(root)): p for p in samples}


def image_picker(label: str, key: str, samples: dict[str, Path]) -> ImageInput | None:
    """An uploader, plus a sample list when there are samples; an upload wins over a sample."""
    upload = st.file_uploader(label, type=list(appkit.IMAGE_TYPES), key=f"{key}_upload")
    sample = NO_SAMPLE
    if samples:
        sample = st.selectbox("…or pick a sample", [NO_SAMPLE, *samples], key=f"{key}_sample")
    if upload is not None:
        return ImageInput(upload.name, upload.getvalue())
    if sample != NO_SAMPLE:
        return attempt("reading a sample", lambda: ImageInput.from_path(samples[sample], sample))
    return None


def decoded(image: ImageInput) -> Image.Image:
    """Decode (EXIF rotation applied) once per session; raises ImageError for unreadable input."""
    previews = session_cache("_twinnet_previews", 256)
    img = previews.get(image.digest)
    if img is None:
        img = previews.put(image.digest, appkit.decode_preview(image))
    return img


def preview(image: ImageInput | None) -> Image.Image | None:
    """Show an input at its own aspect ratio; an unreadable one shows an error instead."""
    if image is None:
        return None
    img = attempt(f"reading {image.name}", lambda: decoded(image))
    if img is not None:
        st.image(img, caption=f"{image.name} · {img.width}×{img.height}", width=PREVIEW_WIDTH)
    return img
