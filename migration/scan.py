"""``quicshift scan``: find what a codebase uses from grpcio and plan its migration.

The scanner parses every ``*.py`` file under a path with :mod:`ast` (never regex), tracks
how grpc names are bound in each file (``import grpc as g``, ``from grpc import aio as x``,
``from grpc import secure_channel``) and reports each use as a :class:`Finding` with a
verdict:

* ``covered`` — :mod:`migration.quic_grpc` provides it; only the import changes;
* ``changed`` — it works over QUIC but behaves differently (insecure channels need
  credentials, compression is ignored, proxy settings are obsolete, ...);
* ``unsupported`` — the adapter has no equivalent; the code must change.

Which grpc symbols are *covered* is read from the adapter itself at scan time (its
``__all__``, the attributes of ``migration.quic_grpc.aio``, its servers and servicer
contexts), so verdicts stay true as the adapter grows. Only the ``changed`` semantics
and recommendations are kept in explicit tables here.

Servicer context calls are found on parameters named ``context`` or annotated with a
``ServicerContext`` (and in closures inside such methods). Option keys (``"grpc.*"`` as the
first element of a tuple or a dict key), proxy environment variable names, server port
calls and ``compression=``/``wait_for_ready=`` arguments are reported only in files that
import something grpc-related (``grpc``, ``grpc_*`` packages or ``*_pb2_grpc`` modules).

Generated modules (``*_pb2.py``, ``*_pb2_grpc.py``) are not scanned by default: their grpc
uses are the code generator's, and they are regenerated rather than edited.
"""

from __future__ import annotations

import ast
import enum
import functools
import importlib
import inspect
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Final, TextIO

__all__ = [
    "Category",
    "Finding",
    "ParseError",
    "ScanError",
    "ScanReport",
    "Verdict",
    "adapter_coverage",
    "render_plan",
    "scan_path",
    "scan_source",
]


class ScanError(Exception):
    """The scan could not run at all (the path does not exist or is not Python)."""

    code = "scan_error"


class Verdict(enum.StrEnum):
    COVERED = "covered"
    CHANGED = "changed"
    UNSUPPORTED = "unsupported"


class Category(enum.StrEnum):
    IMPORT = "import"
    CHANNEL = "channel"
    SERVER = "server"
    CREDENTIALS = "credentials"
    INTERCEPTOR = "interceptor"
    PROXY = "proxy"
    OPTION = "option"
    CONTEXT = "context"
    ERROR = "error"
    STATUS = "status"
    EXPERIMENTAL = "experimental"
    COMPRESSION = "compression"
    PACKAGE = "package"
    OTHER = "other"


@dataclass(frozen=True, order=True)
class Finding:
    """One use of grpcio. ``line`` and ``col`` are 1-based; ``path`` is relative to the
    scanned root (POSIX separators)."""

    path: str
    line: int
    col: int
    category: Category
    symbol: str
    verdict: Verdict
    recommendation: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "category": str(self.category),
            "symbol": self.symbol,
            "verdict": str(self.verdict),
            "recommendation": self.recommendation,
        }


@dataclass(frozen=True)
class ParseError:
    """A file that could not be parsed (reported; its grpc uses are unknown)."""

    path: str
    line: int | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "message": self.message}


