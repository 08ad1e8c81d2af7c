"""The compatibility suite's servicers (sync and aio) and interceptors.

They are written once against grpc's API and run unchanged on real grpcio and on the
shim: the module ``g`` they get is either ``grpc`` or ``migration.quic_grpc``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any


class Recorder:
    """What servicers observed, keyed by the request's ``tag``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"started": threading.Event(), "done": threading.Event()}
        )
        self.methods: list[str] = []

    def __getitem__(self, tag: str) -> dict[str, Any]:
        with self.lock:
            return self.entries[tag]


def _echoed(metadata: Any) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    initial = [(k, v) for k, v in metadata if k.startswith("x-")]
    trailing = []
    for k, v in initial:
        if k.endswith("-bin"):
            trailing.append((k[: -len("-bin")] + "-trailer-bin", v))
        else:
            trailing.append((k + "-trailer", v))
    return initial, trailing


def _payload(pb2: Any, request: Any) -> bytes:
    return b"r" * request.response_size if request.response_size else request.payload


def make_sync_servicer(g: Any, pb2: Any, pb2_grpc: Any, rec: Recorder) -> Any:
    class SyncCompat(pb2_grpc.CompatServicer):
        def _metadata(self, context: Any) -> None:
            initial, trailing = _echoed(context.invocation_metadata())
            if initial:
                context.send_initial_metadata(initial)
            context.set_trailing_metadata(trailing)

        def _wait_for_cancel(self, request: Any, context: Any) -> None:
            entry = rec[request.tag]
            fired = threading.Event()
            entry["callback_registered"] = context.add_callback(fired.set)
            entry["started"].set()
            fired.wait(20)
            entry["callback_fired"] = fired.is_set()
            entry["is_active"] = context.is_active()
            entry["done"].set()

        def _maybe_abort(self, request: Any, context: Any) -> None:
            if request.code_name:
                context.abort(getattr(g.StatusCode, request.code_name), request.details)

        def Unary(self, request: Any, context: Any) -> Any:
            self._metadata(context)
            if request.wait_for_cancel:
                self._wait_for_cancel(request, context)
                return pb2.EchoResponse()
            rec[request.tag or "unary"]["peer"] = context.peer()
            rec[request.tag or "unary"]["auth"] = context.auth_context()
            rec[request.tag or "unary"]["time_remaining"] = context.time_remaining()
            self._maybe_abort(request, context)
            return pb2.EchoResponse(
                payload=_payload(pb2, request), received_bytes=len(request.payload)
            )

        def ServerStream(self, request: Any, context: Any) -> Any:
            self._metadata(context)
            if request.wait_for_cancel:
                yield pb2.EchoResponse(index=-1)
                self._wait_for_cancel(request, context)
                return
            for i in range(request.count):
                if request.abort_after and i == request.abort_after:
                    self._maybe_abort(request, context)
                yield pb2.EchoResponse(index=i, payload=_payload(pb2, request))
            if not request.abort_after:
                self._maybe_abort(request, context)

        def ClientStream(self, request_iterator: Any, context: Any) -> Any:
            self._metadata(context)
            received = 0
            count = 0
            for request in request_iterator:
                count += 1
                received += len(request.payload)
                if request.abort_after and count >= request.abort_after:
                    self._maybe_abort(request, context)
                if request.wait_for_cancel:
                    self._wait_for_cancel(request, context)
                    return pb2.EchoResponse()
            return pb2.EchoResponse(received_bytes=received, received_messages=count)

        def Bidi(self, request_iterator: Any, context: Any) -> Any:
            self._metadata(context)
            count = 0
            for request in request_iterator:
                if request.abort_after and count >= request.abort_after:
                    self._maybe_abort(request, context)
                if request.wait_for_cancel:
                    yield pb2.EchoResponse(index=-1)
                    self._wait_for_cancel(request, context)
                    return
                yield pb2.EchoResponse(index=count, payload=_payload(pb2, request))
                count += 1

    return SyncCompat()


