"""Rollout stages: what an agent serves and dials, persisted and reversible.

Stages, in order (each step can be rolled back to the previous one):

=================  ================  ================================================
stage              serves            dials
=================  ================  ================================================
``legacy``         grpc              grpc
``dual``           grpc + quic       grpc
``quic-preferred`` grpc + quic       quic, then grpc as a fallback (bounded in time)
``quic-only``      quic              quic (grpc and legacy_grpc are never imported)
=================  ================  ================================================

A peer advertises the transports it serves with its node info; :class:`TransportChooser`
intersects the local stage's dial order with them, so a dialler never waits on a transport
the peer lacks, and :func:`dial_with_fallback` runs the attempts within a
:class:`FallbackPolicy`'s time budget, reporting every fallback and its reason.

:class:`RolloutState` is the stage of one agent, persisted atomically as JSON in the
agent's state directory (``rollout.json``) with the history of changes.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

from migration.metrics import status_name_of

__all__ = [
    "DEFAULT_FALLBACK_STATUS_CODES",
    "GRPC",
    "QUIC",
    "ROLLOUT_FILE_NAME",
    "TRANSPORTS",
    "UNADVERTISED_TRANSPORTS",
    "Attempt",
    "FallbackExhaustedError",
    "FallbackPolicy",
    "NoCommonTransportError",
    "RolloutError",
    "RolloutStage",
    "RolloutState",
    "RolloutStateError",
    "StageChange",
    "StageLimitError",
    "TransportChooser",
    "TransportPlan",
    "UnknownStageError",
    "dial_with_fallback",
]

GRPC: Final = "grpc"
QUIC: Final = "quic"
TRANSPORTS: Final[tuple[str, ...]] = (GRPC, QUIC)
ROLLOUT_FILE_NAME: Final = "rollout.json"
UNADVERTISED_TRANSPORTS: Final[tuple[str, ...]] = (GRPC,)
"""What a peer that advertises no transports serves: nodes from before advertising."""
STATE_FORMAT_VERSION: Final = 1
MAX_HISTORY: Final = 1000

T = TypeVar("T")


# -- errors ---------------------------------------------------------------------------------


class RolloutError(Exception):
    """Base of the rollout errors; ``code`` is stable (logs, metrics, exit codes)."""

    code: ClassVar[str] = "rollout_error"


class UnknownStageError(RolloutError, ValueError):
    """A stage name that is not one of legacy, dual, quic-preferred, quic-only."""

    code = "unknown_stage"


class StageLimitError(RolloutError):
    """Advancing past ``quic-only`` or rolling back past ``legacy``."""

    code = "stage_limit"


class RolloutStateError(RolloutError):
    """The persisted rollout state is unreadable or invalid (the file is named)."""

    code = "rollout_state_invalid"

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"rollout state {path} is invalid: {problem}")
        self.path = path
        self.problem = problem


class NoCommonTransportError(RolloutError):
    """The local stage dials no transport that the peer serves."""

    code = "no_common_transport"

    def __init__(
        self,
        stage: RolloutStage,
        peer_transports: Sequence[str],
        *,
        dials: Sequence[str] | None = None,
    ) -> None:
        self.stage = stage
        self.dials = tuple(stage.dial_order if dials is None else dials)
        self.peer_transports = tuple(peer_transports)
        forced = "" if dials is None else " (forced)"
        serves = ", ".join(self.peer_transports) or "nothing"
        super().__init__(
            f"stage {stage.value} dials [{', '.join(self.dials)}]{forced} but the peer "
            f"serves [{serves}]: no transport in common"
        )


@dataclass(frozen=True)
class Attempt:
    """One transport tried by :func:`dial_with_fallback` and why it failed."""

    transport: str
    reason: str


class FallbackExhaustedError(RolloutError):
    """Every planned transport failed or the time budget ran out."""

    code = "fallback_exhausted"

    def __init__(self, attempts: Sequence[Attempt], *, budget_spent: bool) -> None:
        tried = "; ".join(f"{a.transport}: {a.reason}" for a in attempts) or "nothing tried"
        why = "time budget spent" if budget_spent else "every transport failed"
        super().__init__(f"{why} ({tried})")
        self.attempts = tuple(attempts)
        self.budget_spent = budget_spent


# -- stages ---------------------------------------------------------------------------------


class RolloutStage(enum.Enum):
    LEGACY = "legacy"
    DUAL = "dual"
    QUIC_PREFERRED = "quic-preferred"
    QUIC_ONLY = "quic-only"

    @classmethod
    def parse(cls, value: str | RolloutStage) -> RolloutStage:
        if isinstance(value, RolloutStage):
            return value
        if isinstance(value, str):
            text = value.strip().lower().replace("_", "-")
            for stage in cls:
                if stage.value == text:
                    return stage
        names = ", ".join(s.value for s in cls)
        raise UnknownStageError(f"unknown rollout stage {value!r}; expected one of {names}")

    @classmethod
    def ordered(cls) -> tuple[RolloutStage, ...]:
        return tuple(cls)

    @property
    def order(self) -> int:
        """0 for legacy .. 3 for quic-only."""
        return list(RolloutStage).index(self)

    @property
    def next(self) -> RolloutStage | None:
        stages = list(RolloutStage)
        return stages[self.order + 1] if self.order + 1 < len(stages) else None

    @property
    def previous(self) -> RolloutStage | None:
        return list(RolloutStage)[self.order - 1] if self.order > 0 else None

    def advance(self) -> RolloutStage:
        if self.next is None:
            raise StageLimitError(f"{self.value} is the last stage; there is nothing to advance to")
        return self.next

    def rollback(self) -> RolloutStage:
        if self.previous is None:
            raise StageLimitError(
                f"{self.value} is the first stage; there is nothing to roll back to"
            )
        return self.previous

    @property
    def serves_legacy(self) -> bool:
        return self is not RolloutStage.QUIC_ONLY

    @property
    def serves_quic(self) -> bool:
        return self is not RolloutStage.LEGACY

    @property
    def serves(self) -> tuple[str, ...]:
        """The transports this stage serves, which an agent advertises in its node info."""
        served: list[str] = []
        if self.serves_legacy:
            served.append(GRPC)
        if self.serves_quic:
            served.append(QUIC)
        return tuple(served)

    @property
    def dial_order(self) -> tuple[str, ...]:
        """The transports this stage dials, in order of preference."""
        return _DIAL_ORDER[self]

    @property
    def allows_fallback(self) -> bool:
        return len(self.dial_order) > 1

    @property
    def needs_grpc(self) -> bool:
        """Whether grpcio / legacy_grpc must be importable in this stage."""
        return self.serves_legacy or GRPC in self.dial_order

    def __str__(self) -> str:
        return self.value


_DIAL_ORDER: Final[dict[RolloutStage, tuple[str, ...]]] = {
    RolloutStage.LEGACY: (GRPC,),
    RolloutStage.DUAL: (GRPC,),
    RolloutStage.QUIC_PREFERRED: (QUIC, GRPC),
    RolloutStage.QUIC_ONLY: (QUIC,),
}


# -- persisted state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StageChange:
    """One change of stage: when, to what, from what, and why."""

    at: datetime
    stage: RolloutStage
    previous: RolloutStage | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "stage": self.stage.value,
            "previous": None if self.previous is None else self.previous.value,
            "reason": self.reason,
        }


class RolloutState:
    """The rollout stage of one agent, persisted in ``<state_dir>/rollout.json``.

    Every change is written atomically (temporary file, fsync, rename) before it is
    visible, so a crash leaves either the old or the new state, never half a file.
    Methods are thread-safe; ``stage`` can be read from any thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        stage: RolloutStage = RolloutStage.LEGACY,
        history: Iterable[StageChange] = (),
    ) -> None:
        self._path = Path(path)
        self._stage = RolloutStage.parse(stage)
        self._history: list[StageChange] = list(history)
        self._lock = threading.Lock()

    @classmethod
    def path_in(cls, state_dir: str | os.PathLike[str]) -> Path:
        return Path(state_dir) / ROLLOUT_FILE_NAME

    @classmethod
    def load(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        default: RolloutStage | str = RolloutStage.LEGACY,
    ) -> RolloutState:
        """The state stored in ``state_dir``, or a new one at ``default`` when there is
        none yet (not written until the first change or :meth:`save`). Raises
        :class:`RolloutStateError` for an unreadable or invalid file."""
        path = cls.path_in(state_dir)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, RolloutStage.parse(default))
        except OSError as exc:
            raise RolloutStateError(path, f"cannot read it: {exc.strerror or exc}") from None
        return cls._parse(path, raw)

    @classmethod
    def _parse(cls, path: Path, raw: bytes) -> RolloutState:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RolloutStateError(path, f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise RolloutStateError(path, "the top level is not an object")
        version = data.get("version")
        if version != STATE_FORMAT_VERSION:
            raise RolloutStateError(
                path, f"format version {version!r}, expected {STATE_FORMAT_VERSION}"
            )
        stage = _parse_stage(path, data.get("stage"), "stage")
        history_data = data.get("history", [])
        if not isinstance(history_data, list):
            raise RolloutStateError(path, "history is not a list")
        history = [_parse_change(path, index, item) for index, item in enumerate(history_data)]
        if history and history[-1].stage is not stage:
            raise RolloutStateError(
                path,
                f"stage is {stage.value} but the last change recorded is to "
                f"{history[-1].stage.value}",
            )
        return cls(path, stage, history)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def stage(self) -> RolloutStage:
        return self._stage

    @property
    def history(self) -> list[StageChange]:
        with self._lock:
            return list(self._history)

    def set(
        self, stage: RolloutStage | str, reason: str = "", *, now: datetime | None = None
    ) -> StageChange | None:
        """Move to ``stage`` (any stage; use :meth:`advance`/:meth:`rollback` for one
        step) and persist it. Returns the change, or ``None`` if already there."""
        target = RolloutStage.parse(stage)
        return self._change(lambda current: target, reason, now)

    def advance(self, reason: str = "", *, now: datetime | None = None) -> StageChange:
        """One stage forward; :class:`StageLimitError` at ``quic-only``."""
        change = self._change(RolloutStage.advance, reason, now)
        if change is None:  # pragma: no cover - advance() always moves or raises
            raise StageLimitError("advance did not change the stage")
        return change

    def rollback(self, reason: str = "", *, now: datetime | None = None) -> StageChange:
        """One stage back; :class:`StageLimitError` at ``legacy``."""
        change = self._change(RolloutStage.rollback, reason, now)
        if change is None:  # pragma: no cover - rollback() always moves or raises
            raise StageLimitError("rollback did not change the stage")
        return change

    def _change(
        self,
        target_of: Callable[[RolloutStage], RolloutStage],
        reason: str,
        now: datetime | None,
    ) -> StageChange | None:
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        when = now if now is not None else datetime.now(UTC)
        if when.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        with self._lock:  # read, decide, write and publish as one step
            target = target_of(self._stage)
            if target is self._stage:
                return None
            change = StageChange(when, target, self._stage, reason)
            history = [*self._history, change][-MAX_HISTORY:]
            self._write(target, history)
            self._stage, self._history = target, history
            return change

    def save(self) -> None:
        with self._lock:
            self._write(self._stage, self._history)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": STATE_FORMAT_VERSION,
                "stage": self._stage.value,
                "history": [c.to_json() for c in self._history],
            }

    def _write(self, stage: RolloutStage, history: Sequence[StageChange]) -> None:
        payload = {
            "version": STATE_FORMAT_VERSION,
            "stage": stage.value,
            "history": [c.to_json() for c in history],
        }
        data = (json.dumps(payload, indent=2) + "\n").encode()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{self._path.name}.", dir=self._path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, self._path)
        except BaseException:
            try:
                os.unlink(temp_name)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(self._path.parent)

    def __repr__(self) -> str:
        return f"RolloutState({str(self._path)!r}, stage={self._stage.value!r})"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (e.g. Windows); the rename stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse_stage(path: Path, value: object, where: str) -> RolloutStage:
    if not isinstance(value, str):
        raise RolloutStateError(path, f"{where} is {value!r}, not a stage name")
    try:
        return RolloutStage.parse(value)
    except UnknownStageError as exc:
        raise RolloutStateError(path, f"{where}: {exc}") from None


