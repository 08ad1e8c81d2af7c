"""The background event loop the sync API runs its asyncio I/O on.

One daemon thread per process runs one loop; every sync server and sync channel does its
networking there, while servicer code runs in the server's thread pool and client code in
the caller's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["call_on_loop", "io_loop", "run_on_loop", "submit_on_loop"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def io_loop() -> asyncio.AbstractEventLoop:
    """The process-wide I/O loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="quic-grpc-io", daemon=True)
            thread.start()
            ready.wait()
            _loop = loop
        return _loop


def submit_on_loop(coro: Coroutine[Any, Any, T]) -> Future[T]:
    """Schedule ``coro`` on the I/O loop; a concurrent future for its result."""
    loop = io_loop()
    if _on_loop_thread(loop):
        coro.close()
        raise RuntimeError("blocking sync gRPC API used on the adapter's own I/O thread")
    return asyncio.run_coroutine_threadsafe(coro, loop)


def run_on_loop(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the I/O loop and block the calling thread for its result."""
    return submit_on_loop(coro).result(timeout)


def call_on_loop(fn: Callable[[], T]) -> T:
    """Run a plain function on the I/O loop (directly when already there) and return."""
    loop = io_loop()
    if _on_loop_thread(loop):
        return fn()

    async def call() -> T:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result()


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
