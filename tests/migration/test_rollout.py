"""Rollout stages, their persisted state, transport choice and fallback."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from migration.metrics import MetricsRegistry
from migration.rollout import (
    ROLLOUT_FILE_NAME,
    FallbackExhaustedError,
    FallbackPolicy,
    NoCommonTransportError,
    RolloutError,
    RolloutStage,
    RolloutState,
    RolloutStateError,
    StageLimitError,
    TransportChooser,
    UnknownStageError,
    dial_with_fallback,
)
from quic_rpc.rpc import RPCError, Status

pytestmark = pytest.mark.timeout(60)

LEGACY, DUAL, PREFERRED, ONLY = (
    RolloutStage.LEGACY,
    RolloutStage.DUAL,
    RolloutStage.QUIC_PREFERRED,
    RolloutStage.QUIC_ONLY,
)
NONE: tuple[str, ...] = ()  # "no transport in common": a NoCommonTransportError

# -- stages -----------------------------------------------------------------------------


def test_order_and_neighbours() -> None:
    assert list(RolloutStage) == [LEGACY, DUAL, PREFERRED, ONLY]
    assert [s.order for s in RolloutStage] == [0, 1, 2, 3]
    assert [s.value for s in RolloutStage] == ["legacy", "dual", "quic-preferred", "quic-only"]
    assert LEGACY.advance() is DUAL and DUAL.advance() is PREFERRED
    assert PREFERRED.advance() is ONLY
    assert ONLY.rollback() is PREFERRED and PREFERRED.rollback() is DUAL
    assert DUAL.rollback() is LEGACY
    with pytest.raises(StageLimitError, match="last stage"):
        ONLY.advance()
    with pytest.raises(StageLimitError, match="first stage"):
        LEGACY.rollback()
    assert LEGACY.previous is None and ONLY.next is None


@pytest.mark.parametrize(
    ("stage", "serves_legacy", "serves_quic", "serves", "dial_order", "fallback"),
    [
        (LEGACY, True, False, ("grpc",), ("grpc",), False),
        (DUAL, True, True, ("grpc", "quic"), ("grpc",), False),
        (PREFERRED, True, True, ("grpc", "quic"), ("quic", "grpc"), True),
        (ONLY, False, True, ("quic",), ("quic",), False),
    ],
)
def test_what_each_stage_serves_and_dials(
    stage: RolloutStage,
    serves_legacy: bool,
    serves_quic: bool,
    serves: tuple[str, ...],
    dial_order: tuple[str, ...],
    fallback: bool,
) -> None:
    assert stage.serves_legacy is serves_legacy
    assert stage.serves_quic is serves_quic
    assert stage.serves == serves
    assert stage.dial_order == dial_order
    assert stage.allows_fallback is fallback
    assert stage.needs_grpc is (stage is not ONLY)


def test_parse() -> None:
    assert RolloutStage.parse("quic-preferred") is PREFERRED
    assert RolloutStage.parse(" QUIC_ONLY ") is ONLY
    assert RolloutStage.parse(DUAL) is DUAL
    with pytest.raises(UnknownStageError, match="expected one of legacy, dual"):
        RolloutStage.parse("quic")
    with pytest.raises(ValueError):
        RolloutStage.parse(3)  # type: ignore[arg-type]


# -- transport choice: every (local stage x peer transports) ----------------------------

CHOICE_TABLE: list[tuple[RolloutStage, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    # stage, peer serves, transports tried (in order), skipped
    (LEGACY, ("grpc",), ("grpc",), ()),
    (LEGACY, ("quic",), NONE, ()),
    (LEGACY, ("grpc", "quic"), ("grpc",), ()),
    (LEGACY, (), ("grpc",), ()),  # advertises nothing: an old grpc-only peer
    (DUAL, ("grpc",), ("grpc",), ()),
    (DUAL, ("quic",), NONE, ()),
    (DUAL, ("grpc", "quic"), ("grpc",), ()),
    (DUAL, (), ("grpc",), ()),  # advertises nothing: an old grpc-only peer
    (PREFERRED, ("grpc",), ("grpc",), ("quic",)),
    (PREFERRED, ("quic",), ("quic",), ("grpc",)),
    (PREFERRED, ("grpc", "quic"), ("quic", "grpc"), ()),
    (PREFERRED, (), ("grpc",), ("quic",)),  # advertises nothing: an old grpc-only peer
    (ONLY, ("grpc",), NONE, ()),
    (ONLY, ("quic",), ("quic",), ()),
    (ONLY, ("grpc", "quic"), ("quic",), ()),
    (ONLY, (), NONE, ()),  # advertises nothing: an old grpc-only peer
]


def test_choice_table_covers_every_combination() -> None:
    combos = {(stage, frozenset(peer)) for stage, peer, _, _ in CHOICE_TABLE}
    assert len(combos) == len(CHOICE_TABLE) == 4 * 4


@pytest.mark.parametrize(("stage", "peer", "expected", "skipped"), CHOICE_TABLE)
def test_transport_choice(
    stage: RolloutStage,
    peer: tuple[str, ...],
    expected: tuple[str, ...],
    skipped: tuple[str, ...],
) -> None:
    chooser = TransportChooser(stage)
    for advertised in {peer, tuple(reversed(peer))}:  # the peer's order does not matter
        if expected == NONE:
            with pytest.raises(NoCommonTransportError) as exc:
                chooser.choose(advertised)
            assert exc.value.stage is stage
            assert exc.value.code == "no_common_transport"
            assert stage.value in str(exc.value)
            continue
        plan = chooser.choose(advertised)
        assert plan.transports == expected
        assert plan.primary == expected[0] and plan.fallbacks == expected[1:]
        assert plan.skipped == skipped
        assert plan.stage is stage
        assert plan.reason.startswith(stage.value)
        # A dialler never waits on a transport the peer lacks.
        assert set(plan.transports) <= (set(advertised) or {"grpc"})


def test_unknown_transports_only_is_not_assumed_grpc() -> None:
    with pytest.raises(NoCommonTransportError, match="serves \\[nothing\\]"):
        TransportChooser(DUAL).choose(["webtransport"])
    plan = TransportChooser(PREFERRED).choose([])
    assert plan.transports == ("grpc",) and "advertises no transports" in plan.reason


def test_reasons_say_why() -> None:
    assert "fallback" in TransportChooser(PREFERRED).choose(["grpc", "quic"]).reason
    assert "does not serve quic" in TransportChooser(PREFERRED).choose(["grpc"]).reason
    assert "still dials grpc" in TransportChooser(DUAL).choose(["grpc", "quic"]).reason


def test_chooser_follows_a_live_stage() -> None:
    current = [DUAL]
    chooser = TransportChooser(lambda: current[0])
    assert chooser.choose(["grpc", "quic"]).transports == ("grpc",)
    current[0] = PREFERRED
    assert chooser.choose(["grpc", "quic"]).transports == ("quic", "grpc")


def test_peer_transport_names_are_normalised() -> None:
    chooser = TransportChooser("quic-preferred")
    assert chooser.choose(["QUIC", "webtransport", "grpc", "quic"]).transports == (
        "quic",
        "grpc",
    )
    with pytest.raises(TypeError):
        chooser.choose("quic")
    with pytest.raises(TypeError):
        chooser.choose([1])  # type: ignore[list-item]


def test_forced_transport() -> None:
    chooser = TransportChooser(LEGACY)
    plan = chooser.choose(["grpc", "quic"], override="quic")
    assert plan.transports == ("quic",) and "forced" in plan.reason
    with pytest.raises(NoCommonTransportError, match="forced"):
        chooser.choose(["grpc"], override="quic")
    with pytest.raises(ValueError, match="unknown transport"):
        chooser.choose(["grpc"], override="tcp")


# -- persisted state ----------------------------------------------------------------------

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_state_defaults_without_writing(tmp_path: Path) -> None:
    state = RolloutState.load(tmp_path)
    assert state.stage is LEGACY and state.history == []
    assert not (tmp_path / ROLLOUT_FILE_NAME).exists()
    assert RolloutState.load(tmp_path, default="dual").stage is DUAL


def test_state_persists_changes_and_history(tmp_path: Path) -> None:
    state = RolloutState.load(tmp_path)
    first = state.advance("canary looks good", now=T0)
    assert (first.stage, first.previous, first.reason, first.at) == (
        DUAL,
        LEGACY,
        "canary looks good",
        T0,
    )
    state.set("quic-only", "jump", now=T0)
    state.rollback("quic errors up", now=T0)
    assert state.set(PREFERRED, "again") is None  # already there: no change recorded
    reloaded = RolloutState.load(tmp_path)
    assert reloaded.stage is PREFERRED
    assert [(c.stage, c.previous, c.reason) for c in reloaded.history] == [
        (DUAL, LEGACY, "canary looks good"),
        (ONLY, DUAL, "jump"),
        (PREFERRED, ONLY, "quic errors up"),
    ]
    data = json.loads((tmp_path / ROLLOUT_FILE_NAME).read_text())
    assert data["version"] == 1 and data["stage"] == "quic-preferred"
    assert data["history"][0] == {
        "at": T0.isoformat(),
        "stage": "dual",
        "previous": "legacy",
        "reason": "canary looks good",
    }
    assert [p.name for p in tmp_path.iterdir()] == [ROLLOUT_FILE_NAME]  # no temp files left


def test_concurrent_advances_are_serialised(tmp_path: Path) -> None:
    import threading

    state = RolloutState.load(tmp_path)
    outcomes: list[str] = []
    lock = threading.Lock()

    def advance(index: int) -> None:
        try:
            change = state.advance(f"worker {index}")
            result = f"{change.previous}->{change.stage}"
        except StageLimitError:
            result = "limit"
        with lock:
            outcomes.append(result)

    workers = [threading.Thread(target=advance, args=(i,)) for i in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert sorted(outcomes) == sorted(
        ["legacy->dual", "dual->quic-preferred", "quic-preferred->quic-only"] + ["limit"] * 5
    )
    reloaded = RolloutState.load(tmp_path)
    assert reloaded.stage is ONLY
    assert [c.stage for c in reloaded.history] == [DUAL, PREFERRED, ONLY]


def test_limits_do_not_write(tmp_path: Path) -> None:
    state = RolloutState.load(tmp_path)
    with pytest.raises(StageLimitError):
        state.rollback()
    assert not (tmp_path / ROLLOUT_FILE_NAME).exists()
    with pytest.raises(UnknownStageError):
        state.set("sideways")


def test_a_failed_write_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = RolloutState.load(tmp_path)
    state.advance("one", now=T0)
    before = (tmp_path / ROLLOUT_FILE_NAME).read_bytes()

    def fail(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        state.advance("two")
    monkeypatch.undo()
    assert state.stage is DUAL and len(state.history) == 1
    assert (tmp_path / ROLLOUT_FILE_NAME).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [ROLLOUT_FILE_NAME]


GOOD_CHANGE = {"at": T0.isoformat(), "stage": "dual", "previous": "legacy", "reason": "x"}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "top level is not an object"),
        (json.dumps({"version": 2, "stage": "dual"}).encode(), "format version 2"),
        (json.dumps({"version": 1}).encode(), "stage is None"),
        (json.dumps({"version": 1, "stage": "sideways"}).encode(), "unknown rollout stage"),
        (json.dumps({"version": 1, "stage": "dual", "history": {}}).encode(), "not a list"),
        (
            json.dumps({"version": 1, "stage": "dual", "history": [1]}).encode(),
            "history[0] is not an object",
        ),
        (
            json.dumps(
                {"version": 1, "stage": "dual", "history": [{**GOOD_CHANGE, "at": "yesterday"}]}
            ).encode(),
            "not an ISO timestamp",
        ),
        (
            json.dumps(
                {
                    "version": 1,
                    "stage": "dual",
                    "history": [{**GOOD_CHANGE, "at": "2026-01-01T00:00:00"}],
                }
            ).encode(),
            "has no timezone",
        ),
        (
            json.dumps(
                {"version": 1, "stage": "dual", "history": [{**GOOD_CHANGE, "previous": "x"}]}
            ).encode(),
            "history[0].previous",
        ),
        (
            json.dumps(
                {"version": 1, "stage": "dual", "history": [{**GOOD_CHANGE, "reason": 5}]}
            ).encode(),
            "reason is not a string",
        ),
        (
            json.dumps({"version": 1, "stage": "quic-only", "history": [GOOD_CHANGE]}).encode(),
            "last change recorded is to dual",
        ),
    ],
)
def test_corrupted_state_is_a_clear_error(tmp_path: Path, content: bytes, problem: str) -> None:
    (tmp_path / ROLLOUT_FILE_NAME).write_bytes(content)
    with pytest.raises(RolloutStateError) as exc:
        RolloutState.load(tmp_path)
    assert problem in str(exc.value)
    assert str(tmp_path / ROLLOUT_FILE_NAME) in str(exc.value)
    assert exc.value.code == "rollout_state_invalid"
    assert isinstance(exc.value, RolloutError)


def test_valid_file_loads(tmp_path: Path) -> None:
    (tmp_path / ROLLOUT_FILE_NAME).write_text(
        json.dumps({"version": 1, "stage": "dual", "history": [GOOD_CHANGE]})
    )
    state = RolloutState.load(tmp_path)
    assert state.stage is DUAL and state.history[0].at == T0


# -- fallback -------------------------------------------------------------------------------


class FakeGrpcError(Exception):
    """Shaped like grpc.RpcError: ``code()`` returns an enum member."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._status = Status[name]

    def code(self) -> Status:
        return self._status


