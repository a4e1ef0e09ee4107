"""The group commit both intake and workers use: who ends up in which batch, and what each submitter is told."""

from __future__ import annotations

import asyncio

import pytest

from widgetry.services.batching import GroupCommit


class Recorder:
    """A flush that records its batches and can be held open, so the test decides when a batch ends."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def flush(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(items)
        self.started.set()
        await self.release.wait()
        return [ValueError(f"odd {item}") if item % 2 else item * 10 for item in items]


async def test_items_submitted_while_a_batch_is_done_make_the_next_batch() -> None:
    recorder = Recorder()
    batches = GroupCommit(recorder.flush, max_items=100, name="test")
    recorder.release.clear()
    first = asyncio.create_task(batches.submit(0))
    await recorder.started.wait()  # the first batch is being done, with the one item there was
    rest = [asyncio.create_task(batches.submit(item)) for item in (2, 4, 6)]
    await asyncio.sleep(0)  # one turn of the loop: the three tasks hand in their items
    recorder.release.set()

    assert await first == 0
    assert await asyncio.gather(*rest) == [20, 40, 60]
    assert recorder.batches == [[0], [2, 4, 6]]


async def test_each_submitter_gets_its_own_outcome_and_a_raised_error_goes_to_the_whole_batch() -> None:
    recorder = Recorder()
    batches = GroupCommit(recorder.flush, max_items=100, name="test")
    outcomes = await asyncio.gather(batches.submit(2), batches.submit(3), return_exceptions=True)
    assert outcomes[0] == 20
    assert isinstance(outcomes[1], ValueError)

    async def broken(items: list[int]) -> list[int | Exception]:
        raise ConnectionError("down")

    failing = GroupCommit(broken, max_items=100, name="test")
    failed = await asyncio.gather(failing.submit(1), failing.submit(2), return_exceptions=True)
    assert [type(outcome) for outcome in failed] == [ConnectionError, ConnectionError]


async def test_batches_are_capped_and_a_submitter_that_goes_away_does_not_stop_its_batch() -> None:
    recorder = Recorder()
    batches = GroupCommit(recorder.flush, max_items=2, name="test")
    recorder.release.clear()
    first = asyncio.create_task(batches.submit(0))
    await recorder.started.wait()
    waiting = [asyncio.create_task(batches.submit(item)) for item in (2, 4, 6)]
    await asyncio.sleep(0)  # one turn of the loop: the three tasks hand in their items
    waiting[0].cancel()  # its client hung up
    recorder.release.set()

    assert await first == 0
    assert await asyncio.gather(*waiting[1:]) == [40, 60]
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    assert recorder.batches == [[0], [2, 4], [6]]