@dataclass
class ScanReport:
    root: str
    files_scanned: int = 0
    generated_skipped: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    errors: list[ParseError] = field(default_factory=list)

    @property
    def unsupported(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict is Verdict.UNSUPPORTED]

    @property
    def ok(self) -> bool:
        """Nothing unsupported and every file parsed: the adapter covers this codebase."""
        return not self.unsupported and not self.errors

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def by_verdict(self) -> dict[str, int]:
        counts = Counter(str(f.verdict) for f in self.findings)
        return {str(v): counts.get(str(v), 0) for v in Verdict}

    def by_category(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for f in self.findings:
            row = table.setdefault(str(f.category), {str(v): 0 for v in Verdict})
            row[str(f.verdict)] += 1
        return dict(sorted(table.items()))

    def files(self) -> dict[str, list[Finding]]:
        grouped: dict[str, list[Finding]] = {}
        for f in sorted(self.findings):
            grouped.setdefault(f.path, []).append(f)
        return grouped

    def steps(self) -> list[str]:
        return _plan_steps(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "files_scanned": self.files_scanned,
            "generated_skipped": sorted(self.generated_skipped),
            "summary": {"by_verdict": self.by_verdict(), "by_category": self.by_category()},
            "errors": [e.to_json() for e in self.errors],
            "findings": [f.to_json() for f in sorted(self.findings)],
            "steps": self.steps(),
        }


# -- what the adapter provides (read from it, so it stays true) ---------------------------


@dataclass(frozen=True)
class AdapterCoverage:
    """The grpc names :mod:`migration.quic_grpc` provides, read from the adapter."""

    grpc: frozenset[str]
    aio: frozenset[str]
    server_methods: frozenset[str]
    aio_server_methods: frozenset[str]
    context_methods: frozenset[str]
    aio_context_methods: frozenset[str]


def _public_methods(cls: object) -> frozenset[str]:
    if not isinstance(cls, type):
        return frozenset()
    abstract: frozenset[str] = getattr(cls, "__abstractmethods__", frozenset())
    return frozenset(
        name
        for name, value in inspect.getmembers(cls)
        if not name.startswith("_") and callable(value) and name not in abstract
    )


@functools.cache
def adapter_coverage() -> AdapterCoverage:
    """Introspect :mod:`migration.quic_grpc` (cached for the process)."""
    adapter = importlib.import_module("migration.quic_grpc")
    aio = importlib.import_module("migration.quic_grpc.aio")
    exported: Iterable[str] = getattr(adapter, "__all__", ())
    grpc_names = frozenset(n for n in exported if hasattr(adapter, n))
    aio_names = frozenset(n for n in dir(aio) if not n.startswith("_") and _is_api(aio, n))
    context_module: ModuleType | None
    try:
        context_module = importlib.import_module("migration.quic_grpc._context")
    except ImportError:
        context_module = None
    sync_context = getattr(context_module, "ServicerContext", None)
    return AdapterCoverage(
        grpc=grpc_names,
        aio=aio_names,
        server_methods=_public_methods(getattr(adapter, "Server", None)),
        aio_server_methods=_public_methods(getattr(aio, "Server", None)),
        context_methods=_public_methods(sync_context),
        aio_context_methods=_public_methods(getattr(aio, "ServicerContext", None)),
    )


def _is_api(module: ModuleType, name: str) -> bool:
    value = getattr(module, name)
    if isinstance(value, ModuleType):  # e.g. ``annotations`` or a re-exported stdlib module
        return False
    return not (name == "annotations" and getattr(value, "__module__", "") == "__future__")


# -- explicit tables: "changed" semantics and recommendations -----------------------------

ADAPTER_IMPORT: Final = "from migration import quic_grpc as grpc"
ADAPTER_AIO_IMPORT: Final = "from migration.quic_grpc import aio"

_TLS_ALWAYS = (
    "QUIC is always TLS 1.3: {name} raises UsageError over QUIC; give it node credentials "
    "({secure}) with the node's key and chain (quicshift keys init)"
)
_NODE_CERTS = (
    "takes node certificates: pass the node's key and chain (quicshift keys init) and "
    "verify= the node verifier instead of a CA-issued certificate"
)

# (namespace, name) -> recommendation; namespace is "grpc" or "grpc.aio".
CHANGED_SYMBOLS: Final[dict[tuple[str, str], tuple[Category, str]]] = {
    ("grpc", "insecure_channel"): (
        Category.CHANNEL,
        _TLS_ALWAYS.format(name="insecure_channel", secure="secure_channel"),
    ),
    ("grpc.aio", "insecure_channel"): (
        Category.CHANNEL,
        _TLS_ALWAYS.format(name="aio.insecure_channel", secure="aio.secure_channel"),
    ),
    ("grpc", "ssl_channel_credentials"): (Category.CREDENTIALS, _NODE_CERTS),
    ("grpc", "ssl_server_credentials"): (Category.CREDENTIALS, _NODE_CERTS),
    ("grpc", "Compression"): (
        Category.COMPRESSION,
        "compression is accepted and ignored over QUIC; drop it",
    ),
}
CHANGED_SERVER_METHODS: Final[dict[str, str]] = {
    "add_insecure_port": _TLS_ALWAYS.format(name="add_insecure_port", secure="add_secure_port"),
}
CHANGED_CONTEXT_METHODS: Final[dict[str, str]] = {
    "set_compression": "accepted and ignored: QUIC calls are not compressed",
    "disable_next_message_compression": "accepted and ignored: QUIC calls are not compressed",
    "peer": "returns the QUIC peer's UDP address (ipv4:host:port); use peer_info() for the "
    "node identity instead of parsing it",
    "auth_context": "carries the peer's node certificate chain, not a CA-issued identity",
    "peer_identities": "returns the peer's node certificate chain (DER), leaf first",
    "peer_identity_key": "names the node-identity property of the QUIC peer",
}
# Channel/server option keys the adapter honours (everything else is accepted and ignored).
HONOURED_OPTIONS: Final = frozenset(
    {
        "grpc.max_receive_message_length",
        "grpc.max_send_message_length",
        "grpc.ssl_target_name_override",
    }
)
PROXY_OPTIONS: Final = frozenset({"grpc.http_proxy", "grpc.enable_http_proxy"})
PROXY_ENV: Final = frozenset(
    {"http_proxy", "https_proxy", "grpc_proxy", "no_proxy", "no_grpc_proxy"}
)
_PROXY_OBSOLETE = (
    "proxy settings are obsolete over QUIC: nodes dial each other directly (UDP, hole "
    "punching, relay); remove it"
)
_KEEPALIVE_HINT = (
    "HTTP/2 keepalive does not apply: configure QUIC keepalive and idle timeout "
    "(QUICConfig, channel option 'quicshift.quic_config')"
)
_IGNORED_OPTION = "accepted and ignored over QUIC; remove it or find the QUIC equivalent"

# Extra words for unsupported symbols (the verdict itself comes from the adapter).
UNSUPPORTED_HINTS: Final[dict[str, str]] = {
    "metadata_call_credentials": "send the token as call metadata from an interceptor, "
    "or authorise by the caller's node id (mutual TLS)",
    "access_token_call_credentials": "send the token as call metadata from an interceptor, "
    "or authorise by the caller's node id (mutual TLS)",
    "composite_channel_credentials": "use ssl_channel_credentials with node certificates; "
    "move call credentials into an interceptor that adds metadata",
    "composite_call_credentials": "move call credentials into an interceptor that adds metadata",
    "local_channel_credentials": "use node certificates (ssl_channel_credentials)",
    "local_server_credentials": "use node certificates (ssl_server_credentials)",
    "LocalConnectionType": "use node certificates",
    "alts_channel_credentials": "use node certificates (ssl_channel_credentials)",
    "alts_server_credentials": "use node certificates (ssl_server_credentials)",
    "compute_engine_channel_credentials": "use node certificates (ssl_channel_credentials)",
    "experimental": "experimental grpcio APIs have no QUIC equivalent; use the stable API",
    "dynamic_ssl_server_credentials": "rotate node keys with quicshift keys rotate instead",
    "ssl_server_certificate_configuration": "rotate node keys with quicshift keys rotate",
}

PACKAGES: Final[dict[str, tuple[Verdict, str]]] = {
    "grpc_health": (
        Verdict.CHANGED,
        "use migration.quic_grpc.health (HealthServicer / AioHealthServicer): one health "
        "state served on both transports",
    ),
    "grpc_reflection": (
        Verdict.UNSUPPORTED,
        "server reflection is not served over QUIC; ship the .proto files to clients",
    ),
    "grpc_status": (
        Verdict.UNSUPPORTED,
        "rich status (google.rpc.Status details) is not carried; put details in trailing metadata",
    ),
    "grpc_channelz": (
        Verdict.UNSUPPORTED,
        "channelz has no QUIC equivalent; use migration.metrics (per-transport metrics)",
    ),
    "grpc_tools": (
        Verdict.COVERED,
        "build-time code generation; keep it as a dev dependency (protoc for *_pb2.py)",
    ),
    "grpc_testing": (
        Verdict.UNSUPPORTED,
        "use migration.quic_grpc.testing or the compatibility suite (quicshift check)",
    ),
}
_GENERATED_IMPORT = (
    "generated stubs/servicers run unmodified on the adapter's channels and servers; in the "
    "quic-only stage (no grpcio) bind from the ServiceDescriptor (migration.quic_grpc.descriptor)"
)

GRPC_CONTEXT_METHODS: Final = frozenset(
    {
        "abort",
        "abort_with_status",
        "add_callback",
        "add_done_callback",
        "auth_context",
        "cancel",
        "cancelled",
        "code",
        "details",
        "disable_next_message_compression",
        "done",
        "invocation_metadata",
        "is_active",
        "peer",
        "peer_identities",
        "peer_identity_key",
        "read",
        "send_initial_metadata",
        "set_code",
        "set_compression",
        "set_details",
        "set_trailing_metadata",
        "time_remaining",
        "trailing_metadata",
        "write",
    }
)
SERVER_PORT_METHODS: Final = frozenset({"add_insecure_port", "add_secure_port"})

_CHANNEL_NAMES: Final = frozenset(
    {"secure_channel", "insecure_channel", "Channel", "channel_ready_future", "ChannelConnectivity"}
)
_SERVER_NAMES: Final = frozenset(
    {
        "server",
        "Server",
        "method_handlers_generic_handler",
        "unary_unary_rpc_method_handler",
        "unary_stream_rpc_method_handler",
        "stream_unary_rpc_method_handler",
        "stream_stream_rpc_method_handler",
        "GenericRpcHandler",
        "ServiceRpcHandler",
        "RpcMethodHandler",
        "HandlerCallDetails",
    }
)
_ERROR_NAMES: Final = frozenset(
    {"RpcError", "AioRpcError", "FutureTimeoutError", "FutureCancelledError", "UsageError"}
)
_STATUS_NAMES: Final = frozenset({"StatusCode", "Status"})
SKIP_DIRS: Final = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".tox",
        ".nox",
        ".venv",
        "venv",
        "__pycache__",
        "node_modules",
        "site-packages",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        "build",
        "dist",
    }
)


