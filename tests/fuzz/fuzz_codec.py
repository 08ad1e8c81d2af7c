"""Fuzz harness for the sans-IO RPC codec (quic_rpc.rpc.codec / protocol).

Run on demand with atheris (not needed by the normal test run)::

    pip install atheris
    python tests/fuzz/fuzz_codec.py -atheris_runs=100000

``TestOneInput`` is also exercised without atheris by tests/fuzz/test_fuzz_codec.py over a
hypothesis corpus. Invariants checked for every input:

1. only ``RemoteProtocolError`` (or a subclass) escapes decoding; a failed decoder keeps
   failing with the same error;
2. memory: what the decoder buffers never exceeds one frame header plus the largest
   allowed payload, whatever it is fed;
3. chunking does not matter: the input fed whole and fed in pieces decodes to the same
   events, or fails with the same error type;
4. decode -> encode -> decode is the identity on the events;
5. ``CallProtocol`` (both roles, raw and not) raises only ``RemoteProtocolError`` on
   received bytes and end of stream.
"""

from __future__ import annotations

import sys

from quic_rpc.rpc.call_state import Role
from quic_rpc.rpc.codec import (
    FrameDecoder,
    encode_message,
    encode_preface,
    encode_request_end,
    encode_request_header,
    encode_response_header,
    encode_trailer,
)
from quic_rpc.rpc.errors import RemoteProtocolError
from quic_rpc.rpc.events import (
    Event,
    MessageReceived,
    RawDataReceived,
    RequestEnded,
    RequestHeaderReceived,
    ResponseHeaderReceived,
    TrailerReceived,
)
from quic_rpc.rpc.protocol import CallProtocol

MAX_MESSAGE = 4096
MAX_HEADER = 1024
MAX_ENTRIES = 8
Outcome = tuple[list[Event], type[BaseException] | None]


def _decoder(raw_request: bool, raw_response: bool) -> FrameDecoder:
    return FrameDecoder(
        max_message_size=MAX_MESSAGE,
        max_header_size=MAX_HEADER,
        max_metadata_entries=MAX_ENTRIES,
        raw_after_request_header=raw_request,
        raw_after_response_header=raw_response,
    )


def _cuts(seed: int, size: int) -> list[int]:
    """Deterministic chunk boundaries derived from the input."""
    cuts, pos, step = [], 0, 1 + seed % 7
    while pos < size:
        pos += step
        cuts.append(min(pos, size))
        step = 1 + (step * 31 + seed) % 97
    return cuts


def _decode(data: bytes, cuts: list[int], raw_request: bool, raw_response: bool) -> Outcome:
    decoder = _decoder(raw_request, raw_response)
    events: list[Event] = []
    bound = 5 + max(MAX_MESSAGE, MAX_HEADER)
    start = 0
    try:
        for end in cuts:
            events.extend(decoder.feed(data[start:end]))
            start = end
            assert decoder.buffered < bound, f"decoder buffers {decoder.buffered} bytes"
        decoder.feed_eof()
    except RemoteProtocolError as exc:
        # poisoned: it keeps failing, with the same error
        for again in (lambda: decoder.feed(b"\x01"), decoder.feed_eof):
            try:
                again()
            except RemoteProtocolError as repeat:
                assert repeat is exc, "a failed decoder changed its error"
            else:
                raise AssertionError("a failed decoder accepted more input") from exc
        return events, type(exc)
    return events, None


def _merge_raw(events: list[Event]) -> list[Event]:
    """Raw data may be split differently by different chunkings: join it."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, RawDataReceived) and out and isinstance(out[-1], RawDataReceived):
            out[-1] = RawDataReceived(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def _encode(events: list[Event]) -> bytes:
    parts = [encode_preface()]
    for event in events:
        if isinstance(event, RequestHeaderReceived):
            parts.append(
                encode_request_header(event.method, event.kind, event.metadata, event.timeout_us)
            )
        elif isinstance(event, ResponseHeaderReceived):
            parts.append(encode_response_header(event.metadata))
        elif isinstance(event, MessageReceived):
            parts.append(encode_message(event.data))
        elif isinstance(event, RequestEnded):
            parts.append(encode_request_end())
        elif isinstance(event, TrailerReceived):
            parts.append(
                encode_trailer(event.status, event.details, event.metadata, event.rich_details)
            )
        elif isinstance(event, RawDataReceived):
            parts.append(event.data)
    return b"".join(parts)


def _check_protocol(data: bytes, cuts: list[int]) -> None:
    for role in (Role.SERVER, Role.CLIENT):
        for raw in (False, True):
            proto = CallProtocol(
                role,
                raw=raw,
                max_message_size=MAX_MESSAGE,
                max_header_size=MAX_HEADER,
                max_metadata_entries=MAX_ENTRIES,
            )
            start = 0
            try:
                for end in cuts:
                    proto.receive_data(data[start:end])
                    start = end
                proto.receive_eof()
            except RemoteProtocolError:
                pass


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    flags, body = data[0], data[1:]
    raw_request, raw_response = bool(flags & 1), bool(flags & 2)
    if flags & 4:  # most inputs start with a valid preface, so frames get parsed
        body = encode_preface() + body
    whole = _decode(body, [len(body)], raw_request, raw_response)
    pieces = _decode(body, _cuts(flags, len(body)), raw_request, raw_response)
    if whole[1] is None or pieces[1] is None:
        assert whole[1] is pieces[1], f"chunking changed the outcome: {whole[1]} vs {pieces[1]}"
        assert _merge_raw(whole[0]) == _merge_raw(pieces[0]), "chunking changed the events"
    else:
        assert whole[1] is pieces[1], f"chunking changed the error: {whole[1]} vs {pieces[1]}"
    if whole[1] is None:
        encoded = _encode(whole[0])
        again = _decode(encoded, [len(encoded)], raw_request, raw_response)
        assert again[1] is None, f"re-encoded events do not decode: {again[1]}"
        assert _merge_raw(again[0]) == _merge_raw(whole[0]), "decode/encode is not a round trip"
    _check_protocol(body, _cuts(flags >> 3, len(body)))


def main() -> None:
    import atheris  # type: ignore[import-not-found]

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
