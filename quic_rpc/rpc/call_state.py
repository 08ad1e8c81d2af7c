"""The call state machine, as two data tables (one per direction of the stream).

The request direction (client -> server) and the response direction (server -> client)
each move through their own states on :class:`CallInput` s. A client *sends* on the
request table and *receives* on the response table; a server the other way round. An
input missing from a table is an error: :class:`LocalProtocolError` when we sent it,
:class:`RemoteProtocolError` when the peer did.
"""

from __future__ import annotations

import enum
from typing import NoReturn

from .errors import LocalProtocolError, RemoteProtocolError
from .frames import CallKind

__all__ = [
    "REQUEST_TABLE",
    "RESPONSE_INITIAL",
    "RESPONSE_TABLE",
    "CallInput",
    "CallStateMachine",
    "RequestState",
    "ResponseState",
    "Role",
    "header_input",
]


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    __hash__ = object.__hash__  # members are singletons: identity hash is exact and fast


class CallInput(enum.Enum):
    SINGLE_HEADER = "single-request header"  # REQUEST_HEADER, kind UNARY/SERVER_STREAMING
    STREAM_HEADER = "streaming-request header"  # REQUEST_HEADER, kind CLIENT_STREAMING/DUPLEX
    RAW_HEADER = "raw header"  # REQUEST_HEADER, kind RAW
    RESPONSE_HEADER = "response header"
    MESSAGE = "message"
    REQUEST_END = "request end"
    TRAILER = "trailer"
    RAW_DATA = "raw data"
    EOF = "end of stream"
    RESET = "reset"

    __hash__ = object.__hash__  # members are singletons: identity hash is exact and fast


class RequestState(enum.Enum):
    IDLE = "idle"
    AWAIT_MESSAGE = "awaiting the request"
    AWAIT_END = "awaiting request end"
    STREAMING = "streaming requests"
    ENDED = "request ended"
    RAW = "raw"
    CLOSED = "closed"
    RESET = "reset"

    __hash__ = object.__hash__  # members are singletons: identity hash is exact and fast


class ResponseState(enum.Enum):
    NOT_STARTED = "not started"  # the call's kind is not known yet
    SINGLE_IDLE = "single response: idle"
    SINGLE_HEADERS = "single response: headers sent"
    SINGLE_DONE = "single response: message sent"
    STREAM_IDLE = "streaming response: idle"
    STREAMING = "streaming response: streaming"
    RAW_IDLE = "raw: awaiting accept"
    RAW = "raw"
    TRAILED = "trailer sent"
    CLOSED = "closed"
    RESET = "reset"

    __hash__ = object.__hash__  # members are singletons: identity hash is exact and fast


_I = CallInput
_Q = RequestState
_R = ResponseState

REQUEST_TABLE: dict[tuple[RequestState, CallInput], RequestState] = {
    (_Q.IDLE, _I.SINGLE_HEADER): _Q.AWAIT_MESSAGE,
    (_Q.IDLE, _I.STREAM_HEADER): _Q.STREAMING,
    (_Q.IDLE, _I.RAW_HEADER): _Q.RAW,
    (_Q.AWAIT_MESSAGE, _I.MESSAGE): _Q.AWAIT_END,
    (_Q.AWAIT_END, _I.REQUEST_END): _Q.ENDED,
    (_Q.STREAMING, _I.MESSAGE): _Q.STREAMING,
    (_Q.STREAMING, _I.REQUEST_END): _Q.ENDED,
    (_Q.ENDED, _I.EOF): _Q.CLOSED,
    (_Q.RAW, _I.RAW_DATA): _Q.RAW,
    (_Q.RAW, _I.EOF): _Q.CLOSED,
}
for _state in (_Q.IDLE, _Q.AWAIT_MESSAGE, _Q.AWAIT_END, _Q.STREAMING, _Q.ENDED, _Q.RAW):
    REQUEST_TABLE[(_state, _I.RESET)] = _Q.RESET