def _category_of(namespace: str, name: str) -> Category:
    if (namespace, name) in CHANGED_SYMBOLS:
        return CHANGED_SYMBOLS[(namespace, name)][0]
    if name == "experimental":
        return Category.EXPERIMENTAL
    if "Interceptor" in name or name in {"intercept_channel", "InterceptedCall"}:
        return Category.INTERCEPTOR
    if "credentials" in name.lower() or name in {"LocalConnectionType"} or "ssl_" in name:
        return Category.CREDENTIALS
    if name in _CHANNEL_NAMES:
        return Category.CHANNEL
    if name in _SERVER_NAMES:
        return Category.SERVER
    if name in _ERROR_NAMES:
        return Category.ERROR
    if name in _STATUS_NAMES:
        return Category.STATUS
    if name == "Compression":
        return Category.COMPRESSION
    if name == "ServicerContext":
        return Category.CONTEXT
    return Category.OTHER


def classify_symbol(namespace: str, name: str) -> tuple[Category, Verdict, str]:
    """Category, verdict and recommendation for ``grpc.<name>`` / ``grpc.aio.<name>``."""
    cov = adapter_coverage()
    provided = name in (cov.grpc if namespace == "grpc" else cov.aio)
    category = _category_of(namespace, name)
    where = "migration.quic_grpc" + (".aio" if namespace == "grpc.aio" else "")
    if not provided:
        hint = UNSUPPORTED_HINTS.get(name, "rewrite this use before the quic-only stage")
        return category, Verdict.UNSUPPORTED, f"{namespace}.{name} is not in {where}: {hint}"
    changed = CHANGED_SYMBOLS.get((namespace, name))
    if changed is not None:
        return category, Verdict.CHANGED, changed[1]
    return category, Verdict.COVERED, f"provided by {where}"


