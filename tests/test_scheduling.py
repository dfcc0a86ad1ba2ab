"""The worker's schedule (tts.scheduling): which session makes the next chunk, and when a
busy worker takes on another. Pure decisions on a clock of the test's own; the services
tests run it with the real engine and database."""

from __future__ import annotations

import uuid

import pytest

from tts import scheduling
from tts.scheduling import LOAD_LIMIT, LOOK_EVERY_S, SAFE_S, Made, Schedule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def steps():
    yield Made(1000, 10, cached=False)


@pytest.fixture
def clock():
    return Clock()


def schedule(clock, slots=4, **rtf) -> Schedule:
    return Schedule(slots=slots, rtf=dict(rtf), clock=clock)


def test_a_session_with_no_chunk_yet_goes_first_then_the_one_whose_listener_runs_dry_first(
    clock,
):
    plan = schedule(clock, en=0.1)
    old = plan.add(uuid.uuid4(), "en", steps())
    plan.made(old, Made(1500, 40, cached=False))  # 1.5 s ahead of its listener
    new = plan.add(uuid.uuid4(), "en", steps())
    assert plan.next() is new
    plan.made(new, Made(1000, 20, cached=False))  # due at 1001, the old one at 1001.5
    assert plan.next() is new
    plan.made(new, Made(1000, 20, cached=False))  # due at 1002: enough in hand
    assert plan.next() is old
    plan.finished(old)
    assert plan.next() is new
    plan.finished(new)
    assert plan.next() is None


def test_once_every_listener_has_enough_in_hand_the_earliest_claimed_goes_on_to_its_end(
    clock,
):
    """So that sessions end in the order they came and free their place for the next,
    instead of all ending together."""
    plan = schedule(clock, en=0.1)
    old = plan.add(uuid.uuid4(), "en", steps())
    plan.made(old, Made(int(SAFE_S * 1000) + 3000, 40, cached=False))  # 5 s in hand
    new = plan.add(uuid.uuid4(), "en", steps())
    assert plan.next() is new  # its first chunk first
    plan.made(new, Made(int(SAFE_S * 1000), 40, cached=False))  # 2 s in hand
    assert plan.next() is old  # both safe: the earlier claimed, though due later
    plan.made(old, Made(30_000, 40, cached=False))
    assert plan.next() is old
    clock.now += 0.5  # the new one's listener is down to 1.5 s
    assert plan.next() is new


def test_enough_in_hand_is_twice_the_time_to_come_round_every_session(clock):
    """A slow engine's chunk keeps the others waiting: a listener needs more in hand."""
    plan = schedule(clock, en=0.3)
    old = plan.add(uuid.uuid4(), "en", steps())
    plan.made(old, Made(12_000, 2_000, cached=False))  # 12 s in hand, a chunk took 2 s
    new = plan.add(uuid.uuid4(), "en", steps())
    plan.made(new, Made(5_000, 1_000, cached=False))  # 5 s in hand, a chunk took 1 s
    assert plan.next() is new  # 5 s < 2 * (2 + 1) s: not enough
    plan.made(new, Made(5_000, 1_000, cached=False))  # 10 s
    assert plan.next() is old  # both have enough: the earlier claimed


def test_two_sessions_with_no_chunk_yet_go_in_the_order_they_were_claimed(clock):
    plan = schedule(clock)
    first, second = plan.add(uuid.uuid4(), "en", steps()), plan.add(uuid.uuid4(), "en", steps())
    assert plan.next() is first
    plan.finished(first)
    assert plan.next() is second


def test_the_real_time_factor_is_measured_per_voice_and_a_cached_chunk_does_not_count(clock):
    plan = schedule(clock)
    run = plan.add(uuid.uuid4(), "en", steps())
    plan.made(run, Made(2000, 0, cached=True))
    assert "en" not in plan.rtf
    plan.made(run, Made(2000, 1000, cached=False))
    assert plan.rtf["en"] == 0.5
    plan.made(run, Made(2000, 0, cached=False))  # weighted with what came before
    assert 0.3 < plan.rtf["en"] < 0.5
    assert plan.load() == plan.rtf["en"]


def test_a_session_is_taken_on_only_while_the_engine_keeps_up_with_all(clock):
    plan = schedule(clock, slots=3, quick=0.1, slow=0.6)
    assert not plan.fits("unknown")  # never synthesized here: it might take the whole engine
    plan.add(uuid.uuid4(), "slow", steps())
    assert plan.fits("quick")
    assert not plan.fits("slow")  # 1.2 > LOAD_LIMIT
    plan.add(uuid.uuid4(), "quick", steps())
    assert plan.load() == pytest.approx(0.7) and plan.load() <= LOAD_LIMIT
    assert plan.fits("quick")
    plan.add(uuid.uuid4(), "quick", steps())
    assert not plan.fits("quick")  # three slots, all taken


def test_a_voice_not_measured_counts_as_the_whole_engine(clock):
    plan = schedule(clock, quick=0.01)
    plan.add(uuid.uuid4(), "unknown", steps())
    assert plan.load() == 1.0
    assert not plan.fits("quick")


def test_a_busy_worker_looks_at_the_queue_at_most_every_interval_and_only_with_room(clock):
    plan = schedule(clock, slots=2, en=0.1, slow=0.9)
    assert not plan.time_to_look()  # idle: the worker drains the queue as it always did
    run = plan.add(uuid.uuid4(), "en", steps())
    assert not plan.time_to_look()  # not before LOOK_EVERY_S from the start
    clock.now += LOOK_EVERY_S
    assert plan.time_to_look()
    assert not plan.time_to_look()  # once per interval
    clock.now += LOOK_EVERY_S
    other = plan.add(uuid.uuid4(), "en", steps())
    assert not plan.time_to_look()  # no slot left
    plan.finished(other)
    plan.taking = False
    assert not plan.time_to_look()  # a session failed: finish the others, take no more
    plan.taking = True
    plan.finished(run)
    plan.add(uuid.uuid4(), "slow", steps())
    assert not plan.time_to_look()  # the engine is busy enough


def test_close_closes_every_run_left_even_when_one_fails_to_close(clock, caplog):
    closed = []

    def run(name, broken=False):
        try:
            yield Made(1000, 1, cached=False)
        finally:
            closed.append(name)
            if broken:
                raise RuntimeError("its store failed")

    plan = schedule(clock)
    runs = [plan.add(uuid.uuid4(), "en", run(name, broken=name == "b")) for name in "abc"]
    for each in runs:
        next(each.steps)  # suspended at its first chunk
    plan.close()
    assert sorted(closed) == ["a", "b", "c"] and plan.runs == []
    assert "closing the run of" in caplog.text


def test_the_measured_factors_are_the_process_s_own_by_default():
    assert Schedule(slots=2).rtf is scheduling._measured
