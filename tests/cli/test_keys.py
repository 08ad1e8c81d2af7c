"""``quicshift keys init|rotate|show``: the node identity in an agent's state dir."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.identity import (
    CHAIN_FILE_NAME,
    KEY_FILE_NAME,
    MAX_CHAIN_LENGTH,
    NodeIdentity,
    verify_node_chain,
)
from agent.wiring import IDENTITY_DIR_NAME, load_identity

pytestmark = pytest.mark.timeout(120)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


@pytest.mark.parametrize("key_type", ["ed25519", "p256"])
def test_init_makes_the_identity_agents_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_type: str
) -> None:
    info = run_json(capsys, "keys", "init", "--state-dir", str(tmp_path), "--key-type", key_type)
    folder = tmp_path / IDENTITY_DIR_NAME
    assert info["identity_dir"] == str(folder)
    assert (folder / KEY_FILE_NAME).exists() and (folder / CHAIN_FILE_NAME).exists()
    assert info["key_type"] == key_type and info["chain_length"] == 1
    assert info["replaced"] is False and info["verification"] == {"ok": True}
    (root,) = info["chain"]
    assert root["role"] == "leaf, root" and root["subject"] == root["issuer"]
    assert info["node_id"] in root["subject"]
    assert root["validity"] == "valid" and root["key_type"] == key_type
    assert len(root["sha256"].split(":")) == 32
    # the agents' own loader (LegacyAgent / Agent) finds the same node
    assert str(load_identity(tmp_path).node_id) == info["node_id"]


def test_init_refuses_to_replace_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_json(capsys, "keys", "init", "--state-dir", str(tmp_path))
    chain_before = (tmp_path / IDENTITY_DIR_NAME / CHAIN_FILE_NAME).read_bytes()
    code, out, err = run(capsys, "keys", "init", "--state-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert first["node_id"] in err and "--force" in err and "keys rotate" in err
    assert (tmp_path / IDENTITY_DIR_NAME / CHAIN_FILE_NAME).read_bytes() == chain_before
    forced = run_json(capsys, "keys", "init", "--state-dir", str(tmp_path), "--force")
    assert forced["replaced"] is True and forced["node_id"] != first["node_id"]
    assert str(load_identity(tmp_path).node_id) == forced["node_id"]


def test_init_refuses_over_an_unreadable_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / IDENTITY_DIR_NAME
    folder.mkdir()
    (folder / KEY_FILE_NAME).write_text("garbage")
    code, _, err = run(capsys, "keys", "init", "--state-dir", str(tmp_path))
    assert code == 1 and "unreadable identity" in err
    assert run(capsys, "keys", "init", "--state-dir", str(tmp_path), "--force")[0] == 0


def test_rotate_keeps_the_node_id_and_chains_to_the_old_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_json(capsys, "keys", "init", "--state-dir", str(tmp_path))
    old = load_identity(tmp_path)
    rotated = run_json(capsys, "keys", "rotate", "--state-dir", str(tmp_path), "--key-type", "p256")
    assert rotated["node_id"] == first["node_id"]
    assert rotated["chain_length"] == 2 and rotated["key_type"] == "p256"
    assert rotated["old_leaf"]["sha256"] == first["chain"][0]["sha256"]
    assert rotated["new_leaf"] == rotated["chain"][0]
    assert rotated["new_leaf"]["issuer"] == rotated["old_leaf"]["subject"]
    assert rotated["chain"][1]["sha256"] == first["chain"][0]["sha256"]
    assert [c["role"] for c in rotated["chain"]] == ["leaf", "root"]
    new = load_identity(tmp_path)
    assert new.node_id == old.node_id and new.chain[1] == old.certificate
    assert verify_node_chain(new.chain_der(), old.node_id) == old.node_id
    again = run_json(capsys, "keys", "rotate", "--state-dir", str(tmp_path))
    assert again["chain_length"] == 3 and again["key_type"] == "p256"  # keeps the type
    assert [c["role"] for c in again["chain"]] == ["leaf", "intermediate", "root"]


def test_rotate_text_shows_old_and_new_leaf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "keys", "init", "--state-dir", str(tmp_path))[0] == 0
    code, out, _ = run(capsys, "keys", "rotate", "--state-dir", str(tmp_path))
    assert code == 0
    assert "old leaf:" in out and "new leaf:" in out and "node id is unchanged" in out
    assert "previous leaf" in out


def test_rotate_needs_an_identity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "rotate", "--state-dir", str(tmp_path))
    assert code == 1 and "no node identity" in err and "quicshift keys init" in err


def test_rotation_limit_is_a_clear_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = NodeIdentity.generate()
    for _ in range(MAX_CHAIN_LENGTH - 1):
        identity = identity.rotate()
    identity.save(tmp_path / IDENTITY_DIR_NAME)
    code, _, err = run(capsys, "keys", "rotate", "--state-dir", str(tmp_path))
    assert code == 1 and "cannot rotate" in err and str(identity.node_id) in err
    assert load_identity(tmp_path).chain_der() == identity.chain_der()  # unchanged


def test_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "keys", "init", "--state-dir", str(tmp_path))[0] == 0
    assert run(capsys, "keys", "rotate", "--state-dir", str(tmp_path))[0] == 0
    identity = load_identity(tmp_path)
    info = run_json(capsys, "keys", "show", "--state-dir", str(tmp_path))
    assert info["node_id"] == str(identity.node_id) and info["chain_length"] == 2
    assert info["chain"][0]["not_before"] == identity.certificate.not_valid_before_utc.isoformat()
    code, out, _ = run(capsys, "keys", "show", "--state-dir", str(tmp_path))
    assert code == 0
    assert f"node id:    {identity.node_id}" in out
    assert "[0] leaf" in out and "[1] root" in out and "verifies:   yes" in out


def test_show_flags_an_expired_identity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    expired = NodeIdentity.generate(
        not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)
    )
    expired.save(tmp_path / IDENTITY_DIR_NAME)
    code, out, _ = run(capsys, "keys", "show", "--state-dir", str(tmp_path), "--json")
    info = json.loads(out)
    assert code == 1
    assert info["verification"]["ok"] is False
    assert info["verification"]["code"] == "certificate_expired"
    assert info["chain"][0]["validity"] == "expired"


def test_show_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "show", "--state-dir", str(tmp_path))
    assert code == 1 and "no node identity" in err
    folder = tmp_path / IDENTITY_DIR_NAME
    folder.mkdir()
    (folder / KEY_FILE_NAME).write_text("not a key")
    (folder / CHAIN_FILE_NAME).write_text("not a chain")
    code, _, err = run(capsys, "keys", "show", "--state-dir", str(tmp_path))
    assert code == 1 and "cannot load the node identity" in err


def test_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUICSHIFT_STATE_DIR", raising=False)
    # --state-dir's default is read when the parser is built, i.e. per main() call
    code, _, err = run(capsys, "keys", "show")
    assert code == 2 and "--state-dir is required" in err
    assert run(capsys, "keys")[0] == 2
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = run(capsys, "keys", "init", "--state-dir", str(a_file))
    assert code == 2 and "not a directory" in err
    with pytest.raises(SystemExit) as exc:
        main(["keys", "init", "--state-dir", str(tmp_path), "--key-type", "rsa"])
    assert exc.value.code == 2
    monkeypatch.setenv("QUICSHIFT_STATE_DIR", str(tmp_path))
    assert run(capsys, "keys", "init")[0] == 0
    assert (tmp_path / IDENTITY_DIR_NAME / KEY_FILE_NAME).exists()


def test_help_for_every_keys_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["keys", "--help"], *(["keys", a, "--help"] for a in ("init", "rotate", "show"))):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert "usage: quicshift keys" in capsys.readouterr().out


_WITHOUT_GRPC = (
    "import sys\n"
    "sys.modules['grpc'] = None\n"  # makes `import grpc` raise ImportError
    "sys.modules['legacy_grpc'] = None\n"
    "from agent.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "assert 'grpc' not in [m for m, v in sys.modules.items() if v is not None]\n"
    "sys.exit(code)\n"
)


def test_keys_in_a_subprocess_without_grpc(tmp_path: Path) -> None:
    """The console entry point works with grpcio and legacy_grpc unimportable (the
    quic-only end state) and its exit codes reach the shell."""
    root = Path(__file__).resolve().parents[2]

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _WITHOUT_GRPC, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=root,
            check=False,
        )

    made = cli("keys", "init", "--state-dir", str(tmp_path), "--json")
    assert made.returncode == 0, made.stderr
    node_id = json.loads(made.stdout)["node_id"]
    again = cli("keys", "init", "--state-dir", str(tmp_path))
    assert again.returncode == 1 and "--force" in again.stderr
    shown = cli("keys", "show", "--state-dir", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert f"node id:    {node_id}" in shown.stdout
