"""Importing fastai quietly: one helper, imported by every module that imports fastai."""

from __future__ import annotations

import warnings

__all__ = ["quiet_fastai_import"]


def quiet_fastai_import() -> None:
    """Hide the deprecation warning fastai's import triggers in this torch (``torch.jit.script``).

    It says nothing a twinnet user can act on; every other warning stays.
    """
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