def test_fallback_reasons() -> None:
    policy = FallbackPolicy()
    assert policy.fallback_reason(TimeoutError()) == "timeout"
    assert policy.fallback_reason(RPCError(Status.UNAVAILABLE)) == "status UNAVAILABLE"
    assert policy.fallback_reason(FakeGrpcError("DEADLINE_EXCEEDED")) == "status DEADLINE_EXCEEDED"
    assert policy.fallback_reason(RPCError(Status.NOT_FOUND)) is None  # the peer answered
    assert policy.fallback_reason(FakeGrpcError("PERMISSION_DENIED")) is None
    reason = policy.fallback_reason(ConnectionRefusedError(111, "refused"))
    assert reason is not None and reason.startswith("connect failed")
    assert policy.fallback_reason(ValueError("bug")) is None
    assert policy.fallback_reason(NoCommonTransportError(ONLY, ["grpc"])) == "no common transport"

    class HandshakeError(Exception):
        code = "handshake_failed"  # a string error code, not a status

    assert (policy.fallback_reason(HandshakeError("x")) or "").startswith("connect failed")


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        FallbackPolicy(budget=0)
    with pytest.raises(ValueError):
        FallbackPolicy(attempt_timeout=-1)


async def test_falls_back_and_records_why() -> None:
    plan = TransportChooser(PREFERRED).choose(["grpc", "quic"])
    registry = MetricsRegistry()
    tried: list[tuple[str, float]] = []

    async def attempt(transport: str, seconds: float) -> str:
        tried.append((transport, seconds))
        if transport == "quic":
            raise RPCError(Status.UNAVAILABLE, "no route")
        return f"via {transport}"

    result = await dial_with_fallback(
        plan,
        attempt,
        FallbackPolicy(budget=5, attempt_timeout=2),
        on_fallback=lambda src, dst, why: registry.record_fallback(src, dst, "/Svc/M", why),
    )
    assert result == "via grpc"
    assert [t for t, _ in tried] == ["quic", "grpc"]
    assert tried[0][1] == 2  # the first attempt gets attempt_timeout, not the whole budget
    assert registry.snapshot()["fallbacks"] == [
        {
            "from_transport": "quic",
            "to_transport": "grpc",
            "method": "/Svc/M",
            "reason": "status UNAVAILABLE",
            "count": 1,
            "last_reason": "status UNAVAILABLE",
        }
    ]


