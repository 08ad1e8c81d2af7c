"""Fixtures for the QUIC agent tests: agents that are always stopped, and a leak check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.quic import Agent

from .stacks import open_fds

AgentFactory = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def make_agent(tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """``await make_agent(**kwargs)``: a started QUIC agent, stopped after the test; then
    no task, timer or descriptor may be left."""
    tasks_before = asyncio.all_tasks()
    fds_before = open_fds()
    agents: list[Agent] = []

    async def make(name: str | None = None, **kwargs: Any) -> Agent:
        agent = Agent(tmp_path / (name or f"agent-{len(agents)}"), **kwargs)
        agents.append(agent)
        await agent.start()
        return agent

    yield make
    for agent in agents:
        await agent.stop()
    current = asyncio.current_task()
    leftover: list[asyncio.Task[Any]] = []
    for _ in range(100):
        leftover = [
            t for t in asyncio.all_tasks() - tasks_before if t is not current and not t.done()
        ]
        if not leftover:
            break
        await asyncio.sleep(0.01)
    assert not leftover, f"leaked tasks: {leftover}"
    loop = asyncio.get_running_loop()
    scheduled = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
    assert not scheduled, f"leaked timers: {scheduled}"
    assert open_fds() <= fds_before, "leaked file descriptors"
