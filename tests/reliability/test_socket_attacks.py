"""Socket- and TLS-level attacks on a QUICServer serving an RPCServer: garbage and
replayed UDP datagrams, malformed or mismatched certificates, verifiers that misbehave.
Nothing crashes, no connection state is left behind, no handler runs for the attacker,
and a live connection keeps serving calls throughout."""

from __future__ import annotations

import asyncio
import os
import random
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from quic_rpc.quic import (
    CertificateRejectedByPeerError,
    HandshakeError,
    PeerCertificateRejectedError,
    QUICConfig,
    TLSCredentials,
    ca_verifier,
)
from quic_rpc.rpc import RPCClient
from tests.quic.certs import PKI, make_key
from tests.quic.helpers import wait_for_condition

from .conftest import QUICRig, RigFactory, UDPRelay, assert_healthy, raw_udp_socket

RelayFactory = Callable[[tuple[str, int]], Awaitable[UDPRelay]]


def _varint2(value: int) -> bytes:
    return struct.pack(">H", 0x4000 | value)


def long_header_packet(
    rng: random.Random, *, ptype: int = 0, version: int = 1, size: int = 1200
) -> bytes:
    """A datagram with a well-formed QUIC v1 long header and a random (undecryptable)
    payload: what a spoofed or garbage 'Initial' looks like to the server."""
    dcid = rng.randbytes(rng.choice([8, 12, 20]))
    scid = rng.randbytes(8)
    head = bytes([0xC0 | (ptype << 4) | 0x03]) + struct.pack(">I", version)
    head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if ptype == 0:
        head += b"\x00"  # token length
    body_len = size - len(head) - 2
    return head + _varint2(body_len) + rng.randbytes(body_len)