async def test_a_hanging_transport_is_cut_off_and_falls_back() -> None:
    plan = TransportChooser(PREFERRED).choose(["grpc", "quic"])
    fallbacks: list[str] = []

    async def attempt(transport: str, seconds: float) -> str:
        if transport == "quic":
            await asyncio.Event().wait()  # never answers
        return transport

    result = await dial_with_fallback(
        plan,
        attempt,
        FallbackPolicy(budget=30, attempt_timeout=0.05),
        on_fallback=lambda src, dst, why: fallbacks.append(f"{src}->{dst}: {why}"),
    )
    assert result == "grpc"
    assert fallbacks == ["quic->grpc: timeout"]


async def test_errors_from_the_peer_do_not_fall_back() -> None:
    plan = TransportChooser(PREFERRED).choose(["grpc", "quic"])
    tried: list[str] = []

    async def attempt(transport: str, seconds: float) -> str:
        tried.append(transport)
        raise RPCError(Status.NOT_FOUND, "no such vault")

    with pytest.raises(RPCError) as exc:
        await dial_with_fallback(plan, attempt)
    assert exc.value.status is Status.NOT_FOUND
    assert tried == ["quic"]  # not replayed on grpc


async def test_every_transport_failing_lists_the_attempts() -> None:
    plan = TransportChooser(PREFERRED).choose(["grpc", "quic"])

    async def attempt(transport: str, seconds: float) -> str:
        raise ConnectionResetError(f"{transport} down")

    with pytest.raises(FallbackExhaustedError) as exc:
        await dial_with_fallback(plan, attempt)
    assert [a.transport for a in exc.value.attempts] == ["quic", "grpc"]
    assert all(a.reason.startswith("connect failed") for a in exc.value.attempts)
    assert exc.value.budget_spent is False
    assert exc.value.code == "fallback_exhausted"


async def test_the_budget_bounds_the_whole_dial() -> None:
    plan = TransportChooser(ONLY).choose(["quic"])

    async def attempt(transport: str, seconds: float) -> str:
        await asyncio.Event().wait()
        return transport

    with pytest.raises(FallbackExhaustedError) as exc:
        await dial_with_fallback(plan, attempt, FallbackPolicy(budget=0.05, attempt_timeout=10))
    assert exc.value.budget_spent is True
    assert [(a.transport, a.reason) for a in exc.value.attempts] == [("quic", "timeout")]
