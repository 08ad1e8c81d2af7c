"""The QUIC protocol engine: aioquic's sans-IO ``QuicConnection`` with our policies.

Everything that touches aioquic internals lives here (and nowhere else in the package
reaches into them), so another engine such as qh3 can be slotted in behind the same
small surface:

* mutual TLS — the server requests a client certificate, and both sides run the
  application's verify callback on the peer chain *inside* the handshake, rejecting
  with a ``bad_certificate`` alert (CRYPTO_ERROR 0x12a) before any stream is served;
* receive flow control that only extends credit as the application consumes data
  (aioquic's own policy doubles the window as data merely arrives);
* stateless-reset tokens derived from the connection id with a per-socket key;
* counters and statistics read safely from the recovery internals.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
from dataclasses import dataclass
from typing import Any

from aioquic import tls as aioquic_tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    END_STATES,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionState,
    QuicReceiveContext,
)
from aioquic.quic.packet import (
    QuicFrameType,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.retry import QuicRetryTokenHandler
from aioquic.quic.stream import QuicStream
from cryptography.hazmat.primitives import serialization

from .config import QUICConfig
from .tls import TLSCredentials

__all__ = [
    "CONNECTION_ID_LENGTH",
    "EngineConnection",
    "PacketHeader",
    "RetryTokens",
    "events",
    "parse_header",
    "stateless_reset_token",
    "version_negotiation",
]

_log = logging.getLogger(__name__)

events = quic_events
"""The engine's event classes (aioquic's ``quic.events``)."""

CONNECTION_ID_LENGTH = 8
"""Every connection on a socket uses this connection-id length (short headers carry none)."""

SUPPORTED_VERSIONS = tuple(QuicConfiguration().supported_versions)
_MAX_REASON = 200
_LONE_ACK_DELAY = 0.005
"""How long the ACK of a lone ack-eliciting 1-RTT packet (a request, a response) waits
for a reply to carry it. aioquic acks after 1 ms, so any reply slower than that costs
a separate ACK-only datagram each way. Well under the 25 ms max_ack_delay we advertise,
so the peer's loss detection already allows for it; as soon as a second ack-eliciting
packet is pending, aioquic's 1 ms schedule applies again (bulk transfers are unchanged)."""
_APPLICATION_EPOCHS = (aioquic_tls.Epoch.ONE_RTT, aioquic_tls.Epoch.ZERO_RTT)


def stateless_reset_token(key: bytes, cid: bytes) -> bytes:
    """The 16-byte stateless-reset token of ``cid`` under a socket's secret ``key``."""
    return hmac.new(key, cid, hashlib.sha256).digest()[:16]


@dataclass(frozen=True, slots=True)
class PacketHeader:
    """What the socket needs from a datagram's first packet to route it."""

    is_long: bool
    version: int | None
    is_initial: bool
    destination_cid: bytes
    source_cid: bytes
    token: bytes


def parse_header(data: bytes, cid_length: int) -> PacketHeader | None:
    """Parse the first packet header of a datagram, or ``None`` if it is malformed."""
    if not data:
        return None
    first = data[0]
    if not first & 0x80:
        if len(data) < 1 + cid_length:
            return None
        return PacketHeader(False, None, False, bytes(data[1 : 1 + cid_length]), b"", b"")
    try:
        header = pull_quic_header(Buffer(data=data), host_cid_length=cid_length)
    except (ValueError, Exception):  # aioquic raises BufferReadError/ValueError on junk
        return None
    return PacketHeader(
        True,
        header.version,
        header.packet_type == QuicPacketType.INITIAL,
        header.destination_cid,
        header.source_cid,
        header.token,
    )


def version_negotiation(header: PacketHeader) -> bytes | None:
    """A Version Negotiation reply if the header's version is unsupported, else ``None``."""
    if not header.is_long or header.version is None or header.version == 0:
        return None
    if header.version in SUPPORTED_VERSIONS:
        return None
    return encode_quic_version_negotiation(
        source_cid=header.destination_cid,
        destination_cid=header.source_cid,
        supported_versions=list(SUPPORTED_VERSIONS),
    )


class RetryTokens:
    """Address validation with Retry packets (RFC 9000 section 8.1.2)."""

    def __init__(self) -> None:
        self._handler = QuicRetryTokenHandler()

    def retry_packet(
        self, header: PacketHeader, addr: tuple[Any, ...], new_cid: bytes, now: float
    ) -> bytes:
        token = self._handler.create_token(
            address=addr,
            original_destination_connection_id=header.destination_cid,
            retry_source_connection_id=new_cid,
            now=now,
        )
        assert header.version is not None  # only long headers reach here
        return encode_quic_retry(
            version=header.version,
            source_cid=new_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )

    def validate(self, header: PacketHeader, addr: tuple[Any, ...], now: float) -> bytes | None:
        """The original destination cid from a valid token, or ``None`` if it is invalid."""
        try:
            odcid: bytes = self._handler.validate_token(
                address=addr, destination_cid=header.destination_cid, token=header.token, now=now
            )
        except ValueError:
            return None
        return odcid