def classify_option(key: str) -> tuple[Category, Verdict, str]:
    if key in PROXY_OPTIONS:
        return Category.PROXY, Verdict.CHANGED, _PROXY_OBSOLETE
    if key in HONOURED_OPTIONS:
        return Category.OPTION, Verdict.COVERED, "honoured by migration.quic_grpc"
    if "keepalive" in key or "ping" in key:
        return Category.OPTION, Verdict.CHANGED, _KEEPALIVE_HINT
    return Category.OPTION, Verdict.CHANGED, _IGNORED_OPTION


def classify_context_method(name: str, is_async: bool) -> tuple[Verdict, str]:
    cov = adapter_coverage()
    provided = cov.aio_context_methods if is_async else cov.context_methods
    kind = "aio.ServicerContext" if is_async else "ServicerContext"
    if name not in provided:
        return (
            Verdict.UNSUPPORTED,
            f"the adapter's {kind} has no {name}(); rewrite this use",
        )
    if name in CHANGED_CONTEXT_METHODS:
        return Verdict.CHANGED, CHANGED_CONTEXT_METHODS[name]
    return Verdict.COVERED, f"provided by the adapter's {kind}"


def classify_server_method(name: str) -> tuple[Verdict, str]:
    cov = adapter_coverage()
    if name not in cov.server_methods or name not in cov.aio_server_methods:
        return Verdict.UNSUPPORTED, f"the adapter's servers have no {name}(); rewrite this use"
    if name in CHANGED_SERVER_METHODS:
        return Verdict.CHANGED, CHANGED_SERVER_METHODS[name]
    return Verdict.COVERED, "provided by the adapter's servers (node credentials)"


