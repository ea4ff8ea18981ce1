"""twinnet's Streamlit app: compare two images, see why, search a gallery, identify.

Start it with ``twinnet app`` (``streamlit run`` on this file also works). The script only
lays out the page; the logic lives in :mod:`twinnet.app.kit` (and, for the Identify mode of
``twinnet app --index``, in :mod:`twinnet.app.identify`). Work happens when a button
is pressed: the backend is cached with ``st.cache_resource`` and every result is kept in
the session keyed by the images' bytes, the backend and the CAM flag, so other widget
changes redraw without recomputing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st
from PIL import Image

from twinnet.app import identify as appidentify
from twinnet.app import kit as appkit
from twinnet.app.identify import OpenedIndex
from twinnet.app.kit import ImageInput, Match
from twinnet.app.widgets import (
    GRID,
    IDENTIFY,
    MODES,
    OVERLAY_WIDTH,
    RESULTS,
    THUMB_WIDTH,
    attempt,
    backend_stamp,
    can_run,
    decoded,
    get_backend,
    image_picker,
    preview,
    run_once,
    sample_names,
    samples_for,
    session_cache,
    sidebar,
)
from twinnet.clients.backends import BackendChoice, resize_method
from twinnet.core.result import CompareResult
from twinnet.errors import TwinnetError
from twinnet.infer.explain import overlay

if TYPE_CHECKING:
    from twinnet.index import Identification

log = logging.getLogger("twinnet.app.page")
# --------------------------------------------------------------------------- compare


def source_label(choice: BackendChoice) -> str:
    """Where answers come from; for an endpoint, with the mode its config declares
    (an endpoint that cannot be described yet keeps the plain label: comparing says why)."""
    if choice.kind != "endpoint":
        return choice.label
    try:
        return choice.describe(getattr(get_backend(choice), "mode", None))
    except TwinnetError:
        return choice.label


def run_compare(
    choice: BackendChoice, left: ImageInput, right: ImageInput, cam: bool
) -> CompareResult:
    backend = get_backend(choice)
    if choice.remote:
        return backend.compare(appkit.remote_payload(left), appkit.remote_payload(right), cam=cam)
    return backend.compare(left.data, right.data, cam=cam)


def show_result(
    result: CompareResult,
    images: tuple[Image.Image, Image.Image],
    names: tuple[str, str],
    explain: bool,
    method: str,
) -> None:
    p, t = float(result.probability), float(result.threshold)
    c1, c2, c3 = st.columns(3)
    c1.metric("Verdict", result.verdict)
    c2.metric(
        "Probability of same",
        f"{p:.1%}",
        delta=f"{p - t:+.1%} from threshold",
        delta_color="normal",
    )
    c3.metric("Threshold", f"{t:.2f}", help="The verdict is Same at or above this probability.")
    st.progress(min(max(p, 0.0), 1.0), text=f"p(same) = {p:.3f} · threshold {t:.2f}")
    if explain and result.has_cam:
        st.subheader("Where the network looked")
        cols = st.columns(2)
        for col, img, cam, name in zip(
            cols, images, (result.cam_left, result.cam_right), names, strict=True
        ):
            col.image(
                overlay(img, cam, method),
                caption=f"{name}: Grad-CAM",
                width=OVERLAY_WIDTH,
            )
    elif explain:
        st.info("This result has no heatmaps; press Compare to compute them.")


def compare_page(choice: BackendChoice | None, samples: dict[str, Path]) -> None:
    cols = st.columns(2)
    with cols[0]:
        left = image_picker("Left image", "left", samples)
        left_img = preview(left)
    with cols[1]:
        right = image_picker("Right image", "right", samples)
        right_img = preview(right)
    explain = st.checkbox("Explain (Grad-CAM heatmaps)", key="explain")
    ready = choice is not None and left_img is not None and right_img is not None
    pressed = st.button("Compare", type="primary", disabled=not ready, key="compare")
    if not can_run(choice, ready):
        return
    assert left is not None and right is not None and choice is not None
    key = appkit.result_key(choice, left, right, explain)
    result = run_once(
        key, pressed, "Comparing…", "comparing", lambda: run_compare(choice, left, right, explain)
    )
    if result is None and not explain:  # a result with heatmaps also answers without them
        result = session_cache(RESULTS, 64).get(appkit.result_key(choice, left, right, True))
    if result is not None:
        backend = attempt("opening the backend", lambda: get_backend(choice))
        method = resize_method(backend)
        show_result(result, (left_img, right_img), (left.name, right.name), explain, method)


# --------------------------------------------------------------------------- gallery


def gallery_inputs(samples: dict[str, Path]) -> list[ImageInput]:
    sources = ["Upload images"]
    if not appkit.is_locked():
        sources.append("A folder on the app's machine")
    if samples:
        sources.append("All samples")
    source = st.radio("Gallery", sources, horizontal=True, key="gallery_source")
    if source == "Upload images":
        files = st.file_uploader(
            "Gallery images",
            type=list(appkit.IMAGE_TYPES),
            accept_multiple_files=True,
            key="gallery_upload",
        )
        return [ImageInput(f.name, f.getvalue()) for f in files or []]
    if source == "All samples":
        loaded = attempt(
            "reading the samples",
            lambda: [ImageInput.from_path(p, name) for name, p in samples.items()],
        )
        return loaded or []
    folder = st.text_input("Folder of images", key="gallery_folder").strip()
    if not folder:
        return []
    loaded = attempt("reading the folder", lambda: appkit.load_folder(folder))
    if loaded is None:
        return []
    images, left_out = loaded
    if left_out:
        st.warning(f"the folder holds more images; searching the first {len(images)} only")
    return images


def run_search(choice: BackendChoice, query: ImageInput, gallery: list[ImageInput]) -> list[Match]:
    backend = get_backend(choice)
    bar = st.progress(0.0, text="Comparing the query with each image…") if choice.remote else None

    def step(done: int, total: int) -> None:
        if bar is not None:
            bar.progress(done / total, text=f"Compared {done} of {total}")

    try:
        return appkit.rank_gallery(backend, query, gallery, remote=choice.remote, progress=step)
    finally:
        if bar is not None:
            bar.empty()


def show_matches(matches: list[Match], gallery: list[ImageInput], top_k: int) -> None:
    shown = matches[:top_k]
    st.subheader(f"Top {len(shown)} of {len(matches)}")
    for start in range(0, len(shown), GRID):
        cols = st.columns(GRID)
        for col, (rank, m) in zip(
            cols, enumerate(shown[start : start + GRID], start + 1), strict=False
        ):
            thumb = decoded(gallery[m.index]).copy()
            thumb.thumbnail((2 * THUMB_WIDTH, 2 * THUMB_WIDTH))
            verdict = "Same" if m.same else "Different"
            col.image(
                thumb,
                caption=f"#{rank} {m.name} · {m.probability:.1%} · {verdict}",
                width=THUMB_WIDTH,
            )


def gallery_page(choice: BackendChoice | None, samples: dict[str, Path]) -> None:
    query = image_picker("Query image", "query", samples)
    query_img = preview(query)
    gallery = gallery_inputs(samples)
    # Unreadable gallery images are reported and left out instead of failing the search.
    readable: list[ImageInput] = []
    broken: list[str] = []
    for item in gallery:
        try:
            decoded(item)
            readable.append(item)
        except TwinnetError as exc:
            broken.append(str(exc))
    if broken:
        st.warning("left out of the search:\n\n" + "\n\n".join(f"- {b}" for b in broken))
    top_k = st.number_input("Matches shown", min_value=1, max_value=100, value=5, key="top_k")
    ready = choice is not None and query_img is not None and bool(readable)
    pressed = st.button("Search", type="primary", disabled=not ready, key="search")
    if not can_run(choice, ready):
        return
    assert query is not None and choice is not None
    key = appkit.gallery_key(choice, query, readable)
    matches = run_once(
        key, pressed, "Searching…", "searching the gallery",
        lambda: run_search(choice, query, readable),
    )  # fmt: skip
    if matches is not None:
        show_matches(matches, readable, int(top_k))


# --------------------------------------------------------------------------- identify


@st.cache_resource(show_spinner="Opening the gallery index…", max_entries=4)
def _open_index(
    path: str, stamp: float, model_key: str, model_dir: str | None, backend: str | None, _twin: Any
) -> OpenedIndex:
    return appidentify.open_index(path, twin=_twin, model_dir=model_dir, backend=backend)


def get_index(choice: BackendChoice | None, path: str) -> OpenedIndex:
    """The (cached) index, sharing the app's model when the index was built with it.

    A model backend that cannot be opened is left out: the index then uses its own model.
    """
    twin, model_dir, model_key = None, None, ""
    if choice is not None and choice.kind == "model":
        try:
            twin = get_backend(choice)
            model_dir, model_key = choice.target, f"{choice.key}|{backend_stamp(choice)}"
        except Exception as exc:
            log.info("identifying without the app's model: %s", exc)
    backend = choice.label if choice is not None and choice.remote else None
    stamp = appidentify.index_stamp(path)
    return _open_index(path, stamp, model_key, model_dir, backend, twin)


def thumbnail(path: str) -> Image.Image | None:
    """A gallery image's thumbnail, read once per session; ``None`` when it is not readable."""
    thumbs = session_cache("_twinnet_thumbs", 256)
    found = thumbs.get(path)
    if found is None:
        found = thumbs.put(path, (appidentify.thumbnail(path, 2 * THUMB_WIDTH),))
    return found[0]


