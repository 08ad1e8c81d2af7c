"""Which mixes of rollout stages a fleet may be in, and which stage changes keep it so.

Legacy and dual nodes dial gRPC only; a quic-only node serves (and dials) QUIC only. So
a fleet is *legal* — every node can call every other — exactly when no node is at
``quic-only`` while another is at ``legacy`` or ``dual``. Two rules follow:

1. a node may enter ``quic-only`` only when every other node is at ``quic-preferred``
   or ``quic-only``;
2. a node may go back from ``quic-preferred`` to ``dual`` (or further) only while no
   node is at ``quic-only``.

Every other change, forwards or back, keeps any legal fleet legal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from migration.rollout import RolloutError, RolloutStage

__all__ = ["FleetRuleError", "check_stage_change", "fleet_is_legal", "fleet_problems"]

_DIALS_GRPC_ONLY = frozenset({RolloutStage.LEGACY, RolloutStage.DUAL})


class FleetRuleError(RolloutError):
    """A stage change would leave two nodes with no transport in common."""

    code = "fleet_rule"


def fleet_is_legal(stages: Iterable[RolloutStage | str]) -> bool:
    parsed = {RolloutStage.parse(s) for s in stages}
    return not (RolloutStage.QUIC_ONLY in parsed and parsed & _DIALS_GRPC_ONLY)


def fleet_problems(stages: Mapping[str, RolloutStage]) -> list[str]:
    """Each pair of nodes (by name) that has no transport in common."""
    only = sorted(n for n, s in stages.items() if s is RolloutStage.QUIC_ONLY)
    grpc_only = sorted(n for n, s in stages.items() if s in _DIALS_GRPC_ONLY)
    return [
        f"{a} ({stages[a].value}) and {b} ({stages[b].value}) have no transport in common"
        for b in only
        for a in grpc_only
    ]


def check_stage_change(
    stages: Mapping[str, RolloutStage], node: str, target: RolloutStage | str
) -> None:
    """Raise :class:`FleetRuleError` if moving ``node`` to ``target`` would leave the
    fleet (``stages``: every node's current stage, by name) illegal."""
    after = dict(stages)
    after[node] = RolloutStage.parse(target)
    if fleet_is_legal(after.values()):
        return
    problems = [
        p for p in fleet_problems(after) if p.startswith(f"{node} (") or f"and {node} (" in p
    ]
    rule = (
        "a node may enter quic-only only when every other node is at quic-preferred or quic-only"
        if after[node] is RolloutStage.QUIC_ONLY
        else "a node may go back to dual or legacy only while no node is at quic-only"
    )
    detail = "; ".join(problems or fleet_problems(after))
    raise FleetRuleError(
        f"moving {node} to {after[node].value} breaks the rollout: {rule} ({detail})"
    )
