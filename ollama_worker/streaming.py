"""Read a stream ahead of a slow consumer, and hand over what piled up as one merged item.

A deployed worker POSTs each yielded item to RunPod and waits for the answer before it asks
for the next, so one item per Ollama chunk would pace a stream at one round trip per token.
`coalesce` keeps reading while the consumer is busy: the first item goes out alone and at
once, an item that arrives while the consumer waits goes out at once too, and only what
arrived during a POST is merged into the next item.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

T = TypeVar("T")

Merge = Callable[[T, T], T | None]


async def coalesce(items: AsyncIterator[T], merge: Merge[T]) -> AsyncIterator[T]:
    """Yield `items` as they come; neighbours that piled up leave as `merge(a, b)` when not None.

    The source is read by a task of its own, which ends with this generator: closing or
    cancelling the generator closes the source too (and so frees its Ollama connection).
    An exception from the source is raised after every item that came before it.
    """
    pending: deque[T] = deque()
    arrived = asyncio.Event()
    failure: BaseException | None = None
    finished = False

    async def read_ahead() -> None:
        nonlocal failure, finished
        try:
            async for item in items:
                pending.append(item)
                arrived.set()
        except Exception as exc:
            failure = exc
        finally:
            finished = True
            arrived.set()

    reader = asyncio.create_task(read_ahead())
    try:
        while True:
            if not pending:
                if finished:
                    break
                arrived.clear()
                await arrived.wait()
                continue
            item = pending.popleft()
            while pending and (merged := merge(item, pending[0])) is not None:
                item = merged
                pending.popleft()
            yield item
        if failure is not None:
            raise failure
    finally:
        reader.cancel()
        # asyncio.wait never raises, so a cancellation of our own still propagates.
        await asyncio.wait({reader})
        with contextlib.suppress(Exception):
            await close_iterator(items)


async def close_iterator(items: AsyncIterator[Any]) -> None:
    """Close an iterator that holds something open (an async generator); others need nothing."""
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()


@contextlib.asynccontextmanager
async def closing(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """`contextlib.aclosing` for whatever is typed as an AsyncIterator: closed on every way out,
    so the Ollama connection behind a stream goes back to the pool at once."""
    try:
        yield items
    finally:
        await close_iterator(items)


def merge_text(first: Any, second: Any) -> str | None:
    """Two pieces of SSE text (each whole `data:` events) as one string; None for anything else."""
    if isinstance(first, str) and isinstance(second, str):
        return first + second
    return None
