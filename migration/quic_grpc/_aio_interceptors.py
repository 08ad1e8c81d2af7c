"""Aio client interceptors: run the chain, then behave like the call it produced."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any

from ._aio_metadata import Metadata
from ._call_core import EOF
from ._compat import StatusCode

__all__ = ["InterceptedCall"]


class InterceptedCall:
    """What an intercepted aio multicallable returns (grpc's ``InterceptedCall`` shape).

    The interceptor may return the call from ``continuation`` (or another call object),
    or, for unary-response methods, the response itself; for streaming responses it may
    return an async iterator.
    """

    def __init__(
        self,
        interceptors: Sequence[Any],
        hook: str,
        details: Any,
        request: Any,
        invoke: Callable[[Any, Any], Any],
    ) -> None:
        self._interceptors = list(interceptors)
        self._hook = hook
        self._invoke = invoke
        self._task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(
            self._run(0, details, request)
        )

    async def _run(self, index: int, details: Any, request: Any) -> Any:
        if index == len(self._interceptors):
            return self._invoke(details, request)

        async def continuation(new_details: Any, new_request: Any) -> Any:
            return await self._run(index + 1, new_details, new_request)

        result = getattr(self._interceptors[index], self._hook)(continuation, details, request)
        if inspect.isawaitable(result) and not _is_call(result):
            result = await result
        return result

    async def _call(self) -> Any:
        return await asyncio.shield(self._task)

    def __await__(self) -> Generator[Any, None, Any]:
        result = yield from self._call().__await__()
        if _is_call(result):
            response = yield from result.__await__()
            return response
        return result

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        result = await self._call()
        async for message in result:
            yield message

    async def read(self) -> Any:
        result = await self._call()
        if hasattr(result, "read"):
            return await result.read()
        try:
            return await result.__anext__()
        except StopAsyncIteration:
            return EOF

    async def write(self, request: Any) -> None:
        await (await self._call()).write(request)

    async def done_writing(self) -> None:
        await (await self._call()).done_writing()

    def cancel(self) -> bool:
        if not self._task.done():
            return self._task.cancel()
        result = self._task.result()
        return bool(result.cancel()) if _is_call(result) else False

    def cancelled(self) -> bool:
        if self._task.cancelled():
            return True
        if self._task.done() and _is_call(self._task.result()):
            return bool(self._task.result().cancelled())
        return False

    def done(self) -> bool:
        if not self._task.done():
            return False
        if self._task.cancelled() or self._task.exception() is not None:
            return True
        result = self._task.result()
        return bool(result.done()) if _is_call(result) else True

    def time_remaining(self) -> float | None:
        if self._task.done() and not self._task.cancelled() and self._task.exception() is None:
            result = self._task.result()
            if _is_call(result):
                value: float | None = result.time_remaining()
                return value
        return None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        def when_ready(_task: asyncio.Task[Any]) -> None:
            if _task.cancelled() or _task.exception() is not None:
                callback(self)
                return
            result = _task.result()
            if _is_call(result):
                result.add_done_callback(lambda _call: callback(self))
            else:
                callback(self)

        self._task.add_done_callback(when_ready)

    async def _delegate(self, name: str, default: Any) -> Any:
        result = await self._call()
        if _is_call(result):
            return await getattr(result, name)()
        return default

    async def initial_metadata(self) -> Any:
        return await self._delegate("initial_metadata", Metadata())

    async def trailing_metadata(self) -> Any:
        return await self._delegate("trailing_metadata", Metadata())

    async def code(self) -> Any:
        try:
            return await self._delegate("code", StatusCode.OK)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if callable(code):
                return code()
            raise

    async def details(self) -> Any:
        return await self._delegate("details", "")

    async def wait_for_connection(self) -> None:
        await self._delegate("wait_for_connection", None)


def _is_call(value: Any) -> bool:
    return hasattr(value, "initial_metadata") and hasattr(value, "cancel")
