"""Middleware: an interceptor chain, the same shape on both sides.

A middleware subclasses :class:`Middleware` and overrides what it needs:

* ``async intercept(call, proceed)`` wraps the call. Read or change ``call.metadata``
  (client: outgoing request metadata; server: the invocation metadata the handler sees),
  then ``await proceed(call)``. Raise :class:`RPCError` instead to short-circuit with a
  status. On the server ``proceed`` runs the handler to its end (so exceptions from it
  pass through ``intercept``); on the client it opens the stream and sends the header.
* ``on_send(call, message)`` / ``on_receive(call, message)`` observe (or replace) each
  message object going out / coming in.
* ``on_done(call, status, details)`` observes the outcome, once per call.

The first middleware in the sequence is the outermost.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..streams import PeerInfo
from .context import CallContext
from .frames import CallKind
from .metadata import Metadata
from .status import Status

__all__ = ["CallDetails", "Middleware", "Proceed", "build_chain"]


@dataclass(slots=True)
class CallDetails:
    """What middleware sees of a call. ``side`` is "client" or "server"."""

    method: str
    kind: CallKind
    metadata: Metadata
    deadline: float | None
    side: str
    peer_info: PeerInfo | None = None
    context: CallContext | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Free space for middleware to pass values between its hooks."""


Proceed = Callable[[CallDetails], Coroutine[Any, Any, None]]


class Middleware:
    """Base class: every hook defaults to "pass through"."""

    async def intercept(self, call: CallDetails, proceed: Proceed) -> None:
        await proceed(call)

    def on_send(self, call: CallDetails, message: Any) -> Any:
        return message

    def on_receive(self, call: CallDetails, message: Any) -> Any:
        return message

    def on_done(self, call: CallDetails, status: Status, details: str) -> None:
        return None


def _overrides(mw: Middleware, name: str) -> bool:
    return getattr(type(mw), name) is not getattr(Middleware, name)


class MiddlewareStack:
    """The middleware of one client or server, with each hook's users precomputed."""

    __slots__ = ("all", "done", "intercepting", "receiving", "sending")

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        for mw in middleware:
            if not isinstance(mw, Middleware):
                raise TypeError(f"middleware must subclass Middleware: {mw!r}")
        self.all = tuple(middleware)
        self.intercepting = tuple(m for m in self.all if _overrides(m, "intercept"))
        self.sending = tuple(m for m in self.all if _overrides(m, "on_send"))
        self.receiving = tuple(m for m in self.all if _overrides(m, "on_receive"))
        self.done = tuple(m for m in self.all if _overrides(m, "on_done"))

    def on_send(self, call: CallDetails, message: Any) -> Any:
        for mw in self.sending:
            message = mw.on_send(call, message)
        return message

    def on_receive(self, call: CallDetails, message: Any) -> Any:
        for mw in self.receiving:
            message = mw.on_receive(call, message)
        return message

    def on_done(self, call: CallDetails, status: Status, details: str) -> None:
        for mw in self.done:
            mw.on_done(call, status, details)


def build_chain(middleware: Sequence[Middleware], terminal: Proceed) -> Proceed:
    """``terminal`` wrapped by each middleware's ``intercept``, first = outermost."""
    proceed = terminal
    for mw in reversed(middleware):
        proceed = _bind(mw, proceed)
    return proceed


def _bind(mw: Middleware, inner: Proceed) -> Proceed:
    async def proceed(call: CallDetails) -> None:
        await mw.intercept(call, inner)

    return proceed
