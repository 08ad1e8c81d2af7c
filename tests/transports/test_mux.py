"""The sans-IO multiplexer core: fed whole, byte by byte, at hypothesis-chosen splits, and soup."""

from __future__ import annotations

import struct
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quic_rpc.transports.mux import (
    HEADER_SIZE,
    MAX_ERROR_CODE,
    MAX_WINDOW,
    RECV_TRANSITIONS,
    SEND_TRANSITIONS,
    EndOfStreamReceived,
    ErrorCode,
    FlowControlError,
    FrameSizeError,
    FrameType,
    GoAwayReceived,
    HandshakeCompleted,
    LocalProtocolError,
    MuxConfig,
    MuxConnection,
    MuxEvent,
    PingAcknowledged,
    PingReceived,
    RecvState,
    RemoteProtocolError,
    SendState,
    StopSendingReceived,
    StreamClosed,
    StreamDataReceived,
    StreamLimitError,
    StreamOpened,
    StreamResetReceived,
    WindowUpdated,
    encode_frame,
)

pytestmark = pytest.mark.timeout(120)

U64 = struct.Struct("!Q")
U32 = struct.Struct("!I")
HELLO = struct.Struct("!4sBIIII")


def hello(
    stream_window: int = 65536,
    conn_window: int = 1 << 20,
    max_streams: int = 10,
    max_frame: int = 16384,
    magic: bytes = b"QSMX",
    version: int = 1,
) -> bytes:
    return encode_frame(
        FrameType.HELLO,
        0,
        0,
        HELLO.pack(magic, version, stream_window, conn_window, max_streams, max_frame),
    )


def pair(
    client_config: MuxConfig | None = None, server_config: MuxConfig | None = None
) -> tuple[MuxConnection, MuxConnection]:
    client = MuxConnection(client=True, config=client_config)
    server = MuxConnection(client=False, config=server_config)
    client.initiate()
    server.initiate()
    assert isinstance(server.receive_data(client.data_to_send())[0], HandshakeCompleted)
    assert isinstance(client.receive_data(server.data_to_send())[0], HandshakeCompleted)
    return client, server


def server_after_hello(config: MuxConfig | None = None) -> MuxConnection:
    """A server that has greeted a (hand-crafted) client."""
    server = MuxConnection(client=False, config=config)
    server.initiate()
    server.receive_data(hello())
    server.data_to_send()
    return server


def feed(conn: MuxConnection, data: bytes, splits: Iterable[int] = ()) -> list[MuxEvent]:
    """Feed ``data`` cut at ``splits`` (sorted offsets)."""
    events: list[MuxEvent] = []
    start = 0
    for cut in sorted(set(splits)):
        if 0 < cut < len(data):
            events += conn.receive_data(data[start:cut])
            start = cut
    events += conn.receive_data(data[start:])
    return events


def normalise(events: list[MuxEvent]) -> list[MuxEvent]:
    """Merge adjacent data events of the same stream (chunking is not semantic)."""
    merged: list[MuxEvent] = []
    for event in events:
        last = merged[-1] if merged else None
        if (
            isinstance(event, StreamDataReceived)
            and isinstance(last, StreamDataReceived)
            and last.stream_id == event.stream_id
        ):
            merged[-1] = StreamDataReceived(event.stream_id, last.data + event.data)
        else:
            merged.append(event)
    return merged


def goaway_code(conn: MuxConnection) -> int:
    """The error code of the GOAWAY the connection queued last."""
    out = conn.data_to_send()
    pos = 0
    code = -1
    while pos < len(out):
        frame_type, _flags, _sid, length = struct.unpack_from("!BBII", out, pos)
        if frame_type == FrameType.GOAWAY:
            code = U32.unpack_from(out, pos + HEADER_SIZE + 4)[0]
        pos += HEADER_SIZE + length
    return code


# -- a transcript covering every frame type -------------------------------------------------


def transcript() -> tuple[bytes, list[MuxEvent]]:
    """What a client sends in a busy session, and the events a server makes of it whole."""
    client, _ = pair()
    client_out = bytearray()
    one = client.open_stream()
    two = client.open_stream()
    client.send_data(one, b"hello " * 1000)
    client.send_data(two, bytes(range(256)) * 10)
    client.end_stream(one)
    client.reset_stream(two, 0xBEEF)
    three = client.open_stream()
    client.stop_sending(three, 7)
    client.ping(b"12345678")
    client.send_data(three, b"x")
    client_out += client.data_to_send()
    fresh = MuxConnection(client=False)
    fresh.initiate()
    fresh.data_to_send()
    hello_bytes = hello(stream_window=MuxConfig().initial_stream_window)
    data = hello_bytes + bytes(client_out)
    events = fresh.receive_data(data)
    return data, events