def _parse_change(path: Path, index: int, item: object) -> StageChange:
    where = f"history[{index}]"
    if not isinstance(item, dict):
        raise RolloutStateError(path, f"{where} is not an object")
    at_text = item.get("at")
    if not isinstance(at_text, str):
        raise RolloutStateError(path, f"{where}.at is missing or not a string")
    try:
        at = datetime.fromisoformat(at_text)
    except ValueError:
        raise RolloutStateError(path, f"{where}.at {at_text!r} is not an ISO timestamp") from None
    if at.utcoffset() is None:
        raise RolloutStateError(path, f"{where}.at {at_text!r} has no timezone")
    stage = _parse_stage(path, item.get("stage"), f"{where}.stage")
    previous_value = item.get("previous")
    previous = (
        None if previous_value is None else _parse_stage(path, previous_value, f"{where}.previous")
    )
    reason = item.get("reason", "")
    if not isinstance(reason, str):
        raise RolloutStateError(path, f"{where}.reason is not a string")
    return StageChange(at, stage, previous, reason)


# -- choosing a transport ----------------------------------------------------------------------


@dataclass(frozen=True)
class TransportPlan:
    """The transports to try, in order, and why.

    ``skipped`` lists the transports the stage would dial but the peer does not serve
    (they are never tried, so never waited on).
    """

    stage: RolloutStage
    transports: tuple[str, ...]
    reason: str
    skipped: tuple[str, ...] = ()

    @property
    def primary(self) -> str:
        return self.transports[0]

    @property
    def fallbacks(self) -> tuple[str, ...]:
        return self.transports[1:]