def show_identification(result: Identification) -> None:
    text = appidentify.markdown_escape(appidentify.verdict(result))
    if result.known:
        best = result.matches[0]
        st.success(f"Identified: **{text}** · p(same) {best.probability:.1%}")
    else:
        st.warning(text)
    rows = appidentify.rows(result)
    st.subheader(f"Top {len(rows)} classes")
    for start in range(0, len(rows), GRID):
        cols = st.columns(GRID)
        for col, row in zip(cols, rows[start : start + GRID], strict=False):
            thumb = thumbnail(row.path)
            if thumb is not None:
                col.image(thumb, width=THUMB_WIDTH)
            else:
                col.caption("(gallery image not readable here)")
            mark = "reaches the threshold" if row.same else "below the threshold"
            col.markdown(
                f"**#{row.rank} {appidentify.markdown_escape(row.label)}**  \n"
                f"{row.probability:.1%} · {mark}"
            )


def identify_form(samples: dict[str, Path]) -> tuple[ImageInput | None, int, bool]:
    """The query upload, how many classes to show, and whether Identify was pressed."""
    query = image_picker("Image to identify", "identify", samples)
    query_img = preview(query)
    top_k = st.number_input(
        "Classes shown", min_value=1, max_value=50, value=5, key="identify_top_k"
    )
    ready = query is not None and query_img is not None
    pressed = st.button("Identify", type="primary", disabled=not ready, key="identify")
    return (query if ready else None), int(top_k), pressed


