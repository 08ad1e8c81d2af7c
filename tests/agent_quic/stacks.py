"""The two agent stacks behind one small interface, for suites that run on both.

``legacy`` is :class:`agent.legacy.LegacyAgent` (grpc.aio behind the TLS proxy pair),
``quic`` is :class:`agent.quic.Agent`. A suite parametrized over :data:`STACK_NAMES`
writes its scenarios once; the few facts that differ by transport (error types, how a
status is read, what "the port is closed" means) live here.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STACK_NAMES = ("legacy", "quic")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def tcp_port_closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def udp_port_free(port: int) -> bool:
    """Nothing is bound to 127.0.0.1:``port``/udp any more."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


@dataclass(frozen=True)
class Stack:
    """One stack: how to make an agent and how to read its outcomes."""

    name: str
    transport: str
    agent_class: type[Any]
    agent_error: type[Exception]
    mismatch_error: type[Exception]
    rpc_error: type[Exception]
    status_name: Callable[[Any], str]
    details: Callable[[Any], str]

    def make(self, state_dir: Path, identity: Any = None, **kwargs: Any) -> Any:
        return self.agent_class(state_dir, identity, **kwargs)

    def requester_ports(self, src: Any, dst: Any) -> set[int]:
        """Ports ``dst`` may see ``src`` calling from."""
        if self.name == "legacy":
            return {
                t.local_port for t in src.forward_proxy.tunnels() if t.info.node_id == dst.node_id
            }
        return {src.port}  # one socket: the caller's datagrams come from its own port

    def ports(self, agent: Any) -> list[int]:
        if self.name == "legacy":
            return [agent.port, agent.forward_proxy.port, agent.grpc_server.port]
        return [agent.port]

    def port_closed(self, port: int) -> bool:
        return tcp_port_closed(port) if self.name == "legacy" else udp_port_free(port)


def legacy_stack() -> Stack:
    pytest.importorskip("grpc")
    import grpc

    from agent.legacy import LegacyAgent, LegacyAgentError
    from legacy_grpc import NodeIdMismatchError

    return Stack(
        name="legacy",
        transport="grpc",
        agent_class=LegacyAgent,
        agent_error=LegacyAgentError,
        mismatch_error=NodeIdMismatchError,
        rpc_error=grpc.aio.AioRpcError,
        status_name=lambda exc: exc.code().name,
        details=lambda exc: exc.details() or "",
    )


def quic_stack() -> Stack:
    from agent.quic import Agent, AgentError, NodeIdMismatchError
    from quic_rpc.rpc import RPCError

    return Stack(
        name="quic",
        transport="quic",
        agent_class=Agent,
        agent_error=AgentError,
        mismatch_error=NodeIdMismatchError,
        rpc_error=RPCError,
        status_name=lambda exc: exc.status.name,
        details=lambda exc: exc.details,
    )


def get_stack(name: str) -> Stack:
    return legacy_stack() if name == "legacy" else quic_stack()


async def settle(condition: Callable[[], bool], tries: int = 200) -> bool:
    """Yield to the loop until ``condition()`` holds (bounded by tries, not by time)."""
    for _ in range(tries):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()
