"""A segment's audio: from the cache, or made on the worker's engine thread.

How a session's text is cut (session_segments), the content address of each segment's
audio (segment_key), the cache lookups, and the one engine thread per worker that makes
what is not cached, a long text's head first (HeadAhead).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from tts.audio import silence
from tts.compiled import Compiled
from tts.conf import settings
from tts.engines import Audio, EngineError, Voice, get_engine
from tts.models import AudioBlob, TTSChunk, TTSSession
from tts.segmentation import Segment, segment_text
from tts.voices import CUTTING_OPTIONS

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Segments queued on the engine thread once a chunk is sent: the one the loop waits for
# next, and those after it. They cost nothing on a cancel or a failure: only the one the
# engine is running is finished (and kept for the cache).
SYNTHESIS_AHEAD = 2


def session_segments(
    *, session: TTSSession, voice: Voice, text: str | None = None
) -> list[Segment]:
    """Deterministic for a session's text and settings, so a resumed run cuts alike.
    ``text``: a part of the session's text to cut instead (a long text's head, see
    HeadAhead; the rest of a resumed one, see resumed_segments)."""
    text = session.text if text is None else text
    return segment_text(text, language=voice.language, **voice_cutting(voice))


def resumed_segments(
    *, session: TTSSession, voice: Voice, segments: list[Segment], stored: int
) -> tuple[list[Segment], bool]:
    """The segments of a session resumed after its first ``stored`` chunks, and whether
    they are all of one cut: ``segments`` (its text cut now), unless the cut changed since
    those chunks were made (a deploy with other cutting settings, another engine for the
    voice, other cutting code).

    Then the stored chunks' own segments come first, and after them the rest of the text
    cut from where the last of them ends, so that no word is said twice and none is lost.
    The rest starts the ramp of segment sizes again: its first audio comes soon, as a
    session's first does."""
    if not stored:
        return segments, True
    offsets = list(
        TTSChunk.objects.filter(session_id=session.id, seq__lt=stored)
        .order_by("seq")
        .values_list("char_start", "char_end")
    )
    if len(offsets) != stored or offsets == [(s.char_start, s.char_end) for s in segments[:stored]]:
        return segments, True  # (chunk rows are never deleted alone)
    last_end = offsets[-1][1]
    # Stand-ins for the stored chunks: only the segments from ``stored`` on are made, so
    # their pause and boundary are never read.
    done = [
        Segment(session.text[start:end], start, end, pause_ms=0, boundary="sentence")
        for start, end in offsets
    ]
    if stored < len(segments) and segments[stored].char_start == last_end:
        return done + segments[stored:], False  # the new cut goes on from there
    logger.warning(
        "session %s: its text is cut otherwise than when its first %d chunks were made; "
        "the rest is cut from character %d",
        session.id,
        stored,
        last_end,
    )
    return done + rest_segments(session=session, voice=voice, start=last_end), False


def rest_segments(*, session: TTSSession, voice: Voice, start: int) -> list[Segment]:
    """The session's text from ``start`` on, cut on its own (the ramp of segment sizes
    begins again), with offsets into the whole text."""
    rest = session_segments(session=session, voice=voice, text=session.text[start:])
    return [
        replace(seg, char_start=seg.char_start + start, char_end=seg.char_end + start)
        for seg in rest
    ]


# segment_text's arguments that come from settings, by the setting's name (tts.E006
# checks them at start).
CUTTING_SETTINGS = {
    "first_max_chars": "TTS_FIRST_SEGMENT_CHARS",
    "growth": "TTS_SEGMENT_GROWTH",
    "sentence_pause_ms": "TTS_SENTENCE_PAUSE_MS",
    "clause_pause_ms": "TTS_CLAUSE_PAUSE_MS",
    "paragraph_pause_ms": "TTS_PARAGRAPH_PAUSE_MS",
}


def cutting_settings() -> dict[str, Any]:
    """segment_text's arguments from the settings (all but the voice's own max_chars)."""
    return {arg: getattr(settings, name) for arg, name in CUTTING_SETTINGS.items()}


def voice_cutting(voice: Voice) -> dict[str, Any]:
    """How a text is cut for this voice (segment_text's settings; part of narration_key):
    the settings, where the voice's own options do not replace them."""
    cut = {"max_chars": get_engine(voice.engine).max_segment_chars, **cutting_settings()}
    for option, (arg, _, _) in CUTTING_OPTIONS.items():
        if option in voice.options:
            cut[arg] = voice.options[option]
    return cut