def _quic_configuration(
    config: QUICConfig, credentials: TLSCredentials, *, is_client: bool, server_name: str | None
) -> QuicConfiguration:
    import ssl

    qc = QuicConfiguration(
        alpn_protocols=[config.alpn],
        connection_id_length=CONNECTION_ID_LENGTH,
        idle_timeout=config.idle_timeout,
        is_client=is_client,
        max_data=config.connection_window,
        max_stream_data=config.stream_window,
        max_datagram_size=config.max_datagram_size,
        congestion_control_algorithm=config.congestion_control,
        initial_rtt=config.initial_rtt,
        max_datagram_frame_size=65536 if config.datagrams else None,
        server_name=server_name,
        verify_mode=ssl.CERT_NONE,  # the verify callback replaces aioquic's checks
    )
    qc.certificate = credentials.chain[0]
    qc.certificate_chain = list(credentials.chain[1:])
    qc.private_key = credentials.private_key
    return qc


class EngineConnection(QuicConnection):
    """aioquic's connection with mutual TLS, consumption-driven flow control and counters."""

    def __init__(
        self,
        *,
        config: QUICConfig,
        credentials: TLSCredentials,
        is_client: bool,
        reset_key: bytes,
        server_name: str | None = None,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
    ) -> None:
        super().__init__(
            configuration=_quic_configuration(
                config, credentials, is_client=is_client, server_name=server_name
            ),
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
        )
        self.peer_identity: Any = None
        self.peer_chain_der: tuple[bytes, ...] = ()
        self.local_chain_der = credentials.chain_der
        self.peer_verified = False
        self.rejected_peer_reason: str | None = None
        self.closed_by_peer = False
        """The peer's CONNECTION_CLOSE began the close (not one of ours)."""
        self.packets_lost = 0
        self.unread_total = 0
        self._verify = credentials.verify
        self._reset_key = reset_key
        self._stream_window = config.stream_window
        self._connection_window = config.connection_window
        self._consumed: dict[int, int] = {}
        self._eliciting_unacked = 0
        """Ack-eliciting 1-RTT packets received since our last 1-RTT ACK."""
        self._first_eliciting_at = 0.0
        self._app_space: QuicPacketSpace | None = None

        # We only use bidirectional streams; the peer may have max_streams open at once.
        for limit, value in (
            (self._local_max_streams_bidi, config.max_streams),
            (self._local_max_streams_uni, 0),
        ):
            limit.value = value
            limit.sent = value
        if not is_client:
            self._host_cids[0].stateless_reset_token = stateless_reset_token(
                reset_key, self._host_cids[0].cid
            )

        count_lost = self._loss._on_packets_lost

        def on_packets_lost(**kwargs: Any) -> None:
            packets = kwargs.get("packets")
            if packets is not None and not isinstance(packets, list | tuple):
                packets = kwargs["packets"] = list(packets)
            if packets is not None and kwargs.get("congestion_event", True):
                self.packets_lost += len(packets)
            count_lost(**kwargs)

        setattr(self._loss, "_on_packets_lost", on_packets_lost)  # noqa: B010
        if not config.pacing:
            setattr(self._loss._pacer, "next_send_time", _never_paced)  # noqa: B010

    # -- state the transport reads -------------------------------------------------

    @property
    def is_client(self) -> bool:
        return bool(self._is_client)

    @property
    def handshake_confirmed(self) -> bool:
        return bool(self._handshake_confirmed)

    @property
    def handshake_complete(self) -> bool:
        return bool(self._handshake_complete)

    @property
    def packet_received(self) -> bool:
        """True once a packet from the peer was decrypted (a server connection that never
        decrypted anything was started by garbage or a spoofed datagram)."""
        return self._state is not QuicConnectionState.FIRSTFLIGHT

    @property
    def is_closing(self) -> bool:
        """True once a close was sent or received (the streams are unusable)."""
        return self._close_event is not None or self._state in END_STATES

    @property
    def close_event(self) -> quic_events.ConnectionTerminated | None:
        event: quic_events.ConnectionTerminated | None = self._close_event
        return event

    @property
    def alpn(self) -> str | None:
        tls_ctx = getattr(self, "tls", None)
        proto = getattr(tls_ctx, "alpn_negotiated", None)
        return proto if isinstance(proto, str) else None

    def is_stateless_reset(self, token: bytes) -> bool:
        """Whether ``token`` is a stateless-reset token the peer gave us (RFC 9000 10.3)."""
        candidates = [self._peer_cid, *self._peer_cid_available]
        return any(
            c.stateless_reset_token and hmac.compare_digest(c.stateless_reset_token, token)
            for c in candidates
        )

    @property
    def peer_max_datagram_frame_size(self) -> int | None:
        """The largest DATAGRAM frame the peer accepts, ``None`` if it accepts none."""
        size = self._remote_max_datagram_frame_size
        return int(size) if size is not None else None

    def host_cids(self) -> list[bytes]:
        return [c.cid for c in self._host_cids]

    def stream_send_buffered(self, stream_id: int) -> int:
        """Bytes handed to the engine for ``stream_id`` that are not yet acknowledged."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def stream_send_finished(self, stream_id: int) -> bool:
        """True when everything sent on ``stream_id`` (including FIN or reset) was acked."""
        stream = self._streams.get(stream_id)
        return stream is None or bool(stream.sender.is_finished)

    def peer_stream_credit_ok(self, stream_id: int) -> bool:
        """True if the peer's MAX_STREAMS allows us to use locally opened ``stream_id``."""
        return stream_id // 4 < self._remote_max_streams_bidi

    def stats(self) -> dict[str, float]:
        loss = self._loss
        rtt_ok = bool(getattr(loss, "_rtt_initialized", False))
        min_rtt = float(getattr(loss, "_rtt_min", 0.0))
        return {
            "rtt_smoothed": float(getattr(loss, "_rtt_smoothed", 0.0)) if rtt_ok else 0.0,
            "rtt_min": min_rtt if rtt_ok and min_rtt != float("inf") else 0.0,
            "rtt_latest": float(getattr(loss, "_rtt_latest", 0.0)) if rtt_ok else 0.0,
            "cwnd": float(loss.congestion_window),
            "bytes_in_flight": float(loss.bytes_in_flight),
            "packets_lost": float(self.packets_lost),
        }

    # -- delayed ACKs that ride on the reply ---------------------------------------

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        before = self._eliciting_unacked
        super().receive_datagram(data, addr, now)
        count = self._eliciting_unacked
        if count == before:
            return
        space = self._app_space = self._spaces.get(aioquic_tls.Epoch.ONE_RTT)
        if space is None or space.ack_at is None:
            return
        if before == 0:
            self._first_eliciting_at = now
        if count == 1:
            space.ack_at = self._first_eliciting_at + _LONE_ACK_DELAY
        else:
            # a second packet: aioquic's 1 ms delay, counted from now so that a reply to
            # this packet can still carry the ACK (never later than the lone deadline)
            space.ack_at = min(space.ack_at, now + self._ack_delay)

    def ack_with_reply(self) -> None:
        """The application queued something to send: let it carry the pending ACK."""
        space = self._app_space
        if self._eliciting_unacked and space is not None and not self._loss.bytes_in_flight:
            # A reply (nothing of ours in flight): make the pending ACK due now, so the
            # packet carrying this data carries it. Senders with data in flight (streams,
            # bulk) keep the usual schedule rather than adding an ACK to more packets.
            ack_at = space.ack_at
            if ack_at is not None and ack_at > self._first_eliciting_at:
                space.ack_at = self._first_eliciting_at

    def _payload_received(
        self, context: QuicReceiveContext, plain: bytes, crypto_frame_required: bool = False
    ) -> tuple[bool, bool]:
        result: tuple[bool, bool] = super()._payload_received(context, plain, crypto_frame_required)
        if result[0] and context.epoch in _APPLICATION_EPOCHS:
            self._eliciting_unacked += 1
        return result

    def _write_ack_frame(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, now: float
    ) -> None:
        super()._write_ack_frame(builder, space, now)
        if space is self._app_space:
            self._eliciting_unacked = 0

    # -- flow control driven by consumption ---------------------------------------

    def data_delivered(self, size: int) -> None:
        """The transport buffered ``size`` bytes for the application (not yet read)."""
        self.unread_total += size

    def data_consumed(self, stream_id: int, size: int) -> bool:
        """The application read (or discarded) ``size`` bytes; True if credit should go out."""
        consumed = self._consumed.get(stream_id, 0) + size
        self._consumed[stream_id] = consumed
        self.unread_total -= size
        stream = self._streams.get(stream_id)
        if stream is not None and stream.max_stream_data_local:
            if (
                consumed + self._stream_window - stream.max_stream_data_local
                >= self._stream_window // 2
            ):
                return True
        limit = self._local_max_data
        return (
            limit.used - self.unread_total + self._connection_window - limit.value
            >= self._connection_window // 2
        )

    def forget_stream(self, stream_id: int) -> None:
        self._consumed.pop(stream_id, None)

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        stream_id = stream.stream_id
        if stream_id is None or not stream.max_stream_data_local or stream.receiver.is_finished:
            return
        target = self._consumed.get(stream_id, 0) + self._stream_window
        if target - stream.max_stream_data_local >= self._stream_window // 2:
            stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        max_data = self._local_max_data
        target = max_data.used - self.unread_total + self._connection_window
        if target - max_data.value >= self._connection_window // 2:
            max_data.value = target
        for limit in (max_data, self._local_max_streams_bidi, self._local_max_streams_uni):
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                continue  # batch MAX_STREAMS until the peer is running short
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type,
                    capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery,
                    handler_args=(limit,),
                )
                buf.push_uint_var(limit.value)
                limit.sent = limit.value

    # -- stateless reset tokens ----------------------------------------------------

    def _replenish_connection_ids(self) -> None:
        before = len(self._host_cids)
        super()._replenish_connection_ids()
        for cid in self._host_cids[before:]:
            cid.stateless_reset_token = stateless_reset_token(self._reset_key, cid.cid)

    # -- mutual TLS ----------------------------------------------------------------

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        ctx = self.tls
        if self._is_client:
            check_signature = ctx._client_handle_certificate_verify

            def client_handle_certificate_verify(input_buf: Buffer) -> None:
                check_signature(input_buf)
                self._verify_peer(ctx)

            setattr(ctx, "_client_handle_certificate_verify", client_handle_certificate_verify)  # noqa: B010
        else:
            ctx._request_client_certificate = True
            handle_finished = ctx._server_handle_finished

            def server_handle_finished(input_buf: Buffer, output_buf: Buffer) -> None:
                self._verify_peer(ctx)
                handle_finished(input_buf, output_buf)

            setattr(ctx, "_server_handle_finished", server_handle_finished)  # noqa: B010

    def _verify_peer(self, ctx: aioquic_tls.Context) -> None:
        leaf = ctx._peer_certificate
        if leaf is None:
            self._reject("the peer sent no certificate")
            return
        der = serialization.Encoding.DER
        chain = (leaf, *ctx._peer_certificate_chain)
        chain_der = tuple(cert.public_bytes(der) for cert in chain)
        try:
            identity = self._verify(chain_der)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # fail closed whatever the callback raises
            self._reject(f"{type(exc).__name__}: {exc}")
        if inspect.isawaitable(identity):  # an async callback would accept unverified
            close = getattr(identity, "close", None)
            if close is not None:
                close()
            self._reject("the verify callback returned an awaitable; it must be synchronous")
        self.peer_chain_der = chain_der
        self.peer_identity = identity
        self.peer_verified = True

    # -- memory of finished handshakes -------------------------------------------

    def _confirm_handshake(self) -> None:
        super()._confirm_handshake()
        self._release_handshake_epochs()

    def _release_handshake_epochs(self) -> None:
        """Drop the Initial and Handshake crypto buffers and streams once discarded.

        aioquic keeps a 16 KiB TLS output buffer (and a crypto stream holding any
        unacknowledged handshake data) per epoch for the connection's whole life. Once the
        handshake is confirmed both epochs are discarded (RFC 9001 4.9): their keys are
        gone, so nothing is sent or decrypted in them again, and TLS only writes to the
        1-RTT buffer after the handshake. ``_push_crypto_data`` iterates the buffers, so
        removing both dict entries keeps it consistent. Skipped if a future aioquic lays
        these out differently.
        """
        buffers = getattr(self, "_crypto_buffers", None)
        streams = getattr(self, "_crypto_streams", None)
        spaces = getattr(self, "_spaces", None)
        if not (isinstance(buffers, dict) and isinstance(streams, dict)):
            return
        if not isinstance(spaces, dict):
            return
        for epoch in (aioquic_tls.Epoch.INITIAL, aioquic_tls.Epoch.HANDSHAKE):
            space = spaces.get(epoch)
            if space is None or not getattr(space, "discarded", False):
                continue  # only epochs aioquic itself has discarded
            buffers.pop(epoch, None)
            streams.pop(epoch, None)

    def _close_begin(self, is_initiator: bool, now: float) -> None:
        if self._state not in END_STATES and not self._close_pending:
            self.closed_by_peer = not is_initiator
        super()._close_begin(is_initiator, now)

    def _reject(self, reason: str) -> None:
        self.rejected_peer_reason = reason
        raise aioquic_tls.AlertBadCertificate(f"certificate rejected: {reason}"[:_MAX_REASON])


def _never_paced(now: float) -> None:
    return None
