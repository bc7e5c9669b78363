import asyncio

import pytest

from visionary.shared_reads import SharedReads


class Source:
    """A read that counts its calls and answers with the state it saw when it began."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.state = 0
        self.calls: list[str] = []
        self.seconds = seconds  # how long a call takes
        self.failure: Exception | None = None
        self.stuck = 0  # how many of the next calls never answer
        self.abandoned = 0  # calls cancelled while under way

    async def read(self, key: str) -> tuple[str, int]:
        self.calls.append(key)
        seen = self.state
        try:
            if self.stuck:
                self.stuck -= 1
                await asyncio.Event().wait()
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        if self.failure is not None:
            raise self.failure
        return key, seen


class Shutdown(Exception):
    pass


def shared(source: Source) -> SharedReads[str, tuple[str, int]]:
    return SharedReads(source.read, cancelled=Shutdown)


async def test_callers_asking_at_once_share_one_call():
    source = Source()
    reads = shared(source)
    answers = await asyncio.gather(*[reads.get("first page") for _ in range(50)])
    assert answers == [("first page", 0)] * 50
    assert source.calls == ["first page"]


async def test_a_caller_that_asks_during_a_call_gets_a_call_begun_after_it_asked():
    source = Source()
    reads = shared(source)
    early = asyncio.create_task(reads.get("page"))
    await asyncio.sleep(0.01)  # that call is under way
    source.state = 1  # a picture stored: the later callers asked after it
    later = await asyncio.gather(*[reads.get("page") for _ in range(10)])
    assert await early == ("page", 0)
    assert later == [("page", 1)] * 10
    assert source.calls == ["page", "page"]


async def test_each_key_has_calls_of_its_own():
    source = Source()
    reads = shared(source)
    answers = await asyncio.gather(reads.get("a"), reads.get("b"), reads.get("a"))
    assert answers == [("a", 0), ("b", 0), ("a", 0)]
    assert sorted(source.calls) == ["a", "b"]


async def test_a_failure_reaches_every_caller_of_that_call_and_the_next_call_is_made_afresh():
    source = Source()
    source.failure = ConnectionError("storage went away")
    reads = shared(source)
    outcomes = await asyncio.gather(*[reads.get("page") for _ in range(5)], return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    source.failure = None
    assert await reads.get("page") == ("page", 0)
    assert source.calls == ["page", "page"]


async def test_a_caller_that_gives_up_leaves_the_others_their_answer():
    source = Source(seconds=0.2)
    reads = shared(source)
    patient = asyncio.create_task(reads.get("page"))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await reads.get("page")
    assert await patient == ("page", 0)
    assert source.calls == ["page"]


async def test_a_stuck_call_holds_later_callers_back_no_longer_than_max_wait():
    source = Source(seconds=0.01)
    source.stuck = 1
    reads = SharedReads(source.read, cancelled=Shutdown, max_wait=0.05)
    stuck = asyncio.create_task(reads.get("page"))
    await asyncio.sleep(0.01)  # that call is under way, and never answers
    later = asyncio.create_task(reads.get("page"))
    for _ in range(3):
        await asyncio.sleep(0)  # it has asked, and its batch has begun to wait for the stuck call
    # Timers on one loop fire in the order they are due, however busy the machine: this one is
    # due 1 ms after the batch's max_wait, so by now the batch has stopped waiting.
    await asyncio.sleep(0.05 + 0.001)
    begun = source.calls.copy()
    assert not stuck.done()
    stuck.cancel()
    assert await later == ("page", 0)
    assert begun == ["page", "page"]  # its own call had begun by then, the first still stuck


async def test_a_call_whose_callers_all_gave_up_is_stopped():
    source = Source(seconds=5)
    reads = shared(source)
    waiting = [asyncio.create_task(reads.get("page")) for _ in range(3)]
    await asyncio.sleep(0.05)
    for caller in waiting:
        caller.cancel()
    await asyncio.sleep(0.05)
    assert source.abandoned == 1


async def test_callers_that_all_gave_up_before_their_call_began_make_none():
    source = Source(seconds=0.2)
    reads = shared(source)
    first = asyncio.create_task(reads.get("page"))
    await asyncio.sleep(0.01)  # a call under way: the next callers wait for a batch of their own
    impatient = [asyncio.create_task(reads.get("page")) for _ in range(3)]
    await asyncio.sleep(0.01)
    for caller in impatient:
        caller.cancel()
    assert await first == ("page", 0)
    await asyncio.sleep(0.1)
    assert source.calls == ["page"]


async def test_a_caller_that_asks_as_the_only_other_one_gives_up_gets_its_answer():
    source = Source(seconds=0.1)
    reads = shared(source)
    first = asyncio.create_task(reads.get("page"))
    await asyncio.sleep(0.01)  # a call under way: the next callers wait for a batch of their own
    impatient = asyncio.create_task(reads.get("page"))
    await asyncio.sleep(0.01)
    impatient.cancel()  # that batch's one caller gives up, and in the same turn another asks
    late = asyncio.create_task(reads.get("page"))
    assert await first == ("page", 0)
    assert await late == ("page", 0)
    assert source.calls == ["page", "page"]


async def test_a_caller_that_gives_up_in_the_turn_it_asked_makes_no_call():
    source = Source()
    reads = shared(source)
    caller = asyncio.create_task(reads.get("page"))
    await asyncio.sleep(0)  # it has asked; its call has not yet run
    caller.cancel()
    await asyncio.sleep(0.1)
    assert source.calls == []


def test_a_read_cut_off_by_the_loop_ending_leaves_no_caller_waiting_and_the_key_usable():
    # asyncio.run cancels what is pending when its main coroutine returns, as a host shutting down.
    source = Source()
    reads = shared(source)

    async def leave_a_caller_behind() -> asyncio.Task:
        return asyncio.create_task(reads.get("page"))

    async def ask_again() -> tuple[str, int]:
        async with asyncio.timeout(2):
            return await reads.get("page")

    left_behind = asyncio.run(leave_a_caller_behind())
    assert left_behind.cancelled()
    assert asyncio.run(ask_again()) == ("page", 0)


async def test_callers_of_a_call_cancelled_under_them_hear_the_given_error():
    source = Source(seconds=5)
    reads = shared(source)
    caller = asyncio.create_task(reads.get("page"))
    await asyncio.sleep(0.05)
    [call] = [task for task in asyncio.all_tasks() if task.get_coro().__name__ == "_serve"]
    call.cancel()  # as the host's shutdown cancels every task
    with pytest.raises(Shutdown):
        await caller
