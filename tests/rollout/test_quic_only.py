"""The quic-only end state: with ``grpc`` and ``legacy_grpc`` unimportable, dual-stack
agents at ``quic-only`` start, serve and call every method; and the dual-stack module
imports neither at module level."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

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

    from agent.dual import DualStackAgentError
    from migration.rollout import RolloutStage
    from tests.rollout.fleet import call_every_method, make_agents, seed

    async def main() -> None:
        agents = make_agents(Path(tempfile.mkdtemp()), 3, stage="quic-only")
        try:
            for agent in agents:
                await agent.start()
                assert agent.running_transports == ("quic",), agent.running_transports
            await seed(agents)
            for i, j in [(0, 1), (1, 2), (2, 0), (1, 0)]:
                await call_every_method(agents[i], agents[j], agents[3 - i - j])
            snapshot = agents[0].metrics.snapshot()
            assert set(snapshot["transports"]) == {"quic"}, snapshot
            # A stage that needs gRPC cannot start here, and the agent stays as it was.
            try:
                await agents[0].set_stage(RolloutStage.QUIC_PREFERRED)
            except DualStackAgentError as exc:
                assert "grpcio" in str(exc), exc
            else:
                raise AssertionError("quic-preferred started without grpc")
            assert agents[0].stage is RolloutStage.QUIC_ONLY
            await call_every_method(agents[0], agents[1], agents[2])
        finally:
            for agent in agents:
                await agent.stop()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "legacy_grpc"))
        assert not loaded, loaded
        print("QUIC-ONLY DUAL OK")

    asyncio.run(main())
    """
)


@pytest.mark.timeout(150)
def test_quic_only_agents_run_without_grpc() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "QUIC-ONLY DUAL OK" in result.stdout


INSTALLED_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, tempfile
    from pathlib import Path
    from tests.rollout.fleet import call_every_method, make_agents, seed

    async def main() -> None:
        agents = make_agents(Path(tempfile.mkdtemp()), 3, stage="quic-only")
        try:
            for agent in agents:
                await agent.start()
            await seed(agents)
            await call_every_method(agents[0], agents[1], agents[2])
        finally:
            for agent in agents:
                await agent.stop()
        # grpcio is installed here: the adapter's compat layer loads it so that its errors
        # are real grpc.RpcError instances, but nothing of the legacy stack or of the
        # grpc-generated modules may be loaded
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "legacy_grpc"
                        or m.endswith("_pb2_grpc") or m in ("agent.legacy", "agent.cli"))
        assert not loaded, loaded
        print("NO LEGACY STACK")

    asyncio.run(main())
    """
)


@pytest.mark.timeout(150)
def test_quic_only_never_loads_the_legacy_stack_even_when_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-c", INSTALLED_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "NO LEGACY STACK" in result.stdout


def test_dual_module_imports_no_grpc_at_module_level() -> None:
    for path in (ROOT / "agent" / "dual.py", ROOT / "migration" / "fleet.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:  # module level only: agent.legacy is imported lazily
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("grpc", "legacy_grpc"), name
                assert name != "agent.legacy" and not name.endswith("_pb2_grpc"), name
