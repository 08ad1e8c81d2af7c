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
* counters and statistics read safely from the recovery internals;
* a leaner client hello: key shares for X25519 and P-256 only (aioquic also generates
  P-384 and X448 shares, which no server of ours picks, for about 0.6 ms a handshake);
* TLS 1.3 session resumption (1-RTT, never 0-RTT) that keeps mutual TLS intact: see
  :class:`EngineConnection` and :class:`~quic_rpc.quic.SessionCache`.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import inspect
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from aioquic import tls as aioquic_tls
from aioquic.buffer import Buffer, size_uint_var  # type: ignore[attr-defined]
from aioquic.quic import connection as aioquic_connection
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
    pull_quic_transport_parameters,
    push_quic_transport_parameters,
)
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.retry import QuicRetryTokenHandler
from aioquic.quic.stream import QuicStream
from cryptography.hazmat.primitives import serialization

from .config import QUICConfig
from .congestion import install_pacer, set_datagram_size
from .pmtu import BASE_DATAGRAM_SIZE, PathMTUSearch
from .recovery import limit_probe_backoff
from .tls import ServerSessionStore, SessionCache, TLSCredentials, _ClientSession, _ServerSession

__all__ = [
    "CONNECTION_ID_LENGTH",
    "DATAGRAM_FRAME_OVERHEAD",
    "EngineConnection",
    "PacketHeader",
    "RetryTokens",
    "events",
    "parse_header",
    "stateless_reset_token",
    "version_negotiation",
]

_log = logging.getLogger(__name__)

_SHORT_LENGTH_MAX = 16383
"""The largest length a two-byte varint holds."""

_BLACK_HOLE_PTOS = 2
"""Probe timeouts in a row after which path MTU discovery suspects a black hole."""

_BLACK_HOLE_BURSTS = 4
"""Loss events losing packets above the base size, with none of those acknowledged in
between, after which path MTU discovery assumes a black hole."""

DATAGRAM_FRAME_OVERHEAD = 64
"""Room an unreliable datagram leaves for the packet and frame around it: the largest
one a connection takes is its datagram size less this."""

events = quic_events
"""The engine's event classes (aioquic's ``quic.events``)."""

CONNECTION_ID_LENGTH = 8
"""Every connection on a socket uses this connection-id length (short headers carry none)."""

SUPPORTED_VERSIONS = tuple(QuicConfiguration().supported_versions)
_MAX_REASON = 200
_LONE_ACK_DELAY = 0.005
"""How long the ACK of a lone ack-eliciting 1-RTT packet (a request, a response) waits
for a reply to carry it. aioquic acks after 1 ms, so any reply slower than that costs
a separate ACK-only datagram each way. Under the max_ack_delay we advertise
(``ADVERTISED_MAX_ACK_DELAY_MS``), so the peer's loss detection allows for it; as soon as
a second ack-eliciting packet is pending, aioquic's 1 ms schedule applies again (bulk
transfers are unchanged)."""
ADVERTISED_MAX_ACK_DELAY_MS = 10
"""The max_ack_delay transport parameter we send (aioquic sends 25 ms). We acknowledge
within ``_LONE_ACK_DELAY`` (5 ms) plus event-loop lateness; the peer adds this value to
every probe timeout, so advertising 25 ms made each loss that only a probe timeout
detects (the last packet of a call) cost 15 ms more than it had to."""
_POST_HANDSHAKE_CRYPTO_BUFFER = 4096
_SHARED_EPOCH_SETS: dict[frozenset[Any], frozenset[Any]] = {}
_APPLICATION_EPOCHS = (aioquic_tls.Epoch.ONE_RTT, aioquic_tls.Epoch.ZERO_RTT)
_CLIENT_KEY_SHARES = (aioquic_tls.Group.X25519, aioquic_tls.Group.SECP256R1)
"""The groups a client sends key shares for, in order of preference. aioquic's client
generates shares for every group it supports (P-256, P-384, X25519, X448), while a
server — ours too — uses the first one it supports; P-384 and X448 key generation alone
costs ~0.6 ms per handshake. X25519 and P-256 are what every TLS 1.3 stack supports
(aioquic's client cannot answer a HelloRetryRequest, so a lone share would be fragile)."""

