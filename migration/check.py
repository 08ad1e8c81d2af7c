"""``quicshift check MODULE:SERVICER --proto FILE``: run a user's own servicer on real
grpcio (HTTP/2 over TCP+TLS) and on the adapter (:mod:`migration.quic_grpc`, QUIC) at
once, drive the same calls on both and report every difference.

The ``.proto`` is compiled with ``grpc_tools.protoc`` into a temporary directory; the
generated ``*_pb2_grpc.add_<Service>Servicer_to_server`` binds the servicer to both
servers (a fresh instance each, so state starts equal). For every method of the service
the same requests (from ``--calls``, else a default-constructed message) are sent on
both transports, in the same order; status code, details, response messages (as
serialized bytes) and initial/trailing metadata (without transport-specific keys) are
compared. grpcio is needed (the ``legacy`` extra): this compares against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Final, TextIO

__all__ = [
    "CheckError",
    "CheckReport",
    "MethodResult",
    "render_report",
    "run_check",
]

DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_STREAM_LENGTH: Final = 3
MAX_STREAM_RESPONSES: Final = 100
TRANSPORTS: Final = ("grpc", "quic")

# Metadata keys a transport adds by itself; they say nothing about the service.
_TRANSPORT_KEYS: Final = frozenset(
    {"content-type", "user-agent", "date", "server", "te", "accept-encoding", "via"}
)


class CheckError(Exception):
    """A usage problem: bad MODULE:SERVICER, a .proto that does not compile, a bad
    ``--calls`` file. The CLI exits 2 on it."""


# -- outcomes -------------------------------------------------------------------------------


@dataclass
class CallOutcome:
    """What one call returned on one transport."""

    code: str
    details: str
    responses: list[bytes]
    initial_metadata: list[tuple[str, str]]
    trailing_metadata: list[tuple[str, str]]

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "details": self.details,
            "responses": [r.hex() for r in self.responses],
            "initial_metadata": [list(kv) for kv in self.initial_metadata],
            "trailing_metadata": [list(kv) for kv in self.trailing_metadata],
        }


@dataclass
class MethodResult:
    method: str
    kind: str
    calls: int = 0
    differences: list[str] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kind": self.kind,
            "calls": self.calls,
            "same": self.same,
            "differences": self.differences,
            "outcomes": self.outcomes,
        }


@dataclass
class CheckReport:
    service: str
    servicer: str
    proto: str
    methods: list[MethodResult]

    @property
    def same(self) -> bool:
        return all(m.same for m in self.methods)

    @property
    def exit_code(self) -> int:
        return 0 if self.same else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "servicer": self.servicer,
            "proto": self.proto,
            "transports": list(TRANSPORTS),
            "same": self.same,
            "methods": [m.to_json() for m in self.methods],
        }


def render_report(report: CheckReport, out: TextIO) -> None:
    out.write(f"service {report.service} ({report.proto}), servicer {report.servicer}\n")
    out.write("grpc = grpcio over HTTP/2+TLS; quic = migration.quic_grpc over QUIC\n\n")
    width = max([len("method")] + [len(m.method) for m in report.methods])
    out.write(f"{'method':<{width}}  {'kind':<16} {'calls':>5}  result\n")
    for m in report.methods:
        verdict = "same" if m.same else "DIFFERENT"
        out.write(f"{m.method:<{width}}  {m.kind:<16} {m.calls:>5}  {verdict}\n")
        for diff in m.differences:
            out.write(f"{'':<{width}}    - {diff}\n")
    differing = [m.method for m in report.methods if not m.same]
    out.write("\n")
    if differing:
        out.write(
            f"{len(differing)} of {len(report.methods)} method(s) differ: {', '.join(differing)}\n"
        )
    else:
        out.write(f"all {len(report.methods)} method(s) behave the same on both transports\n")


# -- loading --------------------------------------------------------------------------------


@dataclass
class _Protos:
    pb2: ModuleType
    pb2_grpc: ModuleType


def compile_proto(proto: str | Path, out_dir: Path, includes: Sequence[str] = ()) -> _Protos:
    """Compile ``proto`` with grpc_tools.protoc into ``out_dir`` and import the modules."""
    path = Path(proto)
    if not path.is_file():
        raise CheckError(f"--proto {proto}: no such file")
    try:
        import grpc_tools  # type: ignore[import-untyped]
    except ImportError:
        raise CheckError(
            "compiling the .proto needs grpcio-tools: pip install grpcio-tools"
        ) from None
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    include_dir = path.resolve().parent
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{include_dir}",
        *(f"-I{Path(i).resolve()}" for i in includes),
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(path.resolve()),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        raise CheckError(f"{proto} does not compile:\n{message}")
    base = path.stem.replace("-", "_").replace(".", "_")
    sys.path.insert(0, str(out_dir))
    try:
        importlib.invalidate_caches()
        pb2 = importlib.import_module(f"{base}_pb2")
        pb2_grpc = importlib.import_module(f"{base}_pb2_grpc")
    except Exception as exc:
        raise CheckError(f"cannot import the modules generated from {proto}: {exc}") from None
    return _Protos(pb2, pb2_grpc)


def load_servicer(spec: str) -> type[Any]:
    """``MODULE:CLASS`` → the class; the current directory is put on ``sys.path``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CheckError(f"{spec!r} is not MODULE:SERVICER (e.g. myservice.server:Greeter)")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CheckError(f"cannot import module {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CheckError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not inspect.isclass(obj):
        raise CheckError(f"{spec} is not a class")
    return obj


def _pick_service(protos: _Protos, servicer_cls: type[Any]) -> Any:
    services = list(protos.pb2.DESCRIPTOR.services_by_name.values())
    if not services:
        raise CheckError("the .proto defines no service")
    for service in services:
        base = getattr(protos.pb2_grpc, f"{service.name}Servicer", None)
        if base is not None and issubclass(servicer_cls, base):
            return service
    if len(services) == 1:
        return services[0]
    for service in services:
        if all(hasattr(servicer_cls, m.name) for m in service.methods):
            return service
    names = ", ".join(s.name for s in services)
    raise CheckError(f"{servicer_cls.__name__} implements none of the services: {names}")


def _kind(method: Any) -> str:
    return {
        (False, False): "unary-unary",
        (False, True): "unary-stream",
        (True, False): "stream-unary",
        (True, True): "stream-stream",
    }[(bool(method.client_streaming), bool(method.server_streaming))]


def _request_class(protos: _Protos, method: Any) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(method.input_type)


def _load_calls(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckError(f"--calls {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckError(f"--calls {path}: the file must hold a JSON object keyed by method name")
    return data


def _requests_for(method: Any, request_cls: Any, spec: Any) -> list[list[bytes]]:
    """One entry per call: the serialized request messages of that call."""
    from google.protobuf import json_format

    def parse(item: Any) -> bytes:
        if not isinstance(item, dict):
            raise CheckError(f"--calls: {method.name}: a request is a JSON object, got {item!r}")
        try:
            message = json_format.ParseDict(item, request_cls())
        except json_format.ParseError as exc:
            raise CheckError(f"--calls: {method.name}: {exc}") from None
        return bytes(message.SerializeToString(deterministic=True))

    default = bytes(request_cls().SerializeToString())
    if method.client_streaming:
        if spec is None:
            return [[default] * DEFAULT_STREAM_LENGTH]
        if not isinstance(spec, list):
            raise CheckError(f"--calls: {method.name} is client-streaming: give a list")
        if spec and all(isinstance(s, list) for s in spec):
            return [[parse(i) for i in call] for call in spec]
        return [[parse(i) for i in spec]]
    if spec is None:
        return [[default]]
    items = spec if isinstance(spec, list) else [spec]
    return [[parse(i)] for i in items]


def _is_async(servicer_cls: type[Any], service: Any) -> bool:
    for m in service.methods:
        fn = getattr(servicer_cls, m.name, None)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            return True
    return False


# -- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Certs:
    ca_pem: bytes
    key_pem: bytes
    chain_pem: bytes


def _throwaway_certs() -> _Certs:
    from quic_rpc.testing.pki import CertificateAuthority

    authority = CertificateAuthority("quicshift check CA")
    server = authority.issue("localhost", usages=("server",))
    return _Certs(
        ca_pem=authority.certificate_pem, key_pem=server.key_pem, chain_pem=server.chain_pem
    )


# -- serving --------------------------------------------------------------------------------


class _Served:
    """One servicer instance served by one stack (grpc or the shim), sync or aio."""

    def __init__(self, g: Any, add: Callable[[Any, Any], None], servicer: Any, aio: bool) -> None:
        self._g = g
        self._add = add
        self._servicer = servicer
        self._aio = aio
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.port = 0

    def start(self, certs: _Certs) -> None:
        creds = self._g.ssl_server_credentials([(certs.key_pem, certs.chain_pem)])
        if not self._aio:
            self._pool = ThreadPoolExecutor(8)
            self._server = self._g.server(self._pool)
            self._add(self._servicer, self._server)
            self.port = int(self._server.add_secure_port("localhost:0", creds))
            self._server.start()
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, daemon=True)
        self._thread.start()

        async def start() -> int:
            self._server = self._g.aio.server()
            self._add(self._servicer, self._server)
            port = int(self._server.add_secure_port("localhost:0", creds))
            await self._server.start()
            return port

        self.port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)

    def stop(self) -> None:
        if self._server is None:
            pass
        elif not self._aio:
            self._server.stop(None).wait(10)
        elif self._loop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._server.stop(None), self._loop).result(10)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


