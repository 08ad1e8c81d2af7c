"""``quicshift agent|rollout|call|metrics`` as an operator runs them: two agents in their
own processes, controlled by more processes."""

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

from agent.cli import main

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]


def quicshift(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    script = shutil.which("quicshift")
    command = [script] if script else [sys.executable, "-m", "agent.cli"]
    env = {k: v for k, v in os.environ.items() if k != "QUICSHIFT_STATE_DIR"}
    result = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=90, cwd=ROOT, env=env
    )
    if check is not None:
        assert result.returncode == check, (args, result.stdout, result.stderr)
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, Path, Path, list[subprocess.Popen[str]]]]:
    a, b = tmp_path / "a", tmp_path / "b"
    fleet_file = tmp_path / "fleet.txt"
    fleet_file.write_text("# two agents\na=a\nb = b\n")
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "agent.cli", "agent", "start", "--state-dir", str(d)),
                *("--drain-notice", "0.2", *extra),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for d, extra in ((a, ["--metrics-port", "0", "--json"]), (b, ["--stage", "dual"]))
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # the agent prints one line once it serves
            assert line, proc.stderr.read() if proc.stderr else ""
        yield a, b, fleet_file, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [
        [],
        ["agent"],
        ["agent", "start"],
        ["agent", "status"],
        ["agent", "stop"],
        ["rollout"],
        ["rollout", "status"],
        ["rollout", "set"],
        ["rollout", "advance"],
        ["rollout", "rollback"],
        ["call"],
        ["metrics"],
        ["demo"],
        ["scan"],
        ["keys"],
    ]
    for command in commands:
        with pytest.raises(SystemExit) as exited:
            main([*command, "--help"])
        assert exited.value.code == 0, command
        assert "usage:" in capsys.readouterr().out


def test_usage_and_not_running_exit_codes(tmp_path: Path) -> None:
    assert quicshift("rollout", "set", "sideways", "--state-dir", str(tmp_path), check=2)
    assert quicshift("call", check=2)
    result = quicshift("agent", "status", "--state-dir", str(tmp_path / "none"), check=1)
    assert "no agent is running" in result.stderr
    result = quicshift("rollout", "advance", "--fleet", str(tmp_path / "missing.txt"), check=2)
    assert "fleet file" in result.stderr


