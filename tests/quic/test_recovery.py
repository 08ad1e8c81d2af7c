"""The probe timeout's backoff is bounded (``QUICConfig.max_pto_backoff``), and a dead
peer is still given up on at the idle timeout.

Sans-IO: a client and a server ``EngineConnection`` exchange datagrams in memory on a
made-up clock, so "time" here is the clock the engines are driven with, never the wall
clock. The peer addresses are TEST-NET addresses no socket is ever bound to."""

from __future__ import annotations

import itertools
import math

import pytest

from quic_rpc.quic import QUICConfig, TLSCredentials
from quic_rpc.quic.engine import EngineConnection, events
from quic_rpc.quic.errors import ConfigError
from quic_rpc.quic.recovery import limit_probe_backoff, probe_backoff

SERVER_ADDR = ("192.0.2.1", 4433)
CLIENT_ADDR = ("198.51.100.2", 50000)
IDLE = 6.0
CONFIG = QUICConfig(idle_timeout=IDLE, keepalive_interval=None)
RFC_BACKOFF = QUICConfig(idle_timeout=IDLE, keepalive_interval=None, max_pto_backoff=None)


def _client(config: QUICConfig, creds: TLSCredentials) -> EngineConnection:
    return EngineConnection(config=config, credentials=creds, is_client=True, reset_key=b"c" * 32)


def _handshake(
    config: QUICConfig, client_creds: TLSCredentials, server_creds: TLSCredentials
) -> tuple[EngineConnection, EngineConnection, float]:
    """A confirmed connection; returns (client, server, now)."""
    client = _client(config, client_creds)
    now = 1.0
    client.connect(SERVER_ADDR, now=now)
    server = EngineConnection(
        config=config,
        credentials=server_creds,
        is_client=False,
        reset_key=b"s" * 32,
        original_destination_connection_id=client._peer_cid.cid,
    )
    for _ in range(20):
        now += 0.005
        for data, _ in client.datagrams_to_send(now=now):
            server.receive_datagram(data, CLIENT_ADDR, now=now)
        now += 0.005
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, SERVER_ADDR, now=now)
        if client.handshake_confirmed and server.handshake_confirmed:
            break
    assert client.handshake_confirmed and server.handshake_confirmed
    assert client.peer_verified and server.peer_verified
    return client, server, now


def _run_unanswered(engine: EngineConnection, now: float) -> tuple[list[float], float]:
    """Drive ``engine`` by its own timer with nothing ever arriving from the peer.

    Returns the times at which it sent ack-eliciting datagrams (probes) and the time it
    gave up (its connection closed by the idle timer)."""
    sent_at: list[float] = []
    while not engine.is_closing:
        timer = engine.get_timer()
        assert timer is not None and timer >= now
        now = timer
        engine.handle_timer(now=now)
        if engine.datagrams_to_send(now=now):
            sent_at.append(now)
        assert len(sent_at) < 10_000, "probing without end"
    return sent_at, now


def _intervals(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def _silent_after_a_request(
    config: QUICConfig, client_creds: TLSCredentials, server_creds: TLSCredentials
) -> tuple[EngineConnection, float, float, list[float], float]:
    """The client sends a request, then the server goes silent (dead peer or dead path).

    Returns (client, base PTO, time of the request, probe times, time it gave up)."""
    client, _server, now = _handshake(config, client_creds, server_creds)
    now += 0.05  # everything acknowledged; nothing in flight
    assert client.get_timer() is not None
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"request" * 100, end_stream=True)
    assert client.datagrams_to_send(now=now)
    base = client._loss.get_probe_timeout()
    probes, gave_up = _run_unanswered(client, now)
    return client, base, now, probes, gave_up


def test_probe_timeout_stops_doubling_at_the_bound(
    client_creds: TLSCredentials, server_creds: TLSCredentials
) -> None:
    assert CONFIG.max_pto_backoff == 3  # the default
    _, base, sent, probes, _ = _silent_after_a_request(CONFIG, client_creds, server_creds)
    waits = _intervals([sent, *probes])
    assert len(waits) > 8
    # 1, 2, 4, 8 PTOs, then 8 PTOs for as long as nobody answers
    factors = [w / base for w in waits]
    assert factors[:4] == pytest.approx([1, 2, 4, 8], rel=1e-6)
    assert factors[4:] == pytest.approx([8] * len(factors[4:]), rel=1e-6)


