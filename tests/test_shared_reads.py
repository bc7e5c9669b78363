import asyncio

import pytest

from visionary.shared_reads import SharedReads


class Source:
    """A read that counts its calls and answers with the state it saw when it began."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.state = 0
        self.calls: list[str] = []
        self.seconds = seconds
        self.failure: Exception | None = None

    async def read(self, key: str) -> tuple[str, int]:
        self.calls.append(key)
        seen = self.state
        await asyncio.sleep(self.seconds)
        if self.failure is not None:
            raise self.failure
        return key, seen


async def test_callers_asking_at_once_share_one_call():
    source = Source()
    reads = SharedReads(source.read)
    answers = await asyncio.gather(*[reads.get("first page") for _ in range(50)])
    assert answers == [("first page", 0)] * 50
    assert source.calls == ["first page"]


async def test_a_caller_that_asks_during_a_call_gets_a_call_begun_after_it_asked():
    source = Source()
    reads = SharedReads(source.read)
    early = asyncio.create_task(reads.get("page"))
    await asyncio.sleep(0.01)  # that call is under way
    source.state = 1  # a picture stored: the later callers asked after it
    later = await asyncio.gather(*[reads.get("page") for _ in range(10)])
    assert await early == ("page", 0)
    assert later == [("page", 1)] * 10
    assert source.calls == ["page", "page"]


async def test_each_key_has_calls_of_its_own():
    source = Source()
    reads = SharedReads(source.read)
    answers = await asyncio.gather(reads.get("a"), reads.get("b"), reads.get("a"))
    assert answers == [("a", 0), ("b", 0), ("a", 0)]
    assert sorted(source.calls) == ["a", "b"]


async def test_a_failure_reaches_every_caller_of_that_call_and_the_next_call_is_made_afresh():
    source = Source()
    source.failure = ConnectionError("storage went away")
    reads = SharedReads(source.read)
    outcomes = await asyncio.gather(*[reads.get("page") for _ in range(5)], return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    source.failure = None
    assert await reads.get("page") == ("page", 0)
    assert source.calls == ["page", "page"]


async def test_a_caller_that_gives_up_leaves_the_others_their_answer():
    source = Source(seconds=0.2)
    reads = SharedReads(source.read)
    patient = asyncio.create_task(reads.get("page"))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await reads.get("page")
    assert await patient == ("page", 0)
    assert source.calls == ["page"]
