"""``model.tar.gz``: what SageMaker downloads and unpacks into ``/opt/ml/model``.

The archive holds one TorchServe ``.mar`` at its root, built by the same
:func:`twinnet.engines.torchserve.archive.build_archive` that ``twinnet serve`` uses, so the container
runs exactly the handler that was tested locally. ``twinnet container serve`` looks for
that ``.mar`` in the unpacked directory. A gallery index given with ``index`` travels inside
the ``.mar`` (its ``index/``), so ``/invocations`` answers identification requests too.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from twinnet.core.spec import SPEC_FILE, ModelSpec
from twinnet.errors import TwinnetError

__all__ = ["package", "find_mar", "MAR_SUFFIX"]

MAR_SUFFIX = ".mar"


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Strip owner names and ids: the container runs as another user than the packager."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def package(
    model_dir: str | Path,
    out: str | Path = "model.tar.gz",
    name: str | None = None,
    index: str | Path | None = None,
    **archive_options: Any,
) -> Path:
    """Build ``out`` (a gzip tarball with ``<name>.mar`` at its root) from a model directory.

    Args:
        model_dir: a twinnet model directory.
        out: the tarball to write; its parent directory is created.
        name: the TorchServe model name; the spec's ``name`` by default.
        index: a gallery index built with this cosine model, shipped inside the ``.mar``
            (checked first: see :func:`twinnet.engines.torchserve.archive.build_archive`).
        **archive_options: passed to ``build_archive`` (``batch_size``, ``max_batch_delay``,
            ``workers``, ...).

    Returns:
        The path of the tarball.
    """
    model_dir = Path(model_dir)
    if not (model_dir / SPEC_FILE).is_file():
        raise TwinnetError(f"{model_dir} is not a twinnet model directory (no {SPEC_FILE})")
    name = name or ModelSpec.load(model_dir).name
    out = Path(out)
    if out.is_dir():
        raise TwinnetError(
            f"--out {out} is a directory; give a file name such as {out / 'model.tar.gz'}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        from twinnet.engines.torchserve.archive import build_archive
    except ImportError as exc:  # pragma: no cover - part of the package; needs the serve extra
        raise TwinnetError(
            f"cannot build the TorchServe archive ({exc}); install it with pip install 'twinnet[serve]'"
        ) from None
    with tempfile.TemporaryDirectory(prefix="twinnet-mar-") as store:
        mar = Path(build_archive(model_dir, store, name=name, index=index, **archive_options))
        partial = out.with_name(out.name + ".partial")
        try:
            with tarfile.open(partial, "w:gz") as tar:
                tar.add(mar, arcname=f"{name}{MAR_SUFFIX}", filter=_reset)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return out


def find_mar(model_dir: str | Path) -> Path:
    """The one ``.mar`` in an unpacked ``model.tar.gz`` (searched at the top, then one level down)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise TwinnetError(
            f"model directory {root} does not exist (SageMaker unpacks model.tar.gz there)"
        )
    found = sorted(root.glob(f"*{MAR_SUFFIX}")) or sorted(root.glob(f"*/*{MAR_SUFFIX}"))
    if not found:
        raise TwinnetError(
            f"no TorchServe archive (*.mar) in {root}; build model.tar.gz with `twinnet package`"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise TwinnetError(
            f"{root} holds several archives ({names}); package one model per endpoint"
        )
    return found[0]