def test_transcript_events() -> None:
    _, events = transcript()
    kinds = [type(e).__name__ for e in normalise(events)]
    assert kinds == [
        "HandshakeCompleted",
        "StreamOpened",
        "StreamOpened",
        "StreamDataReceived",
        "StreamDataReceived",
        "EndOfStreamReceived",
        "StreamResetReceived",
        "StreamOpened",
        "StopSendingReceived",
        "PingReceived",
        "StreamDataReceived",
    ]
    reset = next(e for e in events if isinstance(e, StreamResetReceived))
    assert reset.code == 0xBEEF


def test_byte_by_byte_gives_the_same_events() -> None:
    data, whole = transcript()
    conn = MuxConnection(client=False)
    conn.initiate()
    events = feed(conn, data, range(len(data)))
    assert normalise(events) == normalise(whole)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_split_gives_the_same_events(data: st.DataObject) -> None:
    raw, whole = transcript_cached()
    splits = data.draw(st.lists(st.integers(0, len(raw)), max_size=40))
    conn = MuxConnection(client=False)
    conn.initiate()
    assert normalise(feed(conn, raw, splits)) == normalise(whole)


_TRANSCRIPT: list[tuple[bytes, list[MuxEvent]]] = []


def transcript_cached() -> tuple[bytes, list[MuxEvent]]:
    if not _TRANSCRIPT:
        _TRANSCRIPT.append(transcript())
    return _TRANSCRIPT[0]


# -- byte soup ---------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.booleans(), st.lists(st.integers(0, 400), max_size=8))
def test_byte_soup_only_raises_protocol_errors(soup: bytes, greet: bool, splits: list[int]) -> None:
    conn = MuxConnection(client=bool(len(soup) % 2))
    conn.initiate()
    prefix = hello() if greet else b""
    try:
        feed(conn, prefix + soup, [len(prefix) + s for s in splits])
    except RemoteProtocolError:
        assert conn.closed
        assert goaway_code(conn) > 0
        assert conn.receive_data(b"\x00" * 50) == []  # input after the error is ignored


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 3), st.integers(0, 6), st.binary(max_size=24)),
        max_size=12,
    )
)
def test_frame_soup_only_raises_protocol_errors(frames: list[tuple[int, int, int, bytes]]) -> None:
    """Well-framed but arbitrary frames (plausible types, ids and payloads)."""
    conn = MuxConnection(client=True)
    conn.initiate()
    data = hello() + b"".join(encode_frame(t, f, s, p) for t, f, s, p in frames)
    try:
        conn.receive_data(data)
    except RemoteProtocolError:
        assert conn.closed


# -- handshake ---------------------------------------------------------------------------------


def test_handshake_exchanges_settings() -> None:
    config = MuxConfig(initial_stream_window=1000, max_concurrent_streams=3, max_frame_size=2048)
    client, server = pair(client_config=config)
    assert server.peer_settings is not None
    assert server.peer_settings.initial_stream_window == 1000
    assert server.peer_settings.max_concurrent_streams == 3
    assert client.handshake_complete and server.handshake_complete


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (hello(magic=b"HTTP"), RemoteProtocolError),
        (hello(version=2), RemoteProtocolError),
        (hello(max_frame=10), RemoteProtocolError),
        (hello(stream_window=0), RemoteProtocolError),
        (hello(conn_window=MAX_WINDOW + 1), RemoteProtocolError),
        (encode_frame(FrameType.OPEN, 0, 2), RemoteProtocolError),
        (hello() + hello(), RemoteProtocolError),
        (b"GET / HTTP/1.1\r\n\r\n", RemoteProtocolError),
        (encode_frame(FrameType.HELLO, 0, 0, b"short"), FrameSizeError),
    ],
)
def test_bad_greetings(data: bytes, error: type[RemoteProtocolError]) -> None:
    conn = MuxConnection(client=True)
    conn.initiate()
    conn.data_to_send()
    with pytest.raises(error):
        conn.receive_data(data)
    assert conn.closed
    assert goaway_code(conn) == error.error_code