def test_two_agents_call_and_roll_out(
    fleet: tuple[Path, Path, Path, list[subprocess.Popen[str]]],
) -> None:
    a, b, fleet_file, procs = fleet
    f = str(fleet_file)

    status = as_json(quicshift("agent", "status", "--state-dir", str(a), "--json"))
    assert status["stage"] == "legacy" and status["serves"] == ["grpc"]
    assert status["metrics_url"].startswith("http://127.0.0.1:")
    assert (a / "agent.pid").read_text().strip() == str(procs[0].pid)

    # a (legacy) calls b (dual) by state dir: over grpc.
    reply = as_json(
        quicshift("call", str(b), "Echo", '{"message": "hi"}', "--state-dir", str(a), "--json")
    )
    assert reply["response"] == {"message": "hi"} and reply["plan"] == ["grpc"]

    # b (dual) calls a by fleet name; b forces quic towards a legacy node: refused.
    result = quicshift("call", "a", "Health/Check", "--fleet", f, "--state-dir", str(b))
    assert json.loads(result.stdout) == {"status": "SERVING"}
    result = quicshift(
        "call",
        "a",
        "Echo",
        "{}",
        "--fleet",
        f,
        "--state-dir",
        str(b),
        "--transport",
        "quic",
        check=1,
    )
    assert "no transport in common" in result.stderr

    stages = as_json(quicshift("rollout", "status", "--fleet", f, "--json"))
    assert [x["stage"] for x in stages["agents"]] == ["legacy", "dual"] and stages["legal"]

    # The rules: b may not enter quic-only while a dials grpc only; nothing changes.
    result = quicshift("rollout", "set", "quic-only", "--fleet", f, "--node", "b", check=1)
    assert "refused, nothing changed" in result.stderr and "quic-preferred" in result.stderr
    stages = as_json(quicshift("rollout", "status", "--fleet", f, "--json"))
    assert [x["stage"] for x in stages["agents"]] == ["legacy", "dual"]

    # Walk the fleet to quic-only (one node at a time), with calls at each stage.
    moved = as_json(quicshift("rollout", "set", "quic-preferred", "--fleet", f, "--json"))
    assert moved["ok"] and moved["stages"] == {"a": "quic-preferred", "b": "quic-preferred"}
    assert [c["name"] for c in moved["changes"]] == ["a", "a", "b"]  # a: legacy->dual->qp
    reply = as_json(
        quicshift("call", "b", "VaultsScan", "{}", "--fleet", f, "--state-dir", str(a), "--json")
    )
    assert reply["plan"][0] == "quic"
    moved = as_json(quicshift("rollout", "advance", "--fleet", f, "--json", "--reason", "go"))
    assert moved["stages"] == {"a": "quic-only", "b": "quic-only"}
    status = as_json(quicshift("agent", "status", "--state-dir", str(b), "--json"))
    assert status["running"] == ["quic"] and status["history"][-1]["reason"] == "go"
    reply = as_json(
        quicshift(
            "call", "b", "Echo", '{"message": "q"}', "--fleet", f, "--state-dir", str(a), "--json"
        )
    )
    assert reply["plan"] == ["quic"] and reply["response"] == {"message": "q"}

    # Roll back one step on one agent, then the fleet; a rollback below quic-preferred
    # while a node is quic-only is refused.
    moved = as_json(quicshift("rollout", "rollback", "--state-dir", str(a), "--json"))
    assert moved["stages"] == {"a": "quic-preferred"}
    result = quicshift("rollout", "rollback", "--fleet", f, "--node", "a", check=1)
    assert "refused" in result.stderr
    moved = as_json(quicshift("rollout", "set", "legacy", "--fleet", f, "--json"))
    assert moved["ok"] and moved["stages"] == {"a": "legacy", "b": "legacy"}
    reply = as_json(
        quicshift("call", str(a), "Echo", '{"message": "back"}', "--state-dir", str(b), "--json")
    )
    assert reply["plan"] == ["grpc"]

    # Metrics: per transport, from the CLI (JSON, table and Prometheus text).
    snapshot = as_json(quicshift("metrics", "--state-dir", str(a), "--json"))
    assert set(snapshot["transports"]) == {"grpc", "quic"}
    text = quicshift("metrics", "--state-dir", str(a)).stdout
    assert 'quicshift_calls_total{transport="quic",method="AgentService/Echo"} 1' in text
    table = quicshift("agent", "status", "--state-dir", str(a), "--metrics").stdout
    assert "AgentService/VaultsScan" in table and "stage     legacy" in table
    import urllib.request

    with urllib.request.urlopen(status_url(a)) as response:
        assert b"quicshift_calls_total" in response.read()

    for state_dir, proc in zip((a, b), procs, strict=True):
        stopped = as_json(quicshift("agent", "stop", "--state-dir", str(state_dir), "--json"))
        assert stopped == {"stopped": True, "pid": proc.pid}
        assert proc.wait(timeout=60) == 0
        assert not (state_dir / "agent.json").exists()
        assert json.loads((state_dir / "rollout.json").read_text())["stage"] == "legacy"


def status_url(state_dir: Path) -> str:
    url: str = as_json(quicshift("agent", "status", "--state-dir", str(state_dir), "--json"))[
        "metrics_url"
    ]
    return url


def test_restart_keeps_the_stage(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "agent",
            "start",
            "--state-dir",
            str(state),
            "--stage",
            "quic-only",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and "quic-only" in proc.stdout.readline()
        result = quicshift("agent", "start", "--state-dir", str(state), check=1)
        assert "already running" in result.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "agent", "start", "--state-dir", str(state), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["stage"] == "quic-only" and started["serves"] == ["quic"]
        quicshift("agent", "stop", "--state-dir", str(state))
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    _ = time  # (no timing assertions here: processes are waited on, not timed)
