"""The QUIC agent starts, serves and calls with ``grpc`` and ``legacy_grpc`` unimportable."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("grpc", "legacy_grpc")

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in ("grpc", "legacy_grpc") or name.endswith("_pb2_grpc"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())

    import asyncio
    import tempfile
    from pathlib import Path

    from agent.domains.notifications import new_notification, sign_notification
    from agent.quic import Agent
    from agent.servicer import request_cross_sign, signed_notification_to_proto
    from protos.agent.v1 import agent_service_pb2 as pb
    from protos.agent.v1 import common_pb2 as common
    from protos.grpc.health.v1 import health_pb2

    async def main() -> None:
        root = Path(tempfile.mkdtemp())
        async with Agent(root / "a", host="::") as a, Agent(root / "b", host="::1") as b:
            a.vaults.create_vault("v")
            a.vaults.write_file("v", "f.txt", b"payload")
            a.vaults.grant("v", b.node_id)
            conn = await b.connect(a.node_id, a.host, a.port)
            assert (await conn.stub.Echo(common.EchoMessage(message="hi"))).message == "hi"
            health = await conn.health.Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            chunks = [m.chunk async for m in conn.stub.VaultsPull(pb.VaultsPullRequest(vault_name="v"))]
            assert b"".join(chunks) == a.vaults.archive_bytes("v")
            await request_cross_sign(conn.stub, b.identity, b.claims, a.node_id, timeout=30)
            back = await a.connect(b.node_id)
            note = new_notification(a.node_id, "general", b"back")
            await back.stub.NotificationsSend(
                signed_notification_to_proto(sign_notification(note, a.identity))
            )
            assert note in [e.notification for e in b.notifications.all()]
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "legacy_grpc"))
        assert not loaded, loaded
        print("QUIC-ONLY OK")

    asyncio.run(main())
    """
)


@pytest.mark.timeout(120)
def test_quic_agent_runs_without_grpc() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "QUIC-ONLY OK" in result.stdout


@pytest.mark.parametrize("path", sorted((ROOT / "agent" / "quic").glob("*.py")), ids=str)
def test_quic_agent_modules_import_no_grpc(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
            assert not name.endswith("_pb2_grpc"), f"{path.name} imports {name}"
