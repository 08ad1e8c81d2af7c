"""Events the sans-IO codec produces: what arrived on a call stream (past tense)."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import CallKind
from .metadata import Metadata
from .status import Status

__all__ = [
    "Event",
    "MessageReceived",
    "RawDataReceived",
    "RequestEnded",
    "RequestHeaderReceived",
    "ResponseHeaderReceived",
    "StreamEnded",
    "TrailerReceived",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every RPC-layer event."""


@dataclass(frozen=True, slots=True)
class RequestHeaderReceived(Event):
    """The call's first frame: which method, what kind, metadata, time the caller allows."""

    method: str
    kind: CallKind
    metadata: Metadata
    timeout_us: int | None


@dataclass(frozen=True, slots=True)
class ResponseHeaderReceived(Event):
    """The server's initial metadata (optional; raw calls: the call was accepted)."""

    metadata: Metadata


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """One serialized message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RequestEnded(Event):
    """The client will send no more messages (its stream stays open until the trailer)."""


@dataclass(frozen=True, slots=True)
class TrailerReceived(Event):
    """The call's outcome."""

    status: Status
    details: str
    metadata: Metadata
    rich_details: bytes | None


@dataclass(frozen=True, slots=True)
class RawDataReceived(Event):
    """Bytes of a raw call, after its header."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer half-closed its side of the stream."""
