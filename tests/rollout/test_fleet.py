"""Every combination of stages a rollout can legally produce: every agent calls every
method on every other, every call succeeds, on the transport the stages pick."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from agent.dual import DualStackAgent
from migration.fleet import fleet_is_legal
from migration.rollout import RolloutStage, TransportChooser

from .fleet import (
    EVERY_METHOD,
    call_every_method,
    calls_by_transport,
    make_agents,
    seed,
    set_stages,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.asyncio(loop_scope="module")]

L, D, QP, QO = RolloutStage.ordered()
# Ordered so the fleet moves forward between them; together they contain every legal
# (caller stage, callee stage) pair in both directions.
ASSIGNMENTS = [(L, L, L), (L, D, QP), (D, D, QP), (QP, QP, QO), (QP, QO, QO)]


async def test_assignments_cover_every_legal_pair() -> None:
    legal = {
        (a, b)
        for a, b in itertools.product(RolloutStage.ordered(), repeat=2)
        if fleet_is_legal([a, b])
    }
    covered = {(s[i], s[j]) for s in ASSIGNMENTS for i, j in itertools.permutations(range(3), 2)}
    assert all(fleet_is_legal(s) for s in ASSIGNMENTS)
    assert covered == legal
    assert len(legal) == 12  # 16 pairs minus legacy/dual <-> quic-only


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[DualStackAgent]]:
    agents = make_agents(tmp_path_factory.mktemp("fleet"), 3, stage=L)
    try:
        for agent in agents:
            await agent.start()
        await seed(agents)
        yield agents
    finally:
        for agent in agents:
            await agent.stop()


@pytest.mark.parametrize("stages", ASSIGNMENTS, ids=lambda s: "+".join(x.value for x in s))
async def test_every_method_between_every_pair(
    fleet: list[DualStackAgent], stages: tuple[RolloutStage, ...]
) -> None:
    # Each assignment is judged on its own: metrics start empty, so an error or fallback
    # is reported against the assignment it happened in, not every later one.
    for agent in fleet:
        agent.metrics.reset()
    await set_stages(fleet, stages)
    for i, j in itertools.permutations(range(3), 2):
        src, dst = fleet[i], fleet[j]
        third = fleet[3 - i - j]
        before = calls_by_transport(src)
        await call_every_method(src, dst, third)
        after = calls_by_transport(src)
        expected = TransportChooser(stages[i]).choose(stages[j].serves).primary
        used = {t: after[t] - before[t] for t in after if after[t] != before[t]}
        # Every method on the transport the stages pick (no fallback, no other transport).
        assert used == {expected: len(EVERY_METHOD)}, (stages[i], stages[j], used)
    for agent in fleet:
        assert agent.metrics.snapshot()["fallbacks"] == []
        errors = [
            (t, m, e)
            for t, methods in agent.metrics.snapshot()["transports"].items()
            for m, stats in methods.items()
            for e in stats["errors"]
        ]
        assert errors == []
