"""The agent's domains: state, pagination, node graph, claims, notifications, vaults."""

from __future__ import annotations

import io
import os
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.domains import (
    AgentState,
    Claim,
    ClaimConflictError,
    ClaimSignature,
    ClaimStore,
    ClaimVerificationError,
    InvalidCursorError,
    InvalidInputError,
    NodeAddress,
    NodeGraph,
    NotFoundError,
    NotificationInbox,
    Page,
    PageRequest,
    SignatureVerificationError,
    SignedClaim,
    SortOrder,
    StateClosedError,
    VaultArchiveError,
    VaultExistsError,
    VaultPermission,
    VaultStore,
    new_claim,
    new_notification,
    sign_claim,
    sign_notification,
    verify_notification,
)
from agent.domains.pagination import decode_cursor, encode_cursor
from agent.domains.vault_archive import (
    ArchiveEnded,
    ArchiveFileData,
    ArchiveFileStarted,
    VaultArchiveParser,
    check_vault_path,
    write_archive,
)
from agent.identity import NodeIdentity
from agent.nodeid import NodeId

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[AgentState]:
    with AgentState.open(tmp_path / "state") as s:
        yield s


def node_in_bucket(bucket: int, own: NodeId | None = None) -> NodeId:
    """A random node id that falls in ``bucket`` as seen from ``own`` (default: zeros)."""
    base = int.from_bytes(os.urandom(32), "big") & ((1 << bucket) - 1)
    distance = (1 << bucket) | base
    own_int = 0 if own is None else int.from_bytes(own.raw, "big")
    return NodeId((own_int ^ distance).to_bytes(32, "big"))


ZERO = NodeId(bytes(32))


# -- state -----------------------------------------------------------------------------


def test_state_uses_wal_and_reopens(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    with AgentState.open(directory) as s:
        (mode,) = s.query("PRAGMA journal_mode")[0]
        assert mode == "wal"
        s.ensure_schema(["CREATE TABLE IF NOT EXISTS t (x INTEGER)"])
        s.execute("INSERT INTO t VALUES (1)")
    with AgentState.open(directory) as s:
        assert s.query("SELECT x FROM t") == [(1,)]


def test_state_transaction_rolls_back(state: AgentState) -> None:
    state.ensure_schema(["CREATE TABLE t (x INTEGER)"])
    with pytest.raises(RuntimeError), state.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("boom")
    assert state.query("SELECT COUNT(*) FROM t") == [(0,)]
    with state.transaction() as outer:
        outer.execute("INSERT INTO t VALUES (2)")
        with state.transaction() as inner:  # joins the outer transaction
            inner.execute("INSERT INTO t VALUES (3)")
    assert state.query("SELECT x FROM t ORDER BY x") == [(2,), (3,)]


def test_state_closed_and_bad_dir(tmp_path: Path) -> None:
    s = AgentState.open(tmp_path / "s")
    s.close()
    s.close()
    with pytest.raises(StateClosedError):
        s.query("SELECT 1")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError):
        AgentState.open(tmp_path / "file")


# -- pagination ---------------------------------------------------------------------------


def test_page_request_validation() -> None:
    assert PageRequest(page_size=0).page_size == 50
    assert PageRequest(page_size=1000).page_size == 1000
    for bad in (-1, 1001):
        with pytest.raises(InvalidInputError):
            PageRequest(page_size=bad)
    with pytest.raises(InvalidInputError):
        PageRequest(cursor="abc")  # type: ignore[arg-type]


def test_cursor_is_bound_to_listing_and_order() -> None:
    cursor = encode_cursor("claims", b"\x00\x01", SortOrder.ASC)
    assert decode_cursor("claims", cursor, SortOrder.ASC) == b"\x00\x01"
    assert decode_cursor("claims", b"", SortOrder.ASC) is None
    with pytest.raises(InvalidCursorError):
        decode_cursor("vaults.scan", cursor, SortOrder.ASC)
    with pytest.raises(InvalidCursorError):
        decode_cursor("claims", cursor, SortOrder.DESC)
    with pytest.raises(InvalidCursorError):
        decode_cursor("claims", b"\xff\xff", SortOrder.ASC)