# -- calling --------------------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


def _metadata(items: Any) -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = []
    for key, value in items or ():
        k = str(key).lower()
        if k.startswith((":", "grpc-")) or k in _TRANSPORT_KEYS:
            continue
        v = value.hex() if isinstance(value, bytes) else str(value)
        result.append((k, v))
    return sorted(result)


def _code_name(code: Any) -> str:
    return str(getattr(code, "name", code))


def _call_once(
    g: Any, channel: Any, path: str, kind: str, requests: list[bytes], timeout: float
) -> CallOutcome:
    factory = getattr(channel, kind.replace("-", "_"))
    callable_ = factory(path, request_serializer=_identity, response_deserializer=_identity)
    responses: list[bytes] = []
    call: Any = None
    try:
        if kind == "unary-unary":
            response, call = callable_.with_call(requests[0], timeout=timeout)
            responses.append(bytes(response))
        elif kind == "stream-unary":
            response, call = callable_.with_call(iter(requests), timeout=timeout)
            responses.append(bytes(response))
        else:
            argument: Any = requests[0] if kind == "unary-stream" else iter(requests)
            call = callable_(argument, timeout=timeout)
            for response in call:
                responses.append(bytes(response))
                if len(responses) >= MAX_STREAM_RESPONSES:
                    call.cancel()
                    break
        return CallOutcome(
            code=_code_name(call.code()),
            details=call.details() or "",
            responses=responses,
            initial_metadata=_metadata(call.initial_metadata()),
            trailing_metadata=_metadata(call.trailing_metadata()),
        )
    except g.RpcError as exc:
        error: Any = exc
        return CallOutcome(
            code=_code_name(error.code()),
            details=error.details() or "",
            responses=responses,
            initial_metadata=_metadata(_safe(error.initial_metadata)),
            trailing_metadata=_metadata(_safe(error.trailing_metadata)),
        )