# The frame-handler table aioquic builds for every connection calls EPOCHS() 33 times; the
# result is an immutable frozenset of a constant string, so memoizing it is safe.
if not hasattr(aioquic_connection.EPOCHS, "cache_info"):
    aioquic_connection.EPOCHS = functools.lru_cache(maxsize=None)(aioquic_connection.EPOCHS)


def stateless_reset_token(key: bytes, cid: bytes) -> bytes:
    """The 16-byte stateless-reset token of ``cid`` under a socket's secret ``key``."""
    return hmac.digest(key, cid, "sha256")[:16]


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
    config: QUICConfig,
    credentials: TLSCredentials,
    *,
    is_client: bool,
    server_name: str | None,
    session_ticket: Any = None,
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
        session_ticket=session_ticket,
    )
    qc.certificate = credentials.chain[0]
    qc.certificate_chain = list(credentials.chain[1:])
    qc.private_key = credentials.private_key
    return qc


@dataclass(frozen=True, slots=True)
class ClientResumption:
    """What a client connection needs for session resumption: where new tickets go and,
    if one is offered, the session taken from the cache with the identity the verify
    callback just gave its chain again."""

    cache: SessionCache
    key: Hashable
    lifetime: float
    offer: _ClientSession | None = None
    identity: Any = None


