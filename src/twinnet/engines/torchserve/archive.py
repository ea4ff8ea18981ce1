"""Build the TorchServe model archive (``<name>.mar``) from a model directory.

The archive holds the handler (:mod:`twinnet.engines.torchserve.handler`), the model directory's files
(:func:`archive_files`: ``twinnet.json`` and the safetensors weights), a ``model-config.yaml``
written from :class:`~twinnet.contract.options.ServeOptions` and, when one is given, a gallery
index in ``index/`` (:mod:`twinnet.contract.gallery`: checked against the model first), which
makes the same routes answer identification requests too. The handler
rebuilds the model from ``twinnet.json`` through the library, so nothing in the archive
restates the architecture; the ``twinnet`` package itself must be installed where the
workers run (``pip install 'twinnet[serve]'``, as in the serving image).

Workers and threads. TorchServe's defaults start one worker per CPU core, and each worker's
torch uses every core, so on a 2-core machine four compute threads fight over two cores and
throughput collapses under concurrency (measured: 1.65 pairs/s with one client, 0.45 with
four). The tuned plan written here starts one worker per usable CPU with ``threads: auto``
(usable CPUs / workers, resolved when the worker starts, so the same archive fits the
machine it lands on): compute threads never outnumber cores. One thread per worker also
avoids OpenMP's barrier stalls when another process takes a core for a moment (a resnet50
encoder ran 4x faster with one thread than with two on a busy 2-core machine), and while
one worker decodes JPEGs the other computes. TorchServe's dynamic batching amortises each
forward pass over the requests waiting in the queue, and each worker's embedding cache
makes a repeated image almost free.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twinnet.contract.gallery import INDEX_DIR, check_index, stage_index
from twinnet.contract.options import (
    CONFIG_FILE,
    DEFAULT_RESPONSE_TIMEOUT,
    PLANS,
    ServeOptions,
    resolve_threads,
    usable_cpus,
)
from twinnet.core.spec import SPEC_FILE, ModelSpec
from twinnet.errors import TwinnetError

__all__ = [
    "CONFIG_FILE",
    "HANDLER_FILE",
    "INDEX_DIR",
    "PLANS",
    "DEFAULT_RESPONSE_TIMEOUT",
    "ServeOptions",
    "archive_files",
    "build_archive",
    "model_config",
    "resolve_threads",
    "usable_cpus",
]

#: The handler module as shipped inside the archive (TorchServe imports it by file name).
HANDLER_FILE = Path(__file__).with_name("handler.py")


def archive_files(model_dir: str | os.PathLike) -> list[Path]:
    """The files of ``model_dir`` that an archive takes, sorted by name.

    They are the directory's top-level, non-hidden files (a ``model-config.yaml`` among them
    is left out: the archive writes its own). What else decides the archive's content is the
    :class:`~twinnet.contract.options.ServeOptions` (all fields), the model name and version,
    the handler and twinnet's version. Raises a TwinnetError when ``model_dir`` is not a
    model directory with weights.
    """
    root = Path(model_dir)
    if not (root / SPEC_FILE).is_file():
        raise TwinnetError(
            f"{root} is not a twinnet model directory (no {SPEC_FILE}); "
            "create one with `twinnet train` or `twinnet import-seed`"
        )
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name != CONFIG_FILE
    )
    if not any(p.suffix == ".safetensors" for p in files):
        raise TwinnetError(f"{root} holds no .safetensors weights")
    return files


def model_config(**options: Any) -> dict[str, Any]:
    """The ``model-config.yaml`` content for ``ServeOptions(**options)`` (kept for callers of
    earlier versions; :meth:`ServeOptions.to_config` is the one writer)."""
    return ServeOptions(**options).to_config()


def _options(options: ServeOptions | None, fields: dict[str, Any]) -> ServeOptions:
    if options is None:
        return ServeOptions(**fields)
    if fields:
        raise TwinnetError(
            f"give either options or separate option arguments, not both ({', '.join(fields)})"
        )
    return options


def _archiver_command(
    name: str, version: str, handler: Path, extra: list[str], config: Path, store: Path
) -> list[str]:
    """torch-model-archiver's command line: the handler, the model files, model-config.yaml."""
    return [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", name,
        "--version", version,
        "--handler", str(handler),
        "--extra-files", ",".join(extra),
        "--config-file", str(config),
        "--export-path", str(store.resolve()),
        "--archive-format", "default",
        "--force",
    ]  # fmt: skip


def build_archive(
    model_dir: str | os.PathLike,
    store_dir: str | os.PathLike,
    name: str = "twin",
    version: str = "1.0",
    options: ServeOptions | None = None,
    index: str | os.PathLike | None = None,
    **option_fields: Any,
) -> Path:
    """Write ``<store_dir>/<name>.mar`` (replacing one that exists) and return its path.

    Args:
        model_dir: a twinnet model directory.
        store_dir: the TorchServe model store; created if missing.
        name: the model name; it is served at ``/predictions/<name>``.
        version: the archive's model version.
        options: the serving options recorded in ``model-config.yaml``.
        index: a gallery index built with this (cosine) model, shipped in the archive's
            ``index/`` so the server answers identification requests; a precision of
            ``auto`` then becomes the index's (see :mod:`twinnet.contract.gallery`).
        **option_fields: or the same as keywords (``batch_size=4``, ``response_format="list"``,
            any :class:`~twinnet.contract.options.ServeOptions` field), when ``options`` is not given.
    """
    files = archive_files(model_dir)
    ModelSpec.load(model_dir)  # fail here, not in a worker, on a broken spec
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise TwinnetError(f"model name must be letters, digits, '-' or '_', got {name!r}")
    serve_options = _options(options, option_fields)
    checked = None
    if index is not None:
        checked = check_index(model_dir, index)
        serve_options = checked.serving_options(serve_options)
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="twinnet-archive-") as tmp:
        tmp_path = Path(tmp)
        config_path = tmp_path / CONFIG_FILE
        config_path.write_text(serve_options.to_yaml())
        handler = tmp_path / "handler.py"
        shutil.copyfile(HANDLER_FILE, handler)
        extra = [str(p.resolve()) for p in files]
        if checked is not None:
            # The archiver copies a directory's entries into the archive's root: this one
            # holds only ``index/``, which arrives there whole.
            extra.append(str(stage_index(checked, tmp_path / ".gallery").parent))
        cmd = _archiver_command(name, version, handler, extra, config_path, store)
        _run_archiver(cmd, tmp_path)
    mar = store / f"{name}.mar"
    if not mar.is_file():
        raise TwinnetError(f"torch-model-archiver did not write {mar}")
    return mar


def _run_archiver(cmd: list[str], tmp: Path) -> None:
    """Run torch-model-archiver; its failure becomes one line that says what to do."""
    # The archiver stages files in $TMPDIR/<name>; a private TMPDIR keeps concurrent
    # builds of the same name from clobbering each other.
    env = {**os.environ, "TMPDIR": str(tmp)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    except FileNotFoundError:  # pragma: no cover - sys.executable always exists
        raise TwinnetError("cannot run the Python interpreter to build the archive") from None
    if proc.returncode == 0:
        return
    if "No module named model_archiver" in (proc.stderr or ""):
        raise TwinnetError(
            "torch-model-archiver is not installed; install it with pip install 'twinnet[serve]'"
        )
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    raise TwinnetError(f"torch-model-archiver failed: {tail[0]}")