def walk_with_inserts(
    fetch: Callable[[PageRequest], Page[bytes]],
    insert: Callable[[], object],
    sizes: list[int],
    inserts: list[int],
    order: SortOrder,
) -> list[bytes]:
    """Walk every page (page sizes from ``sizes``), inserting items between pages."""
    seen: list[bytes] = []
    cursor = b""
    budget = 60  # bounded, or inserts landing ahead of the cursor could outrun the walk
    for step in range(10_000):
        page = fetch(PageRequest(page_size=sizes[step % len(sizes)], cursor=cursor, order=order))
        seen.extend(page.items)
        if not page.has_more:
            return seen
        cursor = page.next_cursor
        for _ in range(min(budget, inserts[step % len(inserts)])):
            insert()
            budget -= 1
    raise AssertionError("pagination did not terminate")


def check_exactly_once(seen: list[bytes], initial: set[bytes]) -> None:
    assert len(seen) == len(set(seen)), "an item was returned twice"
    assert initial <= set(seen), "an item present throughout was skipped"


walk_args = {
    "initial": st.integers(min_value=0, max_value=40),
    "sizes": st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=6),
    "inserts": st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=6),
    "order": st.sampled_from([SortOrder.ASC, SortOrder.DESC]),
}


@SETTINGS
@given(**walk_args)
def test_nodes_pagination_exactly_once(
    initial: int, sizes: list[int], inserts: list[int], order: SortOrder
) -> None:
    with tempfile.TemporaryDirectory() as tmp, AgentState.open(tmp) as s:
        graph = NodeGraph(s, ZERO, k=1000)
        target = NodeId(os.urandom(32))
        address = [NodeAddress("127.0.0.1", 1, ("quic",))]

        def insert() -> bytes:
            node_id = NodeId(os.urandom(32))
            graph.set_node(node_id, address)
            return node_id.raw

        start = {insert() for _ in range(initial)}

        def fetch(request: PageRequest) -> Page[bytes]:
            page = graph.closest_nodes_page(target, request)
            return Page(tuple(n.node_id.raw for n in page.items), page.next_cursor, page.has_more)

        seen = walk_with_inserts(fetch, insert, sizes, inserts, order)
        check_exactly_once(seen, start)
        distances = [NodeId(raw).distance(target) for raw in seen]
        assert distances == sorted(distances, reverse=order is SortOrder.DESC)


@SETTINGS
@given(**walk_args)
def test_notifications_pagination_exactly_once(
    initial: int, sizes: list[int], inserts: list[int], order: SortOrder
) -> None:
    sender = NodeId(os.urandom(32))
    with tempfile.TemporaryDirectory() as tmp, AgentState.open(tmp) as s:
        inbox = NotificationInbox(s)

        def insert() -> bytes:
            return inbox.add(new_notification(sender, "general", b"x")).entry_id.to_bytes(8, "big")

        start = {insert() for _ in range(initial)}

        def fetch(request: PageRequest) -> Page[bytes]:
            page = inbox.page(request)
            items = tuple(e.entry_id.to_bytes(8, "big") for e in page.items)
            return Page(items, page.next_cursor, page.has_more)

        seen = walk_with_inserts(fetch, insert, sizes, inserts, order)
        check_exactly_once(seen, start)
        assert seen == sorted(seen, reverse=order is SortOrder.DESC)


