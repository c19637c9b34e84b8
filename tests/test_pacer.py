"""Tests for rotator.pacer: a real asyncio loop and a fake clock the test moves by hand.

The pacer reads time from its ``clock`` and waits on an event with a timeout. The
tests move the fake clock and then poke the pacer with ``reconfigure`` (same limits),
which wakes a waiter to look at the clock again, so nothing here waits for real time
and every assertion is about order and counts, never about durations.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from rotator.pacer import WritePacer


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._moved = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    def move_to(self, now: float) -> None:
        """Set the time and wake everything waiting for a time to come."""
        assert now >= self.now
        self.now = now
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def until(self, when: float) -> None:
        """Return once the clock reads ``when`` or later."""
        while self.now < when:
            await self._moved.wait()


async def settle() -> None:
    """Let every runnable task run until the loop is idle (admissions are a short chain)."""
    for _ in range(100):
        await asyncio.sleep(0)


def poke(pacer: WritePacer) -> None:
    """Wake the pacer's waiter so it reads the clock again (limits unchanged)."""
    pacer.reconfigure(pacer.writes, pacer.window, pacer.concurrency)


def test_fourth_write_waits_for_the_first_answer_plus_the_window() -> None:
    """With 3 writes per 10 s, the 4th starts only when the clock reaches answer 1 + 10."""

    async def main() -> None:
        clock = FakeClock()
        pacer = WritePacer(3, 10.0, 5, clock=clock)
        answer = [asyncio.Event() for _ in range(4)]
        started: list[tuple[int, float]] = []

        async def write(index: int) -> None:
            async with pacer.slot():
                started.append((index, clock()))
                await answer[index].wait()

        tasks = [asyncio.create_task(write(index)) for index in range(3)]
        await settle()
        assert started == [(0, 0.0), (1, 0.0), (2, 0.0)]
        tasks.append(asyncio.create_task(write(3)))
        await settle()
        assert len(started) == 3  # three writes in flight fill the window
        for index, when in enumerate([1.0, 2.0, 3.0]):
            clock.move_to(when)
            answer[index].set()
            await settle()
        for when in [5.0, 10.0, 10.999]:
            clock.move_to(when)
            poke(pacer)
            await settle()
            assert len(started) == 3, f"the 4th write started at {when}"
        clock.move_to(11.0)
        poke(pacer)
        await settle()
        assert started[3] == (3, 11.0)
        answer[3].set()
        await asyncio.gather(*tasks)

    asyncio.run(main())


def test_a_write_in_flight_holds_its_place_until_answered() -> None:
    """A write that has no answer yet counts against the window however long it takes."""

    async def main() -> None:
        clock = FakeClock()
        pacer = WritePacer(1, 5.0, 5, clock=clock)
        answered = asyncio.Event()
        started: list[float] = []

        async def write(wait: bool) -> None:
            async with pacer.slot():
                started.append(clock())
                if wait:
                    await answered.wait()

        first = asyncio.create_task(write(True))
        await settle()
        second = asyncio.create_task(write(False))
        for when in [10.0, 100.0]:
            clock.move_to(when)
            poke(pacer)
            await settle()
            assert started == [0.0]
        answered.set()  # answered at 100: the next may go at 105
        await settle()
        clock.move_to(104.0)
        poke(pacer)
        await settle()
        assert started == [0.0]
        clock.move_to(105.0)
        poke(pacer)
        await asyncio.gather(first, second)
        assert started == [0.0, 105.0]

    asyncio.run(main())


def test_never_more_than_concurrency_writes_inside() -> None:
    """At most ``concurrency`` writes are inside slot() at once, and all of them get through."""

    async def main() -> None:
        pacer = WritePacer(1000, 0.0, 2, clock=FakeClock())
        inside = 0
        peak = 0
        done = 0

        async def write() -> None:
            nonlocal inside, peak, done
            async with pacer.slot():
                inside += 1
                peak = max(peak, inside)
                for _ in range(3):
                    await asyncio.sleep(0)
                inside -= 1
            done += 1

        await asyncio.gather(*(write() for _ in range(12)))
        assert peak == 2
        assert done == 12

    asyncio.run(main())


def test_waiters_are_admitted_in_arrival_order() -> None:
    """Writes that queue up are let in first come, first served."""

    async def main() -> None:
        clock = FakeClock()
        pacer = WritePacer(1, 5.0, 1, clock=clock)
        admitted: list[int] = []
        blocker_answer = asyncio.Event()

        async def blocker() -> None:
            async with pacer.slot():
                await blocker_answer.wait()

        async def write(index: int) -> None:
            async with pacer.slot():
                admitted.append(index)

        tasks = [asyncio.create_task(blocker())]
        await settle()
        arrival = [4, 0, 7, 2, 6, 1, 5, 3]
        for index in arrival:
            tasks.append(asyncio.create_task(write(index)))
            await settle()  # each one queues before the next arrives
        blocker_answer.set()
        while len(admitted) < len(arrival):
            clock.move_to(clock.now + 5.0)
            poke(pacer)
            await settle()
        await asyncio.gather(*tasks)
        assert admitted == arrival

    asyncio.run(main())


