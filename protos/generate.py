"""Regenerate the protobuf and gRPC modules under ``protos/`` from their ``.proto`` sources.

Usage::

    python -m protos.generate           # rewrite the generated modules in place
    python -m protos.generate --check   # regenerate into a temp dir; exit 1 if anything is stale

Protos are compiled with the repository root as the include path, so a file
``protos/agent/v1/common.proto`` becomes the module ``protos.agent.v1.common_pb2`` and the
``import`` lines inside generated code resolve as package-absolute imports. Each directory
holding a ``.proto`` gets an ``__init__.py`` so the modules import as a package.
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import shutil
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

__all__ = [
    "GENERATED_SUFFIXES",
    "PROTOS_DIR",
    "REPO_ROOT",
    "GenerationError",
    "check",
    "find_protos",
    "generate",
    "main",
]

PROTOS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOS_DIR.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_INIT_TEXT = '"""Generated protobuf modules (see protos/generate.py)."""\n'


class GenerationError(RuntimeError):
    """protoc failed or its tooling is missing."""


def find_protos(protos_dir: Path = PROTOS_DIR) -> list[Path]:
    """All ``.proto`` sources under ``protos_dir``, sorted, relative to the repo root."""
    root = protos_dir.parent
    return sorted(p.relative_to(root) for p in protos_dir.rglob("*.proto"))


def _generated_files(directory: Path) -> list[Path]:
    """Generated modules under ``directory`` (relative paths, sorted)."""
    found = [
        p.relative_to(directory)
        for p in directory.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    ]
    return sorted(found)


def _run_protoc(sources: Sequence[Path], source_root: Path, out_dir: Path) -> None:
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise GenerationError(
            "grpcio-tools is needed to generate code: pip install -e '.[dev]'"
        ) from exc
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{source_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(s) for s in sources),
    ]
    code = protoc.main(args)
    if code != 0:
        raise GenerationError(f"protoc exited with status {code}")


def _generate_into(out_dir: Path, protos_dir: Path) -> list[Path]:
    """Compile every proto under ``protos_dir`` into ``out_dir``; return generated files."""
    sources = find_protos(protos_dir)
    if not sources:
        raise GenerationError(f"no .proto files under {protos_dir}")
    _run_protoc(sources, protos_dir.parent, out_dir)
    return _generated_files(out_dir)


def generate(protos_dir: Path = PROTOS_DIR) -> list[Path]:
    """Regenerate in place: replace all generated modules, add missing ``__init__.py``.

    Generated modules whose ``.proto`` no longer exists are removed. Returns the generated
    files, relative to the repository root.
    """
    root = protos_dir.parent
    with tempfile.TemporaryDirectory(prefix="quicshift-protos-") as tmp:
        out = Path(tmp)
        fresh = _generate_into(out, protos_dir)
        for stale in _generated_files(protos_dir):
            rel = Path(protos_dir.name) / stale
            if rel not in fresh:
                (root / rel).unlink()
        for rel in fresh:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / rel, target)
    for rel in fresh:
        directory = (root / rel).parent
        while directory != root:
            init = directory / "__init__.py"
            if not init.exists():
                init.write_text(_INIT_TEXT)
            directory = directory.parent
    return fresh


def check(protos_dir: Path = PROTOS_DIR, out: list[str] | None = None) -> bool:
    """True when the committed generated code matches a fresh generation.

    Differences (stale, missing and orphaned modules, missing ``__init__.py``) are
    described in ``out`` when given.
    """
    report: list[str] = [] if out is None else out
    root = protos_dir.parent
    with tempfile.TemporaryDirectory(prefix="quicshift-protos-check-") as tmp:
        fresh_dir = Path(tmp)
        fresh = set(_generate_into(fresh_dir, protos_dir))
        committed = {Path(protos_dir.name) / p for p in _generated_files(protos_dir)}
        for rel in sorted(fresh | committed):
            if rel not in committed:
                report.append(f"missing: {rel}")
            elif rel not in fresh:
                report.append(f"orphaned (no .proto): {rel}")
            elif not filecmp.cmp(fresh_dir / rel, root / rel, shallow=False):
                old = (root / rel).read_text(encoding="utf-8").splitlines(keepends=True)
                new = (fresh_dir / rel).read_text(encoding="utf-8").splitlines(keepends=True)
                diff = "".join(
                    difflib.unified_diff(old, new, f"committed/{rel}", f"fresh/{rel}", n=1)
                )
                report.append(f"stale: {rel}\n{diff}")
        for rel in sorted(fresh):
            directory = (root / rel).parent
            while directory != root:
                if not (directory / "__init__.py").exists():
                    report.append(
                        f"missing package marker: {directory.relative_to(root)}/__init__.py"
                    )
                directory = directory.parent
    return not report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m protos.generate",
        description="Regenerate the protobuf/gRPC modules under protos/.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed generated code is stale",
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems: list[str] = []
            if check(out=problems):
                print("protos: generated code is up to date")
                return 0
            print(
                "protos: generated code is stale; run `python -m protos.generate`", file=sys.stderr
            )
            for problem in dict.fromkeys(problems):
                print(problem, file=sys.stderr)
            return 1
        files = generate()
    except GenerationError as exc:
        print(f"protos: {exc}", file=sys.stderr)
        return 2
    for rel in files:
        print(f"generated {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