def audio_key(*, voice: Voice, engine_model: str, text: str, pause_ms: int) -> str:
    return digest(
        {**voice.cache_fields(), "model_id": engine_model, "text": text, "pause": pause_ms}
    )


def segment_key(segment: Segment, *, voice: Voice, engine_model: str) -> str:
    """The audio_key of a segment: what it says, and the pause after it."""
    return audio_key(
        voice=voice, engine_model=engine_model, text=segment.speech_text, pause_ms=segment.pause_ms
    )


def digest(payload: dict[str, Any]) -> str:
    """The content address of a JSON-able description (audio_key, narration_key)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cached_keys(keys: list[str], *, batch: int = 500) -> set[str]:
    """Which of these audio keys are stored already: one query per ``batch`` keys."""
    found: set[str] = set()
    for i in range(0, len(keys), batch):
        part = keys[i : i + batch]
        if len(part) <= _COMPILED_KEYS:  # a session's first query, on its way to first audio
            rows = _stored_keys(len(part)).run(**{f"key{n}": key for n, key in enumerate(part)})
            found.update(key for (key,) in rows)
        else:
            found.update(AudioBlob.objects.filter(key__in=part).values_list("key", flat=True))
    return found


# Lists of up to this many keys are looked up by SQL compiled once per length (P45).
_COMPILED_KEYS = 64


@functools.cache
def _stored_keys(length: int) -> Compiled:
    return Compiled.values_list(
        lambda **keys: AudioBlob.objects.filter(key__in=list(keys.values())).values_list("key"),
        **{f"key{n}": AudioBlob._meta.pk for n in range(length)},
    )


@dataclass(frozen=True)
class SegmentAudio:
    """One segment's PCM (pause included), from the cache or just synthesized."""

    key: str
    pcm: bytes
    sample_rate: int
    cached: bool
    engine_ms: int

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2


def segment_audio(
    *,
    segment: Segment,
    voice: Voice,
    engine_model: str = "",
    key: str | None = None,
    cached: bool | None = None,
) -> SegmentAudio:
    """The segment's audio; synthesizes only on a cache miss. ``key``: its audio_key when
    the caller has it; ``cached``: whether the caller saw that key stored (None: look)."""
    if key is None:
        key = segment_key(segment, voice=voice, engine_model=engine_model)
    if cached is not False:
        for pcm, sample_rate in _STORED_AUDIO.run(key=key):
            return SegmentAudio(key, bytes(pcm), sample_rate, cached=True, engine_ms=0)
    return synthesize_segment(segment, voice, key)


_STORED_AUDIO = Compiled.values_list(  # a cached chunk's audio, maybe a session's first (P45)
    lambda key: AudioBlob.objects.filter(key=key).values_list("pcm", "sample_rate")[:1],
    key=AudioBlob._meta.pk,
)


def synthesize_segment(segment: Segment, voice: Voice, key: str) -> SegmentAudio:
    started = time.perf_counter()
    audio = _synthesize(segment.speech_text, voice)
    engine_ms = round((time.perf_counter() - started) * 1000)
    pcm = audio.pcm + silence(segment.pause_ms, audio.sample_rate)
    return SegmentAudio(key, pcm, audio.sample_rate, cached=False, engine_ms=engine_ms)


