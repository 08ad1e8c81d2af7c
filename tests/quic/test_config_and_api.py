"""QUICConfig validation, credentials loading, the CA verifier, and the pinned public API."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import quic_rpc.quic as quic
from quic_rpc.quic import (
    ConfigError,
    CredentialsError,
    QUICConfig,
    QUICConnection,
    QUICStream,
    TLSCredentials,
    VerificationError,
    ca_verifier,
)
from quic_rpc.streams import ByteStream, StreamOpener

from .certs import PKI, key_pem, make_cert, pem

NOW = dt.datetime.now(dt.UTC)


def test_public_api_is_pinned() -> None:
    assert sorted(quic.__all__) == sorted(
        [
            "DEFAULT_ALPN",
            "REFUSED_STREAM_CODE",
            "CertificateRejectedByPeerError",
            "ConfigError",
            "ConnectionLimitError",
            "CredentialsError",
            "DatagramError",
            "HandshakeError",
            "HandshakeFailure",
            "HandshakeTimeoutError",
            "PeerCertificateRejectedError",
            "PeerVerificationError",
            "QUICClient",
            "QUICConfig",
            "QUICConnection",
            "QUICError",
            "QUICServer",
            "QUICSocket",
            "QUICStream",
            "ServerSessionStore",
            "SessionCache",
            "SocketClosedError",
            "TLSCredentials",
            "VerificationError",
            "VerifyCallback",
            "ca_verifier",
            "connect",
            "gso_supported",
        ]
    )
    for name in quic.__all__:
        assert getattr(quic, name) is not None


def test_stream_and_connection_satisfy_the_shared_protocols() -> None:
    import inspect

    for name in ("receive", "send", "send_eof", "aclose"):
        assert inspect.iscoroutinefunction(getattr(QUICStream, name))
        assert name in dir(ByteStream)
    for name in ("reset", "stop_sending", "abort"):
        assert not inspect.iscoroutinefunction(getattr(QUICStream, name))
    assert isinstance(QUICStream.peer_info, property)
    assert inspect.iscoroutinefunction(QUICConnection.open_stream)
    assert "open_stream" in dir(StreamOpener)


def test_quic_rpc_does_not_import_forbidden_packages() -> None:
    import subprocess
    import sys

    code = (
        "import sys, quic_rpc.quic\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'legacy_grpc', 'migration', 'agent')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_defaults_are_valid() -> None:
    config = QUICConfig()
    assert config.alpn == "quicshift-rpc/1"
    assert config.keepalive_interval is not None
    assert config.keepalive_interval < config.idle_timeout


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpn": ""},
        {"idle_timeout": 0},
        {"idle_timeout": float("nan")},
        {"keepalive_interval": 30.0, "idle_timeout": 30.0},
        {"keepalive_interval": -1.0},
        {"max_connections": 0},
        {"max_streams": 0},
        {"max_datagram_size": 1199},
        {"max_datagram_size": 65508},
        {"stream_window": 1024},
        {"connection_window": 64 * 1024, "stream_window": 128 * 1024},
        {"max_stream_window": 1024},
        {"max_stream_window": (1 << 30) + 1},
        {"max_connection_window": 1024},
        {"max_connection_window": 2.0**25},
        {"stream_send_buffer": 10},
        {"congestion_control": "vegas"},
        {"retry": 1},
        {"handshake_timeout": True},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        QUICConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = QUICConfig(keepalive_interval=None)
    with pytest.raises(AttributeError):
        config.alpn = "x"  # type: ignore[misc]


def test_credentials_loading_and_checks(pki: PKI) -> None:
    key, chain = pki.leaf("node")
    verify = ca_verifier(pki.root_pem)
    from_pem = TLSCredentials.load(key_pem(key), pem(*chain).decode(), verify)
    assert from_pem.chain_der == TLSCredentials(key, chain, verify).chain_der
    from cryptography.hazmat.primitives.serialization import Encoding

    from_der = TLSCredentials.load(key, [c.public_bytes(Encoding.DER) for c in chain], verify)
    assert from_der.chain == chain
    other_key, _ = pki.leaf("other")
    with pytest.raises(CredentialsError, match="does not match"):
        TLSCredentials(other_key, chain, verify)
    with pytest.raises(CredentialsError):
        TLSCredentials(key, (), verify)
    with pytest.raises(CredentialsError):
        TLSCredentials.load(b"not a key", pem(*chain), verify)
    with pytest.raises(CredentialsError):
        TLSCredentials.load(
            key, b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n", verify
        )
    with pytest.raises(CredentialsError):
        TLSCredentials(key, chain, "not callable")  # type: ignore[arg-type]
    weak = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(CredentialsError, match="curve"):
        TLSCredentials(weak, (make_cert(weak, "k1"),), verify)  # type: ignore[arg-type]


def test_ca_verifier_unit(pki: PKI) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    verify = ca_verifier(pki.root_pem)
    _, chain = pki.leaf("node")
    der = [c.public_bytes(Encoding.DER) for c in chain]
    assert verify(der).subject == chain[0].subject
    with pytest.raises(VerificationError, match="no certificate"):
        verify([])
    with pytest.raises(VerificationError, match="cannot be parsed"):
        verify([b"junk"])
    _, old = pki.leaf(
        "old", not_before=NOW - dt.timedelta(days=9), not_after=NOW - dt.timedelta(days=2)
    )
    with pytest.raises(VerificationError, match="expired"):
        verify([old[0].public_bytes(Encoding.DER)])
    with pytest.raises(CredentialsError):
        ca_verifier(b"")
    host_check = ca_verifier(pki.root_pem, server_name="127.0.0.1")
    assert host_check(der) is not None
    with pytest.raises(VerificationError):
        ca_verifier(pki.root_pem, server_name="10.9.9.9")(der)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.7", False),
        ("2001:db8::1", False),
        ("::ffff:198.51.100.3", False),
        ("localhost", False),  # names are resolved before a connection is made
    ],
)
def test_loopback_profile_applies_to_loopback_peers_only(host: str, loopback: bool) -> None:
    from quic_rpc.quic.config import config_for_peer

    config = QUICConfig()
    chosen = config_for_peer(config, host)
    if loopback:
        assert (chosen.max_datagram_size, chosen.pacing) == (65000, False)
        assert config_for_peer(config, host) is chosen  # one shared object per config
    else:
        assert chosen is config
    off = QUICConfig(loopback_datagram_size=None)
    assert config_for_peer(off, host) is off
    with pytest.raises(ConfigError):
        QUICConfig(loopback_datagram_size=65508)
