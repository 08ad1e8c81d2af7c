"""The local control endpoint of a running agent (``quicshift agent start``).

A JSON-lines server on ``127.0.0.1``: each request is one JSON object on one line, each
response one line back — ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
"...", "code": "..."}``. Every request carries the ``token`` written, with the control
address and the process id, to ``<state_dir>/agent.json`` (mode 0600), so only whoever
can read the state dir controls the agent.

Operations: ``status``, ``metrics`` (snapshot), ``prometheus`` (exposition text),
``calls_by_transport`` (calls and seconds since the last call, per transport),
``set_stage`` / ``advance`` / ``rollback`` (with ``stage``, ``reason``), ``add_peer``
(``node_id``, ``host``, ``ports``), ``refresh_peers``, ``call`` (``node_id``,
``method``, ``request`` as JSON, ``transport``, ``timeout``) and ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from google.protobuf import json_format

from agent.dual import DualStackAgent, method_spec, peer_addresses_from_json
from agent.nodeid import NodeId
from migration.rollout import RolloutError, RolloutStage

__all__ = [
    "CONTROL_FILE_NAME",
    "PID_FILE_NAME",
    "ControlClient",
    "ControlError",
    "ControlInfo",
    "ControlServer",
    "read_control_info",
]

CONTROL_FILE_NAME: Final = "agent.json"
PID_FILE_NAME: Final = "agent.pid"
MAX_LINE: Final = 16 * 1024 * 1024


class ControlError(Exception):
    """A control request failed: the agent is not running, refused it, or it failed."""

    def __init__(self, message: str, code: str = "control") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ControlInfo:
    """What ``agent.json`` says about a running agent."""

    pid: int
    host: str
    port: int
    token: str
    node_id: str
    state_dir: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "control": f"{self.host}:{self.port}",
            "token": self.token,
            "node_id": self.node_id,
            "state_dir": str(self.state_dir),
        }


def read_control_info(state_dir: str | os.PathLike[str]) -> ControlInfo:
    """The control info of the agent running in ``state_dir``; :class:`ControlError`
    when none is (no file, or its process is gone)."""
    folder = Path(state_dir)
    path = folder / CONTROL_FILE_NAME
    try:
        data = json.loads(path.read_text())
        host, _, port = str(data["control"]).rpartition(":")
        info = ControlInfo(
            pid=int(data["pid"]),
            host=host,
            port=int(port),
            token=str(data["token"]),
            node_id=str(data["node_id"]),
            state_dir=folder,
        )
    except FileNotFoundError:
        raise ControlError(
            f"no agent is running in {folder} (no {path.name})", "not_running"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ControlError(f"{path} is unreadable: {exc}", "not_running") from None
    if not _pid_alive(info.pid):
        raise ControlError(
            f"no agent is running in {folder} (process {info.pid} is gone)", "not_running"
        )
    return info


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_control_files(state_dir: Path, info: ControlInfo) -> None:
    """Write ``agent.json`` (0600, atomically) and ``agent.pid``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (
        (CONTROL_FILE_NAME, json.dumps(info.to_json(), indent=2) + "\n"),
        (PID_FILE_NAME, f"{info.pid}\n"),
    ):
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=state_dir)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(temp, state_dir / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise


def remove_control_files(state_dir: Path, pid: int) -> None:
    """Remove the control files if they are still this process's."""
    try:
        data = json.loads((state_dir / CONTROL_FILE_NAME).read_text())
    except (OSError, ValueError):
        return
    if data.get("pid") == pid:
        for name in (CONTROL_FILE_NAME, PID_FILE_NAME):
            with contextlib.suppress(FileNotFoundError):
                (state_dir / name).unlink()


# -- server ---------------------------------------------------------------------------------


class ControlServer:
    """Serves control requests for one :class:`DualStackAgent`."""

    def __init__(
        self,
        agent: DualStackAgent,
        *,
        on_stop: Callable[[], None],
        token: str | None = None,
        extra_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._agent = agent
        self._on_stop = on_stop
        self._token = token or secrets.token_urlsafe(24)
        self._extra_status = extra_status
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def token(self) -> str:
        return self._token

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the control server is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, host, port, limit=MAX_LINE)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while line := await reader.readline():
                response = await self._handle_line(line)
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}", "code": "bad_request"}
        if not secrets.compare_digest(str(request.get("token", "")), self._token):
            return {"ok": False, "error": "bad or missing token", "code": "unauthorized"}
        op = request.get("op")
        handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown operation {op!r}", "code": "bad_request"}
        try:
            return {"ok": True, "result": await handler(request)}
        except RolloutError as exc:
            return {"ok": False, "error": str(exc), "code": exc.code}
        except Exception as exc:
            code = getattr(exc, "code", None)
            status = code() if callable(code) else None
            name = getattr(status, "name", None) or getattr(
                getattr(exc, "status", None), "name", None
            )
            return {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "code": name or (code if isinstance(code, str) else "failed"),
            }

    async def _op_status(self, request: dict[str, Any]) -> Any:
        status = self._agent.status()
        if self._extra_status is not None:
            status.update(self._extra_status())
        if request.get("metrics"):
            status["metrics"] = self._agent.metrics.snapshot()
        return status

    async def _op_metrics(self, request: dict[str, Any]) -> Any:
        return self._agent.metrics.snapshot()

    async def _op_prometheus(self, request: dict[str, Any]) -> Any:
        return self._agent.metrics.render_prometheus()

    async def _op_calls_by_transport(self, request: dict[str, Any]) -> Any:
        return self._agent.metrics.calls_by_transport()

    async def _change(self, change: Any) -> Any:
        return {
            "changed": change is not None,
            "stage": self._agent.stage.value,
            "change": None if change is None else change.to_json(),
        }

    async def _op_set_stage(self, request: dict[str, Any]) -> Any:
        stage = RolloutStage.parse(str(request.get("stage")))
        return await self._change(
            await self._agent.set_stage(stage, str(request.get("reason", "")))
        )

    async def _op_advance(self, request: dict[str, Any]) -> Any:
        return await self._change(await self._agent.advance(str(request.get("reason", ""))))

    async def _op_rollback(self, request: dict[str, Any]) -> Any:
        return await self._change(await self._agent.rollback(str(request.get("reason", ""))))

    async def _op_add_peer(self, request: dict[str, Any]) -> Any:
        node_id = NodeId.parse(str(request["node_id"]))
        serves = request.get("serves")
        info = self._agent.add_node(
            node_id, peer_addresses_from_json(request), serves=None if serves is None else serves
        )
        return info.to_json()

    async def _op_refresh_peers(self, request: dict[str, Any]) -> Any:
        await self._agent.refresh_peers()
        return [p.to_json() for p in self._agent.peers]

    async def _op_call(self, request: dict[str, Any]) -> Any:
        node_id = NodeId.parse(str(request["node_id"]))
        spec = method_spec(str(request["method"]))
        payload = request.get("request") or {}
        items = payload if spec.client_streaming and isinstance(payload, list) else [payload]
        messages = [json_format.ParseDict(item, spec.request_type()) for item in items]
        argument: Any = messages if spec.client_streaming else messages[0]
        timeout = request.get("timeout")
        plan = self._agent.plan(node_id, transport=request.get("transport"))
        response = await self._agent.call(
            node_id,
            spec.label,
            argument,
            transport=request.get("transport"),
            timeout=None if timeout is None else float(timeout),
        )
        responses = response if spec.server_streaming else [response]
        as_json = [
            json_format.MessageToDict(r, preserving_proto_field_name=True) for r in responses
        ]
        return {
            "method": spec.label,
            "plan": list(plan.transports),
            "reason": plan.reason,
            "response": as_json if spec.server_streaming else as_json[0],
        }

    async def _op_stop(self, request: dict[str, Any]) -> Any:
        asyncio.get_running_loop().call_soon(self._on_stop)
        return {"stopping": True}


