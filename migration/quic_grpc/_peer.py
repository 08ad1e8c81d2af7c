"""Peer descriptions in grpc's shapes: ``peer()`` strings and the auth context."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from quic_rpc.streams import PeerInfo

__all__ = ["auth_context", "format_peer", "peer_identities", "peer_identity_key"]


def format_peer(info: PeerInfo | None) -> str:
    """``ipv4:127.0.0.1:4433`` / ``ipv6:[::1]:4433``, as grpc's ``context.peer()``."""
    if info is None or not info.remote_host:
        return "unknown"
    host = info.remote_host
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"{info.transport}:{host}:{info.remote_port}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ipv4:{address.ipv4_mapped}:{info.remote_port}"
        return f"ipv6:%5B{host}%5D:{info.remote_port}"
    return f"ipv4:{host}:{info.remote_port}"


def _authenticated_leaf(info: PeerInfo | None) -> x509.Certificate | None:
    if info is None or info.identity is None or not info.remote_chain:
        return None
    try:
        return x509.load_der_x509_certificate(bytes(info.remote_chain[0]))
    except ValueError:
        return None


def _sans(cert: x509.Certificate) -> list[bytes]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return []
    names: list[bytes] = []
    san: Any = ext.value
    for dns in san.get_values_for_type(x509.DNSName):
        names.append(str(dns).encode())
    for ip in san.get_values_for_type(x509.IPAddress):
        names.append(str(ip).encode())
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        names.append(str(uri).encode())
    return names


def _common_names(cert: x509.Certificate) -> list[bytes]:
    return [
        str(attr.value).encode() if not isinstance(attr.value, bytes) else attr.value
        for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]


def _identity_bytes(identity: Any) -> bytes:
    if isinstance(identity, bytes):
        return identity
    if isinstance(identity, x509.Certificate):
        names = _common_names(identity)
        return names[0] if names else identity.subject.rfc4514_string().encode()
    return str(identity).encode()


def peer_identity_key(info: PeerInfo | None) -> str | None:
    """grpc's key of the identity property: SAN if the leaf has one, else common name."""
    cert = _authenticated_leaf(info)
    if cert is None:
        return None
    if _sans(cert):
        return "x509_subject_alternative_name"
    if _common_names(cert):
        return "x509_common_name"
    return "quicshift_peer_identity"


def peer_identities(info: PeerInfo | None) -> Sequence[bytes] | None:
    """The authenticated peer's identities (SANs, else CN), None when not authenticated."""
    cert = _authenticated_leaf(info)
    if cert is None or info is None:
        return None
    return _sans(cert) or _common_names(cert) or [_identity_bytes(info.identity)]


def auth_context(info: PeerInfo | None) -> dict[str, list[bytes]]:
    """The auth context grpc exposes for a TLS peer, plus the verifier's identity."""
    context: dict[str, list[bytes]] = {
        "transport_security_type": [b"ssl"],
        "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"],
        "ssl_session_reused": [b"false"],
    }
    cert = _authenticated_leaf(info)
    if cert is None or info is None:
        return context
    context["x509_pem_cert"] = [cert.public_bytes(serialization.Encoding.PEM)]
    context["x509_subject"] = [cert.subject.rfc4514_string().encode()]
    if cns := _common_names(cert):
        context["x509_common_name"] = cns
    if sans := _sans(cert):
        context["x509_subject_alternative_name"] = sans
        context["peer_dns"] = sans
    context["quicshift_peer_identity"] = [_identity_bytes(info.identity)]
    return context