class EngineConnection(QuicConnection):
    """aioquic's connection with mutual TLS, consumption-driven flow control and counters.

    Session resumption (TLS 1.3 PSK with (EC)DHE, 1-RTT only). On a resumed handshake
    no certificates are exchanged, so each side restores the peer's chain from the
    session it resumed and runs its verify callback over that chain again: the identity
    and chain a resumed connection reports are exactly what a full handshake would report
    now. Only the peer that completed the full handshake the session came from knows the
    resumption secret, and the resumed handshake's Finished messages prove that knowledge
    (aioquic checks the PSK binder and both Finished MACs), so the restored identity is
    as well authenticated as the original one. 0-RTT is never used: our tickets do not
    allow early data (0-RTT data could be replayed), a client never sends it, and a
    server aborts a handshake that offers it.
    """

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
        resumption: ClientResumption | None = None,
        session_store: ServerSessionStore | None = None,
        handshake_datagram_size: int | None = None,
        pmtu_ceiling: int | None = None,
    ) -> None:
        self._resumption = resumption if is_client else None
        self._session_store = session_store if not is_client else None
        offer = self._resumption.offer if self._resumption is not None else None
        issuing = self._resumption is not None or self._session_store is not None
        super().__init__(
            configuration=_quic_configuration(
                config,
                credentials,
                is_client=is_client,
                server_name=server_name,
                session_ticket=offer.ticket if offer is not None else None,
            ),
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
            session_ticket_fetcher=self._fetch_session if self._session_store else None,
            session_ticket_handler=self._session_ticket_received if issuing else None,
        )
        self.peer_identity: Any = None
        self.peer_chain_der: tuple[bytes, ...] = ()
        self.local_chain_der = credentials.chain_der
        self.peer_verified = False
        self._received_chain_der: tuple[bytes, ...] | None = None
        self._restorable: tuple[tuple[bytes, ...], Any, float] | None = None
        """(peer chain, identity, authenticated_at) of the session offered or accepted."""
        if offer is not None and self._resumption is not None:
            self._restorable = (offer.peer_chain, self._resumption.identity, offer.authenticated_at)
        self._authenticated_at = 0.0
        self._clock: Callable[[], float] = (
            self._resumption.cache._clock
            if self._resumption is not None
            else self._session_store._clock
            if self._session_store is not None
            else time.monotonic
        )
        self._session_lifetime = (
            self._resumption.lifetime
            if self._resumption is not None
            else config.session_ticket_lifetime
        )
        self.rejected_peer_reason: str | None = None
        self.closed_by_peer = False
        """The peer's CONNECTION_CLOSE began the close (not one of ours)."""
        self.packets_lost = 0
        self.unread_total = 0
        self._verify = credentials.verify
        self._reset_key = reset_key
        self._stream_window = config.stream_window
        self._max_stream_window = max(config.max_stream_window, config.stream_window)
        self._connection_window = config.connection_window
        self._max_connection_window = max(config.max_connection_window, config.connection_window)
        self._consumed: dict[int, int] = {}
        self._grown: dict[int, int] = {}
        """Streams whose window grew past ``stream_window``: stream id -> window."""
        self._credit_at: dict[int, float] = {}
        """When each stream's credit last moved (only while it can still grow)."""
        self._connection_credit_at: float | None = None
        self._now = 0.0
        self._eliciting_unacked = 0
        """Ack-eliciting 1-RTT packets received since our last 1-RTT ACK."""
        self._first_eliciting_at = 0.0
        self._app_space: QuicPacketSpace | None = None
        self._share_frame_epochs()
        # Handshake datagrams are padded to the full datagram size (client Initials,
        # path probes): with large datagrams (the loopback profile) that is up to 64 KB
        # of padding to build, encrypt and parse per flight. ``handshake_datagram_size``
        # (the path-independent size) is used until the handshake is confirmed. Never
        # above 16,383 bytes either: aioquic writes CRYPTO frame lengths in two bytes.
        self._full_datagram_size: int = self._max_datagram_size
        if handshake_datagram_size is not None:
            self._max_datagram_size = min(self._max_datagram_size, handshake_datagram_size)
        self._max_datagram_size = min(self._max_datagram_size, _SHORT_LENGTH_MAX)
        # Path MTU discovery (see .pmtu): the path is only known to carry 1,200 bytes,
        # so the handshake and everything until a probe proves more use that size.
        self._pmtu: PathMTUSearch | None = None
        self._pmtu_probes: set[int] = set()
        """Packet numbers of probes not yet acknowledged or declared lost (one in flight,
        plus any a fallback abandoned)."""
        self._pto_run = 0
        """Probe timeouts since the largest acknowledged packet last moved."""
        self._pto_acked_mark = -1
        self._large_loss_bursts = 0
        """Loss events with packets above the base size since one was acknowledged."""
        self._pmtu_host: str | None = None
        """The peer IP address the search is for."""
        if pmtu_ceiling is not None:
            self._pmtu = PathMTUSearch(ceiling=min(pmtu_ceiling, self._full_datagram_size))
            self._full_datagram_size = self._max_datagram_size = self._pmtu.size

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

        # probes keep coming at a bounded interval under heavy loss (see .recovery)
        limit_probe_backoff(self._loss, config.max_pto_backoff)

        count_lost = self._loss._on_packets_lost

        def on_packets_lost(**kwargs: Any) -> None:
            packets = kwargs.get("packets")
            if packets is not None and not isinstance(packets, list | tuple):
                packets = kwargs["packets"] = list(packets)
            outstanding = self._pmtu_probes
            if outstanding and packets:
                # A lost path MTU probe says nothing about congestion (RFC 9000 14.4):
                # it only leaves bytes in flight.
                probes = [p for p in packets if p.packet_number in outstanding]
                if probes:
                    packets = kwargs["packets"] = [
                        p for p in packets if p.packet_number not in outstanding
                    ]
                    # (the probes' handlers run in here and forget them)
                    count_lost(**{**kwargs, "packets": probes, "congestion_event": False})
                    if not packets:
                        return
            if packets is not None and kwargs.get("congestion_event", True):
                self.packets_lost += len(packets)
                if self._pmtu is not None and self._max_datagram_size > BASE_DATAGRAM_SIZE:
                    self._count_large_losses(packets, kwargs.get("now", self._now))
            count_lost(**kwargs)

        setattr(self._loss, "_on_packets_lost", on_packets_lost)  # noqa: B010
        if self._pmtu is not None:
            cc = self._loss._cc
            count_acked = cc.on_packet_acked

            def on_packet_acked(*, now: float, packet: Any) -> None:
                if packet.sent_bytes > BASE_DATAGRAM_SIZE:
                    self._large_loss_bursts = 0  # large packets still get through
                count_acked(now=now, packet=packet)

            setattr(cc, "on_packet_acked", on_packet_acked)  # noqa: B010
        if config.congestion_control == "bbr":
            # pace at the model's rate (or not at all), and learn when the app runs dry
            install_pacer(self._loss, paced=config.pacing)
        elif not config.pacing:
            setattr(self._loss._pacer, "next_send_time", _never_paced)  # noqa: B010
        if self._pmtu is not None:
            set_datagram_size(self._loss, self._pmtu.size, initial=True)

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
    def session_resumed(self) -> bool:
        """The handshake resumed an earlier session (no certificates were exchanged)."""
        tls_ctx = getattr(self, "tls", None)
        return bool(getattr(tls_ctx, "session_resumed", False))

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
            "receive_window": float(self._connection_window),
            "datagram_size": float(self._max_datagram_size),
            "pmtu_probes_lost": float(self._pmtu.probes_lost if self._pmtu is not None else 0),
        }

    @property
    def datagram_size(self) -> int:
        """The UDP payload size this connection sends at now (the path's, once known)."""
        return int(self._max_datagram_size)

    def stream_receive_window(self, stream_id: int) -> int:
        """The flow-control window the peer gets on ``stream_id`` (it may have grown)."""
        return self._grown.get(stream_id, self._stream_window)

    # -- delayed ACKs that ride on the reply ---------------------------------------

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        self._now = now
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
            window = self._grown.get(stream_id, self._stream_window)
            if consumed + window - stream.max_stream_data_local >= window // 2:
                return True
        limit = self._local_max_data
        return (
            limit.used - self.unread_total + self._connection_window - limit.value
            >= self._connection_window // 2
        )

    def forget_stream(self, stream_id: int) -> None:
        self._consumed.pop(stream_id, None)
        if self._credit_at:
            self._credit_at.pop(stream_id, None)
            self._grown.pop(stream_id, None)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        self._now = now  # for window growth, which runs while packets are built
        if self._pmtu is not None:
            return self._datagrams_with_pmtu(now)
        result: list[tuple[bytes, Any]] = super().datagrams_to_send(now)
        return result

    def _datagrams_with_pmtu(self, now: float) -> list[tuple[bytes, Any]]:
        assert self._pmtu is not None
        sent: list[tuple[bytes, Any]] = []
        paths = self._network_paths
        if self._handshake_confirmed:
            if paths and paths[0].addr[0] != self._pmtu_host:
                self._pmtu_new_path()
            probe = self._pmtu.probe_size(now)
            if probe is not None:
                # ahead of any data, so a bulk transfer filling the window cannot hold
                # the probe (and the larger size) back
                sent = self._send_pmtu_probe(probe, now)
        size = self._max_datagram_size
        if size > BASE_DATAGRAM_SIZE and any(
            p.remote_challenges or not p.is_validated for p in paths
        ):
            # PATH_CHALLENGE and PATH_RESPONSE datagrams are padded to the full size:
            # on a path not known to carry ours (the peer moved, or we did without
            # noticing), the 1,200 bytes RFC 9000 section 8.2 asks for are the size
            # that gets through.
            self._max_datagram_size = BASE_DATAGRAM_SIZE
            try:
                sent += super().datagrams_to_send(now)
            finally:
                if self._max_datagram_size == BASE_DATAGRAM_SIZE:
                    self._max_datagram_size = size
            return sent
        result: list[tuple[bytes, Any]] = super().datagrams_to_send(now)
        return sent + result if sent else result

    def handle_timer(self, now: float) -> None:
        self._now = now
        pmtu = self._pmtu
        pto = (
            pmtu is not None
            and self._loss_at is not None
            and now >= self._loss_at
            and self._loss._get_loss_space() is None
        )
        super().handle_timer(now)
        if pto and pmtu is not None and pmtu.size > BASE_DATAGRAM_SIZE:
            space = self._spaces.get(aioquic_tls.Epoch.ONE_RTT)
            acked = space.largest_acked_packet if space is not None else -1
            if acked != self._pto_acked_mark:
                self._pto_acked_mark = acked
                self._pto_run = 0
            self._pto_run += 1
            if self._pto_run >= _BLACK_HOLE_PTOS:
                # Nothing acknowledged across two probe timeouts: the path may have
                # stopped carrying our datagram size. Fall back to the size every path
                # carries; the search tries again later. A dead peer still ends at
                # idle_timeout.
                self._pmtu_black_hole(now)

    # -- path MTU discovery ------------------------------------------------------

    def _send_pmtu_probe(self, size: int, now: float) -> list[tuple[bytes, Any]]:
        """Send one PING padded to ``size`` bytes, if the congestion window has room."""
        if (
            self._state not in (QuicConnectionState.CONNECTED,)
            or self._close_pending
            or self._loss.congestion_window - self._loss.bytes_in_flight < size
            or not self._network_paths
        ):
            return []
        network_path = self._network_paths[0]
        crypto = self._cryptos[aioquic_tls.Epoch.ONE_RTT]
        if not network_path.is_validated or not crypto.send.is_valid() or self._version is None:
            return []
        builder = QuicPacketBuilder(
            host_cid=self.host_cid,
            is_client=self._is_client,
            max_datagram_size=size,
            packet_number=self._packet_number,
            peer_cid=self._peer_cid.cid,
            peer_token=self._peer_token,
            quic_logger=self._quic_logger,
            spin_bit=self._spin_bit,
            version=self._version,
        )
        builder.start_packet(QuicPacketType.ONE_RTT, crypto)
        number = builder.packet_number
        builder.start_frame(
            QuicFrameType.PING, handler=self._on_pmtu_probe, handler_args=(size, number)
        )
        padding = builder.remaining_flight_space
        if padding > 0:
            builder.start_frame(QuicFrameType.PADDING, capacity=padding)
            builder._buffer.push_bytes(bytes(padding - 1))
        self._pmtu_probes.add(number)
        assert self._pmtu is not None
        self._pmtu.probe_sent(size)
        return self._flush_builder(
            builder=builder, network_path=network_path, peer_cid=self._peer_cid.cid, now=now
        )

    def _count_large_losses(self, packets: Sequence[Any], now: float) -> None:
        """A loss event that lost packets above the base size. Congestion and random
        loss are followed by large packets that do get through; a path that stopped
        carrying our size (a black hole, RFC 8899 section 4.3) loses every one."""
        if any(p.sent_bytes > BASE_DATAGRAM_SIZE for p in packets):
            self._large_loss_bursts += 1
            if self._large_loss_bursts >= _BLACK_HOLE_BURSTS:
                self._pmtu_black_hole(now)

    def _pmtu_black_hole(self, now: float) -> None:
        pmtu = self._pmtu
        self._large_loss_bursts = 0
        self._pto_run = 0
        if pmtu is not None and pmtu.black_hole(now):
            self._set_datagram_size(pmtu.size)

    def _pmtu_new_path(self) -> None:
        """The peer's IP address changed (migration): start over from the base size. A
        change of port alone (a NAT rebinding) keeps the path, as it keeps the
        congestion state (RFC 9000 section 9.4)."""
        host = self._network_paths[0].addr[0]
        first = self._pmtu_host is None
        self._pmtu_host = host
        if first or self._pmtu is None:
            return
        self._pmtu.new_path()
        self._set_datagram_size(self._pmtu.size)

    def _on_pmtu_probe(self, delivery: QuicDeliveryState, size: int, number: int) -> None:
        self._pmtu_probes.discard(number)
        pmtu = self._pmtu
        if pmtu is None:
            return
        if delivery == QuicDeliveryState.ACKED:
            pmtu.probe_acked(size, self._now)
        else:
            pmtu.probe_lost(size, self._now)
        if pmtu.size != self._max_datagram_size:
            self._set_datagram_size(pmtu.size)

    def _set_datagram_size(self, size: int) -> None:
        self._max_datagram_size = self._full_datagram_size = size
        set_datagram_size(self._loss, size)
        if self._datagrams_pending:
            # an unreliable datagram that no longer fits would block the queue
            limit = size - DATAGRAM_FRAME_OVERHEAD
            kept = [d for d in self._datagrams_pending if len(d) <= limit]
            if len(kept) != len(self._datagrams_pending):
                self._datagrams_pending.clear()
                self._datagrams_pending.extend(kept)

    def _window_outgrown(self, last: float | None) -> bool:
        """Half a window was read within two round trips of the previous credit update:
        the window, not the reader, is what limits the peer (RFC 9000 leaves the policy
        to us; this is the rule Chromium's and quiche's auto-tuning use)."""
        loss = self._loss
        return (
            last is not None and loss._rtt_initialized and self._now - last < 2 * loss._rtt_smoothed
        )

    def _serialize_transport_parameters(self) -> bytes:
        data: bytes = super()._serialize_transport_parameters()
        params = pull_quic_transport_parameters(Buffer(data=data))
        params.max_ack_delay = ADVERTISED_MAX_ACK_DELAY_MS
        buf = Buffer(capacity=len(data) + 16)
        push_quic_transport_parameters(buf, params)
        out: bytes = buf.data
        return out

    # -- STREAM frames longer than 16,383 bytes --------------------------------------

    def _write_stream_frame(
        self,
        builder: QuicPacketBuilder,
        space: QuicPacketSpace,
        stream: QuicStream,
        max_offset: int,
    ) -> int:
        """aioquic writes every STREAM frame's length as a two-byte varint, which caps a
        frame, and so a datagram, at 16,383 bytes. This writes the same frame, with a
        four-byte length when the packet has room for more, so that loopback datagrams
        can approach 64 KiB (a quarter of the packets, and of the per-packet work, for a
        bulk transfer). Returns the bytes of new (not retransmitted) data written."""
        sender = stream.sender
        stream_id = stream.stream_id
        assert stream_id is not None  # only streams with an id are scheduled to send
        offset = sender.next_offset
        room = builder.remaining_flight_space
        head = 1 + size_uint_var(stream_id) + (size_uint_var(offset) if offset else 0)
        length_size = 4 if room - head - 2 > _SHORT_LENGTH_MAX else 2
        overhead = head + length_size
        highest = sender.highest_offset
        frame = sender.get_frame(room - overhead, max_offset)
        if frame is None:
            return 0
        data = frame.data
        start = frame.offset
        frame_type = QuicFrameType.STREAM_BASE | 2
        if start:
            frame_type |= 4
        if frame.fin:
            frame_type |= 1
        buf = builder.start_frame(
            frame_type,
            capacity=overhead,
            handler=sender.on_data_delivery,
            handler_args=(start, start + len(data), frame.fin),
        )
        buf.push_uint_var(stream_id)
        if start:
            buf.push_uint_var(start)
        if length_size == 2:
            buf.push_uint16(len(data) | 0x4000)
        else:
            buf.push_uint32(len(data) | 0x80000000)
        buf.push_bytes(data)
        logged = builder.quic_logger_frames
        if self._quic_logger is not None and logged is not None:
            logged.append(self._quic_logger.encode_stream_frame(frame, stream_id=stream_id))
        new_bytes: int = sender.highest_offset - highest
        return new_bytes

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        stream_id = stream.stream_id
        if stream_id is None or not stream.max_stream_data_local or stream.receiver.is_finished:
            return
        window = self._grown.get(stream_id, self._stream_window)
        consumed = self._consumed.get(stream_id, 0)
        if consumed + window - stream.max_stream_data_local >= window // 2:
            if window < self._max_stream_window:
                if self._window_outgrown(self._credit_at.get(stream_id)):
                    window = self._grown[stream_id] = min(2 * window, self._max_stream_window)
                    # the connection's window keeps room for one and a half of these
                    self._connection_window = min(
                        max(self._connection_window, window + window // 2),
                        self._max_connection_window,
                    )
                self._credit_at[stream_id] = self._now
            stream.max_stream_data_local = consumed + window
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
        read = max_data.used - self.unread_total
        if read + self._connection_window - max_data.value >= self._connection_window // 2:
            if self._connection_window < self._max_connection_window:
                if self._window_outgrown(self._connection_credit_at):
                    self._connection_window = min(
                        2 * self._connection_window, self._max_connection_window
                    )
                self._connection_credit_at = self._now
            max_data.value = read + self._connection_window
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
        set_peer_certificate = ctx._set_peer_certificate

        def keep_peer_der(certificate: aioquic_tls.Certificate) -> None:
            set_peer_certificate(certificate)
            self._received_chain_der = tuple(bytes(entry[0]) for entry in certificate.certificates)

        setattr(ctx, "_set_peer_certificate", keep_peer_der)  # noqa: B010
        if self._is_client:
            ctx._supported_groups = [g for g in _CLIENT_KEY_SHARES if g in ctx._supported_groups]
            check_signature = ctx._client_handle_certificate_verify
            client_finished = ctx._client_handle_finished

            def client_handle_certificate_verify(input_buf: Buffer) -> None:
                check_signature(input_buf)
                self._verify_peer(ctx)

            def client_handle_finished(input_buf: Buffer, output_buf: Buffer) -> None:
                if ctx.session_resumed:
                    self._restore_peer()
                client_finished(input_buf, output_buf)

            setattr(ctx, "_client_handle_certificate_verify", client_handle_certificate_verify)  # noqa: B010
            setattr(ctx, "_client_handle_finished", client_handle_finished)  # noqa: B010
        else:
            ctx._request_client_certificate = True
            ctx._max_early_data = None  # our tickets never allow 0-RTT
            handle_hello = ctx._server_handle_hello
            handle_finished = ctx._server_handle_finished

            def server_handle_hello(
                input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer
            ) -> None:
                handle_hello(input_buf, initial_buf, handshake_buf)
                if ctx.session_resumed and ctx.state == aioquic_tls.State.SERVER_EXPECT_CERTIFICATE:
                    # aioquic expects a client Certificate even when it resumed (and so
                    # sent no CertificateRequest); a resumed client sends only Finished.
                    ctx._server_expect_finished()

            def server_handle_finished(input_buf: Buffer, output_buf: Buffer) -> None:
                if ctx.session_resumed:
                    self._restore_peer()
                else:
                    self._verify_peer(ctx)
                handle_finished(input_buf, output_buf)

            setattr(ctx, "_server_handle_hello", server_handle_hello)  # noqa: B010
            setattr(ctx, "_server_handle_finished", server_handle_finished)  # noqa: B010

    def _verify_peer(self, ctx: aioquic_tls.Context) -> None:
        leaf = ctx._peer_certificate
        if leaf is None:
            self._reject("the peer sent no certificate")
            return
        chain_der = self._received_chain_der
        if chain_der is None:
            der = serialization.Encoding.DER
            chain_der = tuple(c.public_bytes(der) for c in (leaf, *ctx._peer_certificate_chain))
        identity = self._call_verify(chain_der)
        self.peer_chain_der = chain_der
        self.peer_identity = identity
        self.peer_verified = True
        self._authenticated_at = self._clock()

    def _call_verify(self, chain_der: tuple[bytes, ...]) -> Any:
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
        return identity

    def _restore_peer(self) -> None:
        """A resumed handshake: the peer proved the session's secret, so it is the peer
        whose chain the session holds, which the verify callback accepted again just now
        (see :meth:`_fetch_session` and ``client.connect``)."""
        restorable = self._restorable
        if restorable is None:
            self._reject("resumed a session we did not offer or accept")
            return
        self.peer_chain_der, self.peer_identity, self._authenticated_at = restorable
        self.peer_verified = True

    # -- session resumption -------------------------------------------------------

    def _fetch_session(self, label: bytes) -> aioquic_tls.SessionTicket | None:
        """Server: the session a client's ticket names, if it may be resumed (it is
        removed from the store either way: tickets are single-use)."""
        store = self._session_store
        if store is None:
            return None
        session = store._pop(label)
        if session is None or session.server_chain != self.local_chain_der:
            return None  # unknown, expired, or issued by another identity: full handshake
        try:
            identity = self._verify(session.peer_chain)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            _log.debug("not resuming: the stored client chain is rejected now: %s", exc)
            return None
        if inspect.isawaitable(identity):
            close = getattr(identity, "close", None)
            if close is not None:
                close()
            return None
        self._restorable = (session.peer_chain, identity, session.authenticated_at)
        ticket: aioquic_tls.SessionTicket = session.ticket
        return ticket

    def _session_ticket_received(self, ticket: aioquic_tls.SessionTicket) -> None:
        """A ticket we issued (server) or were given (client): keep it with the verified
        peer chain. A session lives ``session_ticket_lifetime`` from the full handshake
        that authenticated the peer, however often it is resumed in between."""
        if not self.peer_verified or not self.peer_chain_der:
            return
        expires_at = self._authenticated_at + self._session_lifetime
        if expires_at <= self._clock():
            return
        if self._is_client:
            resumption = self._resumption
            if resumption is None:
                return
            # never 0-RTT, whatever the server allows
            ticket = dataclasses.replace(ticket, max_early_data_size=None)
            resumption.cache._put(
                resumption.key,
                _ClientSession(ticket, self.peer_chain_der, self._authenticated_at, expires_at),
            )
        elif self._session_store is not None:
            self._session_store._add(
                ticket.ticket,
                _ServerSession(
                    ticket,
                    self.peer_chain_der,
                    self.local_chain_der,
                    self._authenticated_at,
                    expires_at,
                ),
            )

    def _update_traffic_key(
        self,
        direction: aioquic_tls.Direction,
        epoch: aioquic_tls.Epoch,
        cipher_suite: aioquic_tls.CipherSuite,
        secret: bytes,
    ) -> None:
        if epoch == aioquic_tls.Epoch.ZERO_RTT:
            # Our tickets never allow early data, so only a misbehaving client gets here.
            raise aioquic_tls.AlertIllegalParameter("0-RTT is not accepted")
        super()._update_traffic_key(direction, epoch, cipher_suite, secret)

    # -- memory of finished handshakes -------------------------------------------

    def _confirm_handshake(self) -> None:
        super()._confirm_handshake()
        self._max_datagram_size = self._full_datagram_size
        if self._pmtu is not None:
            self._pmtu.start()
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
        # After the handshake TLS writes at most a NewSessionTicket (a few hundred
        # bytes) to the 1-RTT buffer; QUIC has no TLS KeyUpdate. 16 KiB -> 4 KiB.
        one_rtt = buffers.get(aioquic_tls.Epoch.ONE_RTT)
        if one_rtt is not None and one_rtt.capacity > _POST_HANDSHAKE_CRYPTO_BUFFER:
            if one_rtt.tell() == 0:
                buffers[aioquic_tls.Epoch.ONE_RTT] = Buffer(capacity=_POST_HANDSHAKE_CRYPTO_BUFFER)

    def _share_frame_epochs(self) -> None:
        """aioquic builds a table of frame handlers per connection, each with a new
        frozenset of the epochs it is allowed in: about 7 KiB of identical sets per
        connection. Point every entry at one shared set of each value instead."""
        handlers = getattr(self, "_QuicConnection__frame_handlers", None)
        if not isinstance(handlers, dict):
            return
        for key, entry in handlers.items():
            if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], frozenset):
                shared = _SHARED_EPOCH_SETS.setdefault(entry[1], entry[1])
                if shared is not entry[1]:
                    handlers[key] = (entry[0], shared)

    def _close_begin(self, is_initiator: bool, now: float) -> None:
        if self._state not in END_STATES and not self._close_pending:
            self.closed_by_peer = not is_initiator
        super()._close_begin(is_initiator, now)

    def _reject(self, reason: str) -> None:
        self.rejected_peer_reason = reason
        raise aioquic_tls.AlertBadCertificate(f"certificate rejected: {reason}"[:_MAX_REASON])


def _never_paced(now: float) -> None:
    return None
