"""Pins the public API of quic_rpc.transports and quic_rpc.testing, and the import rules."""

from __future__ import annotations

import subprocess
import sys

import quic_rpc.testing
import quic_rpc.transports

TRANSPORTS_API = {
    "CLOSE_STOP_CODE",
    "HANDLER_ERROR_CODE",
    "MAX_ERROR_CODE",
    "STREAM_REFUSED_CODE",
    "FlowControlError",
    "FrameSizeError",
    "LocalProtocolError",
    "MemoryClientConnection",
    "MemoryConnection",
    "MemoryStream",
    "MuxConfig",
    "MuxConnection",
    "MuxError",
    "PeerVerificationError",
    "PeerVerifier",
    "RemoteProtocolError",
    "StreamLimitError",
    "TCPConfig",
    "TCPConnection",
    "TCPServer",
    "TCPStream",
    "connect_tcp",
    "memory_connection",
    "memory_stream_pair",
}

TESTING_API = {
    "Check",
    "Cleanup",
    "ConformanceError",
    "ConformanceOptions",
    "PairFactory",
    "iter_checks",
    "run_all",
}


def test_transports_api_is_pinned() -> None:
    assert set(quic_rpc.transports.__all__) == TRANSPORTS_API
    for name in TRANSPORTS_API:
        assert getattr(quic_rpc.transports, name) is not None


def test_testing_api_is_pinned() -> None:
    assert set(quic_rpc.testing.__all__) == TESTING_API
    for name in TESTING_API:
        assert getattr(quic_rpc.testing, name) is not None


def test_transports_import_nothing_above_or_beside_them() -> None:
    code = (
        "import sys, quic_rpc.transports, quic_rpc.testing\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'legacy_grpc', 'migration', 'agent') "
        "or m.startswith(('quic_rpc.quic', 'quic_rpc.rpc')))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