def test_nothing_before_handshake() -> None:
    conn = MuxConnection(client=True)
    with pytest.raises(LocalProtocolError):
        conn.open_stream()
    conn.receive_data(hello())
    with pytest.raises(LocalProtocolError):
        conn.open_stream()  # we have not greeted yet
    conn.initiate()
    assert conn.open_stream() == 1
    with pytest.raises(LocalProtocolError):
        conn.initiate()


# -- streams and flow control ----------------------------------------------------------------


def test_roundtrip_both_directions() -> None:
    client, server = pair()
    sid = client.open_stream()
    assert client.send_data(sid, b"ping") == 4
    client.end_stream(sid)
    events = server.receive_data(client.data_to_send())
    assert events == [StreamOpened(sid), StreamDataReceived(sid, b"ping"), EndOfStreamReceived(sid)]
    server.acknowledge_received(sid, 4)
    server.send_data(sid, b"pong")
    server.end_stream(sid)
    assert server.has_stream(sid) is False  # both directions finished
    events = client.receive_data(server.data_to_send())
    assert events == [StreamDataReceived(sid, b"pong"), EndOfStreamReceived(sid), StreamClosed(sid)]
    assert client.open_streams == server.open_streams == 0


def test_send_respects_stream_window_and_updates_reopen_it() -> None:
    small = MuxConfig(initial_stream_window=4096, max_frame_size=1024)
    client, server = pair(server_config=small)
    sid = client.open_stream()
    assert client.send_data(sid, b"a" * 10000) == 4096
    assert client.send_capacity(sid) == 0
    assert client.send_data(sid, b"more") == 0
    events = server.receive_data(client.data_to_send())
    frames = [e for e in events if isinstance(e, StreamDataReceived)]
    assert all(len(e.data) <= 1024 for e in frames)  # our max_frame_size was honoured
    assert sum(len(e.data) for e in frames) == 4096
    server.acknowledge_received(sid, 1000)
    assert client.receive_data(server.data_to_send()) == []  # below the update threshold
    server.acknowledge_received(sid, 100)
    assert client.receive_data(server.data_to_send()) == [WindowUpdated(sid)]
    assert client.send_capacity(sid) == 1100
    with pytest.raises(LocalProtocolError):
        server.acknowledge_received(sid, 4000)  # more than was received


def test_connection_window_limits_all_streams() -> None:
    config = MuxConfig(initial_stream_window=65536, initial_connection_window=10000)
    client, server = pair(server_config=config)
    one, two = client.open_stream(), client.open_stream()
    assert client.send_data(one, b"a" * 8000) == 8000
    assert client.send_data(two, b"b" * 8000) == 2000
    server.receive_data(client.data_to_send())
    server.acknowledge_received(one, 8000)
    assert WindowUpdated(0) in client.receive_data(server.data_to_send())
    assert client.send_data(two, b"b" * 6000) == 6000


def test_peer_exceeding_the_window_is_a_flow_control_error() -> None:
    server = server_after_hello(MuxConfig(initial_stream_window=1024))
    data = encode_frame(FrameType.OPEN, 0, 1) + encode_frame(FrameType.DATA, 0, 1, b"x" * 1025)
    with pytest.raises(FlowControlError):
        server.receive_data(data)
    assert goaway_code(server) == ErrorCode.FLOW_CONTROL_ERROR


def test_window_overflow_is_a_flow_control_error() -> None:
    server = server_after_hello()
    with pytest.raises(FlowControlError):
        server.receive_data(encode_frame(FrameType.WINDOW_UPDATE, 0, 0, U32.pack(MAX_WINDOW)))


def test_oversized_data_fails_on_the_header_alone() -> None:
    server = server_after_hello(MuxConfig(max_frame_size=1024))
    header = struct.pack("!BBII", FrameType.DATA, 0, 1, 1 << 30)
    with pytest.raises(FrameSizeError):
        server.receive_data(encode_frame(FrameType.OPEN, 0, 1) + header)


def test_concurrent_stream_limit_both_ways() -> None:
    client, _server = pair(server_config=MuxConfig(max_concurrent_streams=2))
    client.open_stream()
    client.open_stream()
    assert not client.can_open_stream()
    with pytest.raises(LocalProtocolError):
        client.open_stream()
    # A peer that ignores the limit:
    crafted = server_after_hello(MuxConfig(max_concurrent_streams=2))
    opens = b"".join(encode_frame(FrameType.OPEN, 0, sid) for sid in (1, 3, 5))
    with pytest.raises(StreamLimitError):
        crafted.receive_data(opens)


