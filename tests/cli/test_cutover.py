"""``quicshift cutover check|apply`` on a fleet of real agent processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("a", "b", "c")


def quicshift(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    script = shutil.which("quicshift")
    command = [script] if script else [sys.executable, "-m", "agent.cli"]
    env = {k: v for k, v in os.environ.items() if k != "QUICSHIFT_STATE_DIR"}
    result = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )
    if check is not None:
        assert result.returncode == check, (args, result.stdout, result.stderr)
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[str]:
    """Three agents at ``dual``, in their own processes; yields the fleet file."""
    pytest.importorskip("grpc")
    fleet_file = tmp_path / "fleet.txt"
    fleet_file.write_text("".join(f"{n}={n}\n" for n in NAMES))
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "agent.cli", "agent", "start"),
                *("--state-dir", str(tmp_path / name), "--stage", "dual", "--drain-notice", "0.2"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name in NAMES
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # the agent prints one line once it serves
            assert line, proc.stderr.read() if proc.stderr else ""
        yield str(fleet_file)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)


def call(fleet: str, caller: str, callee: str, message: str) -> dict[str, Any]:
    state_dir = str(Path(fleet).parent / caller)
    result = quicshift(
        "call", callee, "Echo", json.dumps({"message": message}),
        "--fleet", fleet, "--state-dir", state_dir, "--json",
    )  # fmt: skip
    data: dict[str, Any] = as_json(result)
    assert data["response"]["message"] == message
    return data


def stages(fleet: str) -> dict[str, str]:
    rows = as_json(quicshift("rollout", "status", "--fleet", fleet, "--json"))["agents"]
    return {row["name"]: row["stage"] for row in rows}


def test_not_ready_then_ready_then_apply(fleet: str, tmp_path: Path) -> None:
    # a (dual) calls b over gRPC: legacy traffic in the window.
    assert call(fleet, "a", "b", "legacy")["plan"][0] == "grpc"
    result = quicshift("cutover", "check", "--fleet", fleet, "--window", "600", check=1)
    assert "[PASS] agents running" in result.stdout
    assert "[PASS] quic reachable" in result.stdout
    assert "[FAIL] no legacy calls" in result.stdout
    assert "a (stage dual) made a gRPC call" in result.stdout
    assert "b (stage" not in result.stdout and "c (stage" not in result.stdout
    assert "NOT ready for cutover" in result.stdout

    report = as_json(
        quicshift("cutover", "check", "--fleet", fleet, "--window", "600", "--json", check=1)
    )
    assert report["ready"] is False
    criteria = {c["name"]: c for c in report["criteria"]}
    assert criteria["quic reachable"]["ok"] and not criteria["no legacy calls"]["ok"]
    assert criteria["scan clean"]["skipped"]

    # apply refuses while not ready, and changes nothing.
    result = quicshift("cutover", "apply", "--fleet", fleet, "--window", "600", check=1)
    assert "not ready" in result.stderr and "nothing changed" in result.stderr
    assert stages(fleet) == dict.fromkeys(NAMES, "dual")

    # A code base that still needs a change fails the scan criterion.
    code = tmp_path / "code"
    code.mkdir()
    (code / "client.py").write_text("import grpc\ncreds = grpc.metadata_call_credentials(None)\n")
    result = quicshift(
        "cutover", "check", "--fleet", fleet, "--window", "0", "--scan", str(code), check=None
    )
    # (window 0: only the scan can fail)
    assert result.returncode == 1, result.stdout
    assert "[FAIL] scan clean" in result.stdout and "client.py:2" in result.stdout
    (code / "client.py").write_text("from migration import quic_grpc as grpc\n")

    # Everyone to quic-preferred; only QUIC traffic from then on.
    quicshift("rollout", "set", "quic-preferred", "--fleet", fleet)
    marker = time.monotonic()
    for caller, callee in (("a", "b"), ("b", "c"), ("c", "a")):
        assert call(fleet, caller, callee, f"{caller}{callee}")["plan"][0] == "quic"
    # the last gRPC call was made before ``marker``; let one window pass after it
    time.sleep(max(0.0, 1.5 - (time.monotonic() - marker)))
    result = quicshift("cutover", "check", "--fleet", fleet, "--window", "1", "--scan", str(code))
    assert "ready for cutover" in result.stdout and "NOT" not in result.stdout
    assert "[PASS] scan clean" in result.stdout

    applied = as_json(quicshift("cutover", "apply", "--fleet", fleet, "--window", "1", "--json"))
    assert applied["applied"] is True and applied["ready"] is True
    assert applied["stages"] == dict.fromkeys(NAMES, "quic-only")
    assert [(c["name"], c["stage"]) for c in applied["changes"]] == [
        (n, "quic-only") for n in NAMES
    ]
    assert any("legacy_grpc/" in step for step in applied["manual_steps"])
    assert any("legacy" in step and "grpcio" in step for step in applied["manual_steps"])

    assert stages(fleet) == dict.fromkeys(NAMES, "quic-only")
    for caller in NAMES:
        for callee in NAMES:
            if caller != callee:
                assert call(fleet, caller, callee, f"after {caller}{callee}")["plan"] == ["quic"]

    # applying again changes nothing; the text report lists the manual steps.
    result = quicshift("cutover", "apply", "--fleet", fleet, "--window", "1")
    assert "every node is already quic-only" in result.stdout
    assert "remaining manual steps:" in result.stdout and "legacy_grpc/" in result.stdout


def test_forced_apply_moves_through_quic_preferred(fleet: str) -> None:
    """--force from a mixed fleet: nodes below quic-preferred go there first, then all
    go to quic-only; the fleet rules hold at every step."""
    state_a = str(Path(fleet).parent / "a")
    quicshift("rollout", "set", "legacy", "--state-dir", state_a)
    quicshift("rollout", "set", "quic-preferred", "--fleet", fleet, "--node", "b")
    result = quicshift("cutover", "check", "--fleet", fleet, "--window", "0", check=1)
    assert "[FAIL] quic reachable" in result.stdout and "-> a: not reachable" in result.stdout
    applied = as_json(
        quicshift("cutover", "apply", "--fleet", fleet, "--window", "0", "--force", "--json")
    )
    assert applied["applied"] is True and applied["forced"] is True
    moves = [(c["name"], c["previous"], c["stage"]) for c in applied["changes"]]
    assert moves == [
        ("a", "legacy", "dual"),
        ("a", "dual", "quic-preferred"),
        ("c", "dual", "quic-preferred"),
        ("a", "quic-preferred", "quic-only"),
        ("b", "quic-preferred", "quic-only"),
        ("c", "quic-preferred", "quic-only"),
    ]
    assert stages(fleet) == dict.fromkeys(NAMES, "quic-only")
    assert call(fleet, "b", "a", "forced")["plan"] == ["quic"]


def test_usage(tmp_path: Path) -> None:
    assert quicshift("cutover", check=2).stderr
    result = quicshift("cutover", "check", check=2)
    assert "--fleet" in result.stderr
    (tmp_path / "f.txt").write_text("a=a\n")
    result = quicshift("cutover", "check", "--fleet", str(tmp_path / "f.txt"), "--window", "-1",
                       check=2)  # fmt: skip
    assert "--window" in result.stderr
    result = quicshift("cutover", "check", "--fleet", str(tmp_path / "missing.txt"), check=2)
    assert "cannot read the fleet file" in result.stderr
    # a fleet whose agent is not running is not ready
    result = quicshift("cutover", "check", "--fleet", str(tmp_path / "f.txt"), "--window", "0",
                       check=1)  # fmt: skip
    assert "[FAIL] agents running" in result.stdout
    for args in (["cutover", "--help"], ["cutover", "check", "--help"],
                 ["cutover", "apply", "--help"], ["check", "--help"]):  # fmt: skip
        assert quicshift(*args).stdout


def test_calls_by_transport_reports_counts_and_age() -> None:
    from migration.metrics import MetricsRegistry

    registry = MetricsRegistry()
    assert registry.calls_by_transport() == {}
    registry.record_call("grpc", "AgentService/Echo", "OK", 0.01)
    registry.record_call("grpc", "Health/Check", "UNAVAILABLE", 0.02)
    registry.record_call("quic", "AgentService/Echo", "OK", 0.01)
    usage = registry.calls_by_transport()
    assert {t: u["calls"] for t, u in usage.items()} == {"grpc": 2, "quic": 1}
    assert all(u["last_call_age"] >= 0 for u in usage.values())
    registry.reset()
    assert registry.calls_by_transport() == {}