def _safe(method: Callable[[], Any]) -> Any:
    try:
        return method()
    except Exception:
        return ()


def _describer(response_cls: Any) -> Callable[[bytes], str]:
    from google.protobuf import text_format

    def describe(data: bytes) -> str:
        try:
            message = response_cls.FromString(data)
            text = text_format.MessageToString(message, as_one_line=True)
        except Exception:
            return repr(data)
        return "{" + text + "}"

    return describe


def _compare(
    a: CallOutcome, b: CallOutcome, call_no: int, describe: Callable[[bytes], str]
) -> list[str]:
    prefix = f"call {call_no}: "
    diffs: list[str] = []
    if a.code != b.code:
        diffs.append(f"{prefix}status code grpc={a.code} quic={b.code}")
    if a.details != b.details:
        diffs.append(f"{prefix}details grpc={a.details!r} quic={b.details!r}")
    if len(a.responses) != len(b.responses):
        diffs.append(f"{prefix}response count grpc={len(a.responses)} quic={len(b.responses)}")
    for i, (ra, rb) in enumerate(zip(a.responses, b.responses, strict=False)):
        if ra != rb:
            diffs.append(f"{prefix}response {i} differs: grpc={describe(ra)} quic={describe(rb)}")
    if a.initial_metadata != b.initial_metadata:
        diffs.append(
            f"{prefix}initial metadata grpc={a.initial_metadata} quic={b.initial_metadata}"
        )
    if a.trailing_metadata != b.trailing_metadata:
        diffs.append(
            f"{prefix}trailing metadata grpc={a.trailing_metadata} quic={b.trailing_metadata}"
        )
    return diffs


