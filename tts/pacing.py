"""How long a listener should hold a chunk before playing it, so that the rest keeps up.

A player that starts each chunk the moment it can hears a gap wherever the engine falls
behind: a voice slower than its segment ramp allows (see TTS_SEGMENT_GROWTH), or one
slower than real time. Only the worker knows how fast its engine goes and what is left
to make, so it sends, with every chunk it streams live, ``cushion_ms``: the estimated
time from that chunk's arrival before it should start playing, for every chunk after it
to arrive before it is due. A fast engine gets 0 and changes nothing; a slow one trades
a short wait before the first sound for a narration that plays through.

The estimate measures the engine in this run: its time per character of speech so far
(synthesis time, or the wall time between chunks where that is longer, as when a worker
runs other sessions beside this one), and the audio per character. Segments that cost
no synthesis (cached, or repeats of an earlier one) are counted as free. Speech rates
vary from sentence to sentence, and a first segment is one sample: the synthesis times
are taken MARGIN longer than measured (in the benchmark's full-size VITS, a hold by the
bare estimate missed by 0.1 to 0.2 s now and then).

Pure Python, no Django.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

__all__ = ["MARGIN", "Pace"]

MARGIN = 1.1


class Pace:
    """One run of a session's synthesis, from chunk ``first_seq`` on.

    ``chars``: each segment's speech length; ``pauses_ms``: each segment's trailing pause;
    ``free``: whether a segment costs no synthesis in this run."""

    def __init__(
        self,
        chars: Sequence[int],
        pauses_ms: Sequence[int],
        free: Sequence[bool],
        *,
        clock=time.monotonic,
    ) -> None:
        self.chars = list(chars)
        self.pauses_ms = list(pauses_ms)
        self.free = list(free)
        self.clock = clock
        # The characters to synthesize from each segment to the end: the walk stops once
        # the listener's lead covers all of them.
        self.costly_from = [0] * (len(self.chars) + 1)
        for i in range(len(self.chars) - 1, -1, -1):
            self.costly_from[i] = self.costly_from[i + 1] + (0 if self.free[i] else self.chars[i])
        self.engine_ms = 0.0  # synthesis time of the segments made in this run
        self.engine_chars = 0
        self.speech_ms = 0.0  # their audio, pauses left out
        self.speech_chars = 0
        self.first_made: float | None = None  # when the run's first synthesized chunk was
        self.wall_chars = 0  # characters synthesized since then

    def made(self, seq: int, *, duration_ms: int, engine_ms: int | None) -> None:
        """Chunk ``seq`` is made: ``engine_ms`` its synthesis time (None: it cost none)."""
        chars = self.chars[seq]
        if chars:
            self.speech_ms += max(0, duration_ms - self.pauses_ms[seq])
            self.speech_chars += chars
        if engine_ms is None or not chars:
            return
        self.engine_ms += engine_ms
        self.engine_chars += chars
        if self.first_made is None:
            self.first_made = self.clock()
        else:
            self.wall_chars += chars

    def cushion_ms(self, seq: int, duration_ms: int) -> int:
        """How long after chunk ``seq`` arrives it should start playing (nothing before it
        left to hear), for every later chunk to arrive in time; 0 when they will anyway."""
        if not self.engine_chars or not self.speech_chars:
            return 0  # nothing measured: nothing to say
        per_char = self.engine_ms / self.engine_chars
        if self.wall_chars and self.first_made is not None:
            per_char = max(per_char, (self.clock() - self.first_made) * 1000 / self.wall_chars)
        per_char *= MARGIN
        speech_per_char = self.speech_ms / self.speech_chars
        wait = 0.0
        ready = 0.0  # when segment j is made, from now (the engine goes on at once)
        due = float(duration_ms)  # when it is due, from the start of chunk seq
        for j in range(seq + 1, len(self.chars)):
            if due - ready >= per_char * self.costly_from[j]:
                break  # the listener's lead covers every synthesis left
            if not self.free[j]:
                ready += per_char * self.chars[j]
            wait = max(wait, ready - due)
            due += speech_per_char * self.chars[j] + self.pauses_ms[j]
        return round(wait)