@SETTINGS
@given(
    names=st.lists(
        st.text(
            st.characters(min_codepoint=33, max_codepoint=0x2FFF, categories=["L", "N", "P"]),
            min_size=1,
            max_size=12,
        ),
        max_size=60,
        unique=True,
    ),
    sizes=walk_args["sizes"],
    inserts=walk_args["inserts"],
    order=walk_args["order"],
)
def test_vault_scan_pagination_exactly_once(
    names: list[str], sizes: list[int], inserts: list[int], order: SortOrder
) -> None:
    viewer = NodeId(os.urandom(32))
    later = iter(names[30:])
    with tempfile.TemporaryDirectory() as tmp, AgentState.open(tmp) as s:
        vaults = VaultStore(s)

        def add(name: str) -> bytes:
            vaults.create_vault(name)
            vaults.grant(name, viewer, VaultPermission.SCAN)
            return name.encode()

        start = {add(n) for n in names[:30]}

        def insert() -> None:
            name = next(later, None)
            if name is not None:
                add(name)

        def fetch(request: PageRequest) -> Page[bytes]:
            page = vaults.scan_page(viewer, request)
            return Page(
                tuple(v.info.name.encode() for v in page.items), page.next_cursor, page.has_more
            )

        seen = walk_with_inserts(fetch, insert, sizes, inserts, order)
        check_exactly_once(seen, start)
        assert seen == sorted(seen, reverse=order is SortOrder.DESC)


# -- nodes ---------------------------------------------------------------------------------


def test_node_graph_set_get_remove(state: AgentState) -> None:
    graph = NodeGraph(state, ZERO)
    node = node_in_bucket(200)
    addresses = [NodeAddress("192.0.2.1", 1314, ("grpc", "quic")), NodeAddress("::1", 5, ())]
    result = graph.set_node(node, addresses, last_seen_ms=1234)
    assert result.stored and result.evicted is None
    record = graph.get_node(node)
    assert record is not None
    assert record.addresses == tuple(addresses)
    assert record.last_seen_ms == 1234 and record.bucket == 200
    assert len(graph) == 1
    assert graph.remove_node(node)
    assert not graph.remove_node(node)
    assert graph.get_node(node) is None
    with pytest.raises(InvalidInputError):
        graph.set_node(ZERO, addresses)
    with pytest.raises(InvalidInputError):
        graph.set_node(node, [NodeAddress("h", 1)] * 17)


@pytest.mark.parametrize(
    ("host", "port", "transports"),
    [("", 1, ()), ("a b", 1, ()), ("h", 0, ()), ("h", 70000, ()), ("h", 1, ("Bad!",))],
)
def test_node_address_validation(host: str, port: int, transports: tuple[str, ...]) -> None:
    with pytest.raises(InvalidInputError):
        NodeAddress(host, port, transports)


def test_node_graph_buckets_are_lru_bounded(state: AgentState) -> None:
    graph = NodeGraph(state, ZERO, k=3)
    a, b, c, d = (node_in_bucket(100) for _ in range(4))
    for n in (a, b, c):
        assert graph.set_node(n, []).stored
    graph.set_node(a, [NodeAddress("198.51.100.7", 9)])  # refresh: a is now the newest
    assert [r.node_id for r in graph.bucket(100)] == [b, c, a]
    refused = graph.set_node(d, [], evict_oldest=False)
    assert not refused.stored and graph.get_node(d) is None
    assert graph.oldest_in_bucket(100) is not None
    result = graph.set_node(d, [])
    assert result.stored and result.evicted == b
    assert [r.node_id for r in graph.bucket(100)] == [c, a, d]
    other = node_in_bucket(5)
    assert graph.set_node(other, []).evicted is None  # other buckets are independent
    with pytest.raises(InvalidInputError):
        graph.bucket(256)


def test_closest_nodes_sorted_and_persisted(tmp_path: Path) -> None:
    target = NodeId(os.urandom(32))
    with AgentState.open(tmp_path) as s:
        graph = NodeGraph(s, ZERO)
        nodes = [NodeId(os.urandom(32)) for _ in range(25)]
        for n in nodes:
            graph.set_node(n, [NodeAddress("203.0.113.5", 4000, ("quic",))])
        closest = graph.closest_nodes(target, limit=10)
        assert [r.node_id for r in closest] == sorted(nodes, key=target.distance)[:10]
    with AgentState.open(tmp_path) as s:
        again = NodeGraph(s, ZERO)
        assert len(again) == 25
        assert again.closest_nodes(target, 10) == closest
    with AgentState.open(tmp_path) as s:
        own = nodes[0]
        moved = NodeGraph(s, own)  # our id changed: buckets follow it, we drop ourselves
        assert len(moved) == 24
        for record in moved.all_nodes():
            assert record.bucket == own.bucket_index(record.node_id)


