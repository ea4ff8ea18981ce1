"""The gallery index an archive carries: checked with the model, shipped beside it, opened by workers.

``twinnet archive MODEL_DIR --index INDEX_DIR`` (and ``twinnet package``) put a copy of the
index in the archive's ``index/`` directory, beside the model files, so one archive answers
both comparisons and identifications. The index is checked before anything is written:

* the model must be a cosine model (a concat head gives no per-image embedding to search);
* the index must have been built with this model: the same fingerprint check that
  :meth:`~twinnet.index.GalleryIndex.attach` makes, with the model loaded at the precision
  and on the device recorded in the index;
* the workers embed queries at the index's precision: an archive whose precision is
  ``auto`` takes the index's, and another explicit precision is refused, so the server's
  answer is the one ``GalleryIndex.identify`` gives in process.

A worker opens the copy with :func:`open_gallery`; the index is read-only there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinnet.core.spec import ModelSpec
from twinnet.errors import TwinnetError

if TYPE_CHECKING:
    from twinnet.contract.options import ServeOptions
    from twinnet.index import GalleryIndex

__all__ = ["INDEX_DIR", "CheckedIndex", "check_index", "stage_index", "open_gallery"]

logger = logging.getLogger(__name__)

#: Where an archive keeps its gallery index, beside the model files.
INDEX_DIR = "index"

# The index and the model (torch) are imported by the functions that use them: the
# container's gateway process reads INDEX_DIR and must not load torch.


@dataclass(frozen=True)
class CheckedIndex:
    """An index found to belong to a model, and what serving it asks of the archive.

    Attributes:
        path: the index directory.
        generation: its version when checked; the copy shipped must be that version.
        precision: the encoder precision the index was built at (``bf16`` or ``fp32``).
        count: gallery images.
    """

    path: Path
    generation: int
    precision: str
    count: int

    def serving_options(self, options: ServeOptions) -> ServeOptions:
        """``options`` with the index's precision: ``auto`` takes it, another one is refused."""
        if options.precision == self.precision:
            return options
        if options.precision == "auto":
            return dataclasses.replace(options, precision=self.precision)
        raise TwinnetError(
            f"--index {self.path} was built at precision {self.precision}, and queries must be "
            f"embedded as its gallery was: drop --precision {options.precision} (the archive "
            f"then serves at {self.precision}), or rebuild the index with "
            f"`twinnet index build ... --precision {options.precision}`"
        )


def _model_files_clash(model_dir: Path) -> None:
    if (model_dir / INDEX_DIR).is_file():
        raise TwinnetError(
            f"{model_dir} holds a file named {INDEX_DIR!r}, where the archive puts the gallery "
            "index; rename that file"
        )


def check_index(model_dir: str | os.PathLike, index: str | os.PathLike) -> CheckedIndex:
    """Check that ``index`` can ship with ``model_dir``; raises a TwinnetError saying why not."""
    from twinnet.index import GalleryIndex
    from twinnet.infer.twin import Twin

    model_dir, path = Path(model_dir), Path(index)
    spec = ModelSpec.load(model_dir)
    if not spec.has_embeddings:
        raise TwinnetError(
            f"--index needs a cosine model: {spec.name!r} in {model_dir} has a {spec.head} head, "
            "which scores pairs and gives no per-image embedding to search. Train one with "
            "`twinnet train DATA_DIR --out MODEL_DIR --head cosine` and index the gallery with it."
        )
    _model_files_clash(model_dir)

    gallery = GalleryIndex.open(path)
    info = gallery.info
    model = info["model"]
    device = str(model.get("device") or "cpu")
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise TwinnetError(
                f"--index {path} was built on {device}, and its fingerprint can only be checked "
                "there: build the archive on a machine with a GPU, or rebuild the index with "
                "`twinnet index build ... --device cpu`"
            )

    twin = Twin.load(model_dir, device=device, precision=str(model["precision"]), cache_mb=0)
    try:
        gallery.attach(twin)
    except TwinnetError as exc:
        raise TwinnetError(f"--index does not belong to {model_dir}: {exc}") from None
    return CheckedIndex(path, int(info["generation"]), twin.precision, len(gallery))


def stage_index(checked: CheckedIndex, dest: str | os.PathLike) -> Path:
    """Copy the checked index into ``dest/index``; returns that directory.

    Only the index's own files are copied (not the writers' lock beside it). An index that
    another process updates meanwhile is refused, so the archive holds the version checked.
    """
    from twinnet.index import store

    out = Path(dest) / INDEX_DIR
    out.mkdir(parents=True)
    changed = TwinnetError(
        f"{checked.path} changed while it was being archived (another process updated it); "
        "run the command again"
    )
    if store.generation(checked.path) != checked.generation:
        raise changed
    for name in store.FILES:
        shutil.copyfile(checked.path / name, out / name)
    if store.generation(checked.path) != checked.generation or (
        store.generation(out) != checked.generation
    ):
        raise changed
    return out


def open_gallery(model_dir: str | os.PathLike, twin: Any) -> GalleryIndex | None:
    """The gallery index shipped in a model directory, searched with ``twin``; None without one.

    When ``twin`` runs exactly as the index was built (same fingerprint) it is attached, and
    answers equal :meth:`~twinnet.index.GalleryIndex.identify` in process. When only the
    runtime differs (a container's ``TWINNET_PRECISION``, a GPU host), the archive's check
    has already tied the index to these weights: queries are embedded by ``twin`` as served,
    and a warning says that probabilities may differ slightly from the gallery's precision.
    """
    from twinnet.index import GalleryIndex

    path = Path(model_dir) / INDEX_DIR
    if not path.is_dir():
        return None

    gallery = GalleryIndex.open(path)
    model = gallery.info["model"]
    if twin.fingerprint == model["fingerprint"]:
        gallery.attach(twin)
    else:
        logger.warning(
            "twinnet: the gallery index was built at %s on %s, the model runs at %s on %s: "
            "identification answers may differ slightly from the index's own",
            model.get("precision"),
            model.get("device"),
            twin.precision,
            twin.device.type,
        )
    logger.info("twinnet: gallery index of %d images, %s", len(gallery), gallery.info["kind"])
    return gallery
