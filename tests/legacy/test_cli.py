"""The ``quicshift`` console script, run as a user would (subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]


def _quicshift_command() -> list[str]:
    script = shutil.which("quicshift")
    return [script] if script else [sys.executable, "-m", "agent.cli"]


def test_cli_help() -> None:
    result = subprocess.run(
        [*_quicshift_command(), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0
    assert "demo" in result.stdout
    result = subprocess.run(
        [*_quicshift_command(), "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0
    assert "--json" in result.stdout


def test_cli_demo_json() -> None:
    """The staged demo: five agents walked from legacy to quic-only with live traffic."""
    result = subprocess.run(
        [*_quicshift_command(), "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["failures"] == []
    assert len(report["agents"]) == 5
    stages = report["stages"]
    assert stages[0]["stages"] == ["L"] * 5 and stages[-1]["stages"] == ["Q"] * 5
    assert len(stages) == 20  # the start, then one node changing stage at a time
    for phase in stages:
        assert phase["failed"] == 0, phase
        assert phase["calls"] > 0, phase
    assert stages[0]["by_transport"]["quic"] == 0
    assert stages[-1]["by_transport"]["grpc"] == 0
    assert report["by_transport"]["grpc"] > 0 and report["by_transport"]["quic"] > 0
    assert len(report["methods"]) == 10
    for name, stats in report["methods"].items():
        assert stats["calls"] > 0 and stats["failed"] == 0, name


def test_cli_rejects_bad_arguments() -> None:
    result = subprocess.run(
        [*_quicshift_command(), "demo", "--agents", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "at least 3" in result.stderr