class HeadAhead:
    """A long text's first segments, on the engine while the whole text is cut.

    Cutting takes about 6 ms per 1,000 characters (pysbd), all before the first
    synthesis; a 10,000-character scene would wait 60 ms. So the head of the text is cut
    first and its first segments queued on the engine thread. They are used as far as
    the whole text's cut turns out identical (it practically always does: sentence ends
    are found from nearby text); the rest are cancelled, or, when already running,
    finish unused (as before the engine thread: nothing waits for them). The first of
    them is sent as soon as it is made, before the whole text is cut (tts.generation);
    where the whole text's cut begins otherwise, the rest of the text is cut from its end."""

    HEAD_CHARS = 400
    # How long to wait for the engine thread to begin the head: at once, unless it is
    # still finishing a synthesis that an earlier session (cancelled) left on it.
    HAND_OVER_S = 0.005

    def __init__(self, head: list[tuple[Segment, str, Future[SegmentAudio] | None]]) -> None:
        self.head = head  # (segment, its audio key, its synthesis unless stored or repeated)

    @classmethod
    def start(cls, session: TTSSession, voice: Voice, *, urgent: bool = False) -> HeadAhead | None:
        if len(session.text) <= 2 * cls.HEAD_CHARS:
            return None  # cut whole in a few milliseconds: nothing to win
        cut = session_segments(session=session, voice=voice, text=session.text[: cls.HEAD_CHARS])
        usable = cut[:-1][: 1 + SYNTHESIS_AHEAD]  # the last one may run past the head
        if not usable:
            return None
        keys = [segment_key(seg, voice=voice, engine_model=session.model) for seg in usable]
        stored, seen, head = cached_keys(keys), set(), []
        begun, queued = threading.Event(), False
        submit = engine_thread.submit_first if urgent else engine_thread.submit
        for segment, key in zip(usable, keys, strict=True):
            future = None
            if key not in stored and key not in seen:
                if not queued:
                    submit(begun.set)
                    queued = True
                future = submit(synthesize_segment, segment, voice, key)
            seen.add(key)
            head.append((segment, key, future))
        # Cutting the whole text comes next, holding the GIL for milliseconds at a stretch:
        # the engine thread would wait for it (a switch interval, 5 ms, or longer while
        # the cores are busy) before it could begin. Let it in first: it hands the GIL
        # back as soon as the engine runs.
        if queued:
            begun.wait(cls.HAND_OVER_S)
        return cls(head)

    def first_made(self) -> tuple[Segment, SegmentAudio] | None:
        """The head's first segment and its audio, once made (waited for); None where it
        has no synthesis (stored, or repeated) or its synthesis failed (the run meets the
        failure again when it takes the segment, and reports it)."""
        segment, _, future = self.head[0]
        if future is None:
            return None
        try:
            return segment, future.result()
        except Exception:  # noqa: BLE001 - see above
            return None

    def take(self, segments: list[Segment], keys: list[str]) -> dict[int, Future[SegmentAudio]]:
        """The syntheses of the head's segments, by seq, as far as the whole text's cut
        (``segments`` and their ``keys``) agrees with the head's; the rest are cancelled."""
        taken: dict[int, Future[SegmentAudio]] = {}
        for seq, (segment, key, future) in enumerate(self.head):
            if seq >= len(segments) or (segments[seq], keys[seq]) != (segment, key):
                self._cancel(from_seq=seq)
                break
            if future is not None:
                taken[seq] = future
        return taken

    def abandon(self) -> None:
        """Nothing will take the head (cutting the whole text failed): its syntheses not
        begun are cancelled, so that the engine is not held up by them."""
        self._cancel(from_seq=0)

    def _cancel(self, *, from_seq: int) -> None:
        for _, _, future in self.head[from_seq:]:
            if future is not None:
                future.cancel()


class EngineThread:
    """The worker's one engine thread: syntheses in the order submitted, except that those
    submitted with ``submit_first`` (a session's first segments, taken on beside others)
    go before every one queued with ``submit``, in their own order. It touches no
    database. The loop's own thread makes a session's first segment when the worker runs
    nothing else, and one whose stored audio vanished meanwhile."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._first: deque[tuple[Future, Callable[..., Any], tuple]] = deque()
        self._rest: deque[tuple[Future, Callable[..., Any], tuple]] = deque()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._queue(self._rest, fn, args)

    def submit_first(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._queue(self._first, fn, args)

    def _queue(self, queue: deque, fn: Callable[..., T], args: tuple) -> Future[T]:
        future: Future[T] = Future()
        with self._changed:
            queue.append((future, fn, args))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tts-engine", daemon=True)
                self._thread.start()
            self._changed.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._changed:
                while not (self._first or self._rest):
                    self._changed.wait()
                future, fn, args = (self._first or self._rest).popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - the waiting thread raises it
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn, args  # not kept alive while the thread waits


engine_thread = EngineThread()  # the worker's one engine thread, started with its first synthesis


def _synthesize(text: str, voice: Voice) -> Audio:
    engine = get_engine(voice.engine)
    delay_ms = getattr(settings, "TTS_FAULT_DELAY_MS", 0)
    if delay_ms:  # fault-injection tests only: a slow engine, on purpose
        time.sleep(delay_ms / 1000)
    try:
        return engine.synthesize(text, voice)
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - any engine crash becomes a clear session error
        logger.exception("engine %s crashed", voice.engine)
        raise EngineError(f"{type(exc).__name__}: {exc}", code="engine_error") from exc