# -- the AST walk ---------------------------------------------------------------------------

_GRPC_ROOTS: Final = ("grpc",)


def _is_generated_module(module: str) -> bool:
    return module.rsplit(".", 1)[-1].endswith("_pb2_grpc")


def _package_of(module: str) -> str | None:
    top = module.split(".", 1)[0]
    return top if top in PACKAGES else None


class _FileScanner(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.aliases: dict[str, str] = {}  # local name -> dotted grpc path ("grpc.aio", ...)
        self.findings: dict[tuple[int, int, str], Finding] = {}
        self.uses_grpc = False
        self.context_names: list[tuple[frozenset[str], bool]] = []  # stack per function

    # -- recording ----------------------------------------------------------------------

    def add(
        self,
        node: ast.AST,
        category: Category,
        symbol: str,
        verdict: Verdict,
        recommendation: str,
    ) -> None:
        line = getattr(node, "lineno", 0)
        col = getattr(node, "col_offset", -1) + 1
        key = (line, col, symbol)
        if key not in self.findings:
            self.findings[key] = Finding(
                self.path, line, col, category, symbol, verdict, recommendation
            )

    def add_symbol(self, node: ast.AST, dotted: str) -> None:
        """A use of ``grpc.X...`` or ``grpc.aio.X...`` (``dotted`` fully resolved)."""
        parts = dotted.split(".")
        if len(parts) == 1:  # the bare module object, e.g. passed around as ``grpc``
            return
        if parts[1] == "aio" and len(parts) > 2:
            namespace, name = "grpc.aio", parts[2]
        else:
            namespace, name = "grpc", parts[1]
        category, verdict, recommendation = classify_symbol(namespace, name)
        self.add(node, category, dotted, verdict, recommendation)

    # -- name resolution ---------------------------------------------------------------

    def resolve(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    # -- imports ---------------------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            module = alias.name
            top = module.split(".", 1)[0]
            if top in _GRPC_ROOTS:
                self.uses_grpc = True
                if alias.asname:
                    self.aliases[alias.asname] = module
                else:
                    self.aliases[top] = top
                self._import_finding(node, module)
            elif _is_generated_module(module):
                self.uses_grpc = True
                self.add(node, Category.IMPORT, module, Verdict.CHANGED, _GENERATED_IMPORT)
            elif (package := _package_of(module)) is not None:
                self.uses_grpc = True
                verdict, text = PACKAGES[package]
                self.add(node, Category.PACKAGE, module, verdict, text)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        top = module.split(".", 1)[0]
        if node.level == 0 and top in _GRPC_ROOTS:
            self.uses_grpc = True
            for alias in node.names:
                dotted = f"{module}.{alias.name}"
                if alias.name == "*":
                    self._import_finding(node, module)
                    continue
                self.aliases[alias.asname or alias.name] = dotted
                self._import_finding(node, dotted)
            return
        if node.level == 0 and (package := _package_of(module)) is not None:
            self.uses_grpc = True
            verdict, text = PACKAGES[package]
            for alias in node.names:
                self.add(node, Category.PACKAGE, f"{module}.{alias.name}", verdict, text)
            return
        for alias in node.names:
            if _is_generated_module(alias.name) or _is_generated_module(module):
                self.uses_grpc = True
                name = f"{'.' * node.level}{module}"
                symbol = f"{name}.{alias.name}" if _is_generated_module(alias.name) else name
                self.add(node, Category.IMPORT, symbol, Verdict.CHANGED, _GENERATED_IMPORT)

    def _import_finding(self, node: ast.AST, dotted: str) -> None:
        parts = dotted.split(".")
        if dotted == "grpc":
            self.add(
                node, Category.IMPORT, dotted, Verdict.COVERED, f"replace with {ADAPTER_IMPORT}"
            )
            return
        if dotted == "grpc.aio":
            self.add(
                node, Category.IMPORT, dotted, Verdict.COVERED, f"replace with {ADAPTER_AIO_IMPORT}"
            )
            return
        if parts[1] == "aio":
            namespace, name = "grpc.aio", parts[2]
        else:
            namespace, name = "grpc", parts[1]
        _, verdict, recommendation = classify_symbol(namespace, name)
        if verdict is not Verdict.UNSUPPORTED:
            target = "migration.quic_grpc" + (".aio" if namespace == "grpc.aio" else "")
            verdict, recommendation = Verdict.COVERED, f"import it from {target}"
        self.add(node, Category.IMPORT, dotted, verdict, recommendation)

    # -- uses --------------------------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = self.resolve(node)
        if dotted is not None:
            self.add_symbol(node, dotted)
            return  # the inner parts of the chain are the same use
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            dotted = self.aliases.get(node.id)
            if dotted is not None:
                self.add_symbol(node, dotted)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and self.resolve(func) is None:
            name = func.attr
            receiver = func.value
            if (
                self.uses_grpc
                and name in GRPC_CONTEXT_METHODS
                and isinstance(receiver, ast.Name)
                and self.context_names
                and receiver.id in self.context_names[-1][0]
            ):
                verdict, text = classify_context_method(name, self.context_names[-1][1])
                self.add(func, Category.CONTEXT, f"{receiver.id}.{name}", verdict, text)
            elif name in SERVER_PORT_METHODS and self.uses_grpc:
                verdict, text = classify_server_method(name)
                self.add(func, Category.SERVER, name, verdict, text)
        if self.uses_grpc:
            for keyword in node.keywords:
                if keyword.arg == "compression" and not _is_none(keyword.value):
                    self.add(
                        keyword,
                        Category.COMPRESSION,
                        "compression=",
                        Verdict.CHANGED,
                        "compression is accepted and ignored over QUIC; drop it",
                    )
                elif keyword.arg == "wait_for_ready" and not _is_none(keyword.value):
                    self.add(
                        keyword,
                        Category.OTHER,
                        "wait_for_ready=",
                        Verdict.CHANGED,
                        "accepted and ignored: QUIC calls fail fast when the peer is "
                        "unreachable; retry or fall back instead",
                    )
        self.generic_visit(node)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        if self.uses_grpc and node.elts:
            self._option_key(node.elts[0])
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        if self.uses_grpc:
            for key in node.keys:
                if key is not None:
                    self._option_key(key)
        self.generic_visit(node)

    def _option_key(self, node: ast.expr) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            key = node.value
            if (
                key.startswith("grpc.")
                and len(key) > 5
                and key.replace("_", "").replace(".", "").isalnum()
            ):
                category, verdict, text = classify_option(key)
                self.add(node, category, key, verdict, text)

    def visit_Constant(self, node: ast.Constant) -> None:
        if self.uses_grpc and isinstance(node.value, str) and node.value.lower() in PROXY_ENV:
            self.add(node, Category.PROXY, node.value, Verdict.CHANGED, _PROXY_OBSOLETE)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        args = node.args
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        if args.vararg is not None:
            params.append(args.vararg)
        if args.kwarg is not None:
            params.append(args.kwarg)
        names: set[str] = set()
        for arg in params:
            annotation = self.resolve(arg.annotation) if arg.annotation is not None else None
            if arg.arg == "context" or (
                annotation is not None and annotation.endswith("ServicerContext")
            ):
                names.add(arg.arg)
        # A nested function sees its enclosing servicer method's context (a closure),
        # unless a parameter of its own shadows the name.
        outer = self.context_names[-1][0] if self.context_names else frozenset()
        names |= outer - {arg.arg for arg in params}
        self.context_names.append((frozenset(names), isinstance(node, ast.AsyncFunctionDef)))
        try:
            self.generic_visit(node)
        finally:
            self.context_names.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._visit_function(node)


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _prescan_uses_grpc(tree: ast.Module) -> bool:
    """Whether the file imports anything grpc-related (options/proxy strings and server
    ports are only reported in such files, so unrelated code is not flagged)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".", 1)[0]
                if top in _GRPC_ROOTS or _is_generated_module(alias.name) or top in PACKAGES:
                    return True
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            top = module.split(".", 1)[0]
            if node.level == 0 and (top in _GRPC_ROOTS or top in PACKAGES):
                return True
            if _is_generated_module(module) or any(
                _is_generated_module(a.name) for a in node.names
            ):
                return True
    return False


def scan_source(source: str | bytes, path: str = "<source>") -> list[Finding]:
    """The findings of one module's source. Raises :class:`SyntaxError` (or
    :class:`ValueError` for null bytes) when it does not parse."""
    tree = ast.parse(source, filename=path)
    scanner = _FileScanner(path)
    scanner.uses_grpc = _prescan_uses_grpc(tree)
    scanner.visit(tree)
    return sorted(scanner.findings.values())


def is_generated(path: Path) -> bool:
    name = path.name
    return name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi"))


def _python_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
        )
        for filename in sorted(filenames):
            if filename.endswith(".py"):
                yield Path(dirpath) / filename


def scan_path(path: str | os.PathLike[str], *, include_generated: bool = False) -> ScanReport:
    """Scan a file or a directory tree of ``*.py`` files."""
    root = Path(path)
    if not root.exists():
        raise ScanError(f"no such file or directory: {root}")
    if root.is_file() and root.suffix != ".py":
        raise ScanError(f"not a Python file: {root}")
    report = ScanReport(root=str(root))
    base = root.parent if root.is_file() else root
    for file in _python_files(root):
        rel = file.relative_to(base).as_posix()
        if is_generated(file) and not include_generated:
            report.generated_skipped.append(rel)
            continue
        report.files_scanned += 1
        try:
            source = file.read_bytes()
        except OSError as exc:
            report.errors.append(ParseError(rel, None, f"cannot read: {exc.strerror or exc}"))
            continue
        try:
            report.findings.extend(scan_source(source, rel))
        except SyntaxError as exc:
            report.errors.append(ParseError(rel, exc.lineno, f"syntax error: {exc.msg}"))
        except ValueError as exc:  # e.g. source with null bytes
            report.errors.append(ParseError(rel, None, f"cannot parse: {exc}"))
    report.findings.sort()
    return report


# -- the plan -------------------------------------------------------------------------------


def _plan_steps(report: ScanReport) -> list[str]:
    findings = report.findings
    symbols = {f.symbol.rsplit(".", 1)[-1] for f in findings}
    categories = {f.category for f in findings}
    steps: list[str] = []
    if any(f.category is Category.IMPORT and f.symbol.split(".")[0] == "grpc" for f in findings):
        steps.append(
            f"Switch imports: `import grpc` -> `{ADAPTER_IMPORT}`; "
            f"`from grpc import aio` -> `{ADAPTER_AIO_IMPORT}`; "
            "`from grpc import X` -> `from migration.quic_grpc import X`."
        )
    if symbols & {"insecure_channel", "add_insecure_port"} or Category.CREDENTIALS in categories:
        steps.append(
            "Move credentials to node certificates: create the node identity "
            "(`quicshift keys init`), use secure_channel/add_secure_port with "
            "ssl_channel_credentials/ssl_server_credentials built from the node key and "
            "chain and verify= the node verifier; insecure channels and ports do not exist "
            "over QUIC."
        )
    if Category.PROXY in categories:
        steps.append(
            "Replace proxy configuration: drop grpc.http_proxy / grpc.enable_http_proxy "
            "options and *_proxy environment variables; QUIC nodes dial directly (hole "
            "punching through a signalling peer, relay for symmetric NAT)."
        )
    if Category.OPTION in categories:
        steps.append(
            "Review channel/server options: message size limits and "
            "ssl_target_name_override are honoured; keepalive moves to QUICConfig; other "
            "grpc.* options are ignored."
        )
    if Category.COMPRESSION in categories:
        steps.append("Drop compression settings: they are accepted and ignored over QUIC.")
    if any(f.category is Category.CONTEXT and f.verdict is Verdict.CHANGED for f in findings):
        steps.append(
            "Check servicer code that reads context.peer()/auth_context(): over QUIC they "
            "describe the peer node (UDP address, node certificate chain)."
        )
    if any(f.category is Category.IMPORT and "_pb2_grpc" in f.symbol for f in findings):
        steps.append(
            "Keep generated *_pb2_grpc stubs while grpcio is installed (legacy, dual, "
            "quic-preferred); for quic-only bind services from their ServiceDescriptor "
            "(migration.quic_grpc.descriptor)."
        )
    if Category.PACKAGE in categories:
        steps.append(
            "Replace grpc_* packages: health -> migration.quic_grpc.health; reflection, "
            "rich status and channelz have no QUIC equivalent."
        )
    unsupported = report.unsupported
    if unsupported:
        steps.append(
            f"Rewrite the {len(unsupported)} unsupported use(s) listed above; they block "
            "the quic-only stage."
        )
    if report.errors:
        steps.append(
            f"Fix or exclude the {len(report.errors)} file(s) that could not be parsed and "
            "scan again: their grpc uses are unknown."
        )
    if findings:
        steps.append(
            "Walk the fleet through the rollout stages (legacy -> dual -> quic-preferred -> "
            "quic-only), watching quicshift_calls_total and quicshift_fallbacks_total per "
            "transport; scan again until it exits 0, then remove grpcio at cutover."
        )
    else:
        steps.append("No grpcio use found: nothing to migrate in this code.")
    return steps


def render_plan(report: ScanReport, out: TextIO) -> None:
    """The human-readable migration plan."""
    out.write(f"quicshift scan: {report.root}\n")
    out.write(
        f"{report.files_scanned} file(s) scanned, {len(report.generated_skipped)} generated "
        f"file(s) skipped, {len(report.findings)} grpc use(s) found\n\n"
    )
    verdicts = report.by_verdict()
    out.write(
        "summary: " + ", ".join(f"{count} {verdict}" for verdict, count in verdicts.items()) + "\n"
    )
    table = report.by_category()
    if table:
        header = f"  {'category':<14} {'covered':>8} {'changed':>8} {'unsupported':>12}\n"
        out.write(header)
        for category, row in table.items():
            out.write(
                f"  {category:<14} {row['covered']:>8} {row['changed']:>8} "
                f"{row['unsupported']:>12}\n"
            )
    for path, items in report.files().items():
        out.write(f"\n{path}\n")
        for f in items:
            out.write(
                f"  {f.line}:{f.col}  {f.verdict:<11} {f.category:<12} {f.symbol}\n"
                f"      -> {f.recommendation}\n"
            )
    for error in report.errors:
        where = f"{error.path}:{error.line}" if error.line is not None else error.path
        out.write(f"\nNOT SCANNED {where}: {error.message}\n")
    out.write("\nmigration plan:\n")
    for index, step in enumerate(report.steps(), 1):
        out.write(f"  {index}. {step}\n")
    out.write(
        "\nresult: "
        + (
            "the adapter covers every use (exit 0)\n"
            if report.ok
            else "changes needed before quic-only (exit 1)\n"
        )
    )
