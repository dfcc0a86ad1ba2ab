"""tts.pacing: the hold each live chunk carries, checked against a listener simulated
apart from the code (each chunk played at max(its arrival, the end of the one before))."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tts.pacing import MARGIN, EngineFit, Pace, cushion_left

PAUSE = 350


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(chars, *, ms_per_char, speech_per_char, free=None, fixed_ms=0, fit=None):
    """A run in which segment j takes ``fixed_ms + ms_per_char * chars[j]`` to make, back
    to back, with the cushion the pace gives at each chunk. Returns (cushions, arrivals,
    durations)."""
    free = free or [False] * len(chars)
    clock = Clock()
    pace = Pace(chars, [PAUSE] * len(chars), free, fit=fit, clock=clock)
    cushions, arrivals, durations = [], [], []
    now = 0.0
    for seq, n in enumerate(chars):
        spent = None if free[seq] else fixed_ms + ms_per_char * n
        now += spent or 0.0
        clock.now = now / 1000
        duration = round(speech_per_char * n) + PAUSE
        pace.made(seq, duration_ms=duration, engine_ms=None if spent is None else round(spent))
        cushions.append(pace.cushion_ms(seq, duration))
        arrivals.append(now)
        durations.append(duration)
    return cushions, arrivals, durations


def gaps(arrivals, durations, start):
    """Gaps (ms) a listener hears who plays chunk 0 at ``start`` and each next one as soon
    as it has both finished the one before and received it."""
    heard, end = [], start + durations[0]
    for arrival, duration in zip(arrivals[1:], durations[1:], strict=True):
        begin = max(end, arrival)
        heard.append(begin - end)
        end = begin + duration
    return heard


RAMP = [60, 120, 240, 250, 250, 250]  # the default cut of a long text


def test_a_fast_engine_gets_no_cushion():
    cushions, _, _ = simulate(RAMP, ms_per_char=1, speech_per_char=65)

    assert cushions == [0] * len(RAMP)


def test_a_slow_engine_gets_the_wait_that_removes_every_gap():
    # Real-time factor 0.77: the ramp's second and third segments outrun the first's audio.
    cushions, arrivals, durations = simulate(RAMP, ms_per_char=50, speech_per_char=65)

    assert cushions[0] > 0
    assert max(gaps(arrivals, durations, arrivals[0])) > 1000  # without it: a gap
    with_cushion = gaps(arrivals, durations, arrivals[0] + cushions[0])
    assert max(with_cushion) == pytest.approx(0, abs=2)  # rounding to whole ms
    # and it is no longer than it has to be, but for the margin on the engine's time
    start = round(arrivals[0])
    needed = next(
        w for w in range(start, start + 60_000, 10) if not max(gaps(arrivals, durations, w))
    )
    needed -= arrivals[0]
    made = arrivals[-1] - arrivals[0]
    assert needed <= cushions[0] <= needed + (MARGIN - 1) * made + 10


def test_a_gentler_ramp_needs_none_at_the_same_speed():
    gentle = [60, 75, 93, 117, 146, 183, 228, 250, 250]

    cushions, _, _ = simulate(gentle, ms_per_char=45, speech_per_char=65)  # RTF 0.69

    assert cushions[0] == 0


def test_segments_that_cost_nothing_shorten_the_wait():
    paid, _, _ = simulate(RAMP, ms_per_char=50, speech_per_char=65)
    cached, _, _ = simulate(
        RAMP, ms_per_char=50, speech_per_char=65, free=[False, True, True, False, False, False]
    )

    assert cached[0] < paid[0]


def test_nothing_measured_says_nothing():
    pace = Pace([60, 120], [PAUSE, 0], [True, False])

    pace.made(0, duration_ms=4000, engine_ms=None)  # from the cache

    assert pace.cushion_ms(0, 4000) == 0


def test_the_wall_time_between_chunks_counts_when_it_is_longer():
    """A worker running other sessions beside this one makes its chunks slower than its
    engine's own time says: the pace goes by the slower of the two."""
    clock = Clock()
    pace = Pace(RAMP, [PAUSE] * 6, [False] * 6, clock=clock)
    pace.made(0, duration_ms=4250, engine_ms=600)  # 10 ms a character
    pace.made(1, duration_ms=8150, engine_ms=1200)
    alone = pace.cushion_ms(1, 8150)
    clock.now = 6.0  # 6 s between the two chunks: 50 ms a character
    shared = pace.cushion_ms(1, 8150)

    assert alone == 0 and shared > 0


