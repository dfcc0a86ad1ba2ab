"""A claimed session's generation: cut, synthesize, broadcast and store, chunk by chunk.

tts.services.session_run claims sessions and takes turns between them; each one's
session_steps runs here. The audio comes from tts.synthesis (the cache, or the worker's
engine thread) and goes to tts.storing (a writer thread per session), whose last store
completes the session; its other endings are services (tts.services).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import NamedTuple

from django.db import DatabaseError, connection
from django.utils import timezone

from tts import broadcast, services, storing, synthesis
from tts.conf import settings
from tts.engines import EngineError, Voice
from tts.models import SessionStatus, TTSChunk, TTSSession
from tts.pacing import EngineFit, Pace
from tts.scheduling import Made
from tts.segmentation import Segment, ramp_lengths
from tts.synthesis import SegmentAudio
from tts.voices import get_voice

logger = logging.getLogger(__name__)


def session_steps(
    *, session: TTSSession, worker: str, beside_others: bool = False
) -> Iterator[Made]:
    """Synthesize a claimed session from its first missing chunk to the end, yielding
    after each chunk is handed on (sent, or queued behind the chunk before it), so that
    a worker can make another session's chunk in between (session_run). Closing it early
    stores what was queued and leaves the session running, for the recovery sweep.
    ``beside_others``: the worker runs other sessions, whose syntheses queue on its
    engine thread; this one's first segments go before them.

    Each chunk is broadcast as soon as it is synthesized, then stored on a writer thread
    while the next ones are synthesized, so neither the listeners nor the engine wait for
    the database. Chunk n is broadcast only once chunk n-1 is stored, so a listener that
    sees a seq jump can always fill the gap from storage: when the writer is behind (a
    slow commit), chunk n goes into its queue and the writer announces it after storing
    n-1. A chunk whose store then fails (the session was cancelled or taken over) was only
    ever a notification, and nothing after it is stored.

    It also tells listeners that the claimed session is running. With a voice whose last
    first segment took at most RUNNING_WITH_FIRST_CHUNK_MS, the `running` status rides in
    the first chunk's event (listeners get it right before that chunk): one event less for
    the worker, Redis, the web process and the client on every session's way to first
    audio. With a slower voice (or one not yet seen) it goes out on its own as the first
    synthesis begins: its send then runs beside that synthesis, not beside the cut and
    the cache lookup before it, whose way to the engine it slowed by 3 to 9 ms (the
    sender's thread and this one taking turns on the GIL; docs/benchmarks.md, P57)."""
    running = _RunningStatus(session.id, services.status_frame(session))
    last = _first_segment_ms.get(session.voice)
    announce = last is None or last > RUNNING_WITH_FIRST_CHUNK_MS
    try:
        yield from _generate(session, worker, running, urgent=beside_others, announce=announce)
    finally:
        running.send()  # nothing was sent (an exception): the session is still running


# The longest first segment (ms) after which the `running` status may still wait for the
# first chunk; see session_steps. Per voice, the worker's last one (not from the cache).
RUNNING_WITH_FIRST_CHUNK_MS = 50
_first_segment_ms: dict[str, int] = {}
# Per voice, what its segments cost this worker's engine (tts.pacing): each live chunk's
# hold is estimated from it.
_engine_fits: dict[str, EngineFit] = {}


class _RunningStatus:
    """A session's `running` status frame, sent once: on its own (``send``), or taken to
    ride in the first chunk's event (``take``)."""

    def __init__(self, session_id: uuid.UUID, frame: dict | None) -> None:
        self.session_id, self.frame = session_id, frame

    def take(self) -> dict | None:
        frame, self.frame = self.frame, None
        return frame

    def send(self) -> None:
        if (frame := self.take()) is not None:
            broadcast.broadcast_status(self.session_id, frame)


def _generate(
    session: TTSSession,
    worker: str,
    running: _RunningStatus,
    *,
    urgent: bool = False,
    announce: bool = False,
) -> Iterator[Made]:
    """session_steps' work; ``running``: the status to send with the first chunk, or on
    its own before the session ends (or fails) without one; ``urgent``: its first segments
    go before the syntheses queued on the engine thread (session_steps); ``announce``:
    send ``running`` on its own as the first synthesis begins."""
    voice = get_voice(session.voice)
    if voice is None:
        running.send()
        services.session_fail(
            session_id=session.id,
            code="voice_unavailable",
            message=f"Voice {session.voice!r} is no longer configured.",
        )
        return
    # The claim is the first beat; a long text's run waits for its first segment as it is
    # built (_Run._send_head), so it beats from then on.
    with _heartbeats.beating(session.id, worker):
        run = _Run(session, worker, voice, running, urgent=urgent, announce=announce)
        yield from run.steps()


class _SentHead(NamedTuple):
    """A long text's first chunk, sent before its whole text was cut (_Run._send_head)."""

    segment: Segment
    row: TTSChunk
    audio: SegmentAudio
    made_at: float  # time.monotonic()


class _Run:
    """One run of a claimed session, from its first missing chunk to the end: the text cut,
    the cache looked up, then each chunk made (steps), broadcast and handed to its writer
    thread (store)."""

    def __init__(
        self,
        session: TTSSession,
        worker: str,
        voice: Voice,
        running: _RunningStatus,
        *,
        urgent: bool,
        announce: bool,
    ) -> None:
        self.session, self.worker, self.voice, self.running = session, worker, voice, running
        # A slow voice: its `running` status goes out on its own as its first synthesis
        # begins (session_steps), not with its first chunk.
        self.announce = announce
        first_seq = self.first_seq = session.completed_chunks  # advanced with every store
        # What each chunk's listeners should hold it for, so that the rest keeps up.
        self.fit = _engine_fits.setdefault(session.voice, EngineFit())
        self.head_sent: _SentHead | None = None  # a long text's first chunk (_send_head)
        ahead = synthesis.HeadAhead.start(session, voice, urgent=urgent) if first_seq == 0 else None
        try:
            self._prepare(ahead, urgent=urgent)
        except BaseException:
            if ahead is not None:
                ahead.abandon()  # nothing will wait for the head: the engine is not held up
            if self.head_sent is not None:  # heard, not stored: kept for the next run
                try:
                    storing.blob_create(self.head_sent.audio.key, self.head_sent.audio)
                except Exception:  # noqa: BLE001 - the error on its way out matters more
                    logger.warning("keeping the first chunk's audio failed", exc_info=True)
            raise
        self.stored_ms = session.audio_ms  # the audio stored so far (by an earlier run too)
        self.completed = False

    def _prepare(self, ahead: synthesis.HeadAhead | None, *, urgent: bool) -> None:
        """The text cut (a long text's first chunk sent first), the cache looked up, the
        head's syntheses taken, the pace set up."""
        session, voice, first_seq = self.session, self.voice, self.first_seq
        if ahead is not None:
            self._send_head(ahead)
        segments, one_cut = synthesis.resumed_segments(
            session=session,
            voice=voice,
            segments=synthesis.session_segments(session=session, voice=voice),
            stored=first_seq,
        )
        if self.head_sent is not None and segments[:1] != [self.head_sent.segment]:
            # The whole text's cut begins otherwise than its head's (rare: sentence ends
            # are found from nearby text): the chunk sent stays, and the rest of the
            # text is cut from where it ends, as a resumed session's is.
            first = self.head_sent.segment
            segments = [
                first,
                *synthesis.rest_segments(session=session, voice=voice, start=first.char_end),
            ]
            one_cut = False
        self.segments = segments
        total = self.total = session.total_chunks = len(segments)
        keys = self.keys = [
            synthesis.segment_key(seg, voice=voice, engine_model=session.model) for seg in segments
        ]
        self.cached = synthesis.cached_keys(keys[first_seq:])

        # A segment that comes again in this session (engines need not make the same bytes
        # twice) is made once: ``made`` holds its audio for the synthesis thread, to send
        # the same bytes again, and ``landed`` the blob its first chunk was stored as
        # (storing._blob_store), for the writer thread to refer to.
        self.repeats = {key for key, n in Counter(keys[first_seq:]).items() if n > 1}
        self.made: dict[str, SegmentAudio] = {}
        self.landed: dict[str, str] = {}
        # Past the first chunk, the engine works ahead on the worker's engine thread:
        # while chunk n is broadcast and queued for storage here, segment n+1 is being
        # made, and n+2 is queued behind it once chunk n is sent (SYNTHESIS_AHEAD; the GIL
        # is released while an engine runs), so the engine waits neither for this loop nor
        # for a slow store. The first segment is made here, with no hand-over between
        # threads on the way to first audio (unless a long text's head went ahead, above).
        # Only first occurrences that are not cached are synthesized.
        self.first_of: dict[str, int] = {}
        for i in range(first_seq, total):
            self.first_of.setdefault(keys[i], i)
        self.synthesizing = ahead.take(segments, keys) if ahead is not None else {}
        self.pace = Pace(
            [len(segment.speech_text) for segment in segments],
            [segment.pause_ms for segment in segments],
            [keys[i] in self.cached or self.first_of.get(keys[i]) != i for i in range(total)],
            fit=self.fit,
        )
        if urgent:  # on the engine thread, before the syntheses other sessions queued there
            self._synthesize_ahead(first_seq, first=True)
        # What was used to make it, to replay it by; none for a session made by two cuts.
        self.used = (
            services.narration_key(voice=voice, engine_model=session.model, text=session.text)
            if one_cut
            else ""
        )

    def steps(self) -> Iterator[Made]:
        """Make, send and store each chunk in turn; yield after each (session_steps)."""
        session = self.session
        with (
            storing.OrderedWriter(self._store, skipped=storing.keep_unstored) as writer,
            _keeping_what_is_made(self.synthesizing),
        ):
            if self.announce:  # listeners hear that it is running while it works
                self.running.send()
            for seq in range(self.first_seq, self.total):
                try:
                    audio = self._audio(seq)
                except EngineError as exc:
                    writer.wait()  # keep what was made before the failure
                    self.running.send()
                    services.session_fail(
                        session_id=session.id,
                        code=exc.code,
                        message=f"Chunk {seq} failed: {exc.message}",
                    )
                    return
                if not writer.healthy():  # a store failed: cancelled or taken over (or raised)
                    if not audio.cached:  # keep the audio for next time
                        storing.blob_create(audio.key, audio)
                    return
                row = self._hand_on(writer, seq, audio)
                # Another session's chunk may come next (session_run); this one's next
                # syntheses are queued when it goes on, behind the other's.
                yield Made(row.duration_ms, audio.engine_ms, audio.cached)
                # Queued once this chunk is sent: the first chunk's way to its listeners
                # does not share the cores with the next synthesis (unless a long text's
                # head is on the engine already), and from the second chunk on the engine
                # still has the one queued before to make meanwhile.
                for n in range(seq + 1, seq + 1 + synthesis.SYNTHESIS_AHEAD):  # in order
                    self._synthesize_ahead(n)
            if not writer.wait():
                return
        if not self.completed:  # every chunk was stored by an earlier run
            self.running.send()
            services.session_complete(session_id=session.id, worker=self.worker, key=self.used)

    def _send_head(self, ahead: synthesis.HeadAhead) -> None:
        """A long text's first chunk, sent as soon as its head's first segment is made,
        before the whole text is cut: that cut takes 35 to 100 ms for 20,000 characters
        that go to pysbd (some languages; initials, brackets), and it would hold the GIL
        against a Python engine's synthesis meanwhile (the tiny model's first segment took
        150 ms beside it, not 15). Its frame's count of chunks is null, not yet known; the
        chunks after it carry it. It is stored as the run's first chunk (_hand_on), once
        the text is cut. A slow voice's `running` status goes out first, on its own."""
        if self.announce:
            self.running.send()
        if (made := ahead.first_made()) is None:
            return
        segment, audio = made
        made_at = time.monotonic()
        row = storing.chunk_row(self.session.id, 0, segment, audio)
        meta = services.chunk_meta(row, total_chunks=None)
        meta["cushion_ms"] = row.cushion_ms = self._head_cushion(ahead, row, audio)
        status = self.running.take()
        broadcast.broadcast_chunk(self.session.id, meta, audio.pcm, wait=True, status=status)
        self.head_sent = _SentHead(segment, row, audio, made_at)

    def _head_cushion(self, ahead: synthesis.HeadAhead, row: TTSChunk, audio: SegmentAudio) -> int:
        """Chunk 0's hold before the text's cut is known: the head's segments, then the
        rest of the text taken as segments as long as the voice's ramp allows (its own
        first length and growth), each after a sentence's pause: what the cut makes of
        prose. A gentle ramp makes more, shorter segments, each with the engine's fixed
        cost: taken as the longest, the hold came out short."""
        head = [segment for segment, _, _ in ahead.head]
        chars = [len(segment.speech_text) for segment in head]
        pauses = [segment.pause_ms for segment in head]
        free = [future is None for _, _, future in ahead.head]
        cut = synthesis.voice_cutting(self.voice)
        rest = ramp_lengths(
            len(self.session.text) - head[-1].char_end,
            start=len(head),
            max_chars=cut["max_chars"],
            first_max_chars=cut["first_max_chars"],
            growth=cut["growth"],
        )
        pace = Pace(
            chars + rest,
            pauses + [settings.TTS_SENTENCE_PAUSE_MS] * len(rest),
            free + [False] * len(rest),
            fit=self.fit,
        )
        pace.made(0, duration_ms=row.duration_ms, engine_ms=audio.engine_ms)
        return pace.cushion_ms(0, row.duration_ms)

    def _audio(self, seq: int) -> SegmentAudio:
        """Chunk ``seq``'s audio: made ahead on the engine thread, made before in this
        session (a repeat), from the cache, or made now, on this thread."""
        key = self.keys[seq]
        ready = self.synthesizing[seq].result() if seq in self.synthesizing else None
        self.synthesizing.pop(seq, None)  # made (one interrupted is kept on the way out)
        if key in self.made:  # its first chunk is stored before it: in order
            ready = replace(self.made[key], cached=True, engine_ms=0)
        audio = ready or synthesis.segment_audio(
            segment=self.segments[seq], voice=self.voice, key=key, cached=key in self.cached
        )
        if key in self.repeats:
            self.made.setdefault(key, audio)
        if seq == self.first_seq and not audio.cached:
            _first_segment_ms[self.session.voice] = audio.engine_ms
        return audio

    def _hand_on(
        self, writer: storing.OrderedWriter[storing.Unstored], seq: int, audio: SegmentAudio
    ) -> TTSChunk:
        """Chunk ``seq``'s row and event, with its hold; broadcast now when every chunk
        before it is stored, else by the writer once they are; queued for storage."""
        sent = self.head_sent if seq == 0 else None
        if sent is None:
            row, made_at = storing.chunk_row(self.session.id, seq, self.segments[seq], audio), None
        else:
            row, made_at = sent.row, sent.made_at
        spent = None if audio.cached else audio.engine_ms
        self.pace.made(seq, duration_ms=row.duration_ms, engine_ms=spent, at=made_at)
        if spent is not None:
            self.fit.add(self.pace.chars[seq], spent)
        if sent is not None:  # sent before the text was cut (_send_head): stored only
            writer.submit(storing.Unstored(row, audio, meta=None))
            return row
        meta = services.chunk_meta(row, total_chunks=self.total)
        meta["cushion_ms"] = row.cushion_ms = self.pace.cushion_ms(seq, row.duration_ms)
        if writer.idle():  # every chunk before it is stored: send it now
            # The first chunk is sent before its store is queued, and waited for (briefly):
            # the writer thread would otherwise hold the GIL while the send waits for it
            # (5 ms switch intervals). Later ones only queue: listeners have audio in hand
            # by then, and the engine goes on at once.
            first = seq == self.first_seq
            status = self.running.take()
            broadcast.broadcast_chunk(self.session.id, meta, audio.pcm, wait=first, status=status)
            writer.submit(storing.Unstored(row, audio, meta=None))
        else:  # announced by the writer once the chunk before it is stored
            writer.submit(storing.Unstored(row, audio, meta=meta))
        return row

    def _synthesize_ahead(self, seq: int, *, first: bool = False) -> None:
        """Queue segment ``seq`` on the engine thread, unless it is stored, queued already,
        or a repeat (sent as its first occurrence's audio); ``first``: before the others'."""
        if seq >= self.total or seq in self.synthesizing or self.keys[seq] in self.cached:
            return
        if self.first_of[self.keys[seq]] == seq:
            engine = synthesis.engine_thread
            submit = engine.submit_first if first else engine.submit
            self.synthesizing[seq] = submit(
                synthesis.synthesize_segment, self.segments[seq], self.voice, self.keys[seq]
            )

    def _store(self, batch: list[storing.Unstored]) -> bool:
        """On the writer thread: store the chunks that queued up while the one before them
        was being stored, in one transaction; announce each once the one before it is
        stored. The last ones complete the session in the same transaction."""
        session_id = self.session.id
        if batch[0].meta is not None:  # the chunk before it is stored
            broadcast.broadcast_chunk(session_id, batch[0].meta, batch[0].audio.pcm)
        for chunk in batch:  # a repeat refers to where its first chunk's audio landed
            chunk.row.audio_id = self.landed.get(chunk.row.audio_id, chunk.row.audio_id)
        first, last = batch[0].row.seq == self.first_seq, batch[-1].row.seq == self.total - 1
        stored = storing.chunks_store(
            session=self.session,
            chunks=[(chunk.row, chunk.audio) for chunk in batch],
            worker=self.worker,
            total_chunks=self.total if first else None,
            complete_key=self.used if last else None,
        )
        if not stored:
            logger.info("session %s was cancelled or taken over; stopping", session_id)
            return False
        for chunk in batch:
            if chunk.audio.key in self.repeats and not chunk.audio.cached:
                self.landed[chunk.audio.key] = chunk.row.audio_id
        for chunk in batch[1:]:
            if chunk.meta is not None:
                broadcast.broadcast_chunk(session_id, chunk.meta, chunk.audio.pcm)
        if first:
            # Listeners that joined between this chunk's broadcast and its commit saw it in
            # neither; the next chunk's event would fill the gap, but that is one synthesis
            # away. This is the moment most listeners join (right after the POST).
            broadcast.broadcast_stored(session_id, seq=self.first_seq)
        self.stored_ms += sum(chunk.row.duration_ms for chunk in batch)
        if last:
            self.completed = True
            services.announce_completed(
                session_id, total_chunks=self.total, duration_ms=self.stored_ms
            )
        return True


@contextmanager
def _keeping_what_is_made(synthesizing: dict[int, Future[SegmentAudio]]) -> Iterator[None]:
    """On the way out before the end (a cancel, a failure, an interrupt), syntheses not
    begun are dropped, and what was made ahead, or is being made, is kept for the cache,
    as the audio of a chunk whose store was skipped is: the next run does not make it
    again. A failure here is logged: it must not hide the one on its way out."""
    try:
        yield
    finally:
        for future in synthesizing.values():
            future.cancel()
        for future in synthesizing.values():
            if future.cancelled():
                continue
            try:
                audio = future.result()
                storing.blob_create(audio.key, audio)
            except EngineError:
                pass  # nobody waits for this segment
            except Exception:  # noqa: BLE001
                logger.warning("keeping audio made ahead failed", exc_info=True)


def _close_thread_connection() -> None:
    """Close the connection a helper thread opened (not one it shares, as in tests)."""
    with suppress(DatabaseError):
        connection.close()


class _Heartbeats:
    """One thread per process beats for every session the process runs, between chunks
    too, so that a long segment or a slow model load is not mistaken for a dead worker:
    every ``TTS_HEARTBEAT_TIMEOUT / 3`` seconds, one UPDATE per worker name for all of its
    sessions (the claim is the first beat). A session joins and leaves with a dict
    operation under a lock: no thread is started, woken or joined on its way to first
    audio or after its last chunk. The thread holds a connection only while it beats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beating: dict[uuid.UUID, str] = {}  # session id -> the worker that claimed it
        self._thread: threading.Thread | None = None

    @contextmanager
    def beating(self, session_id: uuid.UUID, worker: str) -> Iterator[None]:
        with self._lock:
            self._beating[session_id] = worker
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tts-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._beating.pop(session_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(max(0.5, settings.TTS_HEARTBEAT_TIMEOUT / 3))
            with self._lock:
                by_worker: dict[str, list[uuid.UUID]] = {}
                for session_id, worker in self._beating.items():
                    by_worker.setdefault(worker, []).append(session_id)
            try:
                for worker, session_ids in by_worker.items():
                    TTSSession.objects.filter(
                        pk__in=session_ids, status=SessionStatus.RUNNING, claimed_by=worker
                    ).update(heartbeat_at=timezone.now())
            except DatabaseError:  # the next beat tries again; the sweep allows for two
                logger.warning("heartbeat failed", exc_info=True)
            finally:
                _close_thread_connection()


_heartbeats = _Heartbeats()