def test_finished_streams_free_their_slot() -> None:
    client, server = pair(server_config=MuxConfig(max_concurrent_streams=1))
    sid = client.open_stream()
    client.end_stream(sid)
    server.receive_data(client.data_to_send())
    server.end_stream(sid)
    assert not client.can_open_stream()
    client.receive_data(server.data_to_send())
    assert client.can_open_stream()


def test_stop_sending_is_answered_with_reset() -> None:
    client, server = pair()
    sid = client.open_stream()
    server.receive_data(client.data_to_send())
    server.stop_sending(sid, 0x99)
    events = client.receive_data(server.data_to_send())
    assert events == [StopSendingReceived(sid, 0x99)]
    with pytest.raises(LocalProtocolError):
        client.send_data(sid, b"x")
    assert server.receive_data(client.data_to_send()) == [StreamResetReceived(sid, 0x99)]


def test_data_after_stop_sending_is_dropped_and_credited() -> None:
    config = MuxConfig(initial_connection_window=4096, initial_stream_window=4096)
    client, server = pair(server_config=config)
    sid = client.open_stream()
    client.send_data(sid, b"a" * 4096)
    server.receive_data(client.data_to_send()[:HEADER_SIZE])  # only the OPEN frame
    server.stop_sending(sid, 1)
    rest = client.data_to_send()
    assert rest == b""
    # Frames already in flight (crafted here) are dropped without events.
    crafted = encode_frame(FrameType.DATA, 0, sid, b"b" * 2048)
    assert server.receive_data(crafted) == []
    assert WindowUpdated(0) in client.receive_data(server.data_to_send())


def test_ping_is_echoed() -> None:
    client, server = pair()
    client.ping(b"abcdefgh")
    assert server.receive_data(client.data_to_send()) == [PingReceived(b"abcdefgh")]
    assert client.receive_data(server.data_to_send()) == [PingAcknowledged(b"abcdefgh")]
    with pytest.raises(LocalProtocolError):
        client.ping(b"short")


def test_reset_codes_are_range_checked() -> None:
    client, _ = pair()
    sid = client.open_stream()
    with pytest.raises(ValueError):
        client.reset_stream(sid, MAX_ERROR_CODE + 1)
    server = server_after_hello()
    bad = encode_frame(FrameType.OPEN, 0, 1) + encode_frame(
        FrameType.RESET, 0, 1, U64.pack(1 << 63)
    )
    with pytest.raises(RemoteProtocolError):
        server.receive_data(bad)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([(FrameType.DATA, 0, 1, b"x")], "unopened"),
        ([(FrameType.OPEN, 0, 2, b"")], "parity"),
        ([(FrameType.OPEN, 0, 3, b""), (FrameType.OPEN, 0, 1, b"")], "not above"),
        (
            [(FrameType.OPEN, 0, 1, b""), (FrameType.FIN, 0, 1, b""), (FrameType.DATA, 0, 1, b"x")],
            "fin",
        ),
        (
            [(FrameType.OPEN, 0, 1, b""), (FrameType.FIN, 0, 1, b""), (FrameType.FIN, 0, 1, b"")],
            "fin",
        ),
        ([(FrameType.OPEN, 0, 1, b""), (FrameType.DATA, 0, 1, b"")], "DATA frame of 0"),
        ([(FrameType.OPEN, 1, 1, b"")], "flags"),
        ([(FrameType.PING, 0, 1, b"12345678")], "on stream 1"),
        ([(FrameType.FIN, 0, 0, b"")], "stream 0"),
        ([(FrameType.WINDOW_UPDATE, 0, 0, U32.pack(0))], "zero"),
        ([(0x7F, 0, 0, b"")], "unknown frame type"),
        ([(FrameType.OPEN, 0, 1, b"extra")], "OPEN frame of 5"),
    ],
)
def test_malformed_frames(frames: list[tuple[int, int, int, bytes]], message: str) -> None:
    server = server_after_hello()
    with pytest.raises(RemoteProtocolError, match=message):
        server.receive_data(b"".join(encode_frame(*f) for f in frames))


