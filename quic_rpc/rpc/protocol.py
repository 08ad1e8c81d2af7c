"""The sans-IO call protocol: one call, one role; frames and state machine together.

:class:`CallProtocol` turns "send this" commands into bytes (checking the call state
machine) and received bytes into events (checking them against the state machine too).
The asyncio server and client are thin shells that move those bytes over a ByteStream.
"""

from __future__ import annotations

from collections.abc import Iterable

from .call_state import CallInput, CallStateMachine, Role
from .codec import (
    FrameDecoder,
    encode_message,
    encode_request_end,
    encode_request_header,
    encode_response_header,
    encode_trailer,
)
from .events import (
    Event,
    MessageReceived,
    RawDataReceived,
    RequestEnded,
    RequestHeaderReceived,
    ResponseHeaderReceived,
    StreamEnded,
    TrailerReceived,
)
from .frames import (
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_METADATA_ENTRIES,
    PREFACE,
    CallKind,
)
from .metadata import MetadataValue
from .status import Status

__all__ = ["CallProtocol"]

_INPUT_FOR_EVENT: dict[type[Event], CallInput] = {
    MessageReceived: CallInput.MESSAGE,
    RequestEnded: CallInput.REQUEST_END,
    ResponseHeaderReceived: CallInput.RESPONSE_HEADER,
    TrailerReceived: CallInput.TRAILER,
    RawDataReceived: CallInput.RAW_DATA,
}


class CallProtocol:
    """Sans-IO state of one call for one side (``Role.CLIENT`` or ``Role.SERVER``)."""

    __slots__ = ("_decoder", "_preface_pending", "state")

    def __init__(
        self,
        role: Role,
        *,
        raw: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_metadata_entries: int = DEFAULT_MAX_METADATA_ENTRIES,
    ) -> None:
        self.state = CallStateMachine(role)
        self._decoder = FrameDecoder(
            max_message_size=max_message_size,
            max_header_size=max_header_size,
            max_metadata_entries=max_metadata_entries,
            raw_after_request_header=role is Role.SERVER,
            raw_after_response_header=role is Role.CLIENT and raw,
        )
        self._preface_pending = True

    @property
    def role(self) -> Role:
        return self.state.role

    @property
    def kind(self) -> CallKind | None:
        return self.state.kind

    @property
    def preface_pending(self) -> bool:
        """True until the first bytes in our direction (which carry the preface) are made."""
        return self._preface_pending

    def _preface(self) -> bytes:
        if self._preface_pending:
            self._preface_pending = False
            return PREFACE
        return b""

    # ------------------------------------------------------------------ sending

    def send_request_header(
        self,
        method: str,
        kind: CallKind,
        metadata: Iterable[tuple[str, MetadataValue]] = (),
        timeout_us: int | None = None,
    ) -> bytes:
        """Client: the stream preface and the REQUEST_HEADER frame."""
        frame = encode_request_header(method, kind, metadata, timeout_us)
        if self.state.role is not Role.CLIENT:
            self.state.send(CallInput.SINGLE_HEADER)  # raises LocalProtocolError
        self.state.start(kind)
        return self._preface() + frame

    def send_response_header(self, metadata: Iterable[tuple[str, MetadataValue]] = ()) -> bytes:
        """Server: a RESPONSE_HEADER frame (initial metadata; for raw calls: accept)."""
        self.state.send(CallInput.RESPONSE_HEADER)
        return self._preface() + encode_response_header(metadata)

    def send_message(self, data: bytes) -> bytes:
        """Either side: a MESSAGE frame."""
        self.state.send(CallInput.MESSAGE)
        if self._preface_pending:
            return self._preface() + encode_message(data)
        return encode_message(data)

    def send_request_end(self) -> bytes:
        """Client: a REQUEST_END frame."""
        self.state.send(CallInput.REQUEST_END)
        return encode_request_end()

    def send_trailer(
        self,
        status: Status,
        details: str = "",
        metadata: Iterable[tuple[str, MetadataValue]] = (),
        rich_details: bytes | None = None,
    ) -> bytes:
        """Server: the TRAILER frame."""
        self.state.send(CallInput.TRAILER)
        return self._preface() + encode_trailer(status, details, metadata, rich_details)

    def send_raw_data(self) -> None:
        """Either side of a raw call: check that raw bytes may be sent now."""
        self.state.send(CallInput.RAW_DATA)

    def send_eof(self) -> None:
        """Either side: check that half-closing is allowed now."""
        self.state.send(CallInput.EOF)

    def send_reset(self) -> None:
        """Either side: we abandon our sending direction."""
        self.state.send(CallInput.RESET)

    # ---------------------------------------------------------------- receiving

    def receive_data(self, data: bytes) -> list[Event]:
        """Decode ``data`` into events, checking each against the state machine."""
        events = self._decoder.feed(data)
        state = self.state
        for event in events:
            if type(event) is RequestHeaderReceived:
                if state.role is Role.CLIENT:
                    state.receive(CallInput.SINGLE_HEADER)  # raises RemoteProtocolError
                state.start(event.kind)
            else:
                state.receive(_INPUT_FOR_EVENT[type(event)])
        return events

    def receive_eof(self) -> StreamEnded:
        """The peer half-closed; raise RemoteProtocolError if it was not allowed to."""
        self._decoder.feed_eof()
        self.state.receive(CallInput.EOF)
        return StreamEnded()

    def receive_reset(self) -> None:
        """The peer reset its sending direction."""
        self.state.receive(CallInput.RESET)