# -- client ---------------------------------------------------------------------------------


class ControlClient:
    """A blocking client of one agent's control endpoint."""

    def __init__(self, info: ControlInfo, timeout: float = 60.0) -> None:
        self.info = info
        self._timeout = timeout

    @classmethod
    def for_state_dir(
        cls, state_dir: str | os.PathLike[str], timeout: float = 60.0
    ) -> ControlClient:
        return cls(read_control_info(state_dir), timeout)

    def request(self, op: str, **fields: Any) -> Any:
        payload = {"op": op, "token": self.info.token, **fields}
        try:
            with socket.create_connection(
                (self.info.host, self.info.port), timeout=self._timeout
            ) as sock:
                sock.sendall(json.dumps(payload).encode() + b"\n")
                chunks: list[bytes] = []
                while not chunks or not chunks[-1].endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as exc:
            raise ControlError(
                f"cannot reach the agent in {self.info.state_dir} at "
                f"{self.info.host}:{self.info.port}: {exc}",
                "unreachable",
            ) from None
        try:
            response = json.loads(b"".join(chunks))
        except ValueError:
            raise ControlError("the agent closed the control connection", "unreachable") from None
        if not response.get("ok"):
            raise ControlError(str(response.get("error")), str(response.get("code", "failed")))
        return response.get("result")
