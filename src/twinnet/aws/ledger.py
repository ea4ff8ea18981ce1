"""What a deploy run created, and how to undo it, without ever breaking the live endpoint.

The ledger is a :class:`contextlib.ExitStack` of undo callbacks: each step that creates
something pushes its undo; success dismisses them all (``pop_all``), failure runs them in
reverse (``close``). Every undo records its own outcome and never raises, so one failed
undo hides no other, and the result says exactly what was undone, kept and left.

Nothing a live endpoint runs on is ever deleted. Once CreateEndpoint or UpdateEndpoint has
taken effect, deleting the endpoint's config, model or artifact would break it, so those
("guarded") undos first ask the endpoint what it runs on, afresh each time.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from twinnet.aws.resources import describe_endpoint, model_data_url, variant_models
from twinnet.aws.session import describe_error

__all__ = [
    "Kept",
    "Ledger",
    "Left",
    "Reporter",
    "Rollback",
    "in_use",
    "quiet",
    "rollback_message",
]

#: Progress callback: ``report(event, message)``; events are ``step``, ``wait``, ``rollback``,
#: and ``kept`` (teardown: a resource it leaves, and why).
Reporter = Callable[[str, str], None]


def quiet(event: str, message: str) -> None:
    """The default reporter: say nothing."""


_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack")


class Left(Exception):
    """An undo step that cannot run now; its message says why."""


class Kept(Exception):
    """An undo step that must not run: the endpoint already runs on what it would undo."""


@dataclass
class Rollback:
    """What a rollback did: undone, kept because the endpoint runs on it, left by failure."""

    undone: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


class Ledger:
    """This run's undo steps, run in reverse by :meth:`rollback` unless :meth:`commit` dismissed them.

    Args:
        report: progress callback; each undo is reported as a ``rollback`` event.
        in_use: given the labels of every guarded step, returns those the endpoint runs on.
    """

    def __init__(self, report: Reporter, in_use: Callable[[set[str]], set[str]]) -> None:
        self._stack = ExitStack()
        self._guarded: set[str] = set()
        self._count = 0
        self.report = report
        self.in_use = in_use
        self.result = Rollback()

    def __len__(self) -> int:
        return self._count

    def add(self, what: str, undo: Callable[[], Any], guarded: bool = False) -> None:
        """Record how to undo ``what``; ``guarded``: it is something an endpoint can run on."""
        if guarded:
            self._guarded.add(what)
        self._stack.callback(self._undo, what, undo, guarded)
        self._count += 1

    def commit(self) -> None:
        """Success: nothing is to be undone."""
        self._stack.pop_all()
        self._count = 0

    def rollback(self) -> Rollback:
        """Undo every recorded step, newest first; returns what became of each."""
        self._stack.close()
        self._count = 0
        return self.result

    def _undo(self, what: str, undo: Callable[[], Any], guarded: bool) -> None:
        out = self.result
        try:
            if guarded and what in self.in_use(self._guarded):
                out.kept.append(what)
                self.report("rollback", f"kept {what}: the endpoint runs on it")
                return
            undo()
        except Kept as exc:
            out.notes.append(str(exc))
        except Left as exc:
            out.left.append(f"{what} ({exc})")
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none hides another
            out.left.append(f"{what} ({describe_error('undo', exc)})")
        else:
            out.undone.append(what)
            self.report("rollback", f"removed {what}")


def in_use(sm: Any, endpoint: str, pending: set[str]) -> set[str]:
    """Labels (as the ledger names them) of the config, models and artifacts ``endpoint`` runs on.

    While the endpoint is still being created or updated, this run's own resources
    (``pending``) count as in use too: the change in flight may be to them.
    """
    desc = describe_endpoint(sm, endpoint)
    if desc is None or desc["EndpointStatus"] == "Deleting":
        return set()
    config = desc["EndpointConfigName"]
    refs = {f"endpoint config {config}"}
    for model in variant_models(sm, config):
        refs.add(f"model {model}")
        url = model_data_url(sm, model)
        if url:
            refs.add(f"S3 object {url}")
    if desc["EndpointStatus"] in _BUSY:
        refs |= pending
    return refs


def rollback_message(endpoint: str, region: str, cause: str, result: Rollback) -> str:
    """One line: the cause, what was undone, what the endpoint keeps running on, what is left."""
    message = f"deploy of {endpoint} in {region} failed: {cause}; rolled back {len(result.undone)} resource(s)"
    if result.kept:
        message += f"; KEPT, as endpoint {endpoint} runs on them: {', '.join(result.kept)}"
    for note in result.notes:
        message += f"; {note}"
    if result.left:
        message += (
            f"; LEFT BEHIND: {'; '.join(result.left)}; "
            f"remove with `twinnet teardown {endpoint} --delete-artifacts`"
        )
    elif result.kept or result.notes:
        message += "; nothing else left behind"
    else:
        message += ", nothing left behind"
    return message
