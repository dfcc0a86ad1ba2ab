"""Which of a worker's sessions makes the next chunk: first segments first.

A worker used to finish one session before it claimed the next, so a session queued
behind a full-size model's 2,000-character narration waited a minute and more for its
first sound, while the engine could have kept both listeners supplied. Now, between two
chunks, a busy worker may take on a session that has waited in the queue and that it
has the engine time for, and it chooses the session that makes the next chunk:

- a session whose listener has too little audio in hand goes first, the one that runs
  dry soonest first of all (earliest deadline first). Too little is less than twice
  the time the worker takes to come round to every session once (the engine time of
  each one's latest chunk), and at least ``SAFE_S``. A session's
  deadline is the moment its listener runs out of audio if playback began when its
  first chunk went out (that moment plus the audio made since); a session with no
  chunk yet is due at once, so its first segment comes next;
- when every listener has enough in hand, the session claimed first goes on, so that
  sessions end in the order they came and free their place for the next (under
  earliest deadline first alone, they would all end together, late).

The engine time a session needs is its voice's real-time factor (engine time over audio
time), measured on this worker's own syntheses. A session is taken on only while the
real-time factors of all of them add up to at most ``LOAD_LIMIT``: then the engine
makes audio faster than every listener plays it, and none of them runs dry. A voice this
worker has not yet synthesized is not taken on beside others. A session stays in the
queue for ``WAIT_S`` before a busy worker takes it, so that an idle worker, rung at
once, gets it first.

This module decides; ``tts.services.session_run`` claims, and advances each session's
``session_steps`` as told. Nothing here touches the database.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# The engine's share, summed over a worker's sessions' real-time factors, beyond which it
# takes on no further session: the rest of each chunk's way (its store, its broadcast)
# and a voice's slower passages need the margin.
LOAD_LIMIT = 0.8
# Seconds a session waits in the queue before a busy worker may take it (an idle worker
# claims within milliseconds of the POST).
WAIT_S = 0.05
# Seconds between a busy worker's looks at the queue (one indexed query each).
LOOK_EVERY_S = 0.1
# Seconds of audio a listener has in hand beyond which its session may yield to the
# others' first chunks and to the oldest session's end, at the least (see Schedule.next).
SAFE_S = 2.0
# Weight of a voice's latest chunk in its real-time factor.
_RTF_WEIGHT = 0.3


@dataclass(frozen=True, slots=True)
class Made:
    """One chunk handed on by a session's steps (sent, or queued behind its store)."""

    duration_ms: int
    engine_ms: int
    cached: bool


@dataclass(eq=False)
class Run:
    """A claimed session on this worker, and how far ahead of its listener it is."""

    session_id: uuid.UUID
    voice: str
    steps: Generator[Made, None, None]
    order: int
    first_at: float | None = None  # when its first chunk (of this run) went out
    made_ms: int = 0  # audio made since
    chunk_s: float = 0.0  # the engine time of its latest chunk synthesized

    def due(self) -> float:
        """When its listener runs out of audio; at once when it has none yet."""
        return -math.inf if self.first_at is None else self.first_at + self.made_ms / 1000


# Real-time factor per voice, measured on this process's syntheses (engine time, lock
# waits included, over audio time): an overestimate at worst, never an underestimate.
_measured: dict[str, float] = {}


@dataclass
class Schedule:
    """A worker's running sessions. ``slots``: the most it runs at once."""

    slots: int
    rtf: dict[str, float] = field(default_factory=lambda: _measured)
    clock: Callable[[], float] = time.monotonic
    runs: list[Run] = field(default_factory=list)
    taking: bool = True  # False once a session failed: finish the others, take no more
    _added: int = 0
    _next_look: float = 0.0

    def __post_init__(self) -> None:
        self._next_look = self.clock() + LOOK_EVERY_S

    def add(self, session_id: uuid.UUID, voice: str, steps: Generator[Made, None, None]) -> Run:
        run = Run(session_id, voice, steps, order=self._added)
        self._added += 1
        self.runs.append(run)
        return run

    def next(self) -> Run | None:
        """The run whose listener runs dry first among those without enough audio in
        hand (the earlier claimed on a tie); else the earliest claimed."""
        safe = self.clock() + max(SAFE_S, 2 * sum(run.chunk_s for run in self.runs))

        def urgency(run: Run) -> tuple[bool, float, int]:
            due = run.due()
            return (due >= safe, due if due < safe else 0.0, run.order)

        return min(self.runs, key=urgency, default=None)

    def made(self, run: Run, chunk: Made) -> None:
        if run.first_at is None:
            run.first_at = self.clock()
        run.made_ms += chunk.duration_ms
        if not chunk.cached and chunk.duration_ms > 0:
            run.chunk_s = chunk.engine_ms / 1000
            rtf = chunk.engine_ms / chunk.duration_ms
            before = self.rtf.get(run.voice)
            self.rtf[run.voice] = rtf if before is None else before + _RTF_WEIGHT * (rtf - before)

    def finished(self, run: Run) -> None:
        self.runs.remove(run)

    def load(self) -> float:
        """The engine's share its running sessions need; a voice not yet measured counts
        as the whole engine."""
        return sum(self.rtf.get(run.voice, 1.0) for run in self.runs)

    def time_to_look(self) -> bool:
        """Whether to look for a waiting session now (busy, with room, not too soon)."""
        if not (self.taking and 0 < len(self.runs) < self.slots):
            return False
        if self.load() >= LOAD_LIMIT or self.clock() < self._next_look:
            return False
        self._next_look = self.clock() + LOOK_EVERY_S
        return True

    def fits(self, voice: str) -> bool:
        """Whether a session of this voice can run beside the others in real time."""
        rtf = self.rtf.get(voice)
        return rtf is not None and len(self.runs) < self.slots and self.load() + rtf <= LOAD_LIMIT

    def close(self) -> None:
        """Close the runs not finished (on an interrupt): each stores what it queued, as a
        session interrupted on its own does, and leaves the rest to the recovery sweep."""
        while self.runs:
            run = self.runs.pop()
            try:
                run.steps.close()
            except Exception:  # noqa: BLE001 - the others are closed all the same
                logger.exception("closing the run of %s failed", run.session_id)
