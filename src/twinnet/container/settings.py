"""The serving container's settings: environment variables, read and checked once at start.

Settings (environment variables; all optional):

=============================== ==============================================================
``SAGEMAKER_BIND_TO_PORT``      public port (default 8080)
``TWINNET_HOST``                public bind address (default 0.0.0.0)
``TWINNET_ENGINE``              ``torchserve`` (default) or ``ray``; ``--engine`` wins
``TWINNET_BATCH_SIZE``          TorchServe batch size
``TWINNET_MAX_BATCH_DELAY``     milliseconds TorchServe waits to fill a batch
``TWINNET_WORKERS``             worker processes, or Ray replicas (also
                                ``SAGEMAKER_MODEL_SERVER_WORKERS``)
``TWINNET_THREADS``             torch threads per worker, or ``auto``
``TWINNET_RESPONSE_TIMEOUT``    seconds before TorchServe counts a batch as stuck (also
                                ``SAGEMAKER_MODEL_SERVER_TIMEOUT``; TorchServe only)
``TWINNET_PRECISION``           ``auto``, ``int8``, ``bf16`` or ``fp32``
``TWINNET_INT8_ENGINE``         ``auto``, ``openvino`` or ``onnxruntime`` (read where the
                                model loads: :mod:`twinnet.infer.int8`)
``TWINNET_RESPONSE_FORMAT``     ``object`` or ``list``: the answer to a request that names
                                no ``format``
``TWINNET_STARTUP_TIMEOUT``     seconds to wait for the model to load (default 600)
``TWINNET_INVOCATION_TIMEOUT``  seconds before an invocation is answered 504 (default 55)
``TWINNET_GATEWAY_THREADS``     requests the gateway answers at once (default 32)
``TWINNET_MAX_CONNECTIONS``     client connections the gateway keeps open (default 500)
``TWINNET_MAX_REQUEST_BYTES``   larger request bodies are answered 413 (default 6 MiB, the
                                real-time limit; ``twinnet deploy --mode serverless`` sets
                                4 MiB, serverless's)
=============================== ==============================================================
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinnet.container.gateway import (
    DEFAULT_GATEWAY_THREADS,
    DEFAULT_INVOCATION_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
)
from twinnet.contract.options import (
    CONFIG_FILE,
    MINIMUM,
    RESPONSE_FORMATS,
    ServeOptions,
)
from twinnet.contract.protocol import MAX_REQUEST_BYTES
from twinnet.core.precision import PRECISIONS
from twinnet.engines.registry import engine_names
from twinnet.errors import TwinnetError

__all__ = [
    "DEFAULT_PORT",
    "ENGINES",
    "ContainerSettings",
    "settings_from_env",
    "read_options",
    "parse_engine",
]

DEFAULT_PORT = 8080
#: The serving engines the container runs, the default first.
ENGINES = engine_names()
DEFAULT_STARTUP_TIMEOUT = 600.0

#: ServeOptions field -> environment variables, first one set wins.
_OPTION_ENV: dict[str, tuple[str, ...]] = {
    "batch_size": ("TWINNET_BATCH_SIZE",),
    "max_batch_delay": ("TWINNET_MAX_BATCH_DELAY",),
    "workers": ("TWINNET_WORKERS", "SAGEMAKER_MODEL_SERVER_WORKERS"),
    "threads": ("TWINNET_THREADS",),
    "response_timeout": ("TWINNET_RESPONSE_TIMEOUT", "SAGEMAKER_MODEL_SERVER_TIMEOUT"),
    "precision": ("TWINNET_PRECISION",),
    "response_format": ("TWINNET_RESPONSE_FORMAT",),
}


@dataclass
class ContainerSettings:
    """What the container reads from its environment.

    Attributes:
        port: inference port (``SAGEMAKER_BIND_TO_PORT``).
        host: bind address.
        startup_timeout: seconds to wait for a READY worker before giving up.
        invocation_timeout: seconds one invocation may take before the container answers 504.
        gateway_threads: requests the gateway answers at once.
        max_connections: client connections the gateway keeps open at once.
        engine: ``torchserve`` or ``ray``.
        max_request_bytes: larger request bodies are answered 413.
        overrides: :class:`~twinnet.contract.options.ServeOptions` fields to rewrite into
            ``model-config.yaml``.
    """

    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    invocation_timeout: float = DEFAULT_INVOCATION_TIMEOUT
    gateway_threads: int = DEFAULT_GATEWAY_THREADS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    engine: str = ENGINES[0]
    max_request_bytes: int = MAX_REQUEST_BYTES
    overrides: dict[str, Any] = field(default_factory=dict)


def _int(environ: Mapping[str, str], var: str, minimum: int) -> int:
    text = environ[var].strip()
    if not re.fullmatch(r"\d+", text) or int(text) < minimum:
        raise TwinnetError(f"{var}={environ[var]!r}: expected a whole number >= {minimum}")
    return int(text)


def _option(env: Mapping[str, str], option: str, var: str) -> Any:
    """One ServeOptions field from environment variable ``var``."""
    if option in ("precision", "response_format"):
        value = env[var].strip().lower()
        choices = PRECISIONS if option == "precision" else RESPONSE_FORMATS
        if value not in choices:
            shown = f"{', '.join(choices[:-1])} or {choices[-1]}"
            raise TwinnetError(f"{var}={env[var]!r}: expected {shown}")
        return value
    if option == "threads":
        value = env[var].strip().lower()
        return value if value == "auto" else _int(env, var, 1)
    return _int(env, var, MINIMUM[option])


def parse_engine(value: str, where: str) -> str:
    engine = value.strip().lower()
    if engine not in ENGINES:
        raise TwinnetError(f"{where}={value!r}: expected {' or '.join(ENGINES)}")
    return engine


def settings_from_env(environ: Mapping[str, str] | None = None) -> ContainerSettings:
    """Read and check every setting up front, so a typo stops the container with one line."""
    env = os.environ if environ is None else environ
    settings = ContainerSettings()
    if env.get("SAGEMAKER_BIND_TO_PORT", "").strip():
        settings.port = _int(env, "SAGEMAKER_BIND_TO_PORT", 1)
        if settings.port > 65535:
            raise TwinnetError(f"SAGEMAKER_BIND_TO_PORT={settings.port}: not a port number")
    settings.host = env.get("TWINNET_HOST", "").strip() or settings.host
    if env.get("TWINNET_ENGINE", "").strip():
        settings.engine = parse_engine(env["TWINNET_ENGINE"], "TWINNET_ENGINE")
    if env.get("TWINNET_STARTUP_TIMEOUT", "").strip():
        settings.startup_timeout = float(_int(env, "TWINNET_STARTUP_TIMEOUT", 1))
    if env.get("TWINNET_INVOCATION_TIMEOUT", "").strip():
        settings.invocation_timeout = float(_int(env, "TWINNET_INVOCATION_TIMEOUT", 1))
    if env.get("TWINNET_GATEWAY_THREADS", "").strip():
        settings.gateway_threads = _int(env, "TWINNET_GATEWAY_THREADS", 1)
    if env.get("TWINNET_MAX_CONNECTIONS", "").strip():
        settings.max_connections = _int(env, "TWINNET_MAX_CONNECTIONS", 1)
    if env.get("TWINNET_MAX_REQUEST_BYTES", "").strip():
        settings.max_request_bytes = _int(env, "TWINNET_MAX_REQUEST_BYTES", 1024)
        if settings.max_request_bytes > MAX_REQUEST_BYTES:
            raise TwinnetError(
                f"TWINNET_MAX_REQUEST_BYTES={settings.max_request_bytes}: at most "
                f"{MAX_REQUEST_BYTES} (the contract's limit, which the model server holds to)"
            )
    for option, names in _OPTION_ENV.items():
        var = next((n for n in names if env.get(n, "").strip()), None)
        if var is not None:
            settings.overrides[option] = _option(env, option, var)
    try:  # what no single variable shows, e.g. a batch size over the most TorchServe takes
        ServeOptions(**settings.overrides)
    except TwinnetError as exc:
        raise TwinnetError(f"container settings from the environment: {exc}") from None
    return settings


def read_options(mar: str | os.PathLike) -> ServeOptions:
    """The :class:`~twinnet.contract.options.ServeOptions` an archive was built with."""
    with zipfile.ZipFile(mar) as zin:
        try:
            return ServeOptions.from_yaml(zin.read(CONFIG_FILE))
        except KeyError:
            raise TwinnetError(
                f"{Path(mar).name} has no {CONFIG_FILE}; rebuild it with `twinnet package`"
            ) from None
