"""The public API of ``agent.quic`` is pinned: changing it is a deliberate act."""

from __future__ import annotations

import inspect

import agent.quic

EXPECTED = {
    "AGENT_SERVICE",
    "AGENT_SERVICE_NAME",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HANDLER_TIMEOUT",
    "QUIC_TRANSPORT",
    "REFUSED_CONNECTION_CODE",
    "Agent",
    "AgentError",
    "AgentServiceStub",
    "ConnectRefusedError",
    "ConnectTimeoutError",
    "ConnectionFailedError",
    "ConnectionLimitReachedError",
    "ConnectionManagerConfig",
    "ConnectionManagerError",
    "ConnectionManagerStoppedError",
    "Direction",
    "NodeConnection",
    "NodeConnectionError",
    "NodeConnectionManager",
    "NodeIdMismatchError",
    "PeerRejectedUsError",
    "PeerVerificationError",
}


def test_exports() -> None:
    assert set(agent.quic.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(agent.quic, name), name


def test_errors_have_stable_codes() -> None:
    errors = [
        obj
        for name in EXPECTED
        if inspect.isclass(obj := getattr(agent.quic, name)) and issubclass(obj, Exception)
    ]
    codes = [getattr(e, "code", None) for e in errors]
    assert len(set(codes)) == len(codes), codes
    for error in errors:
        if error is not agent.quic.AgentError:
            assert issubclass(error, agent.quic.NodeConnectionError)


def test_node_connection_mirrors_the_legacy_surface() -> None:
    for name in (
        "connect",
        "node_id",
        "host",
        "port",
        "stub",
        "client",
        "health",
        "closed",
        "close",
    ):
        assert hasattr(agent.quic.NodeConnection, name), name
    stub_methods = {m.name for m in agent.quic.AGENT_SERVICE.methods}
    assert stub_methods == {
        "Echo",
        "NodesClosestLocalNodesGet",
        "NodesClaimsGet",
        "NodesCrossSignClaim",
        "NodesHolePunchSignal",
        "NotificationsSend",
        "VaultsScan",
        "VaultsPull",
    }
