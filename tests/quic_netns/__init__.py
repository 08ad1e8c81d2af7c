"""QUIC transport tests across network namespaces (lossy/delayed links, NAT rebinding)."""