def normalize_transports(transports: Iterable[str]) -> tuple[str, ...]:
    """A peer's advertised transports: known names, lower-cased, de-duplicated, in order.
    Unknown names (a newer peer's transports) are ignored."""
    if isinstance(transports, str):
        raise TypeError("transports must be a sequence of names, not a single string")
    seen: list[str] = []
    for name in transports:
        if not isinstance(name, str):
            raise TypeError(f"transport names are strings, not {type(name).__name__}")
        key = name.strip().lower()
        if key in TRANSPORTS and key not in seen:
            seen.append(key)
    return tuple(seen)


class TransportChooser:
    """Orders the transports to dial a peer, by the local stage and what the peer serves.

    ``stage`` is a stage or a zero-argument callable returning the current one, so a
    running agent's stage change applies to the next call without rebuilding anything.
    """

    def __init__(self, stage: RolloutStage | str | Callable[[], RolloutStage]) -> None:
        if callable(stage):
            self._stage_fn: Callable[[], RolloutStage] = stage
        else:
            fixed = RolloutStage.parse(stage)
            self._stage_fn = lambda: fixed

    @property
    def stage(self) -> RolloutStage:
        return self._stage_fn()

    def choose(
        self, peer_transports: Iterable[str], *, override: str | None = None
    ) -> TransportPlan:
        """The plan for a peer advertising ``peer_transports``.

        A peer that advertises nothing at all predates advertising: it is taken to serve
        ``grpc`` only (:data:`UNADVERTISED_TRANSPORTS`). ``override`` forces one
        transport (``quicshift call --transport``); it must be one the peer serves.
        Raises :class:`NoCommonTransportError` when nothing fits.
        """
        stage = self.stage
        advertised = list(peer_transports) if not isinstance(peer_transports, str) else None
        if advertised is None:
            raise TypeError("transports must be a sequence of names, not a single string")
        assumed = not advertised
        peer = UNADVERTISED_TRANSPORTS if assumed else normalize_transports(advertised)
        if override is not None:
            forced = override.strip().lower()
            if forced not in TRANSPORTS:
                raise ValueError(
                    f"unknown transport {override!r}; expected one of {', '.join(TRANSPORTS)}"
                )
            if forced not in peer:
                raise NoCommonTransportError(stage, peer, dials=(forced,))
            return TransportPlan(stage, (forced,), f"{forced} forced by the caller")
        wanted = stage.dial_order
        usable = tuple(t for t in wanted if t in peer)
        skipped = tuple(t for t in wanted if t not in peer)
        if not usable:
            raise NoCommonTransportError(stage, peer)
        reason = _explain(stage, usable, skipped)
        if assumed:
            reason += "; the peer advertises no transports, so it is taken to serve grpc only"
        return TransportPlan(stage, usable, reason, skipped)