def garbage_datagrams(seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = [b"\x00", b"\xff", b"\xc0" * 6, bytes(7), b"\x40" * 21]
    out += [
        rng.randbytes(rng.choice([1, 5, 20, 43, 100, 1199, 1200, 1500, 9000])) for _ in range(60)
    ]
    out += [bytes([0x40 | rng.getrandbits(6)]) + rng.randbytes(60) for _ in range(40)]  # short hdr
    out += [long_header_packet(rng) for _ in range(150)]  # garbage Initials >= 1,200 bytes
    out += [long_header_packet(rng, size=600) for _ in range(20)]  # too small for an Initial
    out += [long_header_packet(rng, ptype=2) for _ in range(20)]  # Handshake, unknown cid
    out += [long_header_packet(rng, version=0x1A2A3A4A) for _ in range(5)]  # -> VN
    return out


async def _spray(target: tuple[str, int], datagrams: Sequence[bytes]) -> None:
    sock = await raw_udp_socket()
    try:
        for index, data in enumerate(datagrams):
            sock.sendto(data, target)
            if index % 32 == 31:
                await asyncio.sleep(0.001)
    finally:
        sock.close()


async def test_garbage_datagrams_leave_no_state(quic_rig: RigFactory) -> None:
    rig = await quic_rig(quic_config=QUICConfig(max_connections=4))
    client = await rig.client()
    await assert_healthy(client)
    baseline = len(rig.socket.connections)
    assert baseline == 1
    await _spray(("127.0.0.1", rig.port), garbage_datagrams())
    await assert_healthy(client)
    # No connection state for datagrams nobody could decrypt: gone well before the
    # 10 s handshake timeout would reap it.
    await wait_for_condition(lambda: len(rig.socket.connections) == baseline, 2.0)
    assert rig.server.handshake_failures == [] or all(
        "handshake" in str(f.error) for f in rig.server.handshake_failures
    )
    # max_connections (4) was not used up by the spray: new clients still get in
    others = [RPCClient(await rig.dial()) for _ in range(3)]
    for other in others:
        await assert_healthy(other)
    assert rig.counters.calls == {"echo": 5}


async def test_replayed_datagrams_on_path(quic_rig: RigFactory, udp_relay: RelayFactory) -> None:
    """Every datagram the client sent, replayed from the client's own address while the
    connection is live: duplicates are dropped, no new connection, calls unaffected."""
    rig = await quic_rig()
    relay = await udp_relay(("127.0.0.1", rig.port))
    sock = await rig.new_socket()
    from quic_rpc.quic import connect

    conn = await connect(
        sock, "127.0.0.1", relay.port, rig.pki.credentials(ca_verifier(rig.pki.root_pem), "c")
    )
    client = RPCClient(conn)
    for i in range(5):
        assert await client.unary("/t.S/Echo", b"%d" % i) == b"%d" % i
    captured = list(relay.up)
    assert len(captured) > 5
    for _ in range(3):
        for data in captured:
            relay.upstream.sendto(data, relay.server)
        await asyncio.sleep(0.01)
    await assert_healthy(client)
    assert len(rig.server.connections) == 1
    assert len(rig.socket.connections) == 1
    assert rig.counters.calls == {"echo": 6}
    conn.abort()


@pytest.mark.parametrize("retry", [False, True])
async def test_replayed_handshake_off_path(
    quic_rig: RigFactory, udp_relay: RelayFactory, retry: bool
) -> None:
    """A captured connection replayed later from another address: the replayed Initial
    can at most start a handshake that never completes (reaped by the handshake
    timeout); with Retry, the address-bound token makes it start nothing at all."""
    rig = await quic_rig(quic_config=QUICConfig(retry=retry, handshake_timeout=1.0))
    relay = await udp_relay(("127.0.0.1", rig.port))
    sock = await rig.new_socket()
    from quic_rpc.quic import connect

    conn = await connect(
        sock, "127.0.0.1", relay.port, rig.pki.credentials(ca_verifier(rig.pki.root_pem), "c")
    )
    assert await RPCClient(conn).unary("/t.S/Echo", b"hi") == b"hi"
    await conn.aclose()
    await wait_for_condition(lambda: not rig.socket.connections)
    good = await rig.client()
    await _spray(("127.0.0.1", rig.port), relay.up * 2)
    await assert_healthy(good)
    if retry:
        await asyncio.sleep(0.2)
        assert len(rig.socket.connections) == 1
    await wait_for_condition(lambda: len(rig.socket.connections) == 1, 5.0)
    assert len(rig.server.connections) == 1
    assert rig.counters.calls == {"echo": 2}


# ------------------------------------------------------------------- certificates


class FakeCertificate:
    """Stands in for a certificate in our own chain; serializes to arbitrary bytes, so a
    hostile client can put garbage into its TLS Certificate message."""

    def __init__(self, der: bytes) -> None:
        self._der = der

    def public_bytes(self, encoding: Any) -> bytes:
        return self._der


def hostile(creds: TLSCredentials, **fields: Any) -> TLSCredentials:
    """Bypass TLSCredentials' own checks (an attacker does not use our client)."""
    for name, value in fields.items():
        object.__setattr__(creds, name, value)
    return creds


async def _expect_rejected(rig: QUICRig, creds: TLSCredentials) -> HandshakeError:
    good = await rig.client()
    with pytest.raises(HandshakeError) as info:
        await rig.dial(QUICConfig(handshake_timeout=5.0), credentials=creds)
    await assert_healthy(good)
    assert len(rig.server.connections) == 1
    # the refused attempt's state is gone within the server's handshake timeout (10 s)
    await wait_for_condition(lambda: len(rig.socket.connections) == 1, 12.0)
    assert rig.counters.calls == {"echo": 1}
    return info.value


def _client_creds(pki: PKI, cn: str = "client") -> TLSCredentials:
    return pki.credentials(ca_verifier(pki.root_pem), cn)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x30", b"\x30\x82\xff\xff" + os.urandom(64), os.urandom(700)],
    ids=["empty", "one-byte", "bad-length", "random"],
)
@pytest.mark.parametrize("where", ["leaf", "intermediate"])
async def test_garbage_certificate_bytes(
    quic_rig: RigFactory, pki: PKI, garbage: bytes, where: str
) -> None:
    rig = await quic_rig()
    creds = _client_creds(pki)
    chain = (
        (FakeCertificate(garbage),)
        if where == "leaf"
        else (creds.chain[0], FakeCertificate(garbage))
    )
    error = await _expect_rejected(rig, hostile(creds, chain=chain))
    assert error.error_code is not None and 0x100 <= error.error_code < 0x200, error
    # each side names the right culprit: the server rejected the client's certificate
    assert isinstance(error, CertificateRejectedByPeerError), error
    assert isinstance(rig.server.handshake_failures[-1].error, PeerCertificateRejectedError)


