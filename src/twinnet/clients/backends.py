"""Where comparisons run: in process, a TorchServe URL, or a SageMaker endpoint.

Every backend satisfies :class:`Backend`: ``compare`` always; ``spec`` and ``search`` where
the model runs in process (:class:`~twinnet.infer.twin.Twin`), and ``None`` for a server,
which neither sends its spec nor holds embeddings to search. Callers read those two
attributes instead of probing, and the CLI and the app are written once against them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from twinnet.clients.remote import HttpClient
from twinnet.clients.sagemaker import SageMakerClient
from twinnet.core.imaging import ImageSource
from twinnet.core.result import CompareResult
from twinnet.core.spec import ModelSpec
from twinnet.errors import TwinnetError
from twinnet.infer.twin import Twin

if TYPE_CHECKING:
    from twinnet.core.spec import ModelSpec

__all__ = ["KINDS", "Backend", "BackendChoice", "Comparer", "open_backend", "resize_method"]

Kind = Literal["model", "url", "endpoint"]
KINDS: tuple[Kind, ...] = ("model", "url", "endpoint")
_KIND_NAMES: Mapping[str, str] = {
    "model": "model directory",
    "url": "TorchServe URL",
    "endpoint": "endpoint name",
}


class Comparer(Protocol):
    """Anything that can compare two encoded images."""

    def compare(
        self, left: ImageSource, right: ImageSource, cam: bool = False
    ) -> CompareResult:  # pragma: no cover
        ...


class Backend(Comparer, Protocol):
    """A backend as the CLI and the app use it.

    Attributes:
        spec: the model's :class:`~twinnet.core.spec.ModelSpec` when it runs in process, else
            ``None`` (a server does not send it).
        search: ``search(query, gallery, top_k=None) -> list[Hit]`` ranking a gallery with
            cached embeddings, or ``None`` where there are none (a server: compare each pair).
    """

    @property
    def spec(self) -> ModelSpec | None:  # pragma: no cover
        ...

    @property
    def search(self) -> Callable[..., list[Any]] | None:  # pragma: no cover
        ...


def resize_method(backend: Backend | None) -> str:
    """How the model framed images; a server (or no backend) does not say: the spec's default."""
    if backend is not None and backend.spec is not None:
        return backend.spec.resize_method

    return ModelSpec.resize_method  # the dataclass default


def open_backend(
    model: str | None = None,
    url: str | None = None,
    endpoint: str | None = None,
    region: str | None = None,
    token: str | None = None,
    model_name: str = "twin",
    profile: str | None = None,
    progress: Any = None,
    timeout_s: float = 900.0,
) -> Backend:
    """Open exactly one backend; heavy imports happen only for the one chosen.

    ``progress(answered, total, elapsed_s)`` follows an async endpoint's answers.
    """
    chosen = [name for name, v in (("model", model), ("url", url), ("endpoint", endpoint)) if v]
    if len(chosen) != 1:
        raise TwinnetError("choose exactly one backend: a model directory, --url or --endpoint")
    if model:
        return Twin.load(model)
    if url:
        return HttpClient(url, token=token, model_name=model_name)

    return SageMakerClient(
        str(endpoint), region=region, profile=profile, progress=progress, timeout_s=timeout_s
    )


@dataclass(frozen=True)
class BackendChoice:
    """Where comparisons run; hashable so it can key Streamlit's caches.

    Attributes:
        kind: ``model`` (in process), ``url`` (TorchServe) or ``endpoint`` (SageMaker).
        target: the model directory, the server URL or the endpoint name.
        region: AWS region of an endpoint.
        token: TorchServe inference token; ``None`` lets the client find a local one.
    """

    kind: Kind
    target: str
    region: str | None = None
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TwinnetError(f"unknown backend kind {self.kind!r}; choose one of {KINDS}")
        if not self.target.strip():
            raise TwinnetError(f"the {self.describe_kind()} is empty")

    def describe_kind(self) -> str:
        return _KIND_NAMES[self.kind]

    @property
    def key(self) -> str:
        """Identifies the backend in result caches (the token does not change answers)."""
        return f"{self.kind}|{self.target}|{self.region or ''}"

    @property
    def label(self) -> str:
        """One line for the page: where answers come from."""
        return self.describe()

    def describe(self, mode: str | None = None) -> str:
        """:attr:`label`, with an endpoint's mode (``realtime``, ``serverless``, ``async``)."""
        if self.kind == "model":
            return f"in process, model {self.target}"
        if self.kind == "url":
            return f"TorchServe at {self.target}"
        where = self.region or "default region"
        return f"SageMaker endpoint {self.target} ({where}{f', {mode} mode' if mode else ''})"

    @property
    def remote(self) -> bool:
        return self.kind != "model"

    def open(self) -> Backend:
        """Open the backend: loads the model or builds the client (no request is sent)."""
        if self.kind == "model":
            return open_backend(model=self.target)
        if self.kind == "url":
            return open_backend(url=self.target, token=self.token)
        return open_backend(endpoint=self.target, region=self.region)
