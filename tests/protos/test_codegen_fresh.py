"""The committed generated protobuf/gRPC code is fresh, and pb2 modules need only protobuf."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from protos import generate

ROOT = Path(__file__).resolve().parents[2]

PB2_MODULES = [
    "protos.agent.v1.common_pb2",
    "protos.agent.v1.agent_service_pb2",
    "protos.grpc.health.v1.health_pb2",
]


def test_committed_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "protos.generate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        "generated code is stale; run `python -m protos.generate`\n" + result.stderr
    )


@pytest.fixture
def protos_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return copy


def test_check_detects_an_edited_generated_module(protos_copy: Path) -> None:
    assert generate.check(protos_copy)
    target = protos_copy / "agent" / "v1" / "common_pb2.py"
    target.write_text(target.read_text() + "# edited by hand\n")
    problems: list[str] = []
    assert not generate.check(protos_copy, out=problems)
    assert any("stale: protos/agent/v1/common_pb2.py" in p for p in problems)


def test_check_detects_a_changed_proto(protos_copy: Path) -> None:
    proto = protos_copy / "agent" / "v1" / "common.proto"
    proto.write_text(proto.read_text() + "\nmessage AddedLater { string x = 1; }\n")
    problems: list[str] = []
    assert not generate.check(protos_copy, out=problems)
    assert any("common_pb2.py" in p for p in problems)


def test_check_detects_missing_and_orphaned_modules(protos_copy: Path) -> None:
    (protos_copy / "grpc" / "health" / "v1" / "health_pb2.pyi").unlink()
    (protos_copy / "agent" / "v1" / "gone_pb2.py").write_text("# no proto\n")
    problems: list[str] = []
    assert not generate.check(protos_copy, out=problems)
    assert "missing: protos/grpc/health/v1/health_pb2.pyi" in problems
    assert "orphaned (no .proto): protos/agent/v1/gone_pb2.py" in problems


def test_generate_repairs_a_stale_tree(protos_copy: Path) -> None:
    (protos_copy / "agent" / "v1" / "agent_service_pb2.py").write_text("broken = True\n")
    (protos_copy / "agent" / "v1" / "__init__.py").unlink()
    generate.generate(protos_copy)
    assert generate.check(protos_copy)
    assert (protos_copy / "agent" / "v1" / "__init__.py").exists()


def test_pb2_modules_import_without_grpc() -> None:
    script = textwrap.dedent(
        f"""
        import importlib, sys
        sys.modules["grpc"] = None  # any `import grpc` now raises ImportError
        for name in {PB2_MODULES!r}:
            importlib.import_module(name)
        from protos.agent.v1 import agent_service_pb2
        service = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
        assert service.full_name == "quicshift.agent.v1.AgentService"
        try:
            importlib.import_module("protos.agent.v1.agent_service_pb2_grpc")
        except ImportError:
            pass
        else:
            raise SystemExit("grpc was not blocked")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_health_proto_matches_the_upstream_names() -> None:
    from protos.grpc.health.v1 import health_pb2

    service = health_pb2.DESCRIPTOR.services_by_name["Health"]
    assert service.full_name == "grpc.health.v1.Health"
    assert {m.name for m in service.methods} >= {"Check", "Watch"}
    assert health_pb2.HealthCheckResponse.SERVICE_UNKNOWN == 3
    assert health_pb2.HealthCheckRequest.DESCRIPTOR.fields_by_name["service"].number == 1
    assert health_pb2.HealthCheckResponse.DESCRIPTOR.fields_by_name["status"].number == 1
