"""NodeConnection: a grpc.aio channel to a peer node through the forward proxy.

The channel's target is ``<node id>.node:<port>`` and it goes through the
:class:`~legacy_grpc.forward_proxy.ForwardProxy`, which authenticates the peer and
checks it is the node asked for. A QUIC ``NodeConnection`` mirrors this surface:
``connect(...)``, ``node_id``, ``stub`` (alias ``client``), ``close()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import grpc

from legacy_grpc.errors import ConnectTimeoutError, HandshakeError
from legacy_grpc.forward_proxy import ForwardProxy, node_target
from protos.agent.v1 import agent_service_pb2_grpc
from protos.grpc.health.v1 import health_pb2_grpc

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "NodeConnection"]

DEFAULT_CONNECT_TIMEOUT = 10.0


class NodeConnection:
    """An open connection to one peer node on the legacy stack."""

    def __init__(self, node_id: Hashable, host: str, port: int, channel: grpc.aio.Channel) -> None:
        self._node_id = node_id
        self._host = host
        self._port = port
        self._channel = channel
        make_stub: Callable[[grpc.aio.Channel], agent_service_pb2_grpc.AgentServiceStub] = (
            agent_service_pb2_grpc.AgentServiceStub
        )
        make_health: Callable[[grpc.aio.Channel], health_pb2_grpc.HealthStub] = (
            health_pb2_grpc.HealthStub
        )
        self._stub = make_stub(channel)
        self._health = make_health(channel)
        self._closed = False

    @classmethod
    async def connect(
        cls,
        target_node_id: Hashable,
        host: str,
        port: int,
        forward_proxy: ForwardProxy,
        *,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,  # noqa: ASYNC109
        options: Sequence[tuple[str, Any]] = (),
    ) -> NodeConnection:
        """Connect to ``target_node_id`` whose reverse proxy is at ``host:port``.

        Returns once the channel is ready. Raises a
        :class:`~legacy_grpc.errors.ConnectionFailedError` subclass saying why not
        (peer refused us, peer failed verification, another node answered, proxy
        credentials refused, timeout); nothing stays open on failure.
        """
        forward_proxy.set_node_host(target_node_id, host)
        channel = grpc.aio.insecure_channel(
            node_target(target_node_id, port),
            options=[("grpc.http_proxy", forward_proxy.proxy_uri()), *options],
        )
        try:
            async with asyncio.timeout(timeout):
                state = channel.get_state(try_to_connect=True)
                while state != grpc.ChannelConnectivity.READY:
                    if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                        failure = forward_proxy.last_failure(target_node_id)
                        if failure is not None:
                            raise failure
                    elif state == grpc.ChannelConnectivity.SHUTDOWN:
                        raise HandshakeError("the channel was shut down while connecting")
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError as exc:
            await channel.close(None)
            failure = forward_proxy.last_failure(target_node_id)
            raise ConnectTimeoutError(
                f"no connection to node {target_node_id} at {host}:{port} within {timeout}s"
                + (f": {failure}" if failure is not None else "")
            ) from (failure or exc)
        except BaseException:
            await channel.close(None)
            raise
        return cls(target_node_id, host, port, channel)

    @property
    def node_id(self) -> Hashable:
        return self._node_id

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def stub(self) -> agent_service_pb2_grpc.AgentServiceStub:
        """The ``AgentService`` client stub."""
        return self._stub

    @property
    def client(self) -> agent_service_pb2_grpc.AgentServiceStub:
        """Alias of :attr:`stub`."""
        return self._stub

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return self._health

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the channel (in-flight calls are cancelled); idempotent."""
        if not self._closed:
            self._closed = True
            await self._channel.close(None)

    async def __aenter__(self) -> NodeConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