# -- claims -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alice() -> NodeIdentity:
    return NodeIdentity.generate()


@pytest.fixture(scope="module")
def bob() -> NodeIdentity:
    return NodeIdentity.generate("p256")


def cross_signed(
    issuer: NodeIdentity, subject: NodeIdentity, seq: int, data: bytes = b""
) -> SignedClaim:
    claim = new_claim(issuer.node_id, subject.node_id, seq, data=data)
    return SignedClaim(claim, (sign_claim(claim, issuer), sign_claim(claim, subject)))


def test_claims_cross_signed_stored_in_order(
    tmp_path: Path, alice: NodeIdentity, bob: NodeIdentity
) -> None:
    with AgentState.open(tmp_path) as s:
        store = ClaimStore(s)
        first = cross_signed(alice, bob, 1)
        third = cross_signed(alice, bob, 3)
        assert store.add(third)
        assert store.add(first)
        assert not store.add(first)  # the same claim again is a no-op
        assert store.add(cross_signed(bob, alice, 1))
        assert [c.claim.sequence_number for c in store.claims_for(alice.node_id)] == [1, 3]
        assert [c.claim.issuer for c in store.claims_about(alice.node_id)] == [bob.node_id]
        assert store.allocate_sequence(alice.node_id) == 4
        assert store.allocate_sequence(alice.node_id) == 5  # reserved numbers are not reused
        assert store.get(alice.node_id, 3) == third
    with AgentState.open(tmp_path) as s:
        store = ClaimStore(s)
        assert store.claims_for(alice.node_id) == [first, third]
        assert store.last_sequence(alice.node_id) == 3
        page = store.claims_page(alice.node_id, PageRequest(page_size=1, order=SortOrder.DESC))
        assert page.items == (third,) and page.has_more
        rest = store.claims_page(alice.node_id, PageRequest(1, page.next_cursor, SortOrder.DESC))
        assert rest.items == (first,) and not rest.has_more


def test_claims_rejected_unless_properly_cross_signed(
    state: AgentState, alice: NodeIdentity, bob: NodeIdentity
) -> None:
    store = ClaimStore(state)
    claim = new_claim(alice.node_id, bob.node_id, 1)
    only_issuer = SignedClaim(claim, (sign_claim(claim, alice),))
    with pytest.raises(ClaimVerificationError, match="subject"):
        store.add(only_issuer)
    good = cross_signed(alice, bob, 1)
    tampered = SignedClaim(
        Claim(**{**{f: getattr(claim, f) for f in Claim.__slots__}, "data": b"evil"}),
        good.signatures,
    )
    with pytest.raises(ClaimVerificationError):
        store.add(tampered)
    mallory = NodeIdentity.generate()
    forged = ClaimSignature(bob.node_id, tuple(mallory.chain_der()), mallory.sign(b"x"))
    with pytest.raises(ClaimVerificationError, match="chain"):
        store.add(good.with_signature(forged))
    with pytest.raises(InvalidInputError):
        sign_claim(claim, mallory)
    with pytest.raises(InvalidInputError):
        SignedClaim(claim, (good.signatures[0], good.signatures[0]))
    with pytest.raises(InvalidInputError):
        new_claim(alice.node_id, alice.node_id, 1)
    with pytest.raises(InvalidInputError):
        new_claim(alice.node_id, bob.node_id, 0)
    assert store.add(good)
    with pytest.raises(ClaimConflictError):
        store.add(cross_signed(alice, bob, 1, data=b"other"))
    assert store.claims_for(alice.node_id) == [good]


