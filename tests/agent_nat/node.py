"""One QUIC agent in a namespace, driven by JSON lines: ``python -m tests.agent_nat.node``.

    python -m tests.agent_nat.node --state DIR --bind 0.0.0.0:4433 [--seed]
        [--dial-timeout S] [--punch-duration S]

Prints ``{"event": "ready", "node_id", "port"}``, then answers each command line on stdin
(``{"cmd": ..., ...}``) with one JSON line ``{"cmd": ..., "ok": true, ...}`` or
``{"cmd": ..., "ok": false, "error": ...}``. ``--seed`` makes it a signalling node: it
records the nodes that dial in and relays for them (capturing what it forwards).

Commands:

* ``connect {node_id, host, port}`` — dial a node (e.g. the seed) and keep the connection;
* ``connect_via {node_id, signaller}`` — hole punch (relay fallback); the result;
* ``share_vault {peer, secret}`` — a vault for ``peer`` holding ``secret``;
* ``methods {peer, secret}`` — call every AgentService method (and Health) on the
  connection to ``peer``; per-method outcomes;
* ``echo {peer, message}`` — one Echo;
* ``stats`` — connections, hole punch and relay counters;
* ``capture_contains {needle}`` (seed) — whether the forwarded bytes contain ``needle``;
* ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from agent.domains.notifications import new_notification, sign_notification
from agent.nodeid import NodeId
from agent.quic import Agent
from agent.quic.hole_punch import HolePunchConfig
from agent.quic.relay import RelayConfig
from agent.servicer import node_id_to_proto, request_cross_sign, signed_notification_to_proto
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import common_pb2 as common
from protos.grpc.health.v1 import health_pb2
from quic_rpc.quic import QUICConfig

CALL_TIMEOUT = 20.0
CAPTURE_BYTES = 16 * 1024 * 1024


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def vault_name(peer: NodeId) -> str:
    return f"for-{str(peer)[:10]}"


async def collect_pages(call: Any, item_field: str, page_size: int = 2) -> list[Any]:
    items: list[Any] = []
    cursor = b""
    for _ in range(1000):
        page = None
        request = common.PaginationRequest(page_size=page_size, cursor=cursor)
        async for message in call(request):
            kind = message.WhichOneof("result")
            if kind == item_field:
                items.append(getattr(message, item_field))
            else:
                page = message.page
        if page is None:
            raise RuntimeError("a paginated stream ended without its page message")
        if not page.has_more:
            return items
        cursor = page.next_cursor
    raise RuntimeError("too many pages")


class Node:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def cmd_connect(self, node_id: str, host: str, port: int) -> dict[str, Any]:
        nid = NodeId.parse(node_id)
        self.agent.add_node(nid, host, port)
        conn = await self.agent.connect(nid)
        return {"host": conn.host, "port": conn.port}

    async def cmd_connect_via(self, node_id: str, signaller: str) -> dict[str, Any]:
        conn = await self.agent.connect_via(NodeId.parse(node_id), NodeId.parse(signaller))
        result = self.agent.hole_puncher.results[-1]
        return {
            "method": result.method,
            "host": conn.host,
            "port": conn.port,
            "attempts": result.attempts,
            "error": result.error,
            "own_public": None
            if result.own_public_address is None
            else [result.own_public_address.host, result.own_public_address.port],
            "target_public": None
            if result.target_public_address is None
            else [result.target_public_address.host, result.target_public_address.port],
        }

    async def cmd_share_vault(self, peer: str, secret: str, bulk: int = 0) -> dict[str, Any]:
        nid = NodeId.parse(peer)
        name = vault_name(nid)
        vaults = self.agent.vaults
        vaults.create_vault(name)
        vaults.write_file(name, "secret.txt", secret.encode() * 64)
        if bulk:
            vaults.write_file(name, "bulk.bin", os.urandom(bulk))
        vaults.grant(name, nid)
        return {"vault": name}

    async def cmd_echo(self, peer: str, message: str) -> dict[str, Any]:
        conn = await self.agent.connect(NodeId.parse(peer))
        reply = await conn.stub.Echo(common.EchoMessage(message=message), timeout=CALL_TIMEOUT)
        return {"message": reply.message}

    async def cmd_methods(self, peer: str, secret: str, third: str) -> dict[str, Any]:
        agent = self.agent
        nid = NodeId.parse(peer)
        conn = await agent.connect(nid)
        stub = conn.stub
        out: dict[str, str] = {}

        async def run(name: str, check: Any) -> None:
            try:
                await asyncio.wait_for(check(), CALL_TIMEOUT)
            except Exception as exc:
                out[name] = f"{type(exc).__name__}: {exc}"
            else:
                out[name] = "ok"

        async def health() -> None:
            reply = await conn.health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            listed = await conn.health.List(health_pb2.HealthListRequest())
            assert "quicshift.agent.v1.AgentService" in listed.statuses

        async def echo() -> None:
            message = f"{secret} echo " * 32
            reply = await stub.Echo(common.EchoMessage(message=message))
            assert reply.message == message

        async def closest() -> None:
            nodes = await collect_pages(
                lambda p: stub.NodesClosestLocalNodesGet(
                    pb.ClosestLocalNodesRequest(
                        target=node_id_to_proto(agent.node_id), pagination=p
                    )
                ),
                "node",
            )
            assert nodes, "the peer knows no nodes"

        claim_ids: list[bytes] = []

        async def cross_sign() -> None:
            ours, theirs = await request_cross_sign(
                stub, agent.identity, agent.claims, nid, timeout=CALL_TIMEOUT
            )
            assert {s.signer for s in ours.signatures} == {agent.node_id, nid}
            claim_ids.append(theirs.claim.claim_id)

        async def claims_get() -> None:
            claims = await collect_pages(
                lambda p: stub.NodesClaimsGet(pb.ClaimsGetRequest(pagination=p)), "claim"
            )
            assert set(claim_ids) <= {bytes(c.claim.claim_id) for c in claims}

        async def hole_punch_signal() -> None:
            reply = await stub.NodesHolePunchSignal(
                pb.HolePunchSignalRequest(
                    target=node_id_to_proto(NodeId.parse(third)), transports=["quic"]
                )
            )
            assert reply.requester_address.port > 0

        async def notify() -> None:
            note = new_notification(agent.node_id, "general", secret.encode())
            await stub.NotificationsSend(
                signed_notification_to_proto(sign_notification(note, agent.identity))
            )

        async def scan() -> None:
            vaults = await collect_pages(
                lambda p: stub.VaultsScan(pb.VaultsScanRequest(pagination=p)), "vault"
            )
            assert [v.vault_name for v in vaults] == [vault_name(agent.node_id)]

        pulled: list[int] = []

        async def pull() -> None:
            data = b"".join(
                [
                    m.chunk
                    async for m in stub.VaultsPull(
                        pb.VaultsPullRequest(vault_name=vault_name(agent.node_id))
                    )
                ]
            )
            assert secret.encode() in data, "the vault content did not arrive"
            pulled.append(len(data))

        for name, check in [
            ("Health", health),
            ("Echo", echo),
            ("NodesClosestLocalNodesGet", closest),
            ("NodesCrossSignClaim", cross_sign),
            ("NodesClaimsGet", claims_get),
            ("NodesHolePunchSignal", hole_punch_signal),
            ("NotificationsSend", notify),
            ("VaultsScan", scan),
            ("VaultsPull", pull),
        ]:
            await run(name, check)
        return {"results": out, "pulled": sum(pulled), "via": [conn.host, conn.port]}

    async def cmd_stats(self) -> dict[str, Any]:
        agent = self.agent
        relay = agent.relay
        stats = agent.hole_puncher.stats
        return {
            "connections": [
                {
                    "node_id": str(c.node_id),
                    "host": c.host,
                    "port": c.port,
                    "remote": list(c.quic_connection.remote_address),
                    "direction": c.direction,
                }
                for c in agent.connection_manager.connections
            ],
            "dials_started": agent.connection_manager.dials_started,
            "punch": {
                "punches_started": stats.punches_started,
                "punch_datagrams_sent": stats.punch_datagrams_sent,
                "punch_datagrams_received": stats.punch_datagrams_received,
                "direct_ok": stats.direct_ok,
                "direct_failed": stats.direct_failed,
                "relayed": stats.relayed,
            },
            "relay": {
                "forwarded_frames": relay.stats.forwarded_frames,
                "forwarded_bytes": relay.stats.forwarded_bytes,
                "sessions": relay.sessions,
                "digest": relay.forwarded_digest,
                "captured": len(relay.captured),
                "paths": [p.host for p in relay.paths],
            },
        }

    async def cmd_capture_contains(self, needle: str) -> dict[str, Any]:
        captured = self.agent.relay.captured
        return {"contains": needle.encode() in captured, "captured": len(captured)}


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--seed", action="store_true")
    parser.add_argument("--dial-timeout", type=float, default=3.0)
    parser.add_argument("--punch-duration", type=float, default=4.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    host, _, port = args.bind.rpartition(":")
    agent = Agent(
        Path(args.state),
        host=host,
        port=int(port),
        quic_config=QUICConfig(datagrams=True, keepalive_interval=2.0, idle_timeout=30.0),
        hole_punch=HolePunchConfig(
            dial_attempt_timeout=1.0,
            dial_timeout=args.dial_timeout,
            punch_duration=args.punch_duration,
        ),
        relay=RelayConfig(serve=args.seed, capture_bytes=CAPTURE_BYTES if args.seed else 0),
        record_incoming_peers=args.seed,
    )
    await agent.start()
    node = Node(agent)
    emit({"event": "ready", "node_id": str(agent.node_id), "port": agent.port})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                command = json.loads(line)
            except ValueError:
                continue
            name = command.pop("cmd", "")
            if name == "quit":
                break
            handler = getattr(node, f"cmd_{name}", None)
            if handler is None:
                emit({"cmd": name, "ok": False, "error": "unknown command"})
                continue
            try:
                result = await handler(**command)
            except Exception as exc:
                traceback.print_exc()
                emit({"cmd": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            else:
                emit({"cmd": name, "ok": True, **result})
    finally:
        await agent.stop()
    emit({"event": "stopped"})
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
