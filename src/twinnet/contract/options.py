"""The serving options of one archive, and ``model-config.yaml``: their one schema.

:class:`ServeOptions` is the only description of that file. ``twinnet archive`` writes it
(:meth:`ServeOptions.to_yaml`), the handler reads it back when a worker starts
(:meth:`ServeOptions.from_config`), and the SageMaker container reads it, replaces what its
environment sets and writes it again. TorchServe reads the top-level keys; the ``twinnet``
section holds what only twinnet reads. A key that is absent means the field's default here,
so no reader keeps defaults of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import yaml

from twinnet.contract.protocol import FORMATS as RESPONSE_FORMATS
from twinnet.core.precision import PRECISIONS
from twinnet.errors import TwinnetError

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_RESPONSE_TIMEOUT",
    "DEFAULT_STARTUP_TIMEOUT",
    "MINIMUM",
    "PLANS",
    "RESPONSE_FORMATS",
    "ServeOptions",
    "resolve_threads",
    "usable_cpus",
]

#: Where torch-model-archiver puts ``--config-file`` inside the ``.mar`` (and its name there).
CONFIG_FILE = "model-config.yaml"
#: ``tuned``: this project's plan; ``torchserve``: TorchServe's defaults (the naive baseline).
PLANS = ("tuned", "torchserve")
#: Seconds one batch may take before TorchServe restarts the worker (CAM on resnet50 at
#: batch size 8 on 2 CPU cores takes a few seconds; a stuck worker should not wait forever).
DEFAULT_RESPONSE_TIMEOUT = 120
#: Seconds a worker may take to start and load the model.
DEFAULT_STARTUP_TIMEOUT = 300
#: Smallest value of each whole-number option (the container checks its environment with it).
MINIMUM = {
    "batch_size": 1,
    "max_batch_delay": 0,
    "workers": 1,
    "response_timeout": 1,
    "startup_timeout": 1,
}
MAX_BATCH_SIZE = 256
_HEADER = "# Written by `twinnet archive`; TorchServe reads the top-level keys, the handler the `twinnet` section."


def usable_cpus() -> int:
    """CPUs this process may run on (respects taskset and container CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: Any, workers: int, cpus: int | None = None) -> int | None:
    """Torch threads for one worker: ``auto`` shares the usable CPUs evenly between workers.

    Returns ``None`` when torch's own default should stand (the ``torchserve`` plan).
    """
    if threads is None:
        return None
    if threads == "auto":
        return max(1, (cpus or usable_cpus()) // max(1, int(workers)))
    n = int(threads)
    if n < 1:
        raise TwinnetError(f"threads must be at least 1, got {n}")
    return n


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TwinnetError(f"{name} must be a whole number, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise TwinnetError(f"{name} must be a whole number, got {value!r}") from None
    if n < MINIMUM[name]:
        raise TwinnetError(f"{name.replace('_', ' ')} must be at least {MINIMUM[name]}, got {n}")
    return n


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    word = str(value).strip().lower()
    if word not in choices:
        raise TwinnetError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return word


@dataclass(frozen=True)
class ServeOptions:
    """How TorchServe runs one archive's model; checked and normalised when built.

    Attributes:
        batch_size: most requests TorchServe groups into one handler call (1 to 256).
        max_batch_delay: milliseconds TorchServe waits to fill a batch.
        workers: worker processes; ``None`` means one per usable CPU under the tuned plan,
            counted when the config is written.
        threads: torch threads per worker, or ``auto`` (usable CPUs / workers, counted when
            the worker starts, so an archive fits the machine it lands on). ``None`` under
            the ``torchserve`` plan.
        response_timeout: seconds before a batch is considered stuck.
        startup_timeout: seconds a worker may take to load the model.
        precision: ``auto``, ``int8``, ``bf16`` or ``fp32`` (:data:`twinnet.core.precision.PRECISIONS`).
        cache_mb: each worker's embedding cache.
        plan: ``tuned``, or ``torchserve`` (TorchServe's own workers and threads).
        response_format: the answer for a request that names no ``format``: ``object`` (the
            contract's JSON object) or ``list`` (the original sample's flat list).
    """

    batch_size: int = 8
    max_batch_delay: int = 10
    workers: int | None = None
    threads: int | str | None = "auto"
    response_timeout: int = DEFAULT_RESPONSE_TIMEOUT
    startup_timeout: int = DEFAULT_STARTUP_TIMEOUT
    precision: str = "auto"
    cache_mb: float = 256.0
    plan: str = "tuned"
    response_format: str = "object"

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise once, here
        for name in ("batch_size", "max_batch_delay", "response_timeout", "startup_timeout"):
            put(self, name, _whole(name, getattr(self, name)))
        if self.batch_size > MAX_BATCH_SIZE:
            raise TwinnetError(
                f"batch size must be between 1 and {MAX_BATCH_SIZE}, got {self.batch_size}"
            )
        if self.workers is not None:
            put(self, "workers", _whole("workers", self.workers))
        put(self, "plan", _choice("plan", self.plan, PLANS))
        put(self, "precision", _choice("precision", self.precision, PRECISIONS))
        put(self, "response_format", _choice("response format", self.response_format, RESPONSE_FORMATS))  # fmt: skip
        put(self, "threads", self._checked_threads())
        if float(self.cache_mb) < 0:
            raise TwinnetError(f"cache must be at least 0 MB, got {self.cache_mb}")
        put(self, "cache_mb", float(self.cache_mb))

    def _checked_threads(self) -> int | str | None:
        if self.plan == "torchserve":
            return None
        if self.threads is None or str(self.threads).strip().lower() == "auto":
            return "auto"
        if isinstance(self.threads, bool) or not str(self.threads).strip().isdigit():
            raise TwinnetError(f"threads must be a whole number or 'auto', got {self.threads!r}")
        n = int(self.threads)
        if n < 1:
            raise TwinnetError(f"threads must be at least 1, got {n}")
        return n

    # ------------------------------------------------------------------ the file
    def to_config(self) -> dict[str, Any]:
        """The ``model-config.yaml`` content: TorchServe's keys plus a ``twinnet`` section."""
        cfg: dict[str, Any] = {
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay,
            "responseTimeout": self.response_timeout,
            "startupTimeout": self.startup_timeout,
        }
        section: dict[str, Any] = {
            "plan": self.plan,
            "precision": self.precision,
            "cache_mb": self.cache_mb,
            "response_format": self.response_format,
        }
        if self.plan == "tuned":
            n = self.workers or usable_cpus()
            cfg["minWorkers"] = cfg["maxWorkers"] = section["workers"] = n
            section["threads"] = self.threads
            section["why"] = (
                f"{n} worker(s) x threads={self.threads} (auto = usable CPUs / workers, "
                f"{resolve_threads(self.threads, n)} here): compute threads never outnumber "
                "cores, so concurrency cannot collapse throughput; dynamic batching and the "
                "embedding cache do the rest"
            )
        else:
            if self.workers is not None:
                cfg["minWorkers"] = cfg["maxWorkers"] = self.workers
            section["threads"] = None
            section["why"] = "TorchServe defaults: one worker per core, torch threads = cores each"
        cfg["twinnet"] = section
        return cfg

    def to_yaml(self, header: str = _HEADER) -> str:
        """The file's text, with a comment line saying who wrote it."""
        return header.rstrip("\n") + "\n" + yaml.safe_dump(self.to_config(), sort_keys=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> ServeOptions:
        """The options a parsed ``model-config.yaml`` records (absent keys: the defaults)."""
        config = config or {}
        if not isinstance(config, Mapping):
            raise TwinnetError(f"{CONFIG_FILE} must hold a mapping, got {type(config).__name__}")
        section = config.get("twinnet") or {}
        top = {
            "batch_size": "batchSize",
            "max_batch_delay": "maxBatchDelay",
            "response_timeout": "responseTimeout",
            "startup_timeout": "startupTimeout",
            "workers": "minWorkers",
        }
        values: dict[str, Any] = {k: config[v] for k, v in top.items() if v in config}
        if "workers" not in values and section.get("workers") is not None:
            values["workers"] = section["workers"]
        for name in ("threads", "precision", "cache_mb", "plan", "response_format"):
            if name in section:
                values[name] = section[name]
        return cls(**values)

    @classmethod
    def from_yaml(cls, text: str | bytes) -> ServeOptions:
        """The options of a ``model-config.yaml`` text."""
        try:
            return cls.from_config(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise TwinnetError(f"{CONFIG_FILE} is not valid YAML: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values (what a digest of the options hashes)."""
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, as keyword arguments of the constructor."""
        return tuple(f.name for f in fields(cls))
