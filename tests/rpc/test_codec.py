"""The sans-IO codec: round trips at arbitrary splits, limits, hostile input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quic_rpc.rpc import (
    PROTOCOL_VERSION,
    CallKind,
    Event,
    FrameDecoder,
    HeaderTooLargeError,
    LocalProtocolError,
    MessageReceived,
    MessageTooLargeError,
    Metadata,
    RawDataReceived,
    RemoteProtocolError,
    RequestEnded,
    RequestHeaderReceived,
    ResponseHeaderReceived,
    Status,
    TrailerReceived,
    UnsupportedVersionError,
    encode_message,
    encode_preface,
    encode_request_end,
    encode_request_header,
    encode_response_header,
    encode_trailer,
)
from quic_rpc.rpc.status import ResetCode

keys = st.from_regex(r"[a-z0-9_.\-]{1,20}", fullmatch=True).filter(
    lambda k: not k.startswith(("grpc-", "qrpc-"))
)
str_values = st.from_regex(r"[\x20-\x7e]{0,30}", fullmatch=True)


@st.composite
def metadata(draw: Any) -> Metadata:
    pairs = []
    for key in draw(st.lists(keys, max_size=6)):
        if key.endswith("-bin"):
            pairs.append((key, draw(st.binary(max_size=30))))
        elif draw(st.booleans()):
            pairs.append((key + "-bin", draw(st.binary(max_size=30))))
        else:
            pairs.append((key, draw(str_values)))
    return Metadata(pairs)


request_headers = st.builds(
    RequestHeaderReceived,
    method=st.text(min_size=1, max_size=40),
    kind=st.sampled_from([k for k in CallKind if k is not CallKind.RAW]),
    metadata=metadata(),
    timeout_us=st.none() | st.integers(0, 2**64 - 1),
)
messages = st.builds(MessageReceived, data=st.binary(max_size=300))
trailers = st.builds(
    TrailerReceived,
    status=st.sampled_from(list(Status)),
    details=st.text(max_size=40),
    metadata=metadata(),
    rich_details=st.none() | st.binary(max_size=40),
)
response_headers = st.builds(ResponseHeaderReceived, metadata=metadata())


def encode(event: Event) -> bytes:
    if isinstance(event, RequestHeaderReceived):
        return encode_request_header(event.method, event.kind, event.metadata, event.timeout_us)
    if isinstance(event, MessageReceived):
        return encode_message(event.data)
    if isinstance(event, RequestEnded):
        return encode_request_end()
    if isinstance(event, ResponseHeaderReceived):
        return encode_response_header(event.metadata)
    assert isinstance(event, TrailerReceived)
    return encode_trailer(event.status, event.details, event.metadata, event.rich_details)


def decode_in_pieces(data: bytes, cuts: list[int], **limits: Any) -> list[Event]:
    decoder = FrameDecoder(**limits)
    events: list[Event] = []
    last = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        events.extend(decoder.feed(data[last:cut]))
        last = cut
    decoder.feed_eof()
    return events


def normalize(events: list[Event]) -> list[Any]:
    out: list[Any] = []
    for e in events:
        if isinstance(e, RequestHeaderReceived | ResponseHeaderReceived | TrailerReceived):
            fields = {k: getattr(e, k) for k in e.__dataclass_fields__}
            fields["metadata"] = list(e.metadata)
            out.append((type(e).__name__, fields))
        else:
            out.append(e)
    return out


request_streams = st.tuples(request_headers, st.lists(messages, max_size=5), st.booleans()).map(
    lambda t: [t[0], *t[1], *([RequestEnded()] if t[2] else [])]
)
response_streams = st.tuples(
    st.none() | response_headers, st.lists(messages, max_size=5), trailers
).map(lambda t: [*([t[0]] if t[0] is not None else []), *t[1], t[2]])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=request_streams | response_streams,
    cuts=st.lists(st.integers(0, 5000), max_size=20),
)
def test_round_trip_at_arbitrary_splits(events: list[Event], cuts: list[int]) -> None:
    data = encode_preface() + b"".join(encode(e) for e in events)
    assert normalize(decode_in_pieces(data, cuts)) == normalize(events)


@settings(max_examples=60)
@given(events=request_streams | response_streams)
def test_round_trip_byte_by_byte(events: list[Event]) -> None:
    data = encode_preface() + b"".join(encode(e) for e in events)
    decoder = FrameDecoder()
    got: list[Event] = []
    for i in range(len(data)):
        got.extend(decoder.feed(data[i : i + 1]))
    decoder.feed_eof()
    assert normalize(got) == normalize(events)


@settings(max_examples=300)
@given(soup=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_byte_soup_raises_only_remote_protocol_error(soup: bytes, cuts: list[int]) -> None:
    for data in (soup, encode_preface() + soup):
        try:
            decode_in_pieces(
                data, cuts, max_message_size=1000, max_header_size=200, max_metadata_entries=4
            )
        except RemoteProtocolError as exc:
            assert isinstance(exc.error_code, int)


@settings(max_examples=200)
@given(
    events=request_streams,
    position=st.integers(0, 10_000),
    byte=st.integers(0, 255),
)
def test_corrupted_streams_raise_only_remote_protocol_error(
    events: list[Event], position: int, byte: int
) -> None:
    data = bytearray(encode_preface() + b"".join(encode(e) for e in events))
    data[position % len(data)] = byte
    try:
        decode_in_pieces(bytes(data), [position])
    except RemoteProtocolError:
        pass


def test_details_round_trip_exactly() -> None:
    for details in ["", " \t\n ", "😀\U0010ffff", "\ud800 lone surrogate", "a\x00b"]:
        data = encode_preface() + encode_trailer(Status.ABORTED, details)
        (event,) = FrameDecoder().feed(data)
        assert isinstance(event, TrailerReceived)
        assert event.details == details


def test_unknown_status_code_maps_to_unknown() -> None:
    data = bytearray(encode_preface() + encode_trailer(Status.OK))
    data[1 + 5] = 99
    (event,) = FrameDecoder().feed(bytes(data))
    assert isinstance(event, TrailerReceived) and event.status is Status.UNKNOWN


def test_wrong_version_rejected() -> None:
    with pytest.raises(UnsupportedVersionError):
        FrameDecoder().feed(bytes([PROTOCOL_VERSION + 1]) + encode_request_end())
    with pytest.raises(UnsupportedVersionError):
        FrameDecoder().feed(b"GET / HTTP/1.1\r\n")


def test_oversized_message_rejected_before_buffering() -> None:
    decoder = FrameDecoder(max_message_size=10)
    header = encode_message(b"x" * 11)[:5]
    with pytest.raises(MessageTooLargeError) as info:
        decoder.feed(encode_preface() + header)  # only the 5-byte header arrived
    assert info.value.error_code == ResetCode.MESSAGE_TOO_LARGE
    assert info.value.size == 11 and info.value.limit == 10
    assert decoder.buffered == 0
    with pytest.raises(MessageTooLargeError):
        decoder.feed(b"more")  # poisoned
    assert FrameDecoder(max_message_size=10).feed(encode_preface() + encode_message(b"x" * 10))


def test_header_limits() -> None:
    frame = encode_request_header("/m", CallKind.UNARY, [("k", "v" * 100)])
    with pytest.raises(HeaderTooLargeError):
        FrameDecoder(max_header_size=50).feed(encode_preface() + frame[:5])
    many = encode_request_header("/m", CallKind.UNARY, [("k", "v")] * 10)
    with pytest.raises(HeaderTooLargeError):
        FrameDecoder(max_metadata_entries=9).feed(encode_preface() + many)
    assert FrameDecoder(max_metadata_entries=10).feed(encode_preface() + many)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x01\x09\x00\x00\x00\x00",  # unknown frame type
        b"\x01\x05\x00\x00\x00\x00",  # empty TRAILER
        b"\x04\x00\x00\x00\x01x",  # REQUEST_END with payload
        b"\x01\x00\x00\x00\x03\x09\x00\x00",  # unknown call kind, truncated
        b"\x01\x00\x00\x00\x04\x00\x02\x00\x00",  # unknown flags
        b"\x01\x00\x00\x00\x06\x00\x00\x00\x01\xff\x00",  # method not UTF-8 / truncated
    ],
)
def test_malformed_frames(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(payload)  # the first byte is the preface


@pytest.mark.parametrize("bad_key", [b"grpc-status", b"Upper-case!", b":authority!"])
def test_reserved_and_invalid_keys_on_the_wire(bad_key: bytes) -> None:
    placeholder = "k" * len(bad_key)
    frame = encode_request_header("/m", CallKind.UNARY, [(placeholder, "v")])
    frame = frame.replace(placeholder.encode(), bad_key)
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(encode_preface() + frame)


def test_non_printable_value_on_the_wire() -> None:
    frame = encode_request_header("/m", CallKind.UNARY, [("key", "vvv")])
    frame = frame.replace(b"vvv", b"v\nv")
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(encode_preface() + frame)


def test_truncated_stream_at_eof() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_preface() + encode_message(b"abcdef")[:-1])
    with pytest.raises(RemoteProtocolError):
        decoder.feed_eof()


def test_raw_switch_after_headers() -> None:
    data = (
        encode_preface() + encode_request_header("/raw", CallKind.RAW, []) + b"\xff\x00 raw bytes"
    )
    decoder = FrameDecoder(raw_after_request_header=True)
    events = decoder.feed(data[:10]) + decoder.feed(data[10:])
    assert isinstance(events[0], RequestHeaderReceived)
    assert b"".join(e.data for e in events[1:] if isinstance(e, RawDataReceived)) == (
        b"\xff\x00 raw bytes"
    )
    client = FrameDecoder(raw_after_response_header=True)
    events = client.feed(encode_preface() + encode_response_header([("a", "b")]) + b"\x05")
    assert events[1] == RawDataReceived(b"\x05")


def test_encoder_misuse_is_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_request_header("", CallKind.UNARY)
    with pytest.raises(LocalProtocolError):
        encode_request_header("x" * 70000, CallKind.UNARY)