def test_claims_signed_by_a_rotated_key_verify(
    state: AgentState, alice: NodeIdentity, bob: NodeIdentity
) -> None:
    rotated = alice.rotate()
    claim = new_claim(alice.node_id, bob.node_id, 7)
    signed = SignedClaim(claim, (sign_claim(claim, rotated), sign_claim(claim, bob)))
    assert len(signed.signatures[0].signer_chain) == 2
    assert ClaimStore(state).add(signed)


# -- notifications --------------------------------------------------------------------------


def test_notifications_inbox(tmp_path: Path, alice: NodeIdentity) -> None:
    with AgentState.open(tmp_path) as s:
        inbox = NotificationInbox(s, max_size=3)
        entries = [
            inbox.add(new_notification(alice.node_id, "general", bytes([i])), received_at_ms=i)
            for i in range(5)
        ]
        assert len(inbox) == 3
        assert [e.notification.data for e in inbox.all()] == [b"\x02", b"\x03", b"\x04"]
        assert inbox.get(entries[0].entry_id) is None  # the oldest were dropped
        assert inbox.add(entries[4].notification) == entries[4]  # duplicates stored once
        assert len(inbox) == 3
        inbox.mark_read(entries[3].entry_id)
        assert inbox.unread_count() == 2
        unread = inbox.page(PageRequest(), unread_only=True)
        assert [e.entry_id for e in unread.items] == [entries[2].entry_id, entries[4].entry_id]
        with pytest.raises(NotFoundError):
            inbox.mark_read(entries[0].entry_id)
    with AgentState.open(tmp_path) as s:
        inbox = NotificationInbox(s, max_size=2)  # a smaller bound trims on open
        assert [e.entry_id for e in inbox.all()] == [entries[3].entry_id, entries[4].entry_id]
        assert inbox.get(entries[3].entry_id) is not None
        assert inbox.get(entries[3].entry_id).read  # type: ignore[union-attr]
        assert inbox.mark_all_read() == 1
        assert inbox.remove(entries[4].entry_id)
        assert inbox.clear() == 1


def test_notification_signatures(alice: NodeIdentity, bob: NodeIdentity) -> None:
    notification = new_notification(alice.node_id, "vault-share", b"hello")
    signed = sign_notification(notification, alice)
    verify_notification(signed)
    with pytest.raises(InvalidInputError):
        sign_notification(notification, bob)
    forged = type(signed)(notification, tuple(bob.chain_der()), bob.sign(b"hello"))
    with pytest.raises(SignatureVerificationError):
        verify_notification(forged)
    other = new_notification(alice.node_id, "vault-share", b"changed")
    with pytest.raises(SignatureVerificationError):
        verify_notification(type(signed)(other, signed.sender_chain, signed.signature))
    with pytest.raises(InvalidInputError):
        new_notification(alice.node_id, "", b"")
    with pytest.raises(InvalidInputError):
        new_notification(alice.node_id, "t", b"x" * (64 * 1024 + 1))


# -- vaults -----------------------------------------------------------------------------------


def test_vault_files(state: AgentState) -> None:
    vaults = VaultStore(state)
    info = vaults.create_vault("notes")
    assert len(info.vault_id) == 16
    with pytest.raises(VaultExistsError):
        vaults.create_vault("notes")
    vaults.write_file("notes", "a.txt", b"A")
    vaults.write_file("notes", "dir/sub/b.txt", b"B")
    vaults.write_file("notes", "a.txt", b"AA")
    assert vaults.read_file("notes", "a.txt") == b"AA"
    assert vaults.list_files("notes") == ["a.txt", "dir/sub/b.txt"]
    with pytest.raises(InvalidInputError):
        vaults.write_file("notes", "a.txt/c", b"")  # a.txt is a file
    with pytest.raises(InvalidInputError):
        vaults.write_file("notes", "dir", b"")  # dir is a directory
    vaults.delete_file("notes", "dir/sub/b.txt")
    assert vaults.list_files("notes") == ["a.txt"]
    assert not (state.state_dir / "vaults" / info.vault_id.hex() / "g1" / "dir").exists()
    with pytest.raises(NotFoundError):
        vaults.read_file("notes", "missing")
    with pytest.raises(NotFoundError):
        vaults.write_file("nope", "a", b"")
    for bad_name in ("", " x", "a\nb", "x" * 256):
        with pytest.raises(InvalidInputError):
            vaults.create_vault(bad_name)
    vaults.delete_vault("notes")
    assert vaults.list_vaults() == []
    assert not (state.state_dir / "vaults" / info.vault_id.hex()).exists()


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/abs",
        "a//b",
        "./a",
        "a/../b",
        "..",
        "a\\b",
        "c:x",
        "a?b",
        'q"',
        "p|q",
        "a\x00b",
        "x" * 256,
    ],
)
def test_vault_paths_cannot_escape(path: str) -> None:
    with pytest.raises(InvalidInputError):
        check_vault_path(path)


