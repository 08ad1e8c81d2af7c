"""The ``quicshift`` command line.

``quicshift demo`` starts a local fleet of five dual-stack agents at ``legacy`` and walks
it through every rollout stage, one node at a time, with live traffic between all pairs;
it prints a table per fleet state (calls by transport, failures, fallbacks, latency;
``--json`` for machines) and exits 1 if any call failed (:mod:`agent.demo`).

``quicshift agent start|status|stop``, ``quicshift rollout status|set|advance|rollback``,
``quicshift call NODE METHOD [JSON]`` and ``quicshift metrics`` run and operate agents
(:mod:`agent.operator_cli`).

``quicshift scan PATH`` lists what a codebase uses from grpcio and prints a migration plan
(:mod:`migration.scan`); it exits 0 when the adapter covers every use, 1 when something
needs a code change.

``quicshift keys init|rotate|show --state-dir DIR`` makes, rotates and shows the node
identity kept in ``DIR/identity`` (where the agents load it from).

Exit codes, for every command: 0 success, 1 the operation failed or found problems,
2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from datetime import datetime

    from cryptography import x509

    from agent.identity import NodeIdentity

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
STATE_DIR_ENV = "QUICSHIFT_STATE_DIR"


# -- command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quicshift",
        description="Move a gRPC peer-to-peer agent service onto RPC over QUIC, in stages.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="walk a local fleet from gRPC to QUIC with live traffic",
        description=(
            "Start a local fleet of dual-stack agents (temporary state, 127.0.0.1) at the "
            "legacy stage, keep every agent calling every agent method on every other, and "
            "walk the fleet through every rollout stage one node at a time (dual, "
            "quic-preferred, a rollback of one node to legacy and forward again, "
            "quic-only). Prints a table per fleet state: calls by transport, failed calls, "
            "fallbacks and latency (a progress line while it runs on a terminal). Exits 1 "
            "if any call failed."
        ),
    )
    demo.add_argument("--agents", type=int, default=5, help="fleet size, at least 3 (default 5)")
    demo.add_argument(
        "--calls-per-stage",
        type=int,
        default=40,
        help="calls made in each fleet state (default 40)",
    )
    demo.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    demo.add_argument(
        "--timeout", type=float, default=30.0, help="per-call timeout in seconds (default 30)"
    )
    demo.add_argument(
        "-v", "--verbose", action="store_true", help="log what the agents and proxies do"
    )
    _add_scan_parser(sub)
    _add_keys_parser(sub)
    from agent.operator_cli import add_operator_parsers

    add_operator_parsers(sub)
    from agent.cutover_cli import add_check_parser, add_cutover_parser

    add_check_parser(sub)
    add_cutover_parser(sub)
    return parser


def _demo_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.agents < 3:
        err.write("quicshift demo: --agents must be at least 3\n")
        return EXIT_USAGE
    if args.timeout <= 0 or args.calls_per_stage < 1:
        err.write("quicshift demo: --timeout and --calls-per-stage must be positive\n")
        return EXIT_USAGE
    import logging

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=err,
    )
    try:
        import grpc  # noqa: F401 - the legacy stages need grpcio (the "legacy" extra)
    except ImportError:
        err.write(
            "quicshift demo starts at the legacy gRPC stack, which needs grpcio: "
            "pip install 'quicshift[legacy]'\n"
        )
        return EXIT_USAGE
    from agent.demo import run_demo

    progress = out if (not args.json and out.isatty()) else None
    report = asyncio.run(
        run_demo(
            args.agents,
            calls_per_stage=args.calls_per_stage,
            timeout=args.timeout,
            progress=progress,
        )
    )
    if args.json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        report.render(out)
    return EXIT_OK if report.ok else EXIT_FAILED


# -- quicshift scan ------------------------------------------------------------------------


def _add_scan_parser(sub: Any) -> None:
    scan = sub.add_parser(
        "scan",
        help="find what a codebase uses from grpcio and print a migration plan",
        description=(
            "Parse every *.py file under PATH and list its grpcio uses (imports, channel and "
            "server construction, credentials, interceptors, proxy and channel options, "
            "servicer context methods, errors, status codes, experimental APIs, compression, "
            "grpc_* packages). Each use gets a verdict: covered (the adapter "
            "migration.quic_grpc handles it once the import changes), changed (works over "
            "QUIC but behaves differently) or unsupported (needs a code change). Generated "
            "*_pb2.py / *_pb2_grpc.py files are skipped unless --include-generated. Exits 0 "
            "when nothing is unsupported, 1 when something is (or a file could not be "
            "parsed), 2 on usage errors."
        ),
    )
    scan.add_argument("path", metavar="PATH", help="a directory or a .py file")
    scan.add_argument("--json", action="store_true", help="print a JSON report")
    scan.add_argument(
        "--include-generated",
        action="store_true",
        help="also scan generated *_pb2.py / *_pb2_grpc.py modules",
    )


def _scan_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from migration.scan import ScanError, render_plan, scan_path

    try:
        report = scan_path(args.path, include_generated=args.include_generated)
    except ScanError as exc:
        err.write(f"quicshift scan: {exc}\n")
        return EXIT_USAGE
    if args.json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        render_plan(report, out)
    return report.exit_code


# -- quicshift keys ------------------------------------------------------------------------


def _add_keys_parser(sub: Any) -> None:
    from agent.identity import KEY_TYPES

    keys = sub.add_parser(
        "keys",
        help="make, rotate and show the node identity in a state directory",
        description=(
            "Manage the node identity an agent loads from STATE_DIR/identity: its private "
            "key and certificate chain (leaf first, root last). The node id is derived from "
            "the root key, so rotation keeps it."
        ),
    )
    keys.set_defaults(keys_parser=keys)
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--state-dir",
            metavar="DIR",
            default=os.environ.get(STATE_DIR_ENV),
            help=f"the agent's state directory (default: ${STATE_DIR_ENV})",
        )
        parser.add_argument("--json", action="store_true", help="print JSON")

    init = actions.add_parser(
        "init",
        help="make a new node identity",
        description=(
            "Generate a new node key and self-signed root certificate and save them in "
            "STATE_DIR/identity. Refuses (exit 1) when an identity is already there, "
            "unless --force (which gives the node a NEW node id)."
        ),
    )
    common(init)
    init.add_argument(
        "--key-type", choices=KEY_TYPES, default="ed25519", help="key type (default ed25519)"
    )
    init.add_argument(
        "--force", action="store_true", help="replace an existing identity (new node id)"
    )
    rotate = actions.add_parser(
        "rotate",
        help="rotate the node key (new certificate chained to the old)",
        description=(
            "Make a new key and a certificate for it signed by the current key, and save "
            "the chain [new, ..., root]: the node id stays the same. Restart (or reload) "
            "the agent to present the new chain."
        ),
    )
    common(rotate)
    rotate.add_argument(
        "--key-type",
        choices=KEY_TYPES,
        default=None,
        help="key type of the new key (default: the current key's)",
    )
    show = actions.add_parser(
        "show",
        help="show the node id and certificate chain",
        description=(
            "Show the node id and each certificate of the chain: subject, issuer, "
            "validity, key type and SHA-256 fingerprint, and whether the chain verifies."
        ),
    )
    common(show)


class _KeysError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _identity_dir(args: argparse.Namespace) -> Path:
    from agent.wiring import IDENTITY_DIR_NAME

    if not args.state_dir:
        raise _KeysError(f"--state-dir is required (or set ${STATE_DIR_ENV})", EXIT_USAGE)
    state_dir = Path(args.state_dir)
    if state_dir.exists() and not state_dir.is_dir():
        raise _KeysError(f"{state_dir} is not a directory", EXIT_USAGE)
    return state_dir / IDENTITY_DIR_NAME


def _load_existing(folder: Path) -> NodeIdentity:
    from agent.identity import IdentityLoadError, NodeIdentity

    if not folder.exists():
        raise _KeysError(
            f"no node identity in {folder}; make one with: quicshift keys init "
            f"--state-dir {folder.parent}"
        )
    try:
        return NodeIdentity.load(folder)
    except IdentityLoadError as exc:
        raise _KeysError(f"cannot load the node identity in {folder}: {exc}") from None


def _certificate_info(
    cert: x509.Certificate, index: int, length: int, now: datetime
) -> dict[str, Any]:
    from cryptography.hazmat.primitives import hashes

    from agent.identity.certificates import key_type_of

    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if now < not_before:
        validity = "not yet valid"
    elif now > not_after:
        validity = "expired"
    else:
        validity = "valid"
    try:
        key_type: str = key_type_of(cert.public_key())
    except Exception as exc:  # an unusable key is shown, not fatal to `show`
        key_type = f"unsupported ({exc})"
    role = "leaf" if index == 0 else ("root" if index == length - 1 else "intermediate")
    if length == 1:
        role = "leaf, root"
    return {
        "index": index,
        "role": role,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "validity": validity,
        "key_type": key_type,
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
    }


def _identity_info(identity: NodeIdentity, folder: Path) -> dict[str, Any]:
    from datetime import UTC, datetime

    from agent.identity import CHAIN_FILE_NAME, KEY_FILE_NAME, NodeVerificationError

    now = datetime.now(UTC)
    chain = identity.chain
    try:
        identity.verify(now=now)
        verification: dict[str, Any] = {"ok": True}
    except NodeVerificationError as exc:
        verification = {"ok": False, "code": exc.code, "error": str(exc)}
    return {
        "node_id": str(identity.node_id),
        "key_type": identity.key_type,
        "identity_dir": str(folder),
        "key_file": str(folder / KEY_FILE_NAME),
        "chain_file": str(folder / CHAIN_FILE_NAME),
        "chain_length": len(chain),
        "chain": [_certificate_info(c, i, len(chain), now) for i, c in enumerate(chain)],
        "verification": verification,
    }


def _write_certificate(out: TextIO, cert: dict[str, Any], indent: str = "  ") -> None:
    out.write(f"{indent}[{cert['index']}] {cert['role']}\n")
    out.write(f"{indent}    subject:  {cert['subject']}\n")
    out.write(f"{indent}    issuer:   {cert['issuer']}\n")
    out.write(
        f"{indent}    validity: {cert['not_before']} .. {cert['not_after']} ({cert['validity']})\n"
    )
    out.write(f"{indent}    key:      {cert['key_type']}\n")
    out.write(f"{indent}    sha256:   {cert['sha256']}\n")


def _write_identity(out: TextIO, info: dict[str, Any]) -> None:
    out.write(f"node id:    {info['node_id']}\n")
    out.write(f"key type:   {info['key_type']}\n")
    out.write(f"identity:   {info['identity_dir']}\n")
    out.write(f"chain:      {info['chain_length']} certificate(s), leaf first\n")
    for cert in info["chain"]:
        _write_certificate(out, cert)
    verification = info["verification"]
    if verification["ok"]:
        out.write("verifies:   yes\n")
    else:
        out.write(f"verifies:   NO ({verification['code']}: {verification['error']})\n")


def _keys_init(args: argparse.Namespace, out: TextIO) -> int:
    from agent.identity import CHAIN_FILE_NAME, KEY_FILE_NAME, IdentityLoadError, NodeIdentity

    folder = _identity_dir(args)
    existing = [folder / name for name in (KEY_FILE_NAME, CHAIN_FILE_NAME)]
    replacing = any(path.exists() for path in existing)
    if replacing and not args.force:
        try:
            what = f"node {NodeIdentity.load(folder).node_id}"
        except IdentityLoadError:
            what = "an unreadable identity"
        raise _KeysError(
            f"{folder} already holds {what}; not replacing it. Use --force to make a new "
            "identity (the node id changes), or 'quicshift keys rotate' to change the key "
            "and keep the node id"
        )
    identity = NodeIdentity.generate(args.key_type)
    identity.save(folder)
    info = _identity_info(identity, folder)
    info["replaced"] = replacing
    if args.json:
        json.dump(info, out, indent=2)
        out.write("\n")
    else:
        out.write("replaced the node identity\n" if replacing else "made a new node identity\n")
        _write_identity(out, info)
    return EXIT_OK


def _keys_rotate(args: argparse.Namespace, out: TextIO) -> int:
    from agent.identity import IdentityError

    folder = _identity_dir(args)
    old = _load_existing(folder)
    try:
        new = old.rotate(args.key_type)
        new.verify()
    except IdentityError as exc:
        raise _KeysError(f"cannot rotate the key of node {old.node_id}: {exc}") from None
    new.save(folder)
    info = _identity_info(new, folder)
    old_leaf = _identity_info(old, folder)["chain"][0]
    new_leaf = info["chain"][0]
    if args.json:
        json.dump({**info, "old_leaf": old_leaf, "new_leaf": new_leaf}, out, indent=2)
        out.write("\n")
    else:
        out.write(f"rotated the key of node {new.node_id} (the node id is unchanged)\n")
        out.write("old leaf:\n")
        _write_certificate(out, {**old_leaf, "role": "previous leaf"})
        out.write("new leaf:\n")
        _write_certificate(out, new_leaf)
        out.write("\n")
        _write_identity(out, info)
        out.write("restart the agent to present the new chain\n")
    return EXIT_OK


def _keys_show(args: argparse.Namespace, out: TextIO) -> int:
    folder = _identity_dir(args)
    identity = _load_existing(folder)
    info = _identity_info(identity, folder)
    if args.json:
        json.dump(info, out, indent=2)
        out.write("\n")
    else:
        _write_identity(out, info)
    return EXIT_OK if info["verification"]["ok"] else EXIT_FAILED


def _keys_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    actions = {"init": _keys_init, "rotate": _keys_rotate, "show": _keys_show}
    try:
        return actions[args.keys_command](args, out)
    except _KeysError as exc:
        err.write(f"quicshift keys {args.keys_command}: {exc}\n")
        return exc.exit_code
    except OSError as exc:
        err.write(f"quicshift keys {args.keys_command}: {exc}\n")
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quicshift`` console script; returns the exit status."""
    # grpc core logs handshake failures on stderr; keep the demo's output readable.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo_command(args, sys.stdout, sys.stderr)
    if args.command == "scan":
        return _scan_command(args, sys.stdout, sys.stderr)
    if args.command == "keys":
        if args.keys_command is None:
            args.keys_parser.print_help(sys.stderr)
            return EXIT_USAGE
        return _keys_command(args, sys.stdout, sys.stderr)
    if args.command in {"agent", "rollout", "call", "metrics"}:
        from agent.operator_cli import run_operator_command

        return run_operator_command(args, sys.stdout, sys.stderr)
    if args.command in {"check", "cutover"}:
        from agent.cutover_cli import run_check_command, run_cutover_command

        if args.command == "check":
            return run_check_command(args, sys.stdout, sys.stderr)
        return run_cutover_command(args, sys.stdout, sys.stderr)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