def test_late_control_frames_for_finished_streams_are_ignored() -> None:
    client, server = pair()
    sid = client.open_stream()
    client.end_stream(sid)
    server.receive_data(client.data_to_send())
    server.end_stream(sid)
    client.receive_data(server.data_to_send())
    assert not client.has_stream(sid)
    late = encode_frame(FrameType.WINDOW_UPDATE, 0, sid, U32.pack(5)) + encode_frame(
        FrameType.STOP_SENDING, 0, sid, U64.pack(3)
    )
    assert client.receive_data(late) == []
    with pytest.raises(RemoteProtocolError):
        client.receive_data(encode_frame(FrameType.DATA, 0, sid, b"late"))


# -- GOAWAY ------------------------------------------------------------------------------------


def test_graceful_goaway_refuses_unseen_streams() -> None:
    client, server = pair()
    seen = client.open_stream()
    server.receive_data(client.data_to_send())
    unseen = client.open_stream()  # in flight when the server says goodbye
    server.send_goaway(reason="maintenance")
    assert server.going_away
    events = client.receive_data(server.data_to_send())
    assert events == [GoAwayReceived(seen, 0, "maintenance", (unseen,))]
    assert not client.can_open_stream()
    with pytest.raises(LocalProtocolError):
        client.open_stream()
    # The server silently ignores the stream it never accepted (its OPEN went out with
    # this data), and anything later on it.
    client.send_data(seen, b"still served")
    assert server.receive_data(client.data_to_send()) == [StreamDataReceived(seen, b"still served")]
    ignored = encode_frame(FrameType.DATA, 0, unseen, b"x") + encode_frame(FrameType.FIN, 0, unseen)
    assert server.receive_data(ignored) == []
    assert not server.has_stream(unseen)


def test_goaway_with_error_closes() -> None:
    client, server = pair()
    sid = client.open_stream()
    server.receive_data(client.data_to_send())
    server.send_goaway(ErrorCode.INTERNAL_ERROR, "bye")
    assert server.closed
    events = client.receive_data(server.data_to_send())
    assert events == [GoAwayReceived(sid, ErrorCode.INTERNAL_ERROR, "bye", (sid,))]
    assert client.closed
    server.send_goaway()  # idempotent once closed


def test_goaway_may_refuse_before_greeting() -> None:
    server = MuxConnection(client=False)
    server.send_goaway(ErrorCode.VERIFICATION_FAILED, "who are you?")
    client = MuxConnection(client=True)
    client.initiate()
    events = client.receive_data(server.data_to_send())
    assert events == [GoAwayReceived(0, ErrorCode.VERIFICATION_FAILED, "who are you?", ())]


# -- the state tables, walked ----------------------------------------------------------------


def _stream_in_states(send: SendState, recv: RecvState) -> tuple[MuxConnection, int] | None:
    """A client with stream 1 in the given states, or None if unreachable while tracked."""
    client, server = pair()
    sid = client.open_stream()
    server.receive_data(client.data_to_send())
    if send is SendState.FIN_SENT:
        client.end_stream(sid)
    elif send is SendState.RESET_SENT:
        client.reset_stream(sid, 1)
    client.data_to_send()
    if recv is RecvState.FIN_RECEIVED:
        client.receive_data(encode_frame(FrameType.FIN, 0, sid))
    elif recv is RecvState.RESET_RECEIVED:
        client.receive_data(encode_frame(FrameType.RESET, 0, sid, U64.pack(1)))
    if not client.has_stream(sid):
        return None
    return client, sid


@pytest.mark.parametrize("state", list(SendState))
@pytest.mark.parametrize("frame", [FrameType.DATA, FrameType.FIN, FrameType.RESET])
def test_send_table(state: SendState, frame: FrameType) -> None:
    made = _stream_in_states(state, RecvState.OPEN)
    assert made is not None
    client, sid = made

    def command() -> None:
        if frame is FrameType.DATA:
            client.send_data(sid, b"x")
        elif frame is FrameType.FIN:
            client.end_stream(sid)
        else:
            client.reset_stream(sid, 2)

    if (state, frame) in SEND_TRANSITIONS:
        command()
    else:
        with pytest.raises(LocalProtocolError):
            command()


