"""The soak driver for tests/reliability/test_soak.py: mixed traffic between dual-stack agents
(loopback) while their rollout stages change and one of them restarts, with every logical
message sequence-numbered and accounted for.

Per ordered pair of agents (src -> dst) one sender sends, one message at a time, an endless
sequence of logical messages ``seq = 1, 2, ...`` of mixed kinds:

* ``echo``   unary ``AgentService/Echo``: the text carries (src, dst, seq) and a digest;
             the answer must be the same text
* ``notify`` unary ``NotificationsSend`` of a signed notification whose data carries
             (src, dst, seq) and a digest; at the end dst's inbox must hold every one
             exactly once, intact, and in seq order (inbox entry order per sender)
* ``scan``   server-streaming ``VaultsScan``: the vault shared with src is listed
* ``pull``   server-streaming bulk ``VaultsPull`` (~256 KiB): the concatenated chunks must
             equal dst's vault archive byte for byte

A message that fails because the peer is down or a transport is going away (UNAVAILABLE,
CANCELLED, DEADLINE_EXCEEDED, connection errors) is retried and counted per reason;
a message that still fails after ``MAX_ATTEMPTS`` is *reported* (listed in ``failed``), never
silently dropped. Anything else (a wrong answer, an unexpected status) is an error.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import hashlib
import json
import os
import random
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent.domains.notifications import new_notification, sign_notification
from agent.dual import DualStackAgent
from agent.servicer import signed_notification_to_proto
from migration.rollout import FallbackExhaustedError, RolloutStage
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import common_pb2 as common
from tests.rollout.fleet import TEST_POLICY, introduce, make_agents, seed, vault_for

KINDS = ("echo", "echo", "notify", "scan", "pull")
MAX_ATTEMPTS = 30
NOTE_TYPE = "soak"
BLOB = 256 * 1024
# rollout moves allowed during the soak: neighbours in the quic part of the rollout
MOVES = {
    RolloutStage.DUAL: (RolloutStage.QUIC_PREFERRED,),
    RolloutStage.QUIC_PREFERRED: (RolloutStage.DUAL, RolloutStage.QUIC_ONLY),
    RolloutStage.QUIC_ONLY: (RolloutStage.QUIC_PREFERRED,),
}
RETRYABLE = {"UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "UNKNOWN_TRANSPORT_ERROR"}


@dataclass
class SoakReport:
    seconds: float = 0.0
    delivered: collections.Counter[str] = field(default_factory=collections.Counter)
    retries: collections.Counter[str] = field(default_factory=collections.Counter)
    retried_messages: int = 0
    failed: list[str] = field(default_factory=list)  # reported: gave up after retries
    errors: list[str] = field(default_factory=list)  # wrong answers, unexpected failures
    stage_changes: int = 0
    restarts: int = 0
    stages_seen: set[str] = field(default_factory=set)
    bytes_pulled: int = 0
    notes_checked: int = 0
    rss_growth: int = 0
    traced_growth: int = 0
    objects_growth: int = 0
    fds_before: int = 0
    fds_after: int = 0
    new_fds: list[str] = field(default_factory=list)
    fds_after_stop: int = 0
    held_after_stop: list[str] = field(default_factory=list)
    grpc_alive: dict[str, int] = field(default_factory=dict)
    sent: dict[tuple[int, int], int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "delivered": dict(self.delivered),
            "total_delivered": sum(self.delivered.values()),
            "retries": dict(self.retries),
            "retried_messages": self.retried_messages,
            "failed": len(self.failed),
            "errors": self.errors[:5],
            "stage_changes": self.stage_changes,
            "restarts": self.restarts,
            "stages_seen": sorted(self.stages_seen),
            "bytes_pulled": self.bytes_pulled,
            "notes_checked": self.notes_checked,
            "rss_growth_mib": round(self.rss_growth / 2**20, 1),
            "traced_growth_mib": round(self.traced_growth / 2**20, 1),
            "gc_objects_growth": self.objects_growth,
            "fds": [self.fds_before, self.fds_after],
            "new_fds": self.new_fds,
            "fds_after_stop": self.fds_after_stop,
            "held_after_stop": self.held_after_stop,
            "grpc_alive": self.grpc_alive,
        }


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def _describe_fd(target: str) -> str:
    """``socket:[inode]`` -> which table the socket is in (tcp, udp, unix) and its line."""
    if target.startswith("socket:["):
        inode = target[8:-1]
        for table in ("tcp", "tcp6", "udp", "udp6", "unix"):
            try:
                lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                if inode in line.split():
                    return f"{target} {table}: {' '.join(line.split()[:4])}"
    return target


def _live_grpc_objects() -> dict[str, int]:
    """grpc channels, servers and calls still alive (diagnostics for a leaked poller)."""
    counts: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        cls = type(obj)
        module = str(getattr(cls, "__module__", "") or "")
        name = cls.__name__
        if "grpc" in module and any(x in name for x in ("Channel", "Server", "Call", "Poller")):
            counts[f"{module}.{name}"] += 1
            if name in ("AgentGRPCServer", "Channel"):
                # who holds it, two levels up (diagnostics)
                for ref in gc.get_referrers(obj)[:4]:
                    up = [_short(r2) for r2 in gc.get_referrers(ref)[:4]]
                    counts[f"  held by {_short(ref)} <- {up}"] += 1
                    for r2 in gc.get_referrers(ref):
                        if type(r2).__name__ == "traceback":
                            counts[f"  traceback <- {_holders(r2)}"] += 1
    return dict(counts)


def _holders(tb: object, depth: int = 6) -> list[str]:
    """Follow a traceback up to the exception and whatever holds that (diagnostics)."""
    chain: list[str] = []
    obj = tb
    for _ in range(depth):
        refs = [r for r in gc.get_referrers(obj) if type(r).__name__ not in ("frame", "list")]
        if not refs:
            break
        obj = refs[0]
        chain.append(_short(obj) + (f" {obj!r:.120}" if isinstance(obj, BaseException) else ""))
    return chain


def _short(obj: object) -> str:
    if isinstance(obj, dict):
        return f"dict({list(obj)[:5]})"
    if isinstance(obj, list | tuple):
        return f"{type(obj).__name__}[{len(obj)}]"
    text = repr(obj) if callable(obj) or hasattr(obj, "__qualname__") else ""
    return f"{type(obj).__name__} {text[:80]}"


def _status(exc: BaseException) -> str:
    if isinstance(exc, FallbackExhaustedError):
        # every transport tried failed: retryable if each failed for a retryable reason
        reasons = [a.reason for a in exc.attempts]
        if reasons and all(any(r in reason for r in RETRYABLE) for reason in reasons):
            return "UNAVAILABLE"
        return f"FallbackExhaustedError: {exc}"
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            code = code()
        except Exception:
            code = None
    name = getattr(code, "name", None) or getattr(getattr(exc, "status", None), "name", None)
    if name:
        return str(name)
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, ConnectionError | OSError | asyncio.CancelledError):
        return "UNAVAILABLE"
    if type(exc).__name__ in ("DualStackAgentError", "TransportNotRunningError"):
        return "UNAVAILABLE"
    return f"{type(exc).__name__}: {exc}"


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]


class Soak:
    def __init__(self, root: Path, seconds: float, n_agents: int = 3, seed_: int = 7) -> None:
        self.root = root
        self.seconds = seconds
        self.n = n_agents
        self.rng = random.Random(seed_)
        self.report = SoakReport()
        self.agents: list[DualStackAgent] = []
        self.down: set[int] = set()  # agents being restarted
        self.stage_lock = asyncio.Lock()
        self.archives: dict[tuple[int, int], bytes] = {}  # (src, dst) -> dst's archive for src
        self.notes: dict[tuple[int, int], list[tuple[int, bytes, bytes]]] = collections.defaultdict(
            list
        )  # (src, dst) -> [(seq, notification_id, data)] in send order
        self.stop_at = 0.0
        self.visited: dict[int, set[RolloutStage]] = collections.defaultdict(set)
        qp, qo, dual = RolloutStage.QUIC_PREFERRED, RolloutStage.QUIC_ONLY, RolloutStage.DUAL
        self.script = [(0, qp), (1, qo), (1, qp), (2, dual), (2, qp), (0, dual)]

    def _agent_kwargs(self) -> dict[str, Any]:
        return {"fallback": TEST_POLICY, "drain_notice": 0.0, "peer_info_ttl": 1.0}

    # -- traffic ----------------------------------------------------------------------------
    async def _send_one(self, i: int, j: int, seq: int, kind: str) -> None:
        src, dst = self.agents[i], self.agents[j]
        if kind == "echo":
            text = f"{i}>{j}#{seq}:{_digest(i, j, seq)}" + "x" * (seq % 512)
            answer = await src.call(
                dst.node_id, "Echo", common.EchoMessage(message=text), timeout=10
            )
            if answer.message != text:
                raise AssertionError(f"echo {i}>{j}#{seq} corrupted: {answer.message[:60]!r}")
        elif kind == "notify":
            data = json.dumps({"src": i, "dst": j, "seq": seq, "d": _digest(i, j, seq)}).encode()
            note_id = hashlib.sha256(b"%d>%d#%d" % (i, j, seq)).digest()[:16]
            note = new_notification(src.node_id, NOTE_TYPE, data, notification_id=note_id)
            signed = signed_notification_to_proto(sign_notification(note, src.identity))
            await src.call(dst.node_id, "NotificationsSend", signed, timeout=10)
            entries = self.notes[(i, j)]
            if not entries or entries[-1][0] != seq:
                entries.append((seq, note_id, data))
        elif kind == "scan":
            page = common.PaginationRequest(page_size=100)
            messages = await src.call(
                dst.node_id, "VaultsScan", pb.VaultsScanRequest(pagination=page), timeout=10
            )
            names = {m.vault.vault_name for m in messages if m.WhichOneof("result") == "vault"}
            if vault_for(src) not in names:
                raise AssertionError(f"scan {i}>{j}#{seq}: {sorted(names)}")
        else:  # pull
            chunks = await src.call(
                dst.node_id,
                "VaultsPull",
                pb.VaultsPullRequest(vault_name=vault_for(src)),
                timeout=20,
            )
            got = b"".join(c.chunk for c in chunks)
            if got != self.archives[(i, j)]:
                raise AssertionError(
                    f"pull {i}>{j}#{seq}: {len(got)} bytes, sha256 {hashlib.sha256(got).hexdigest()[:12]}"
                    f" != expected {hashlib.sha256(self.archives[(i, j)]).hexdigest()[:12]}"
                )
            self.report.bytes_pulled += len(got)

    async def _deliver(self, i: int, j: int, seq: int, kind: str) -> None:
        """Deliver one logical message: retried while the failure is retryable, reported
        if it never gets through, an error if the answer is wrong."""
        retried = False
        for _attempt in range(MAX_ATTEMPTS):
            if j in self.down or i in self.down:
                await asyncio.sleep(0.2)  # a retry later: the peer is restarting
            try:
                await self._send_one(i, j, seq, kind)
            except AssertionError as exc:
                self.report.errors.append(str(exc))
                return
            except Exception as exc:
                reason = _status(exc)
                if reason not in RETRYABLE:
                    self.report.errors.append(f"{kind} {i}>{j}#{seq}: {reason}")
                    return
                self.report.retries[reason] += 1
                if not retried:
                    retried = True
                    self.report.retried_messages += 1
                await asyncio.sleep(0.1)
                continue
            self.report.delivered[kind] += 1
            return
        self.report.failed.append(f"{kind} {i}>{j}#{seq}")

    def _traffic_over(self) -> bool:
        """The soak's traffic window has run out (a loop bound, not a timing check)."""
        return time.monotonic() >= self.stop_at

    async def _sender(self, i: int, j: int) -> None:
        seq = 0
        while not self._traffic_over():
            seq += 1
            kind = KINDS[(seq + i + j) % len(KINDS)]
            await self._deliver(i, j, seq, kind)
        self.report.sent[(i, j)] = seq

    # -- disturbances -----------------------------------------------------------------------
    async def _stage_changer(self) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            if self._traffic_over():
                return
            async with self.stage_lock:
                moves = [
                    (k, target)
                    for k in range(self.n)
                    if k not in self.down
                    for target in MOVES[self.agents[k].stage]
                    if self._legal(k, target)
                ]
                # first a fixed tour (every stage and every kind of move, even in a short
                # soak), then random moves, preferring a stage the agent has not been at
                scripted = [m for m in self.script[:1] if m in moves]
                if self.script:
                    del self.script[0]
                fresh = [m for m in moves if m[1] not in self.visited[m[0]]]
                k, target = scripted[0] if scripted else self.rng.choice(fresh or moves)
                self.visited[k].add(target)
                self.report.stages_seen.add(target.value)
                agent = self.agents[k]
                await agent.set_stage(target, "soak")
                self.report.stage_changes += 1
                for other in self.agents:
                    if other is not agent:
                        other.add_node(agent.node_id, agent.node_addresses, serves=agent.serves)

    def _legal(self, k: int, target: RolloutStage) -> bool:
        """A stage at ``dual`` dials only grpc and one at ``quic-only`` serves only quic:
        the fleet never has both at once (every pair keeps a transport in common)."""
        stages = {a.stage for n, a in enumerate(self.agents) if n != k} | {target}
        return not {RolloutStage.DUAL, RolloutStage.QUIC_ONLY} <= stages

    async def _restart(self, k: int) -> None:
        async with self.stage_lock:
            old = self.agents[k]
            identity, state_dir, ports = old.identity, old.state_dir, old.ports
            self.down.add(k)
            await old.stop()
            await asyncio.sleep(1.0)  # the peer is down for a while: callers retry
            new = DualStackAgent(
                state_dir,
                identity=identity,
                grpc_port=ports["grpc"],
                quic_port=ports["quic"],
                **self._agent_kwargs(),
            )
            await new.start()
            self.agents[k] = new
            introduce(self.agents)
            self.down.discard(k)
            self.report.restarts += 1

    # -- checks -----------------------------------------------------------------------------
    async def _check_inboxes(self) -> None:
        for (i, j), sent in self.notes.items():
            dst = self.agents[j]
            sender = self.agents[i].node_id
            inbox = await asyncio.to_thread(dst.notifications.all)
            mine = [
                e
                for e in inbox
                if e.notification.sender == sender and e.notification.type == NOTE_TYPE
            ]
            got = [(e.notification.notification_id, e.notification.data) for e in mine]
            want = [(nid, data) for _, nid, data in sent]
            ids = [nid for nid, _ in got]
            if len(ids) != len(set(ids)):
                self.report.errors.append(f"notes {i}>{j}: duplicates in the inbox")
            if sorted(got) != sorted(want):
                missing = len(set(want) - set(got))
                extra = len(set(got) - set(want))
                self.report.errors.append(
                    f"notes {i}>{j}: {missing} missing/corrupted, {extra} extra"
                )
            elif got != want:
                self.report.errors.append(f"notes {i}>{j}: out of order")
            self.report.notes_checked += len(got)

    # -- the run ----------------------------------------------------------------------------
    async def run(self) -> SoakReport:
        started = time.monotonic()
        gc.collect()
        self.report.fds_before = open_fds()
        fds0 = fd_targets()
        self.agents = make_agents(self.root, self.n, stage="quic-preferred", **self._agent_kwargs())
        process = psutil.Process()
        tasks: list[asyncio.Task[Any]] = []
        try:
            for agent in self.agents:
                await agent.start()
            await self.agents[0].set_stage(RolloutStage.DUAL, "soak")
            self.visited[0].add(RolloutStage.DUAL)
            self.report.stages_seen |= {a.stage.value for a in self.agents}
            for k in range(1, self.n):
                self.visited[k].add(RolloutStage.QUIC_PREFERRED)
            await seed(self.agents, blob_size=BLOB)
            for i in range(self.n):
                for j in range(self.n):
                    if i != j:
                        archive = await asyncio.to_thread(
                            self.agents[j].vaults.archive_bytes, vault_for(self.agents[i])
                        )
                        self.archives[(i, j)] = archive
            # warm-up: one of everything, then the memory baseline
            for i in range(self.n):
                for j in range(self.n):
                    if i != j:
                        for kind in ("echo", "scan", "pull"):
                            await self._send_one(i, j, 0, kind)
            gc.collect()
            rss0 = process.memory_info().rss
            objects0 = len(gc.get_objects())
            traced0 = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0

            self.stop_at = time.monotonic() + self.seconds
            senders = [
                asyncio.create_task(self._sender(i, j))
                for i in range(self.n)
                for j in range(self.n)
                if i != j
            ]
            tasks = [*senders, asyncio.create_task(self._stage_changer())]
            restart_after = self.seconds / 2
            await asyncio.sleep(restart_after)
            await self._restart(self.n - 1)
            await asyncio.gather(*tasks)
            await self._check_inboxes()
            gc.collect()
            self.report.rss_growth = process.memory_info().rss - rss0
            self.report.objects_growth = len(gc.get_objects()) - objects0
            if tracemalloc.is_tracing():
                self.report.traced_growth = tracemalloc.get_traced_memory()[0] - traced0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for agent in self.agents:
                await agent.stop()
        # what the stopped agents still hold while they are referenced (a finding, reported:
        # see docs/RELIABILITY.md), then drop them: nothing may be left after that
        gc.collect()
        self.report.fds_after_stop = open_fds()
        self.report.held_after_stop = sorted(
            _describe_fd(v) for k, v in fd_targets().items() if k not in fds0
        )
        self.agents = []
        # descriptors closed by background threads (grpc's poller, executor threads) may
        # take a moment to go: wait for them, bounded, and report what is left
        for _ in range(50):
            gc.collect()
            if open_fds() <= self.report.fds_before:
                break
            await asyncio.sleep(0.2)
        self.report.fds_after = open_fds()
        self.report.grpc_alive = _live_grpc_objects()
        self.report.new_fds = sorted(
            _describe_fd(v) for k, v in fd_targets().items() if k not in fds0
        )
        self.report.seconds = time.monotonic() - started
        return self.report


async def run_soak(root: Path, seconds: float, **kwargs: Any) -> SoakReport:
    return await Soak(root, seconds, **kwargs).run()


Runner = Callable[[Path, float], Awaitable[SoakReport]]
