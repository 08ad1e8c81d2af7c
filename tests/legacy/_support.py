"""Helpers for the legacy-stack tests: one node's proxy pair + gRPC server in a bundle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from agent.identity import NodeIdentity, node_verifier
from agent.nodeid import NodeId
from legacy_grpc import (
    AgentGRPCServer,
    ForwardProxy,
    PeerConnectionInfo,
    ProxyCredentials,
    ReverseProxy,
    ServiceBinding,
    TLSCredentials,
)
from protos.agent.v1 import agent_service_pb2_grpc, common_pb2


class EchoServicer(agent_service_pb2_grpc.AgentServiceServicer):
    """Echo only; records who called (through the reverse proxy) for each call."""

    def __init__(self) -> None:
        self.reverse_proxy: ReverseProxy | None = None
        self.callers: list[PeerConnectionInfo | None] = []

    async def Echo(
        self, request: common_pb2.EchoMessage, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.EchoMessage:
        assert self.reverse_proxy is not None
        info = self.reverse_proxy.connection_info_for_peer(context.peer())
        self.callers.append(info)
        caller = "?" if info is None else str(info.node_id)
        return common_pb2.EchoMessage(message=f"{request.message} from {caller}")


@dataclass
class Node:
    identity: NodeIdentity
    server: AgentGRPCServer
    reverse_proxy: ReverseProxy
    forward_proxy: ForwardProxy
    servicer: EchoServicer
    credentials: TLSCredentials = field(repr=False)

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    async def stop(self) -> None:
        await self.forward_proxy.stop()
        await self.reverse_proxy.stop()
        await self.server.stop(0)
        self.credentials.close()


async def start_node(
    identity: NodeIdentity,
    *,
    auth: ProxyCredentials | None = None,
    extra: Sequence[ServiceBinding] = (),
) -> Node:
    servicer = EchoServicer()
    server = AgentGRPCServer(
        [
            ServiceBinding(
                agent_service_pb2_grpc.add_AgentServiceServicer_to_server,
                servicer,
                "quicshift.agent.v1.AgentService",
            ),
            *extra,
        ]
    )
    port = await server.start()
    credentials = TLSCredentials(identity.private_key_pem(), identity.chain_pem())
    reverse = ReverseProxy(credentials, node_verifier(), port)
    await reverse.start()
    servicer.reverse_proxy = reverse
    forward = ForwardProxy(credentials, node_verifier(), NodeId.parse, auth=auth)
    await forward.start()
    return Node(identity, server, reverse, forward, servicer, credentials)


async def collect_pages(
    call: Any, item_field: str, page_size: int, *, order: Any = 0
) -> tuple[list[Any], int]:
    """Every item of a paginated stream, walking pages; returns (items, pages seen)."""
    items: list[Any] = []
    cursor = b""
    pages = 0
    while True:
        page = None
        request = common_pb2.PaginationRequest(page_size=page_size, cursor=cursor, order=order)
        async for message in call(request):
            assert page is None, "an item came after the page message"
            kind = message.WhichOneof("result")
            if kind == item_field:
                items.append(getattr(message, item_field))
            else:
                assert kind == "page"
                page = message.page
        assert page is not None, "the stream ended without its page message"
        pages += 1
        assert pages < 1000
        if not page.has_more:
            return items, pages
        cursor = page.next_cursor