@pytest.mark.parametrize("state", list(RecvState))
@pytest.mark.parametrize("frame", [FrameType.DATA, FrameType.FIN, FrameType.RESET])
def test_recv_table(state: RecvState, frame: FrameType) -> None:
    made = _stream_in_states(SendState.OPEN, state)
    assert made is not None
    client, sid = made
    payload = {FrameType.DATA: b"x", FrameType.FIN: b"", FrameType.RESET: U64.pack(3)}[frame]
    data = encode_frame(frame, 0, sid, payload)
    if (state, frame) in RECV_TRANSITIONS:
        client.receive_data(data)
    else:
        with pytest.raises(RemoteProtocolError):
            client.receive_data(data)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        MuxConfig(initial_stream_window=0)
    with pytest.raises(ValueError):
        MuxConfig(max_frame_size=100)
    with pytest.raises(ValueError):
        MuxConfig(initial_connection_window=MAX_WINDOW + 1)


# -- random conversations between two cores -----------------------------------------------------


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_conversations_never_break_the_protocol(data: st.DataObject) -> None:
    """Both sides take random legal actions; bytes cross in random slices. Every stream's
    bytes arrive intact and in order, and no side ever sees a protocol error."""
    small = MuxConfig(
        initial_stream_window=2048,
        initial_connection_window=4096,
        max_concurrent_streams=3,
        max_frame_size=1024,
    )
    sides = {
        "c": MuxConnection(client=True, config=small),
        "s": MuxConnection(client=False, config=small),
    }
    for side in sides.values():
        side.initiate()
    wires = {"c": bytearray(), "s": bytearray()}  # bytes in flight *from* each side
    sent: dict[tuple[str, int], bytearray] = {}
    received: dict[tuple[str, int], bytearray] = {}
    unacked: dict[tuple[str, int], int] = {}
    fin: set[tuple[str, int]] = set()
    ended: set[tuple[str, int]] = set()  # (receiving side, stream) that must see FIN
    other = {"c": "s", "s": "c"}

    def deliver(name: str, limit: int) -> None:
        """Move up to ``limit`` bytes from ``name``'s wire into its peer."""
        wires[name] += sides[name].data_to_send()
        chunk = bytes(wires[name][:limit])
        del wires[name][:limit]
        peer = other[name]
        for event in sides[peer].receive_data(chunk):
            if isinstance(event, StreamDataReceived):
                key = (peer, event.stream_id)
                received.setdefault(key, bytearray()).extend(event.data)
                unacked[key] = unacked.get(key, 0) + len(event.data)
            elif isinstance(event, EndOfStreamReceived):
                fin.add((peer, event.stream_id))
            elif isinstance(event, StreamOpened):
                sent[(peer, event.stream_id)] = bytearray()

    for _ in range(data.draw(st.integers(1, 60))):
        name = data.draw(st.sampled_from(["c", "s"]))
        side = sides[name]
        action = data.draw(st.sampled_from(["open", "send", "ack", "fin", "deliver"]))
        streams = sorted(k[1] for k in sent if k[0] == name and side.has_stream(k[1]))
        if action == "open" and side.can_open_stream():
            sent[(name, side.open_stream())] = bytearray()
        elif action == "send" and streams:
            sid = data.draw(st.sampled_from(streams))
            payload = bytes([sid % 256]) * data.draw(st.integers(1, 3000))
            try:
                count = side.send_data(sid, payload)
            except LocalProtocolError:
                continue  # our sending side already finished
            sent[(name, sid)] += payload[:count]
        elif action == "ack":
            for key, count in list(unacked.items()):
                if key[0] == name and count:
                    side.acknowledge_received(key[1], count)
                    unacked[key] = 0
        elif action == "fin" and streams:
            sid = data.draw(st.sampled_from(streams))
            try:
                side.end_stream(sid)
            except LocalProtocolError:
                continue
            ended.add((other[name], sid))
        else:
            deliver(name, data.draw(st.integers(1, 5000)))
    # Drain everything: acknowledge and deliver until nothing is in flight.
    for _ in range(10):
        for name in ("c", "s"):
            for key, count in list(unacked.items()):
                if key[0] == name and count:
                    sides[name].acknowledge_received(key[1], count)
                    unacked[key] = 0
            deliver(name, 1 << 20)
    for (name, sid), expected in sent.items():
        got = received.get((other[name], sid), bytearray())
        assert bytes(got) == bytes(expected), f"stream {sid} from {name}"
    assert ended <= fin
    assert not sides["c"].closed and not sides["s"].closed