def identify_page(choice: BackendChoice | None, path: str, samples: dict[str, Path]) -> None:
    opened = attempt("opening the gallery index", lambda: get_index(choice, path))
    if opened is None:
        return
    info = opened.index.info
    st.caption(
        f"Gallery index {path}: {info['count']} images of {info['classes']} classes, "
        f"threshold {info['threshold']:.2f}; queries are embedded in this process by "
        f"{opened.model}."
    )
    query, top_k, pressed = identify_form(samples)
    if query is None:
        return
    key = appidentify.result_key(path, appidentify.index_stamp(path), opened.model, query, top_k)
    result = run_once(
        key, pressed, "Identifying…", "identifying",
        lambda: appidentify.identify(opened.index, query, top_k),
    )  # fmt: skip
    if result is not None:
        show_identification(result)


def remote_identify_page(choice: BackendChoice | None, samples: dict[str, Path]) -> None:
    """Identify answered by the server, from the gallery index its model was served with."""
    if choice is None or not choice.remote:
        st.info(
            "Identify asks the server: choose a TorchServe server or a SageMaker endpoint "
            "whose model was served or deployed with --index."
        )
        return
    st.caption(f"The gallery index is the one {choice.label} serves with its model.")
    query, top_k, pressed = identify_form(samples)
    if query is None:
        return
    key = appidentify.result_key("remote", 0.0, choice.key, query, top_k)
    result = run_once(
        key, pressed, "Identifying…", "identifying",
        lambda: appidentify.identify_remote(get_backend(choice), query, top_k),
    )  # fmt: skip
    if result is not None:
        show_identification(result)


# --------------------------------------------------------------------------- page


def main() -> None:
    st.set_page_config(page_title="twinnet", page_icon="🔍", layout="wide")
    choice = sidebar()
    st.title("twinnet")
    if choice is not None:
        st.caption(f"Answers from {source_label(choice)}.")
    samples = sample_names(samples_for(choice))
    index = appidentify.index_from_env()
    remote = appidentify.remote_from_env()
    modes = (*MODES, IDENTIFY) if index or remote else MODES
    mode = st.radio("Mode", modes, horizontal=True, label_visibility="collapsed", key="mode")
    if mode == MODES[0]:
        compare_page(choice, samples)
    elif mode == MODES[1]:
        gallery_page(choice, samples)
    elif index:
        identify_page(choice, index, samples)
    else:
        remote_identify_page(choice, samples)


if __name__ == "__main__":
    main()
