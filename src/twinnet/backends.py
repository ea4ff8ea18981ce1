"""Pick where comparisons run: in process, a TorchServe URL, or a SageMaker endpoint.

All three expose ``compare(left, right, cam=False) -> CompareResult``, so the CLI and the
app are written once against :class:`Comparer`.
"""

from __future__ import annotations

from typing import Protocol

from .errors import TwinnetError
from .result import CompareResult

__all__ = ["Comparer", "open_backend"]


class Comparer(Protocol):
    """Anything that can compare two encoded images."""

    def compare(self, left, right, cam: bool = False) -> CompareResult:  # pragma: no cover
        ...


def open_backend(
    model: str | None = None,
    url: str | None = None,
    endpoint: str | None = None,
    region: str | None = None,
    token: str | None = None,
    model_name: str = "twin",
) -> Comparer:
    """Open exactly one backend; heavy imports happen only for the one chosen."""
    chosen = [name for name, v in (("model", model), ("url", url), ("endpoint", endpoint)) if v]
    if len(chosen) != 1:
        raise TwinnetError("choose exactly one backend: a model directory, --url or --endpoint")
    if model:
        from .inference import Twin

        return Twin.load(model)
    if url:
        from .client import HttpClient

        return HttpClient(url, token=token, model_name=model_name)
    from .client import SageMakerClient

    return SageMakerClient(endpoint, region=region)
