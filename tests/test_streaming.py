"""Stream grouping: what piles up while the consumer is busy leaves as one item, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ollama_worker.chat import merge_stream_items
from ollama_worker.streaming import coalesce, merge_text


async def timed(items: list[tuple[float, Any]]) -> AsyncIterator[Any]:
    """Each item after its delay, as Ollama would send them."""
    for delay, item in items:
        await asyncio.sleep(delay)
        yield item


async def consume(source: AsyncIterator[Any], busy_s: float) -> list[Any]:
    """Take every item, spending `busy_s` on each as the SDK spends a POST round trip."""
    out = []
    async for item in source:
        out.append(item)
        await asyncio.sleep(busy_s)
    return out


async def test_a_consumer_that_keeps_up_gets_every_item_alone() -> None:
    source = timed([(0.02, "a"), (0.02, "b"), (0.02, "c")])
    assert await consume(coalesce(source, merge_text), busy_s=0) == ["a", "b", "c"]


async def test_what_arrives_during_a_slow_post_is_merged_and_the_first_goes_alone() -> None:
    # Tokens every 10 ms, a POST of 45 ms: the first alone, then about four at a time.
    source = timed([(0.01, f"{n} ") for n in range(12)])
    out = await consume(coalesce(source, merge_text), busy_s=0.045)
    assert out[0] == "0 "
    assert "".join(out) == "".join(f"{n} " for n in range(12))
    assert len(out) <= 5, out


async def test_items_that_do_not_merge_stay_apart_in_order() -> None:
    never = lambda _a, _b: None  # noqa: E731
    source = timed([(0, 1), (0, 2), (0, 3)])
    assert await consume(coalesce(source, never), busy_s=0.01) == [1, 2, 3]


async def test_an_error_comes_after_every_item_before_it() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        raise RuntimeError("boom")

    got: list[str] = []

    async def take_all() -> None:
        async for item in coalesce(failing(), merge_text):
            got.append(item)
            await asyncio.sleep(0.01)

    with pytest.raises(RuntimeError, match="boom"):
        await take_all()
    assert "".join(got) == "ab"


async def test_closing_the_stream_closes_its_source() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield "x"
        finally:
            closed.set()

    stream = coalesce(endless(), merge_text)
    await anext(stream)
    await stream.aclose()
    assert closed.is_set()


async def test_cancelling_the_consumer_closes_the_source() -> None:
    closed = asyncio.Event()

    async def slow() -> AsyncIterator[str]:
        try:
            yield "first"
            await asyncio.sleep(60)
            yield "never"
        finally:
            closed.set()

    async def job() -> None:
        async for _item in coalesce(slow(), merge_text):
            pass

    task = asyncio.create_task(job())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()


def piece(content: str, **extra: Any) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": content, **extra}, "done": False}


SUMMARY = {"done": True, "model": "m", "done_reason": "stop", "usage": {}, "timings": {}}


def test_chat_pieces_merge_text_thinking_and_tool_calls() -> None:
    call_a = {"function": {"name": "a", "arguments": {}}}
    call_b = {"function": {"name": "b", "arguments": {"x": 1}}}
    merged = merge_stream_items(
        piece("Hel", thinking="hm", tool_calls=[call_a]), piece("lo", tool_calls=[call_b])
    )
    assert merged == {
        "message": {
            "role": "assistant",
            "content": "Hello",
            "thinking": "hm",
            "tool_calls": [call_a, call_b],
        },
        "done": False,
    }


def test_the_summary_takes_the_last_piece_along_and_nothing_follows_it() -> None:
    merged = merge_stream_items(piece("end."), SUMMARY)
    assert merged == {**SUMMARY, "message": {"role": "assistant", "content": "end."}}
    assert merge_stream_items(merged, piece("more")) is None
    assert merge_stream_items(SUMMARY, SUMMARY) is None


def test_errors_and_whole_replies_never_merge() -> None:
    assert merge_stream_items(piece("a"), {"error": "OLLAMA_ERROR: x"}) is None
    assert merge_stream_items({"error": "X: y"}, piece("a")) is None
    assert merge_stream_items("data: {}\n\n", piece("a")) is None
    assert merge_text("data: a\n\n", {"response": {}}) is None
    assert merge_text("data: a\n\n", "data: b\n\n") == "data: a\n\ndata: b\n\n"