def test_reconfigure_raising_the_limit_lets_a_waiter_in_at_once() -> None:
    """A reload that allows more writes admits a waiting write without the clock moving."""

    async def main() -> None:
        clock = FakeClock()
        pacer = WritePacer(1, 100.0, 5, clock=clock)
        started: list[int] = []

        async def write(index: int) -> None:
            async with pacer.slot():
                started.append(index)

        await write(0)
        waiter = asyncio.create_task(write(1))
        await settle()
        assert started == [0]
        pacer.reconfigure(2, 100.0, 5)
        await settle()
        assert started == [0, 1]
        await waiter

    asyncio.run(main())


def test_reconfigure_shortening_the_window_takes_effect() -> None:
    """A reload with a shorter window frees the place as soon as that window has passed."""

    async def main() -> None:
        clock = FakeClock()
        pacer = WritePacer(1, 100.0, 5, clock=clock)
        started: list[int] = []

        async def write(index: int) -> None:
            async with pacer.slot():
                started.append(index)

        await write(0)
        waiter = asyncio.create_task(write(1))
        clock.move_to(5.0)
        poke(pacer)
        await settle()
        assert started == [0]
        pacer.reconfigure(1, 5.0, 5)
        await settle()
        assert started == [0, 1]
        await waiter

    asyncio.run(main())


def test_reconfigure_lowering_limits_keeps_counted_writes() -> None:
    """A reload to fewer writes or less concurrency holds back writes already over the limit."""

    async def main() -> None:
        clock = FakeClock()
        pacer = WritePacer(3, 10.0, 3, clock=clock)
        release = asyncio.Event()
        inside = 0
        peak = 0

        async def write() -> None:
            nonlocal inside, peak
            async with pacer.slot():
                inside += 1
                peak = max(peak, inside)
                await release.wait()
                inside -= 1

        async def quick() -> None:
            async with pacer.slot():
                pass

        await quick()  # one write counted at t=0
        pacer.reconfigure(1, 10.0, 3)
        held = asyncio.create_task(write())
        await settle()
        assert inside == 0  # the write already counted fills the new limit of 1
        pacer.reconfigure(5, 10.0, 1)
        await settle()
        assert inside == 1
        others = [asyncio.create_task(write()) for _ in range(2)]
        await settle()
        assert inside == 1  # concurrency 1 now
        release.set()
        await asyncio.gather(held, *others)
        assert peak == 1

    asyncio.run(main())


async def simulate(seed: int) -> tuple[list[tuple[float, float]], int, float, int]:
    """Run random writes through a pacer; return their (start, answer) times and the limits."""
    rng = random.Random(seed)
    writes, window, concurrency = rng.randint(1, 4), float(rng.randint(1, 8)), rng.randint(1, 4)
    clock = FakeClock()
    pacer = WritePacer(writes, window, concurrency, clock=clock)
    records: list[tuple[float, float]] = []

    async def write(arrival: float, duration: float) -> None:
        await clock.until(arrival)
        async with pacer.slot():
            start = clock()
            await clock.until(start + duration)
            # The pacer counts the write from this same reading (no await in between).
            records.append((start, clock()))

    jobs = [(float(rng.randint(0, 30)), float(rng.choice([0, 0, 1, 2, 5]))) for _ in range(25)]
    tasks = [asyncio.create_task(write(arrival, duration)) for arrival, duration in jobs]
    for _ in range(2000):
        await settle()
        if all(task.done() for task in tasks):
            break
        clock.move_to(clock.now + 1.0)
        poke(pacer)
    assert all(task.done() for task in tasks), "writes were left waiting for ever"
    await asyncio.gather(*tasks)
    return records, writes, window, concurrency


@pytest.mark.parametrize("seed", range(12))
def test_sliding_window_invariant_holds_in_random_runs(seed: int) -> None:
    """At each write's start at most N writes hold [start, answer + window), C in flight."""
    records, writes, window, concurrency = asyncio.run(simulate(seed))
    assert len(records) == 25
    for start, _ in records:
        holding = [s for s, a in records if s <= start < a + window]
        in_flight = [s for s, a in records if s <= start < a]
        assert len(holding) <= writes, (start, sorted(records))
        assert len(in_flight) <= concurrency, (start, sorted(records))


def test_a_place_given_back_unused_is_not_counted_in_the_window() -> None:
    """Prove a place returned with unused() frees the slot and takes no room in the window."""

    async def scenario() -> tuple[float, float]:
        pacer = WritePacer(1, 60.0, 1, clock=lambda: 0.0)
        place = await pacer.acquire()
        place.unused()
        place()  # a second give-back is a no-op
        free_after_unused = pacer.wait_time()
        sent = await pacer.acquire()
        sent()
        return free_after_unused, pacer.wait_time()

    free_after_unused, after_a_write = asyncio.run(scenario())
    assert free_after_unused == 0.0
    assert after_a_write == 60.0