# -- the check ------------------------------------------------------------------------------


def run_check(
    servicer_spec: str,
    proto: str | Path,
    *,
    calls_file: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    includes: Sequence[str] = (),
) -> CheckReport:
    """Run the check; :class:`CheckError` on usage problems."""
    if timeout <= 0:
        raise CheckError("--timeout must be positive")
    try:
        import grpc
    except ImportError:
        raise CheckError(
            "quicshift check compares against grpcio, which is not installed: "
            "pip install 'quicshift[legacy]'"
        ) from None
    from google.protobuf import message_factory

    from migration import quic_grpc

    calls = _load_calls(calls_file)
    with tempfile.TemporaryDirectory(prefix="quicshift-check-") as tmp:
        protos = compile_proto(proto, Path(tmp), includes)
        servicer_cls = load_servicer(servicer_spec)
        service = _pick_service(protos, servicer_cls)
        unknown = sorted(set(calls) - {m.name for m in service.methods})
        if unknown:
            raise CheckError(
                f"--calls names methods {service.name} does not have: {', '.join(unknown)}"
            )
        add = getattr(protos.pb2_grpc, f"add_{service.name}Servicer_to_server", None)
        if add is None:
            raise CheckError(f"no add_{service.name}Servicer_to_server in the generated module")
        plans = {
            m.name: _requests_for(m, _request_class(protos, m), calls.get(m.name))
            for m in service.methods
        }
        try:
            servicers = [servicer_cls(), servicer_cls()]
        except Exception as exc:
            raise CheckError(f"cannot instantiate {servicer_spec}: {exc}") from None
        aio = _is_async(servicer_cls, service)
        certs = _throwaway_certs()
        stacks = [(grpc, servicers[0]), (quic_grpc, servicers[1])]
        with _serving(stacks, add, aio, certs) as channels:
            results = []
            for method in service.methods:
                kind = _kind(method)
                path = f"/{service.full_name}/{method.name}"
                result = MethodResult(method.name, kind)
                describe = _describer(message_factory.GetMessageClass(method.output_type))
                for number, requests in enumerate(plans[method.name], start=1):
                    outcomes = [
                        _call_once(g, channel, path, kind, requests, timeout)
                        for (g, _), channel in zip(stacks, channels, strict=True)
                    ]
                    result.calls += 1
                    result.outcomes.append(
                        {t: o.to_json() for t, o in zip(TRANSPORTS, outcomes, strict=True)}
                    )
                    result.differences.extend(_compare(outcomes[0], outcomes[1], number, describe))
                results.append(result)
    return CheckReport(
        service=service.full_name,
        servicer=servicer_spec,
        proto=str(proto),
        methods=results,
    )


@contextlib.contextmanager
def _serving(
    stacks: list[tuple[Any, Any]], add: Callable[[Any, Any], None], aio: bool, certs: _Certs
) -> Iterator[list[Any]]:
    served: list[_Served] = []
    channels: list[Any] = []
    try:
        for g, servicer in stacks:
            server = _Served(g, add, servicer, aio)
            served.append(server)
            server.start(certs)
            channels.append(
                g.secure_channel(
                    f"localhost:{server.port}", g.ssl_channel_credentials(certs.ca_pem)
                )
            )
        yield channels
    finally:
        for channel in channels:
            with contextlib.suppress(Exception):
                channel.close()
        for server in served:
            with contextlib.suppress(Exception):
                server.stop()