async def test_certificate_with_mismatched_key(quic_rig: RigFactory, pki: PKI) -> None:
    """The leaf is genuine (issued by the trusted CA) but the client holds another key:
    the CertificateVerify signature fails, the handshake is refused."""
    rig = await quic_rig()
    creds = hostile(_client_creds(pki), private_key=make_key("p256"))
    error = await _expect_rejected(rig, creds)
    assert error.error_code is not None and 0x100 <= error.error_code < 0x200, error


async def test_stolen_certificate_without_key(quic_rig: RigFactory, pki: PKI) -> None:
    """Presenting the *server's* genuine chain (as seen on the wire) with a key of our
    own is the same case: the signature check fails."""
    rig = await quic_rig()
    probe = await rig.dial()
    stolen = tuple(x509.load_der_x509_certificate(der) for der in probe.peer_chain)
    probe.abort()
    await wait_for_condition(lambda: not rig.server.connections)
    creds = hostile(_client_creds(pki), chain=stolen, private_key=make_key("p256"))
    await _expect_rejected(rig, creds)


class Weird(BaseException):
    """Not an Exception: escapes ``except Exception``."""


def _misbehaving_verifier(pki: PKI, behaviour: str) -> Callable[[Sequence[bytes]], Any]:
    honest = ca_verifier(pki.root_pem)

    def verify(chain: Sequence[bytes]) -> Any:
        leaf = x509.load_der_x509_certificate(chain[0])
        cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        if cn != "evil":
            return honest(chain)
        if behaviour == "async":

            async def later() -> str:
                raise AssertionError("never awaited by a correct transport")

            return later()
        exc: BaseException = {
            "KeyError": KeyError("x"),
            "TypeError": TypeError("x"),
            "RecursionError": RecursionError("deep"),
            "ZeroDivisionError": ZeroDivisionError(),
            "CancelledError": asyncio.CancelledError(),
            "BaseException": Weird("weird"),
        }[behaviour]
        raise exc

    return verify


@pytest.mark.parametrize(
    "behaviour",
    [
        "KeyError",
        "TypeError",
        "RecursionError",
        "ZeroDivisionError",
        "CancelledError",
        "BaseException",
        "async",
    ],
)
async def test_misbehaving_verifier_fails_closed(
    quic_rig: RigFactory, pki: PKI, behaviour: str
) -> None:
    """The server's verify callback raises something unexpected (or is async by mistake):
    the client is still refused with bad_certificate, nothing runs, others unaffected."""
    rig = await quic_rig(verify=_misbehaving_verifier(pki, behaviour))
    error = await _expect_rejected(rig, _client_creds(pki, "evil"))
    assert isinstance(error, CertificateRejectedByPeerError), error
    assert error.error_code == 0x12A
    failure = rig.server.handshake_failures[-1].error
    assert isinstance(failure, PeerCertificateRejectedError)


@pytest.mark.parametrize("behaviour", ["CancelledError", "BaseException", "async"])
async def test_misbehaving_client_verifier_fails_closed(
    quic_rig: RigFactory, pki: PKI, behaviour: str
) -> None:
    """Same on the client side: the server's chain is never accepted by accident."""
    rig = await quic_rig(server_credentials=pki.credentials(ca_verifier(pki.root_pem), "evil"))
    creds = pki.credentials(_misbehaving_verifier(pki, behaviour), "client")
    with pytest.raises(PeerCertificateRejectedError):
        await rig.dial(QUICConfig(handshake_timeout=5.0), credentials=creds)
    assert rig.counters.total == 0
    await wait_for_condition(lambda: not rig.server.connections, 5.0)
