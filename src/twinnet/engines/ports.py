"""Ports: whether one is free, and free loopback ports for a server's inner listeners."""

from __future__ import annotations

import socket
import warnings

from twinnet.engines.state import LOOPBACK

__all__ = ["port_free", "free_loopback_ports", "warn_if_open"]


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port``. Bound as a server binds it (SO_REUSEADDR),
    so connections of a server stopped a moment ago, still in TIME_WAIT, do not count."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError:
            return False
    return True


def free_loopback_ports(n: int, avoid: set[int]) -> tuple[int, ...]:
    """``n`` distinct free loopback ports, none in ``avoid`` (TorchServe's gRPC and inner APIs)."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
            port = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    return tuple(ports)


def warn_if_open(host: str, auth: bool, stacklevel: int) -> None:
    """Warn when a server would answer anyone: authorization off on a non-loopback address."""
    if host not in LOOPBACK and not auth:
        warnings.warn(
            f"token authorization is off and the server listens on {host}: anyone who can "
            "reach this port can use the model. Drop --no-auth, or bind 127.0.0.1.",
            stacklevel=stacklevel + 1,
        )