def test_unbounded_backoff_keeps_doubling(
    client_creds: TLSCredentials, server_creds: TLSCredentials
) -> None:
    """``max_pto_backoff=None``: RFC 9002's unbounded doubling, which the bound changes."""
    _, base, sent, probes, _ = _silent_after_a_request(RFC_BACKOFF, client_creds, server_creds)
    factors = [w / base for w in _intervals([sent, *probes])]
    assert len(factors) >= 5
    assert factors == pytest.approx([2**k for k in range(len(factors))], rel=1e-6)


def test_dead_peer_still_ends_at_the_idle_timeout(
    client_creds: TLSCredentials, server_creds: TLSCredentials
) -> None:
    client, base, sent, probes, gave_up = _silent_after_a_request(
        CONFIG, client_creds, server_creds
    )
    event = client.close_event
    assert isinstance(event, events.ConnectionTerminated)
    assert event.reason_phrase == "Idle timeout"
    # the probes did not keep the connection alive: it ends one idle timeout after the
    # request (the first packet sent since the peer was last heard from)
    assert gave_up == pytest.approx(sent + max(IDLE, 3 * base), abs=1e-6)
    # and a bounded number of probes went out: at most one per 8 PTOs after the ramp
    assert len(probes) <= math.ceil((gave_up - sent) / (8 * base)) + 4
    assert all(p < gave_up for p in probes)


def test_dead_server_during_the_handshake(client_creds: TLSCredentials) -> None:
    """No answer to the client's Initial: probes at 1, 2, 4, 8, 8, ... PTOs (before any
    RTT sample a PTO is twice the initial RTT), and the idle timeout ends the attempt."""
    client = _client(CONFIG, client_creds)
    now = 1.0
    client.connect(SERVER_ADDR, now=now)
    assert client.datagrams_to_send(now=now)
    probes, gave_up = _run_unanswered(client, now)
    base = 2 * CONFIG.initial_rtt
    factors = [w / base for w in _intervals([now, *probes])]
    assert factors[:4] == pytest.approx([1, 2, 4, 8], rel=1e-6)
    assert factors[4:] == pytest.approx([8] * len(factors[4:]), rel=1e-6)
    assert gave_up == pytest.approx(now + IDLE, abs=1e-6)
    event = client.close_event
    assert event is not None and event.reason_phrase == "Idle timeout"


def test_amplification_limit_still_holds(
    client_creds: TLSCredentials, server_creds: TLSCredentials
) -> None:
    """A server that heard one Initial and nothing more never sends more than three
    times what it received (RFC 9000 section 8.1), however often its PTO could fire."""
    client = _client(CONFIG, client_creds)
    now = 1.0
    client.connect(SERVER_ADDR, now=now)
    first = client.datagrams_to_send(now=now)
    server = EngineConnection(
        config=CONFIG,
        credentials=server_creds,
        is_client=False,
        reset_key=b"s" * 32,
        original_destination_connection_id=client._peer_cid.cid,
    )
    received = 0
    for data, _ in first:
        server.receive_datagram(data, CLIENT_ADDR, now=now)
        received += len(data)
    sent = sum(len(data) for data, _ in server.datagrams_to_send(now=now))
    while not server.is_closing:
        timer = server.get_timer()
        assert timer is not None
        now = timer
        server.handle_timer(now=now)
        sent += sum(len(data) for data, _ in server.datagrams_to_send(now=now))
    assert 0 < sent <= 3 * received


def test_limit_probe_backoff_validates() -> None:
    from aioquic.quic.recovery import QuicPacketRecovery

    recovery = QuicPacketRecovery(
        congestion_control_algorithm="reno",
        initial_rtt=0.1,
        max_datagram_size=1200,
        peer_completed_address_validation=True,
        send_probe=lambda: None,
    )
    for bad in (-1, 17, True):
        with pytest.raises(ValueError):
            limit_probe_backoff(recovery, bad)
    limit_probe_backoff(recovery, 0)
    recovery.on_loss_detection_timeout(now=1.0)
    assert probe_backoff(recovery) == 0  # no doubling at all
    for bad_config in (-1, 17, 2.5, True):
        with pytest.raises(ConfigError, match="max_pto_backoff"):
            QUICConfig(max_pto_backoff=bad_config)  # type: ignore[arg-type]
    assert QUICConfig(max_pto_backoff=None).max_pto_backoff is None
