"""How long a listener should hold a chunk before playing it, so that the rest keeps up.

A player that starts each chunk the moment it can hears a gap wherever the engine falls
behind: a voice slower than its segment ramp allows (see TTS_SEGMENT_GROWTH), or one
slower than real time. Only the worker knows how fast its engine goes and what is left
to make, so it sends, with every chunk it streams live, ``cushion_ms``: the estimated
time from that chunk's arrival before it should start playing, for every chunk after it
to arrive before it is due. A fast engine gets 0 and changes nothing; a slow one trades
a short wait before the first sound for a narration that plays through.

What a segment will cost the engine: a voice's synthesis time is a fixed part plus a
part per character (a short segment costs more per character than a long one), which
the worker fits per voice over the segments it has made (``EngineFit``). In a run, that
prediction is scaled up when the run's own segments took longer than predicted (a busy
host), and no segment is counted faster than the wall time between this run's chunks
says (a worker running other sessions beside it). Until the voice has a fit, the run's
own time per character stands in. The audio to come is estimated per character from the
run's chunks so far. Segments that cost no synthesis (cached, or repeats of an earlier
one) are free. Speech rates vary from sentence to sentence: synthesis times are taken
MARGIN longer than estimated (in the benchmark's full-size VITS, holds by the bare
estimate missed by 0.1 to 0.2 s now and then).

A chunk read back from storage while its session still runs (a listener who joins late
or reconnects, the HTTP fallback) carries what is left of the hold it went out live with
(``cushion_left``): the chunk's due time does not move because the listener came later.

Pure Python, no Django.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

__all__ = ["MARGIN", "EngineFit", "Pace", "cushion_left"]

MARGIN = 1.1


class EngineFit:
    """A voice's synthesis time as ``fixed + per_char * chars``: least squares over the
    segments made so far, older ones weighing less (``decay`` per new one), so that it
    follows a host whose speed drifts. Thread-safe: a worker's syntheses report from its
    loop's thread and from its engine thread."""

    MIN_SAMPLES = 3

    def __init__(self, decay: float = 0.95) -> None:
        self.decay = decay
        self._lock = threading.Lock()
        self._n = 0
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def add(self, chars: int, engine_ms: float) -> None:
        if chars <= 0:
            return
        with self._lock:
            d = self.decay
            self._w = self._w * d + 1
            self._x = self._x * d + chars
            self._y = self._y * d + engine_ms
            self._xx = self._xx * d + chars * chars
            self._xy = self._xy * d + chars * engine_ms
            self._n += 1

    def line(self) -> tuple[float, float] | None:
        """(fixed ms, ms per character), or None while there is too little to go by."""
        with self._lock:
            if self._n < self.MIN_SAMPLES:
                return None
            w, x, y, xx, xy = self._w, self._x, self._y, self._xx, self._xy
        spread = w * xx - x * x
        if spread > 1e-9 * w * xx:  # segments of different lengths: a line
            per_char = (w * xy - x * y) / spread
            fixed = (y - per_char * x) / w
            if per_char > 0 and fixed >= 0:
                return fixed, per_char
        return 0.0, y / x  # all alike (or a line through noise): time per character


class Pace:
    """One run of a session's synthesis. ``chars``: each segment's speech length;
    ``pauses_ms``: each segment's trailing pause; ``free``: whether a segment costs no
    synthesis in this run; ``fit``: the voice's EngineFit, if the worker keeps one."""

    def __init__(
        self,
        chars: Sequence[int],
        pauses_ms: Sequence[int],
        free: Sequence[bool],
        *,
        fit: EngineFit | None = None,
        clock=time.monotonic,
    ) -> None:
        self.chars = list(chars)
        self.pauses_ms = list(pauses_ms)
        self.free = list(free)
        self.clock = clock
        # The fit as the run began: a run's own segments do not move its estimate twice.
        self.line = fit.line() if fit is not None else None
        # The characters to synthesize from each segment to the end: the walk stops once
        # the listener's lead covers all of them.
        self.costly_from = [0] * (len(self.chars) + 1)
        for i in range(len(self.chars) - 1, -1, -1):
            self.costly_from[i] = self.costly_from[i + 1] + (0 if self.free[i] else self.chars[i])
        self.engine_ms = 0.0  # synthesis time of the segments made in this run
        self.engine_chars = 0
        self.predicted_ms = 0.0  # what the fit said they would take
        self.speech_ms = 0.0  # their audio, pauses left out
        self.speech_chars = 0
        self.first_made: float | None = None  # when the run's first synthesized chunk was
        self.wall_chars = 0  # characters synthesized since then

    def made(
        self, seq: int, *, duration_ms: int, engine_ms: int | None, at: float | None = None
    ) -> None:
        """Chunk ``seq`` is made: ``engine_ms`` its synthesis time (None: it cost none);
        ``at``: when, by ``clock`` (None: now)."""
        chars = self.chars[seq]
        if chars:
            self.speech_ms += max(0, duration_ms - self.pauses_ms[seq])
            self.speech_chars += chars
        if engine_ms is None or not chars:
            return
        self.engine_ms += engine_ms
        self.engine_chars += chars
        if self.line is not None:
            self.predicted_ms += self.line[0] + self.line[1] * chars
        if self.first_made is None:
            self.first_made = self.clock() if at is None else at
        else:
            self.wall_chars += chars

    def cushion_ms(self, seq: int, duration_ms: int) -> int:
        """How long after chunk ``seq`` arrives it should start playing (nothing before it
        left to hear), for every later chunk to arrive in time; 0 when they will anyway."""
        if not self.engine_chars or not self.speech_chars:
            return 0  # nothing measured: nothing to say
        if self.line is not None and self.predicted_ms > 0:
            fixed, per_char = self.line
            slower = max(1.0, self.engine_ms / self.predicted_ms)  # a busier host than the fit's
            fixed, per_char = fixed * slower, per_char * slower
        else:
            fixed, per_char = 0.0, self.engine_ms / self.engine_chars
        floor = 0.0  # the wall time per character between this run's chunks
        if self.wall_chars and self.first_made is not None:
            floor = (self.clock() - self.first_made) * 1000 / self.wall_chars
        speech_per_char = self.speech_ms / self.speech_chars
        wait = 0.0
        ready = 0.0  # when segment j is made, from now (the engine goes on at once)
        due = float(duration_ms)  # when it is due, from the start of chunk seq
        most_per_char = MARGIN * max(per_char + fixed, floor)  # a bound, for stopping early
        for j in range(seq + 1, len(self.chars)):
            if due - ready >= most_per_char * self.costly_from[j]:
                break  # the listener's lead covers every synthesis left
            if not self.free[j]:
                n = self.chars[j]
                ready += MARGIN * max(fixed + per_char * n, floor * n)
            wait = max(wait, ready - due)
            due += speech_per_char * self.chars[j] + self.pauses_ms[j]
        return round(wait)


def cushion_left(cushion_ms: int | None, age_ms: float) -> int | None:
    """What is left, ``age_ms`` after a chunk was made, of the hold it went out live with:
    the listener reading it now should start it no sooner than one who got it live would
    have. None for a chunk sent with none. A negative age (another host's clock) counts
    as none gone."""
    if cushion_ms is None:
        return None
    return max(0, round(cushion_ms - max(0.0, age_ms)))
