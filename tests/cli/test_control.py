"""The agent's local control endpoint: token required, bad requests refused clearly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.control import ControlServer
from agent.dual import DualStackAgent

pytestmark = pytest.mark.timeout(60)


async def _ask(port: int, payload: bytes) -> dict[str, object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload + b"\n")
    await writer.drain()
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    result: dict[str, object] = json.loads(line)
    return result


async def test_control_endpoint_checks_token_and_requests(tmp_path: Path) -> None:
    stopped = asyncio.Event()
    async with DualStackAgent(tmp_path / "a", stage="quic-only") as agent:
        control = ControlServer(agent, on_stop=stopped.set)
        await control.start()
        try:
            port, token = control.port, control.token
            refused = await _ask(port, json.dumps({"op": "status", "token": "nope"}).encode())
            assert refused == {"ok": False, "error": "bad or missing token", "code": "unauthorized"}
            bad = await _ask(port, b"not json")
            assert bad["ok"] is False and bad["code"] == "bad_request"
            unknown = await _ask(port, json.dumps({"op": "explode", "token": token}).encode())
            assert unknown["code"] == "bad_request"
            stage = await _ask(
                port, json.dumps({"op": "set_stage", "stage": "sideways", "token": token}).encode()
            )
            assert stage["ok"] is False and stage["code"] == "unknown_stage"
            status = await _ask(port, json.dumps({"op": "status", "token": token}).encode())
            assert status["ok"] is True
            assert isinstance(status["result"], dict) and status["result"]["stage"] == "quic-only"
            stop = await _ask(port, json.dumps({"op": "stop", "token": token}).encode())
            assert stop == {"ok": True, "result": {"stopping": True}}
            await asyncio.wait_for(stopped.wait(), 10)
        finally:
            await control.stop()