def test_vault_permissions(state: AgentState) -> None:
    vaults = VaultStore(state)
    viewer, puller, stranger = (NodeId(os.urandom(32)) for _ in range(3))
    for name in ("a", "b", "c"):
        vaults.create_vault(name)
    vaults.grant("a", viewer, VaultPermission.SCAN)
    vaults.grant("b", puller)
    vaults.grant("c", puller, VaultPermission.PULL)
    assert vaults.can_see("a", viewer) and not vaults.can_pull("a", viewer)
    assert vaults.can_pull("b", puller)
    assert not vaults.can_see("a", stranger)
    scan = vaults.scan_page(puller, PageRequest())
    assert [(v.info.name, v.permissions) for v in scan.items] == [
        ("b", VaultPermission.ALL),
        ("c", VaultPermission.PULL),
    ]
    assert VaultPermission.ALL.names() == ["scan", "pull"]
    assert vaults.revoke("b", puller, VaultPermission.PULL) == VaultPermission.SCAN
    assert vaults.revoke("b", puller) == VaultPermission.NONE
    assert [v.info.name for v in vaults.scan_page(puller, PageRequest()).items] == ["c"]
    assert vaults.scan_page(stranger, PageRequest()).items == ()
    vaults.delete_vault("c")
    assert vaults.scan_page(puller, PageRequest()).items == ()


def test_vault_archive_is_deterministic_and_round_trips(state: AgentState) -> None:
    vaults = VaultStore(state)
    vaults.create_vault("one")
    vaults.create_vault("two")
    files = {"z": b"zz" * 1000, "a/b": b"", "a/c": os.urandom(5000), "é": b"unicode"}
    for path, data in files.items():
        vaults.write_file("one", path, data)
    for path, data in reversed(list(files.items())):
        vaults.write_file("two", path, data)
    archive = vaults.archive_bytes("one")
    assert archive == vaults.archive_bytes("two")
    assert [len(c) for c in vaults.archive_chunks("one", chunk_size=1000)][:-1] == [1000] * (
        len(archive) // 1000
    )
    info = vaults.import_archive("copy", vaults.archive_chunks("one", chunk_size=777))
    assert info.name == "copy"
    assert {p: vaults.read_file("copy", p) for p in vaults.list_files("copy")} == files
    vaults.write_file("two", "new", b"n")
    vaults.import_archive("copy", [vaults.archive_bytes("two")])  # a pull replaces content
    assert "new" in vaults.list_files("copy")
    assert len(list((state.state_dir / "vaults" / info.vault_id.hex()).iterdir())) == 1


def test_vault_import_rejects_bad_archives_and_leaves_vault_intact(state: AgentState) -> None:
    vaults = VaultStore(state)
    vaults.create_vault("v")
    vaults.write_file("v", "f", b"original")
    good = vaults.archive_bytes("v")
    vaults.write_file("v", "f", b"current")
    corrupted = bytearray(good)
    corrupted[20] ^= 0xFF
    cases = [bytes(corrupted), good[:-1], good + b"x", b"NOTVAULT" + good[8:], b""]
    for bad in cases:
        with pytest.raises(VaultArchiveError):
            vaults.import_archive("v", [bad])
        assert vaults.read_file("v", "f") == b"current"
    assert list((state.state_dir / "vaults" / ".tmp").iterdir()) == []
    small = VaultStore(state, max_import_bytes=4)
    with pytest.raises(VaultArchiveError, match="exceeds"):
        small.import_archive("w", [good])
    assert small.get_vault("w") is None