def _explain(stage: RolloutStage, usable: tuple[str, ...], skipped: tuple[str, ...]) -> str:
    if len(usable) > 1:
        return f"{stage.value}: {usable[0]} first, then {', '.join(usable[1:])} as fallback"
    text = f"{stage.value}: {usable[0]}"
    if skipped:
        text += f" only (the peer does not serve {', '.join(skipped)})"
    elif stage is RolloutStage.DUAL:
        text += " (dual serves quic but still dials grpc)"
    return text


# -- fallback ------------------------------------------------------------------------------------

DEFAULT_FALLBACK_STATUS_CODES: Final = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


@dataclass(frozen=True)
class FallbackPolicy:
    """When and how fast to give up on a transport and try the next.

    ``budget`` bounds the whole dial (every attempt together), in seconds;
    ``attempt_timeout`` bounds one attempt that is not the last (the last gets all of
    what is left of the budget). A failure falls back only if :meth:`fallback_reason`
    says so: timeouts, connection errors and the status codes in ``status_codes``;
    any other error (the peer answered) is the call's result and is raised as is.
    """

    budget: float = 10.0
    attempt_timeout: float = 3.0
    status_codes: frozenset[str] = field(default=DEFAULT_FALLBACK_STATUS_CODES)

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"budget must be positive, got {self.budget!r}")
        if not self.attempt_timeout > 0:
            raise ValueError(f"attempt_timeout must be positive, got {self.attempt_timeout!r}")

    def fallback_reason(self, exc: BaseException) -> str | None:
        """Why ``exc`` justifies trying the next transport, or ``None`` if it does not."""
        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, NoCommonTransportError):
            return "no common transport"
        code = status_name_of(exc)
        if code is not None:
            return f"status {code}" if code in self.status_codes else None
        failed = type(exc).__name__
        if isinstance(exc, ConnectionError | OSError):
            return f"connect failed: {failed}: {exc}"
        if any(cls.__name__ in _CONNECT_ERROR_NAMES for cls in type(exc).__mro__):
            return f"connect failed: {failed}: {exc}"
        return None