def make_aio_servicer(g: Any, pb2: Any, pb2_grpc: Any, rec: Recorder) -> Any:
    class AioCompat(pb2_grpc.CompatServicer):
        async def _metadata(self, context: Any) -> None:
            initial, trailing = _echoed(context.invocation_metadata())
            if initial:
                await context.send_initial_metadata(initial)
            context.set_trailing_metadata(trailing)

        async def _wait_for_cancel(self, request: Any, context: Any) -> None:
            entry = rec[request.tag]
            fired = threading.Event()
            context.add_done_callback(lambda _ctx: fired.set())
            entry["started"].set()
            try:
                await asyncio.sleep(20)
            except asyncio.CancelledError:
                entry["handler_cancelled"] = True
                entry["done"].set()
                raise
            entry["done"].set()

        async def _maybe_abort(self, request: Any, context: Any) -> None:
            if request.code_name:
                await context.abort(getattr(g.StatusCode, request.code_name), request.details)

        async def Unary(self, request: Any, context: Any) -> Any:
            await self._metadata(context)
            if request.wait_for_cancel:
                await self._wait_for_cancel(request, context)
                return pb2.EchoResponse()
            rec[request.tag or "unary"]["peer"] = context.peer()
            rec[request.tag or "unary"]["auth"] = context.auth_context()
            rec[request.tag or "unary"]["time_remaining"] = context.time_remaining()
            await self._maybe_abort(request, context)
            return pb2.EchoResponse(
                payload=_payload(pb2, request), received_bytes=len(request.payload)
            )

        async def ServerStream(self, request: Any, context: Any) -> Any:
            await self._metadata(context)
            if request.wait_for_cancel:
                yield pb2.EchoResponse(index=-1)
                await self._wait_for_cancel(request, context)
                return
            for i in range(request.count):
                if request.abort_after and i == request.abort_after:
                    await self._maybe_abort(request, context)
                yield pb2.EchoResponse(index=i, payload=_payload(pb2, request))
            if not request.abort_after:
                await self._maybe_abort(request, context)

        async def ClientStream(self, request_iterator: Any, context: Any) -> Any:
            await self._metadata(context)
            received = 0
            count = 0
            async for request in request_iterator:
                count += 1
                received += len(request.payload)
                if request.abort_after and count >= request.abort_after:
                    await self._maybe_abort(request, context)
                if request.wait_for_cancel:
                    await self._wait_for_cancel(request, context)
                    return pb2.EchoResponse()
            return pb2.EchoResponse(received_bytes=received, received_messages=count)

        async def Bidi(self, request_iterator: Any, context: Any) -> Any:
            await self._metadata(context)
            count = 0
            async for request in request_iterator:
                if request.abort_after and count >= request.abort_after:
                    await self._maybe_abort(request, context)
                if request.wait_for_cancel:
                    yield pb2.EchoResponse(index=-1)
                    await self._wait_for_cancel(request, context)
                    return
                yield pb2.EchoResponse(index=count, payload=_payload(pb2, request))
                count += 1

    return AioCompat()


def make_server_interceptor(g: Any, rec: Recorder, *, aio: bool) -> Any:
    """Records every method; rejects calls carrying ``x-deny: yes`` with PERMISSION_DENIED."""

    def deny_handler() -> Any:
        def deny(request: Any, context: Any) -> Any:
            context.abort(g.StatusCode.PERMISSION_DENIED, "denied by interceptor")

        async def deny_async(request: Any, context: Any) -> Any:
            await context.abort(g.StatusCode.PERMISSION_DENIED, "denied by interceptor")

        return g.unary_unary_rpc_method_handler(deny_async if aio else deny)

    def denied(details: Any) -> bool:
        return ("x-deny", "yes") in tuple(details.invocation_metadata or ())

    if aio:

        class AioRecording(g.aio.ServerInterceptor):
            async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
                rec.methods.append(handler_call_details.method)
                if denied(handler_call_details):
                    return deny_handler()
                return await continuation(handler_call_details)

        return AioRecording()

    class Recording(g.ServerInterceptor):
        def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
            rec.methods.append(handler_call_details.method)
            if denied(handler_call_details):
                return deny_handler()
            return continuation(handler_call_details)

    return Recording()


def make_client_interceptor(g: Any, *, aio: bool) -> Any:
    """Adds ``x-intercepted: client`` to every call's metadata."""

    def add(details: Any) -> Any:
        metadata = [*list(details.metadata or ()), ("x-intercepted", "client")]
        return details._replace(metadata=metadata)

    if aio:

        class AioAdding(
            g.aio.UnaryUnaryClientInterceptor,
            g.aio.UnaryStreamClientInterceptor,
            g.aio.StreamUnaryClientInterceptor,
            g.aio.StreamStreamClientInterceptor,
        ):
            async def intercept_unary_unary(
                self, continuation: Any, details: Any, request: Any
            ) -> Any:
                return await continuation(add(details), request)

            async def intercept_unary_stream(
                self, continuation: Any, details: Any, request: Any
            ) -> Any:
                return await continuation(add(details), request)

            async def intercept_stream_unary(
                self, continuation: Any, details: Any, requests: Any
            ) -> Any:
                return await continuation(add(details), requests)

            async def intercept_stream_stream(
                self, continuation: Any, details: Any, requests: Any
            ) -> Any:
                return await continuation(add(details), requests)

        return AioAdding()

    class Details(
        __import__("collections").namedtuple(
            "Details",
            ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
        ),
        g.ClientCallDetails,
    ):
        pass

    def add_sync(details: Any) -> Any:
        metadata = [*list(details.metadata or ()), ("x-intercepted", "client")]
        return Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    class Adding(
        g.UnaryUnaryClientInterceptor,
        g.UnaryStreamClientInterceptor,
        g.StreamUnaryClientInterceptor,
        g.StreamStreamClientInterceptor,
    ):
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(add_sync(details), request)

        def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(add_sync(details), request)

        def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
            return continuation(add_sync(details), requests)

        def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
            return continuation(add_sync(details), requests)

    return Adding()
