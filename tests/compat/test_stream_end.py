"""Regression: a server-streaming call must end after its last message even when the
client's message buffer is full when the trailer arrives (the end was once dropped)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

COUNTS = (1_000, 2_000)
LIMIT = 30.0  # seconds; a lost end-of-stream hangs forever


def _drain_sync(call: Any, count: int) -> list[int]:
    it = iter(call)
    indexes = []
    for reply in it:
        indexes.append(reply.index)
        if len(indexes) in (1, count - 20):
            time.sleep(0.3)  # let the buffer fill up and the trailer arrive
    return indexes


def test_server_stream_end_not_lost_sync(sync_env: Any) -> None:
    pool = ThreadPoolExecutor(1)
    try:
        for count in COUNTS:
            call = sync_env.stub.ServerStream(
                sync_env.pb2.EchoRequest(payload=b"p", count=count), timeout=60
            )
            try:
                indexes = pool.submit(_drain_sync, call, count).result(timeout=LIMIT)
            finally:
                call.cancel()  # unblocks a hung reader (no-op once the call ended)
            assert indexes == list(range(count))
    finally:
        pool.shutdown(wait=False)


async def test_server_stream_end_not_lost_aio(aio_env: Any) -> None:
    async def drain(count: int) -> list[int]:
        call = aio_env.stub.ServerStream(
            aio_env.pb2.EchoRequest(payload=b"p", count=count), timeout=60
        )
        indexes = []
        async for reply in call:
            indexes.append(reply.index)
            if len(indexes) in (1, count - 20):
                await asyncio.sleep(0.3)  # let the buffer fill up and the trailer arrive
            elif len(indexes) > count - 20:
                await asyncio.sleep(0)  # let the transport refill the buffer before the end
        assert await call.code() == aio_env.g.StatusCode.OK
        return indexes

    for count in COUNTS:
        indexes = await asyncio.wait_for(drain(count), LIMIT)
        assert indexes == list(range(count))