RESPONSE_TABLE: dict[tuple[ResponseState, CallInput], ResponseState] = {
    (_R.SINGLE_IDLE, _I.RESPONSE_HEADER): _R.SINGLE_HEADERS,
    (_R.SINGLE_IDLE, _I.MESSAGE): _R.SINGLE_DONE,
    (_R.SINGLE_IDLE, _I.TRAILER): _R.TRAILED,
    (_R.SINGLE_HEADERS, _I.MESSAGE): _R.SINGLE_DONE,
    (_R.SINGLE_HEADERS, _I.TRAILER): _R.TRAILED,
    (_R.SINGLE_DONE, _I.TRAILER): _R.TRAILED,
    (_R.STREAM_IDLE, _I.RESPONSE_HEADER): _R.STREAMING,
    (_R.STREAM_IDLE, _I.MESSAGE): _R.STREAMING,
    (_R.STREAM_IDLE, _I.TRAILER): _R.TRAILED,
    (_R.STREAMING, _I.MESSAGE): _R.STREAMING,
    (_R.STREAMING, _I.TRAILER): _R.TRAILED,
    (_R.RAW_IDLE, _I.RESPONSE_HEADER): _R.RAW,
    (_R.RAW_IDLE, _I.TRAILER): _R.TRAILED,
    (_R.RAW, _I.RAW_DATA): _R.RAW,
    (_R.RAW, _I.EOF): _R.CLOSED,
    (_R.TRAILED, _I.EOF): _R.CLOSED,
}
for _rstate in (
    _R.NOT_STARTED,
    _R.SINGLE_IDLE,
    _R.SINGLE_HEADERS,
    _R.SINGLE_DONE,
    _R.STREAM_IDLE,
    _R.STREAMING,
    _R.RAW_IDLE,
    _R.RAW,
    _R.TRAILED,
):
    RESPONSE_TABLE[(_rstate, _I.RESET)] = _R.RESET

RESPONSE_INITIAL: dict[CallKind, ResponseState] = {
    CallKind.UNARY: _R.SINGLE_IDLE,
    CallKind.CLIENT_STREAMING: _R.SINGLE_IDLE,
    CallKind.SERVER_STREAMING: _R.STREAM_IDLE,
    CallKind.DUPLEX: _R.STREAM_IDLE,
    CallKind.RAW: _R.RAW_IDLE,
}
"""Where the response direction starts once the request header fixed the call's kind."""

_HEADER_INPUT: dict[CallKind, CallInput] = {
    CallKind.UNARY: _I.SINGLE_HEADER,
    CallKind.SERVER_STREAMING: _I.SINGLE_HEADER,
    CallKind.CLIENT_STREAMING: _I.STREAM_HEADER,
    CallKind.DUPLEX: _I.STREAM_HEADER,
    CallKind.RAW: _I.RAW_HEADER,
}


def header_input(kind: CallKind) -> CallInput:
    """The request-table input a REQUEST_HEADER of ``kind`` is."""
    return _HEADER_INPUT[kind]


class CallStateMachine:
    """Tracks both directions of one call for one role, driven by the tables above."""

    __slots__ = ("kind", "request", "response", "role")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.kind: CallKind | None = None
        self.request = RequestState.IDLE
        self.response = ResponseState.NOT_STARTED

    def start(self, kind: CallKind) -> None:
        """Apply a REQUEST_HEADER of ``kind`` (sent by a client, received by a server)."""
        self._step_request(header_input(kind), self.role is Role.CLIENT)
        self.kind = kind
        self.response = RESPONSE_INITIAL[kind]

    def send(self, event: CallInput) -> None:
        """We are sending ``event``; raise LocalProtocolError if that is not allowed now."""
        if self.role is Role.CLIENT:
            self._step_request(event, True)
        else:
            self._step_response(event, True)

    def receive(self, event: CallInput) -> None:
        """The peer sent ``event``; raise RemoteProtocolError if that is not allowed now."""
        if self.role is Role.CLIENT:
            self._step_response(event, False)
        else:
            self._step_request(event, False)

    def _step_request(self, event: CallInput, local: bool) -> None:
        new = REQUEST_TABLE.get((self.request, event))
        if new is None:
            self._fail("request", self.request.value, event, local)
        self.request = new

    def _step_response(self, event: CallInput, local: bool) -> None:
        new = RESPONSE_TABLE.get((self.response, event))
        if new is None:
            self._fail("response", self.response.value, event, local)
        self.response = new

    def _fail(self, direction: str, state: str, event: CallInput, local: bool) -> NoReturn:
        who = "we" if local else "peer"
        message = f"{who} sent {event.value} while the {direction} direction is {state}"
        if local:
            raise LocalProtocolError(message)
        raise RemoteProtocolError(message)