@settings(max_examples=200, deadline=None)
@given(
    chars=st.lists(st.integers(1, 250), min_size=1, max_size=30),
    ms_per_char=st.integers(1, 120),  # whole ms, as engine_ms is
    speech_per_char=st.integers(40, 90),  # whole ms: the estimate is then exact
)
def test_the_cushion_always_removes_every_gap_when_the_engine_keeps_its_pace(
    chars, ms_per_char, speech_per_char
):
    for seq_start in range(len(chars)):
        cushions, arrivals, durations = simulate(
            chars[seq_start:], ms_per_char=ms_per_char, speech_per_char=speech_per_char
        )
        heard = gaps(arrivals, durations, arrivals[0] + cushions[0])
        assert max(heard, default=0) <= 1  # the cushion is rounded to whole ms


# --- the engine's fit -----------------------------------------------------------------


def fitted(fixed_ms, ms_per_char, lengths=(20, 60, 120, 250, 90)) -> EngineFit:
    fit = EngineFit()
    for n in lengths:
        fit.add(n, fixed_ms + ms_per_char * n)
    return fit


def test_the_fit_finds_the_fixed_part_and_the_part_per_character():
    assert fitted(300, 25).line() == pytest.approx((300, 25))
    assert EngineFit().line() is None and fitted(300, 25, lengths=(60, 60)).line() is None
    assert fitted(300, 25, lengths=(60, 60, 60)).line() == pytest.approx((0, 30))  # one length


def test_the_fit_follows_a_host_that_slows_down():
    fit = fitted(0, 20, lengths=[60, 120] * 10)
    for n in [60, 120] * 20:  # forty segments later, the old ones weigh 0.95 ** 40
        fit.add(n, 40 * n)

    assert 35 < fit.line()[1] <= 40


def test_with_a_fit_a_short_first_segment_does_not_inflate_the_hold():
    """A first segment costs more per character than longer ones (the engine's fixed
    part): judged from it alone, the rest looks slower than it is."""
    ramp = [60, 120, 240, 250, 250]
    alone, arrivals, durations = simulate(ramp, ms_per_char=30, fixed_ms=700, speech_per_char=65)
    fit = fitted(700, 30)
    known, _, _ = simulate(ramp, ms_per_char=30, fixed_ms=700, speech_per_char=65, fit=fit)

    assert known[0] < alone[0]
    assert max(gaps(arrivals, durations, arrivals[0] + known[0])) == pytest.approx(0, abs=2)


def test_a_run_slower_than_the_fit_scales_it_up():
    fit = fitted(0, 20)  # measured on a quieter host
    slow, arrivals, durations = simulate(RAMP, ms_per_char=50, speech_per_char=65, fit=fit)

    assert max(gaps(arrivals, durations, arrivals[0] + slow[0])) == pytest.approx(0, abs=2)


@settings(max_examples=200, deadline=None)
@given(
    chars=st.lists(st.integers(1, 250), min_size=1, max_size=30),
    fixed_ms=st.integers(0, 1000),
    ms_per_char=st.integers(1, 120),
    speech_per_char=st.integers(40, 90),
    drift=st.sampled_from([0.5, 1.0, 2.0]),  # the fit's host: twice as fast .. half
)
def test_with_a_fit_the_cushion_removes_every_gap_too(
    chars, fixed_ms, ms_per_char, speech_per_char, drift
):
    fit = fitted(fixed_ms * drift, ms_per_char * drift)
    cushions, arrivals, durations = simulate(
        chars, ms_per_char=ms_per_char, fixed_ms=fixed_ms, speech_per_char=speech_per_char, fit=fit
    )
    heard = gaps(arrivals, durations, arrivals[0] + cushions[0])
    assert max(heard, default=0) <= 1


def test_a_chunk_read_back_later_keeps_its_due_time():
    assert cushion_left(3000, 1200) == 1800
    assert cushion_left(3000, 0.4) == 3000  # rounded to whole ms
    assert cushion_left(3000, 5000) == 0  # long due: play it at once
    assert cushion_left(0, 10) == 0
    assert cushion_left(3000, -250) == 3000  # a clock behind the worker's: none gone
    assert cushion_left(None, 100) is None  # sent with none: none to give
