"""The sans-IO CallProtocol: client and server wired together in memory, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quic_rpc.rpc import (
    CallKind,
    CallProtocol,
    Event,
    LocalProtocolError,
    MessageReceived,
    RawDataReceived,
    RemoteProtocolError,
    RequestEnded,
    RequestHeaderReceived,
    ResponseHeaderReceived,
    Role,
    Status,
    StreamEnded,
    TrailerReceived,
    encode_trailer,
)


def roundtrip(data: bytes, receiver: CallProtocol, *, byte_by_byte: bool = False) -> list[Event]:
    if not byte_by_byte:
        return receiver.receive_data(data)
    events: list[Event] = []
    for i in range(len(data)):
        events.extend(receiver.receive_data(data[i : i + 1]))
    return events


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_unary_exchange(byte_by_byte: bool) -> None:
    client = CallProtocol(Role.CLIENT)
    server = CallProtocol(Role.SERVER)
    out = client.send_request_header("/s/M", CallKind.UNARY, [("a", "b")], 5_000_000)
    out += client.send_message(b"req") + client.send_request_end()
    events = roundtrip(out, server, byte_by_byte=byte_by_byte)
    assert isinstance(events[0], RequestHeaderReceived)
    assert events[0].method == "/s/M" and events[0].timeout_us == 5_000_000
    assert list(events[0].metadata) == [("a", "b")]
    assert events[1:] == [MessageReceived(b"req"), RequestEnded()]
    assert server.kind is CallKind.UNARY

    back = server.send_response_header([("h", "1")]) + server.send_message(b"resp")
    back += server.send_trailer(Status.OK, "fine", [("t", "2")])
    server.send_eof()
    events = roundtrip(back, client, byte_by_byte=byte_by_byte)
    assert [type(e) for e in events] == [ResponseHeaderReceived, MessageReceived, TrailerReceived]
    trailer = events[2]
    assert isinstance(trailer, TrailerReceived)
    assert (trailer.status, trailer.details, list(trailer.metadata)) == (
        Status.OK,
        "fine",
        [("t", "2")],
    )
    assert client.receive_eof() == StreamEnded()


def test_streaming_and_misuse() -> None:
    client = CallProtocol(Role.CLIENT)
    server = CallProtocol(Role.SERVER)
    out = client.send_request_header("/d", CallKind.DUPLEX)
    out += b"".join(client.send_message(bytes([i])) for i in range(5))
    events = server.receive_data(out)
    assert len(events) == 6
    for i in range(3):
        client.receive_data(server.send_message(bytes([i])))
    client.receive_data(server.send_trailer(Status.ABORTED, "stop"))
    with pytest.raises(LocalProtocolError):
        server.send_message(b"late")
    with pytest.raises(LocalProtocolError):
        server.send_response_header()
    with pytest.raises(LocalProtocolError):
        server.send_request_header("/x", CallKind.UNARY)
    with pytest.raises(LocalProtocolError):
        client.send_trailer(Status.OK)


def test_single_request_kind_rejects_two_messages_from_peer() -> None:
    client = CallProtocol(Role.CLIENT)
    out = client.send_request_header("/u", CallKind.UNARY) + client.send_message(b"1")
    with pytest.raises(LocalProtocolError):
        client.send_message(b"2")
    server = CallProtocol(Role.SERVER)
    server.receive_data(out)
    # a misbehaving peer: forge a second MESSAGE frame
    with pytest.raises(RemoteProtocolError):
        server.receive_data(b"\x03\x00\x00\x00\x01x")


def test_server_rejects_response_frames_and_early_eof() -> None:
    server = CallProtocol(Role.SERVER)
    with pytest.raises(RemoteProtocolError):
        server.receive_data(b"\x01" + encode_trailer(Status.OK))
    server = CallProtocol(Role.SERVER)
    client = CallProtocol(Role.CLIENT)
    server.receive_data(client.send_request_header("/c", CallKind.CLIENT_STREAMING))
    with pytest.raises(RemoteProtocolError):
        server.receive_eof()  # EOF without REQUEST_END


def test_raw_exchange() -> None:
    client = CallProtocol(Role.CLIENT, raw=True)
    server = CallProtocol(Role.SERVER)
    out = client.send_request_header("/raw", CallKind.RAW) + b"\x00raw\xff"
    events = server.receive_data(out)
    assert events[1:] == [RawDataReceived(b"\x00raw\xff")]
    assert server.receive_data(b"more") == [RawDataReceived(b"more")]
    back = server.send_response_header([]) + b"bytes back"
    events = client.receive_data(back)
    assert events[1:] == [RawDataReceived(b"bytes back")]
    client.receive_eof()


@settings(max_examples=300)
@given(
    soup=st.binary(max_size=300),
    role=st.sampled_from(list(Role)),
    raw=st.booleans(),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_byte_soup_through_the_protocol(
    soup: bytes, role: Role, raw: bool, cuts: list[int]
) -> None:
    """Anything a peer sends is either accepted or a RemoteProtocolError, nothing else."""
    proto = CallProtocol(role, raw=raw, max_message_size=100, max_header_size=100)
    if role is Role.CLIENT:
        proto.send_request_header("/m", CallKind.RAW if raw else CallKind.DUPLEX)
    data = b"\x01" + soup
    last = 0
    try:
        for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
            proto.receive_data(data[last:cut])
            last = cut
        proto.receive_eof()
    except RemoteProtocolError:
        pass
