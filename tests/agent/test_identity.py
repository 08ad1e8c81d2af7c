"""Node identity: certificates, rotation, chain verification, storage, TLS usability."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import identity_testing
from agent.identity import (
    BrokenChainError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    ChainTooLongError,
    EmptyChainError,
    IdentityError,
    IdentityLoadError,
    InconsistentNodeIdError,
    InvalidNodeSignatureError,
    KeyType,
    KeyUsageError,
    MalformedCertificateError,
    MissingNodeIdError,
    NodeIdentity,
    NodeIdMismatchError,
    NodeVerificationError,
    RevokedCertificateError,
    RotationLimitError,
    UnsupportedKeyTypeError,
    UntrustedRootError,
    certificate_node_id,
    node_uri,
    node_verifier,
    verify_node_chain,
    verify_signature,
)
from agent.identity import errors as identity_errors
from agent.nodeid import NodeId

KEY_TYPES: tuple[KeyType, ...] = ("ed25519", "p256")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def identities() -> dict[KeyType, NodeIdentity]:
    return {key_type: NodeIdentity.generate(key_type, now=NOW) for key_type in KEY_TYPES}


# -- node ids and certificate contents -------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_node_id_round_trips_and_is_bound_into_the_certificate(key_type: KeyType) -> None:
    identity = NodeIdentity.generate(key_type, now=NOW)
    node_id = identity.node_id
    assert NodeId.parse(str(node_id)) == node_id
    assert NodeId(node_id.raw) == node_id
    assert node_id == NodeId.from_public_key(identity.root_certificate.public_key())
    cert = identity.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == str(node_id)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [node_uri(node_id)]
    assert node_uri(node_id) == f"node://{node_id}"
    assert certificate_node_id(cert) == node_id
    assert identity.key_type == key_type
    assert identity.verify(now=NOW) == node_id


def test_certificate_extensions(identities: dict[KeyType, NodeIdentity]) -> None:
    for identity in identities.values():
        rotated = identity.rotate(now=NOW)
        for cert in rotated.chain:
            ext = cert.extensions
            usage = ext.get_extension_for_class(x509.KeyUsage)
            assert usage.critical and usage.value.digital_signature and usage.value.key_cert_sign
            constraints = ext.get_extension_for_class(x509.BasicConstraints)
            assert constraints.critical and constraints.value.ca
            eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
            ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
            assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
        leaf, root = rotated.chain
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == root_ski.digest
        assert leaf.issuer == root.subject and leaf.subject != root.subject
        assert leaf.serial_number != root.serial_number
        assert leaf.serial_number > 0


# -- generation and rotation ---------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [(a, b) for a in KEY_TYPES for b in KEY_TYPES])
def test_generate_rotate_rotate_keeps_the_node_id(first: KeyType, second: KeyType) -> None:
    original = NodeIdentity.generate(first, now=NOW)
    once = original.rotate(now=NOW)
    twice = once.rotate(second, now=NOW)
    assert once.key_type == first and twice.key_type == second
    assert [len(i.chain) for i in (original, once, twice)] == [1, 2, 3]
    assert twice.chain[1:] == once.chain and once.chain[1:] == original.chain
    assert len({i.public_key.public_bytes(*_SPKI) for i in (original, once, twice)}) == 3
    for identity in (original, once, twice):
        assert identity.node_id == original.node_id
        assert verify_node_chain(identity.chain_der(), original.node_id, now=NOW) == (
            original.node_id
        )
        assert verify_node_chain(identity.chain, now=NOW) == original.node_id
    assert twice.chain[0].issuer == once.chain[0].subject
    assert len(original.chain) == 1  # rotation leaves the old identity unchanged


def test_rotation_limit() -> None:
    identity = NodeIdentity.generate(now=NOW)
    for _ in range(3):
        identity = identity.rotate(now=NOW, max_length=4)
    assert verify_node_chain(identity.chain_der(), now=NOW, max_length=4) == identity.node_id
    with pytest.raises(RotationLimitError):
        identity.rotate(now=NOW, max_length=4)


def test_generate_rejects_bad_arguments() -> None:
    with pytest.raises(UnsupportedKeyTypeError):
        NodeIdentity.generate("rsa")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        NodeIdentity.generate(now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="not_after"):
        NodeIdentity.generate(not_before=NOW, not_after=NOW - timedelta(seconds=1))
    with pytest.raises(ValueError, match="validity"):
        NodeIdentity.generate(validity=timedelta(0))


def test_validity_window_defaults_and_overrides() -> None:
    identity = NodeIdentity.generate(now=NOW, validity=timedelta(days=30))
    cert = identity.certificate
    assert cert.not_valid_before_utc < NOW < cert.not_valid_after_utc
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)
    explicit = NodeIdentity.generate(not_before=NOW, not_after=NOW + timedelta(days=2))
    assert explicit.certificate.not_valid_before_utc == NOW
    assert explicit.certificate.not_valid_after_utc == NOW + timedelta(days=2)


def test_identity_constructor_checks_key_matches_leaf(
    identities: dict[KeyType, NodeIdentity],
) -> None:
    a, b = identities["ed25519"], identities["p256"]
    with pytest.raises(IdentityError, match="does not belong"):
        NodeIdentity(a.node_id, b.private_key, a.chain)
    with pytest.raises(IdentityError, match="non-empty"):
        NodeIdentity(a.node_id, a.private_key, [])


# -- verification errors ----------------------------------------------------------------


def test_expected_node_id_mismatch(identities: dict[KeyType, NodeIdentity]) -> None:
    a, b = identities["ed25519"], identities["p256"]
    with pytest.raises(NodeIdMismatchError) as info:
        verify_node_chain(a.chain_der(), b.node_id, now=NOW)
    assert info.value.expected == b.node_id and info.value.actual == a.node_id
    assert str(a.node_id) in str(info.value) and str(b.node_id) in str(info.value)
    assert info.value.code == "node_id_mismatch"


def test_empty_chain() -> None:
    with pytest.raises(EmptyChainError):
        verify_node_chain([])


def test_chain_too_long() -> None:
    identity = NodeIdentity.generate(now=NOW)
    for _ in range(16):
        identity = identity.rotate(now=NOW, max_length=32)
    assert len(identity.chain) == 17
    with pytest.raises(ChainTooLongError):
        verify_node_chain(identity.chain_der(), now=NOW)
    assert verify_node_chain(identity.chain_der(), now=NOW, max_length=17) == identity.node_id


def test_malformed_certificates(identities: dict[KeyType, NodeIdentity]) -> None:
    good = identities["ed25519"].chain_der()
    with pytest.raises(MalformedCertificateError) as info:
        verify_node_chain([b"not a certificate"])
    assert info.value.index == 0
    with pytest.raises(MalformedCertificateError) as info:
        verify_node_chain([good[0], good[0][:-10]])
    assert info.value.index == 1
    with pytest.raises(MalformedCertificateError):
        verify_node_chain(["text"])  # type: ignore[list-item]
    with pytest.raises(MalformedCertificateError, match="key"):
        verify_node_chain([_rsa_certificate()])
    with pytest.raises(MalformedCertificateError, match="critical extension"):
        verify_node_chain([_with_unknown_critical_extension(identities["p256"])])


def test_single_certificate_instead_of_a_chain_is_a_type_error(
    identities: dict[KeyType, NodeIdentity],
) -> None:
    with pytest.raises(TypeError):
        verify_node_chain(identities["p256"].chain_der()[0])  # type: ignore[arg-type]


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_broken_link(key_type: KeyType) -> None:
    identity = identity_testing.broken_chain_identity(key_type, now=NOW)
    with pytest.raises(BrokenChainError, match="bad signature") as info:
        verify_node_chain(identity.chain_der(), now=NOW)
    assert info.value.index == 0 and info.value.node_id == identity.node_id
    assert str(identity.node_id) in str(info.value) and "certificate 0" in str(info.value)


def test_broken_chain_order_and_missing_root(identities: dict[KeyType, NodeIdentity]) -> None:
    rotated = identities["ed25519"].rotate(now=NOW).rotate(now=NOW)
    chain = rotated.chain_der()
    with pytest.raises(BrokenChainError) as info:
        verify_node_chain([chain[1], chain[0], chain[2]], now=NOW)
    assert info.value.index == 0
    with pytest.raises(BrokenChainError, match="root is not self-signed") as info:
        verify_node_chain(chain[:2], now=NOW)
    assert info.value.index == 1
    with pytest.raises(BrokenChainError):
        verify_node_chain([chain[0], chain[2]], now=NOW)  # skips a link


@pytest.mark.parametrize("rotated", [False, True])
def test_expired(rotated: bool) -> None:
    identity = identity_testing.expired_identity("p256", now=NOW, rotated=rotated)
    with pytest.raises(CertificateExpiredError) as info:
        verify_node_chain(identity.chain_der(), now=NOW)
    assert info.value.index == 0 and str(identity.node_id) in str(info.value)


def test_not_yet_valid() -> None:
    identity = identity_testing.not_yet_valid_identity(now=NOW)
    with pytest.raises(CertificateNotYetValidError):
        verify_node_chain(identity.chain_der(), now=NOW)
    later = NOW + timedelta(days=2)
    assert verify_node_chain(identity.chain_der(), now=later) == identity.node_id


def test_naive_now_is_refused(identities: dict[KeyType, NodeIdentity]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_node_chain(identities["p256"].chain_der(), now=datetime(2026, 6, 1))


def test_key_usage() -> None:
    identity = identity_testing.non_signing_issuer_identity(now=NOW)
    with pytest.raises(KeyUsageError) as info:
        verify_node_chain(identity.chain_der(), now=NOW)
    assert info.value.index == 1


def test_inconsistent_node_id() -> None:
    identity = identity_testing.inconsistent_node_id_identity(now=NOW)
    with pytest.raises(InconsistentNodeIdError) as info:
        verify_node_chain(identity.chain_der(), now=NOW)
    assert info.value.index == 0
    assert not isinstance(info.value, UntrustedRootError)


def test_untrusted_root(identities: dict[KeyType, NodeIdentity]) -> None:
    victim = identities["ed25519"].node_id
    impostor = identity_testing.untrusted_root_identity(claimed_node_id=victim, now=NOW)
    with pytest.raises(UntrustedRootError) as info:
        verify_node_chain(impostor.chain_der(), victim, now=NOW)
    assert info.value.node_id == victim and isinstance(info.value, InconsistentNodeIdError)


def test_ca_issued_leaf_names_no_node_id() -> None:
    identity = identity_testing.ca_issued_identity(now=NOW)
    with pytest.raises(MissingNodeIdError) as info:
        verify_node_chain(identity.chain_der(), now=NOW)
    assert info.value.index == 0


def test_error_codes_are_stable_and_distinct() -> None:
    classes = [
        getattr(identity_errors, name)
        for name in identity_errors.__all__
        if issubclass(getattr(identity_errors, name), NodeVerificationError)
    ]
    codes = {cls.__name__: cls.code for cls in classes}
    assert len(set(codes.values())) == len(codes)
    assert codes == {
        "NodeVerificationError": "node_verification_failed",
        "EmptyChainError": "empty_chain",
        "ChainTooLongError": "chain_too_long",
        "MalformedCertificateError": "malformed_certificate",
        "MissingNodeIdError": "missing_node_id",
        "BrokenChainError": "broken_chain",
        "CertificateExpiredError": "certificate_expired",
        "CertificateNotYetValidError": "certificate_not_yet_valid",
        "KeyUsageError": "key_usage",
        "InconsistentNodeIdError": "inconsistent_node_id",
        "UntrustedRootError": "untrusted_root",
        "NodeIdMismatchError": "node_id_mismatch",
        "RevokedCertificateError": "revoked_certificate",
        "InvalidNodeSignatureError": "invalid_signature",
    }


# -- node_verifier ---------------------------------------------------------------------


def test_node_verifier_and_revocation(identities: dict[KeyType, NodeIdentity]) -> None:
    old = identities["p256"]
    new = old.rotate(now=NOW)
    revoked_serials = {old.certificate.serial_number}

    def is_revoked(cert: x509.Certificate) -> bool:
        return cert.serial_number in revoked_serials

    verify = node_verifier(old.node_id, is_revoked=is_revoked, clock=lambda: NOW)
    assert verify(new.chain_der()) == old.node_id  # old cert is fine as an intermediate
    with pytest.raises(RevokedCertificateError) as info:
        verify(old.chain_der())
    assert info.value.index == 0 and info.value.node_id == old.node_id
    with pytest.raises(NodeIdMismatchError):
        verify(identities["ed25519"].chain_der())
    assert node_verifier()(new.chain_der()) == old.node_id  # default clock: now


# -- signatures ------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_sign_and_verify_signature(key_type: KeyType) -> None:
    identity = NodeIdentity.generate(key_type, now=NOW).rotate(now=NOW)
    signature = identity.sign(b"claim")
    for subject in (identity.chain_der(), identity.chain, identity.certificate):
        verify_signature(subject, b"claim", signature)
    verify_signature(identity.chain_der()[0], b"claim", signature)
    with pytest.raises(InvalidNodeSignatureError):
        verify_signature(identity.chain, b"claim!", signature)
    with pytest.raises(InvalidNodeSignatureError):  # the previous key's certificate
        verify_signature(identity.chain[1], b"claim", signature)
    with pytest.raises(InvalidNodeSignatureError):
        verify_signature(identity.chain[0], b"claim", b"\x00" * len(signature))
    with pytest.raises(EmptyChainError):
        verify_signature([], b"claim", signature)


# -- serialization ---------------------------------------------------------------------


@pytest.mark.parametrize("password", [None, "correct horse", b"bytes pass"])
def test_save_and_load(tmp_path: Path, password: str | bytes | None) -> None:
    identity = NodeIdentity.generate("p256", now=NOW).rotate("ed25519", now=NOW)
    files = identity.save(tmp_path / "node", password=password)
    if sys.platform != "win32":
        assert stat.S_IMODE(os.stat(files.key_file).st_mode) == 0o600
    loaded = NodeIdentity.load(tmp_path / "node", password=password)
    assert loaded.node_id == identity.node_id
    assert loaded.chain_der() == identity.chain_der()
    assert loaded.private_key_pem() == identity.private_key_pem()
    if password is not None:
        with pytest.raises(IdentityLoadError):
            NodeIdentity.load(tmp_path / "node", password="wrong")
        with pytest.raises(IdentityLoadError):
            NodeIdentity.load(tmp_path / "node")


def test_load_failures(tmp_path: Path, identities: dict[KeyType, NodeIdentity]) -> None:
    with pytest.raises(IdentityLoadError):
        NodeIdentity.load(tmp_path / "missing")
    a, b = identities["ed25519"], identities["p256"]
    with pytest.raises(IdentityLoadError, match="does not belong"):
        NodeIdentity.from_pem(b.private_key_pem(), a.chain_pem())
    with pytest.raises(IdentityLoadError):
        NodeIdentity.from_pem(a.private_key_pem(), b"no pem here")
    broken = identity_testing.broken_chain_identity(now=NOW)
    with pytest.raises(IdentityLoadError, match="not a node chain"):
        NodeIdentity.from_pem(broken.private_key_pem(), broken.chain_pem())


def test_pem_and_der_forms(identities: dict[KeyType, NodeIdentity]) -> None:
    identity = identities["ed25519"].rotate(now=NOW)
    pem = identity.chain_pem()
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == 2
    assert x509.load_pem_x509_certificates(pem) == identity.chain
    assert [x509.load_der_x509_certificate(d) for d in identity.chain_der()] == identity.chain
    again = NodeIdentity.from_pem(identity.private_key_pem(), pem)
    assert again.node_id == identity.node_id
    expired = identity_testing.expired_identity(now=NOW)
    reloaded = NodeIdentity.from_pem(expired.private_key_pem(), expired.chain_pem())
    assert reloaded.node_id == expired.node_id  # loading does not check the date


# -- TLS usability -----------------------------------------------------------------------


def _ssl_context(
    side: ssl._SSLMethod, identity: NodeIdentity, files: Any, trusted: NodeIdentity
) -> ssl.SSLContext:
    context = ssl.SSLContext(side)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(files.chain_file, files.key_file)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    # The peer's root as sole trust anchor: the handshake succeeds only if the peer sends
    # its whole chain and OpenSSL (in strict X.509 mode) accepts every certificate in it.
    context.load_verify_locations(
        cadata=trusted.root_certificate.public_bytes(serialization.Encoding.PEM).decode()
    )
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("server_type", "client_type"), [("ed25519", "p256"), ("p256", "ed25519")])
async def test_python_ssl_mutual_handshake(
    tmp_path: Path, server_type: KeyType, client_type: KeyType
) -> None:
    server_id = NodeIdentity.generate(server_type).rotate().rotate()
    client_id = NodeIdentity.generate(client_type)
    server_ctx = _ssl_context(
        ssl.PROTOCOL_TLS_SERVER, server_id, server_id.save(tmp_path / "s"), client_id
    )
    client_ctx = _ssl_context(
        ssl.PROTOCOL_TLS_CLIENT, client_id, client_id.save(tmp_path / "c"), server_id
    )
    seen_by_server: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        seen_by_server.set_result(peer)
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        server_leaf = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    # ssl exposes only the peer's leaf: check it is the node's, then prove the chain.
    assert server_leaf == server_id.chain_der()[0]
    assert verify_node_chain(server_id.chain_der(), server_id.node_id) == server_id.node_id
    client_leaf = await seen_by_server
    assert verify_node_chain([client_leaf], client_id.node_id) == client_id.node_id


@pytest.mark.timeout(30)
@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_aioquic_handshake(tmp_path: Path, key_type: KeyType) -> None:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import HandshakeCompleted, QuicEvent

    server_id = NodeIdentity.generate(key_type).rotate()
    client_id = NodeIdentity.generate("p256" if key_type == "ed25519" else "ed25519").rotate()
    server_files = server_id.save(tmp_path / "s")
    client_files = client_id.save(tmp_path / "c")
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["quicshift-test"])
    server_config.load_cert_chain(server_files.chain_file, server_files.key_file)
    client_config = QuicConfiguration(
        is_client=True, alpn_protocols=["quicshift-test"], verify_mode=ssl.CERT_NONE
    )
    client_config.load_cert_chain(client_files.chain_file, client_files.key_file)
    client_proven: asyncio.Future[NodeId] = asyncio.get_running_loop().create_future()
    verify_client = node_verifier()

    class ServerProtocol(QuicConnectionProtocol):
        """Asks for the client's certificate (aioquic has no public switch for it, see
        QUIC-NOTES) and proves its node id once the handshake completes."""

        def __init__(self, quic: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(quic, *args, **kwargs)
            initialize = quic._initialize

            def initialize_requesting_client_cert(*a: Any, **k: Any) -> None:
                initialize(*a, **k)
                quic.tls._request_client_certificate = True

            quic._initialize = initialize_requesting_client_cert

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, HandshakeCompleted) and not client_proven.done():
                tls = self._quic.tls
                assert tls._peer_certificate is not None
                chain = [tls._peer_certificate, *tls._peer_certificate_chain]
                try:
                    client_proven.set_result(verify_client(chain))
                except NodeVerificationError as exc:
                    client_proven.set_exception(exc)
            super().quic_event_received(event)

    server = await serve(
        "127.0.0.1", 0, configuration=server_config, create_protocol=ServerProtocol
    )
    assert server._transport is not None
    port = server._transport.get_extra_info("sockname")[1]
    try:
        async with connect("127.0.0.1", port, configuration=client_config) as client:
            await client.ping()
            tls = client._quic.tls
            assert tls._peer_certificate is not None
            peer_chain: Sequence[x509.Certificate] = [
                tls._peer_certificate,
                *tls._peer_certificate_chain,
            ]
            assert node_verifier(server_id.node_id)(peer_chain) == server_id.node_id
            assert await asyncio.wait_for(client_proven, 10) == client_id.node_id
    finally:
        server.close()


@pytest.mark.timeout(30)
async def test_grpcio_mutual_tls_with_p256_chains() -> None:
    """grpcio's own TLS (BoringSSL) accepts rotated P-256 node chains both ways. Its
    default signature algorithms leave out Ed25519, so native grpc TLS needs P-256 nodes;
    the Python-ssl proxies and QUIC take both key types."""
    grpc = pytest.importorskip("grpc")
    from grpc import aio

    server_id = NodeIdentity.generate("p256").rotate()
    client_id = NodeIdentity.generate("p256").rotate().rotate()

    async def echo(request: bytes, context: Any) -> bytes:
        names = context.auth_context().get("x509_common_name", [])
        return request + b"|" + b",".join(names)

    server = aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler}),)
    )
    server_credentials = grpc.ssl_server_credentials(
        [(server_id.private_key_pem(), server_id.chain_pem())],
        root_certificates=client_id.root_certificate.public_bytes(serialization.Encoding.PEM),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials)
    await server.start()
    try:
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=server_id.root_certificate.public_bytes(serialization.Encoding.PEM),
            private_key=client_id.private_key_pem(),
            certificate_chain=client_id.chain_pem(),
        )
        options = [("grpc.ssl_target_name_override", str(server_id.node_id))]
        async with aio.secure_channel(f"127.0.0.1:{port}", channel_credentials, options) as ch:
            reply = await ch.unary_unary("/test.Echo/Echo", None, None)(b"hi", timeout=10)
    finally:
        await server.stop(None)
    assert reply == b"hi|" + str(client_id.node_id).encode()


# -- fuzzing ---------------------------------------------------------------------------

_SAMPLE = NodeIdentity.generate("ed25519", now=NOW).rotate(now=NOW)
_SAMPLE_DER = _SAMPLE.chain_der()


def _mutate(der: bytes, position: int, value: int) -> bytes:
    position %= len(der)
    return der[:position] + bytes([value]) + der[position + 1 :]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=600),
            st.sampled_from(_SAMPLE_DER),
            st.builds(
                _mutate,
                st.sampled_from(_SAMPLE_DER),
                st.integers(min_value=0),
                st.integers(0, 255),
            ),
        ),
        max_size=5,
    )
)
def test_arbitrary_chain_bytes_only_raise_node_verification_errors(chain: list[bytes]) -> None:
    try:
        verify_node_chain(chain, now=NOW)
    except NodeVerificationError:
        pass


# -- helpers ---------------------------------------------------------------------------

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _rsa_certificate() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _with_unknown_critical_extension(identity: NodeIdentity) -> bytes:
    cert = identity.certificate
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
            critical=True,
        )
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(identity.private_key, hashes.SHA256()).public_bytes(
        serialization.Encoding.DER
    )