def test_vault_archive_parser_rejects_traversal_and_disorder() -> None:
    def record(path: bytes, data: bytes) -> bytes:
        return b"F" + struct.pack(">I", len(path)) + path + struct.pack(">Q", len(data)) + data

    for body in (
        record(b"../x", b""),
        record(b"b", b"") + record(b"a", b""),
        record(b"a", b"") + record(b"a/b", b""),
    ):
        with pytest.raises(VaultArchiveError):
            VaultArchiveParser().feed(b"QSVAULT\x01" + body)


@SETTINGS
@given(data=st.data())
def test_vault_archive_parser_any_split(data: st.DataObject) -> None:
    files = data.draw(
        st.dictionaries(st.sampled_from(["a", "b/c", "b/d", "e.txt", "z"]), st.binary(max_size=300))
    )
    entries = sorted(files.items())
    archive = b"".join(
        write_archive(((p, io.BytesIO(d), len(d)) for p, d in entries), chunk_size=64)
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(archive)), max_size=20)))
    pieces = [archive[i:j] for i, j in zip([0, *cuts], [*cuts, len(archive)], strict=True)]
    parser = VaultArchiveParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    parser.close()
    rebuilt: dict[str, bytes] = {}
    current = ""
    for event in events:
        if isinstance(event, ArchiveFileStarted):
            current = event.path
            rebuilt[current] = b""
        elif isinstance(event, ArchiveFileData):
            rebuilt[current] += event.data
    assert rebuilt == files
    assert isinstance(events[-1], ArchiveEnded) and events[-1].file_count == len(files)


def test_vault_archive_stream_survives_a_concurrent_import(state: AgentState) -> None:
    vaults = VaultStore(state)
    vaults.create_vault("v")
    for i in range(5):
        vaults.write_file("v", f"f{i}", bytes([i]) * 3000)
    expected = vaults.archive_bytes("v")
    stream = vaults.archive_chunks("v", chunk_size=1000)
    first = next(stream)
    vaults.create_vault("src")
    vaults.write_file("src", "only", b"new content")
    info = vaults.get_vault("v")
    assert info is not None
    vaults.import_archive("v", vaults.archive_chunks("src"))
    assert vaults.list_files("v") == ["only"]
    rest = b"".join(stream)
    assert first + rest == expected  # the stream kept reading the old generation
    assert len(list((state.state_dir / "vaults" / info.vault_id.hex()).iterdir())) == 1


def test_vaults_persist(tmp_path: Path) -> None:
    node = NodeId(os.urandom(32))
    with AgentState.open(tmp_path) as s:
        vaults = VaultStore(s)
        vaults.create_vault("keep")
        vaults.write_file("keep", "x/y", b"data")
        vaults.grant("keep", node, VaultPermission.PULL)
        archive = vaults.archive_bytes("keep")
    with AgentState.open(tmp_path) as s:
        vaults = VaultStore(s)
        assert vaults.read_file("keep", "x/y") == b"data"
        assert vaults.can_pull("keep", node)
        assert vaults.archive_bytes("keep") == archive


def test_sqlite_is_one_file_per_agent(tmp_path: Path) -> None:
    with AgentState.open(tmp_path) as s:
        NodeGraph(s, ZERO)
        ClaimStore(s)
        NotificationInbox(s)
        VaultStore(s)
    tables = {
        row[0]
        for row in sqlite3.connect(tmp_path / "agent.sqlite3").execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    assert {"nodes", "claims", "notifications", "vaults", "vault_permissions"} <= tables