# Transport-level connection failures of quic_rpc.quic and legacy_grpc, by class name so
# that this module imports neither stack.
_CONNECT_ERROR_NAMES: Final = frozenset(
    {"ConnectionFailedError", "HandshakeError", "SocketClosedError", "QUICConnectionError"}
)


async def dial_with_fallback(
    plan: TransportPlan,
    attempt: Callable[[str, float], Awaitable[T]],
    policy: FallbackPolicy | None = None,
    *,
    on_fallback: Callable[[str, str, str], None] | None = None,
) -> T:
    """Run ``attempt(transport, timeout)`` for each transport of ``plan`` in order until
    one succeeds, within ``policy.budget`` seconds in all.

    ``on_fallback(from_transport, to_transport, reason)`` is called before each
    fallback (e.g. :func:`migration.metrics.record_fallback`). Errors that do not
    justify a fallback are raised at once; when everything failed or the budget ran out,
    :class:`FallbackExhaustedError` lists every attempt.
    """
    policy = policy or FallbackPolicy()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.budget
    attempts: list[Attempt] = []
    transports = plan.transports
    for index, transport in enumerate(transports):
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise FallbackExhaustedError(attempts, budget_spent=True)
        last = index == len(transports) - 1
        timeout = remaining if last else min(policy.attempt_timeout, remaining)
        try:
            async with asyncio.timeout(timeout):
                return await attempt(transport, timeout)
        except Exception as exc:
            reason = policy.fallback_reason(exc)
            if reason is None:
                raise
            attempts.append(Attempt(transport, reason))
            if last:
                raise FallbackExhaustedError(
                    attempts, budget_spent=deadline - loop.time() <= 0
                ) from exc
            if on_fallback is not None:
                on_fallback(transport, transports[index + 1], reason)
    raise FallbackExhaustedError(attempts, budget_spent=False)  # empty plan
