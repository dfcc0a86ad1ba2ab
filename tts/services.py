"""Narration services: the only code that changes sessions and chunks.

Every status transition happens here, through conditional updates, so that two
workers (or a worker and a cancel) can never both win. Views, consumers, the
worker consumer and commands parse input and call these functions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Generic, TypeVar

from django.contrib.contenttypes.models import ContentType
from django.db import (
    DatabaseError,
    IntegrityError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import F, FloatField, Max, Q, QuerySet, Subquery
from django.db.models.functions import Cast, Coalesce, NullIf
from django.utils import timezone

from tts import broadcast, compiled, limits, scheduling, waiting
from tts.audio import silence
from tts.compiled import Compiled
from tts.conf import settings
from tts.engines import Audio, EngineError, EngineUnavailable, Voice, get_engine
from tts.errors import Conflict, InvalidInput, NotFound
from tts.models import AudioBlob, SessionStatus, TTSChunk, TTSSession
from tts.pacing import EngineFit, Pace, cushion_left
from tts.scheduling import Made, Schedule
from tts.segmentation import VERSION as SEGMENTATION_VERSION
from tts.segmentation import Segment, segment_text
from tts.threads import DaemonThread, LentThreads
from tts.validation import clean_text
from tts.voices import default_voice_id, get_voice, voice_availability

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """Who a session belongs to: a user, or an anonymous browser session (and its IP)."""

    user_id: int | None = None
    session_key: str = ""
    ip: str | None = None
    is_staff: bool = False

    @property
    def is_anonymous(self) -> bool:
        return self.user_id is None


# --- Creation -----------------------------------------------------------------------------


def session_create(
    *,
    text: str,
    owner: Owner,
    voice_id: str | None = None,
    subject: object | None = None,
    dispatch: bool = True,
    session_id: uuid.UUID | None = None,
) -> TTSSession:
    """Validate, create a queued session and dispatch it once the transaction commits.
    ``session_id``: the id the client chose (so that it could open the session's socket
    while this request was in flight); Conflict when it is taken."""
    text = clean_text(text)
    voice = voice_resolve(voice_id=voice_id)
    limits.check_rate_limit(owner)
    session = TTSSession(
        **({"id": session_id} if session_id is not None else {}),
        text=text,
        voice=voice.id,
        engine=voice.engine,
        model=get_engine(voice.engine).model_id(voice),
        language=voice.language,
        owner_id=owner.user_id,
        owner_session_key=owner.session_key if owner.is_anonymous else "",
        owner_ip=owner.ip,
    )
    session.narration_key = narration_key(voice=voice, engine_model=session.model, text=text)
    if subject is not None:
        _link_subject(session, subject)
    chosen = session_id is not None
    replayed = _insert_replay(session, chosen=chosen)
    if not replayed:
        limits.check_active_limit(owner)  # a replay holds no worker: not counted
        if dispatch:
            session.dispatched_at = timezone.now()  # in the INSERT: no second write
        _insert(session, chosen=chosen)
    # Outside a transaction (the API's view) on_commit runs at once: the worker's bell and
    # the replay's event go out before the rate counter's own trip to Redis.
    if replayed:  # wakes a socket opened with the POST (?pending=1) that has joined
        total, duration = session.total_chunks, session.audio_ms
        transaction.on_commit(
            lambda: broadcast.broadcast_done(session.id, total_chunks=total, duration_ms=duration)
        )
    elif dispatch:
        # A dispatch that fails is sent again by the recovery sweep, as any lost message.
        transaction.on_commit(lambda: broadcast.dispatch_generate(session.id))
    # A socket of this process opened with the POST reads it now (it waited to join).
    transaction.on_commit(lambda: waiting.created(session.id))
    limits.record_creation(owner)
    return session


def narration_key(*, voice: Voice, engine_model: str, text: str) -> str:
    """What decides a whole narration's audio: the voice's settings, the model, the text
    and how it is cut. Two sessions with the same key have the same chunks. A session
    gets the key of what its worker used when it completes (a worker that runs other
    settings than the web process, in a rolling deploy, writes its own)."""
    cut = {"version": SEGMENTATION_VERSION, **_cutting(voice)}
    if cut["growth"] == 2:  # the ramp before it was a setting: those keys still replay
        del cut["growth"]
    return _digest({**voice.cache_fields(), "model_id": engine_model, "text": text, "cut": cut})


_REPLAY_FIELDS = ("seq", "text", "char_start", "char_end", "samples", "sample_rate", "audio_id")


def _insert_replay(session: TTSSession, *, chosen: bool) -> bool:
    """Insert the session completed, with the chunks of a completed session that has its
    narration_key: a text narrated before is replayed at once, with no worker and no
    synthesis. False, with nothing inserted, when there is no such session whole.

    Its fallback to narrating covers audio purged in between (the source session deleted
    meanwhile) when this is the outermost transaction, as in the API's view; inside a
    caller's transaction that rare race fails the caller's commit instead."""
    rows = _REPLAY_SOURCE.run(key=session.narration_key)
    if not rows:
        return False  # none (or one without chunks)
    total, audio_ms = rows[0][:2]
    chunks = [row[2:] for row in rows]
    if not total or [chunk[0] for chunk in chunks] != list(range(total)):
        return False  # chunks were deleted by hand: narrate it (from the audio cache)
    now = timezone.now()
    replay = {
        "status": SessionStatus.COMPLETED,
        "total_chunks": total,
        "completed_chunks": total,
        "started_at": now,
        "finished_at": now,
        "first_chunk_ms": 0,
        "audio_ms": audio_ms,
        "real_time_factor": 0.0,
    }
    before = {name: getattr(session, name) for name in replay}
    for name, value in replay.items():
        setattr(session, name, value)
    try:
        with transaction.atomic():
            _insert(session, chosen=chosen)
            TTSChunk.objects.bulk_create(
                TTSChunk(
                    session=session,
                    **dict(zip(_REPLAY_FIELDS, chunk, strict=True)),
                    cached=True,
                    engine_ms=0,
                    created_at=now,
                )
                for chunk in chunks
            )
    except IntegrityError:  # its audio was purged in between (its session deleted)
        for name, value in before.items():
            setattr(session, name, value)
        return False
    return True


def _replay_source(key: str) -> QuerySet:
    # Any completed session with the key will do (replays carry it too): no ORDER BY, so
    # the key's index finds one however many there are. One trip: its chunks, its totals.
    source = TTSSession.objects.filter(narration_key=key, status=SessionStatus.COMPLETED)
    return (
        TTSChunk.objects.filter(session_id=Subquery(source.order_by().values("pk")[:1]))
        .order_by("seq")
        .values_list("session__total_chunks", "session__audio_ms", *_REPLAY_FIELDS)
    )


# On every POST's way to its dispatch (P45).
_REPLAY_SOURCE = Compiled.values_list(
    _replay_source, key=TTSSession._meta.get_field("narration_key")
)


def _insert(session: TTSSession, *, chosen: bool) -> None:
    if chosen:
        _insert_chosen_id(session)
    else:
        session.save(force_insert=True)


def _insert_chosen_id(session: TTSSession) -> None:
    # Inside a caller's transaction, a savepoint: a taken id must not break it. On its own
    # (the API's view) a failed INSERT leaves nothing to undo, and a transaction around it
    # would be two more trips to the database on every POST.
    nested = transaction.get_connection().in_atomic_block
    try:
        with transaction.atomic() if nested else nullcontext():
            session.save(force_insert=True)
    except IntegrityError:
        if not TTSSession.objects.filter(pk=session.pk).exists():
            raise
        raise Conflict(
            "A narration with this id exists already.", code="id_taken", fields={"id": "taken"}
        ) from None


def _link_subject(session: TTSSession, subject: Any) -> None:
    # Not get_for_model: its process-wide cache would outlive a content-types table that
    # was rebuilt (a flushed test database, a restored backup) and store a dead id.
    meta = subject._meta
    session.subject_type = ContentType.objects.get(app_label=meta.app_label, model=meta.model_name)
    session.subject_id = str(subject.pk)


def voice_resolve(*, voice_id: str | None) -> Voice:
    voice_id = voice_id or default_voice_id()
    voice = get_voice(voice_id)
    if voice is None:
        raise InvalidInput(
            f"Unknown voice {voice_id!r}.", code="unknown_voice", fields={"voice": "unknown voice"}
        )
    available, reason = voice_availability(voice)
    if not available:
        raise InvalidInput(
            f"Voice {voice_id!r} is unavailable: {reason}",
            code="voice_unavailable",
            fields={"voice": reason},
        )
    return voice


def session_dispatch(*, session_id: uuid.UUID) -> bool:
    sent = broadcast.dispatch_generate(session_id)
    if sent:
        TTSSession.objects.filter(pk=session_id).update(dispatched_at=timezone.now())
    return sent


# --- Claiming -----------------------------------------------------------------------------


def session_claim(*, session_id: uuid.UUID | str, worker: str) -> TTSSession | None:
    """queued -> running, atomically. None when someone else has it (or it is over).
    session_generate, which follows every claim, tells listeners it is running."""
    claimed = _CLAIM.run(session_id=uuid.UUID(str(session_id)), worker=worker, now=timezone.now())
    return claimed[0] if claimed else None


_CLAIM = Compiled.update_returning(  # on every session's way to first audio (P45)
    lambda session_id, worker, now: (
        TTSSession.objects.filter(pk=session_id, status=SessionStatus.QUEUED),
        {
            "status": SessionStatus.RUNNING,
            "claimed_by": worker,
            "started_at": Coalesce(F("started_at"), now),
            "heartbeat_at": now,
            "attempts": F("attempts") + 1,
        },
    ),
    session_id=TTSSession._meta.pk,
    worker=TTSSession._meta.get_field("claimed_by"),
    now=TTSSession._meta.get_field("heartbeat_at"),
)


def session_claim_next(*, worker: str) -> TTSSession | None:
    """The oldest queued session, claimed; None when the queue is empty."""
    for _ in range(5):
        oldest = _OLDEST_QUEUED.run()
        if not oldest:
            return None
        session = session_claim(session_id=oldest[0][0], worker=worker)
        if session is not None:
            return session
    return None


_OLDEST_QUEUED = Compiled.values_list(  # after every session a worker runs (P45)
    lambda: (
        TTSSession.objects.filter(status=SessionStatus.QUEUED)
        .order_by("created_at")
        .values_list("pk")[:1]
    )
)


# --- Running ------------------------------------------------------------------------------


def session_run(*, session_id: uuid.UUID | str, worker: str) -> None:
    """Run this session if still queued, then drain the queue: the database is the queue,
    the channel message only rings the bell.

    With ``TTS_WORKER_SESSIONS`` above 1, a session that has waited in the queue is taken
    on between two chunks when the engine has time for it beside the others, and the
    sessions take turns chunk by chunk (tts.scheduling): a session queued behind a long
    narration gets its first audio within a chunk or two, not at that narration's end.
    A session that raises (its database went away) is logged and left running, for the
    recovery sweep, as a crashed worker's would be; the others finish, and no further
    session is taken until the next message. So does a look at the queue that raises."""
    try:
        uuid.UUID(str(session_id))
    except ValueError:
        logger.warning("ignoring a generate message with a bad session id %r", session_id)
        return
    session = session_claim(session_id=session_id, worker=worker)
    if session is None:
        session = session_claim_next(worker=worker)
    schedule = Schedule(slots=settings.TTS_WORKER_SESSIONS)
    try:
        while session is not None:
            schedule.add(session.id, session.voice, session_steps(session=session, worker=worker))
            while (run := schedule.next()) is not None:
                try:
                    schedule.made(run, next(run.steps))
                except StopIteration:
                    schedule.finished(run)
                except Exception:  # noqa: BLE001 - one session's crash: the others go on
                    schedule.finished(run)
                    _stop_taking(schedule, "generation of %s crashed", run.session_id)
                if schedule.time_to_look():
                    try:
                        _take_waiting(schedule, worker)
                    except Exception:  # noqa: BLE001 - the sessions under way go on
                        _stop_taking(schedule, "looking for waiting sessions failed")
            session = session_claim_next(worker=worker) if schedule.taking else None
    finally:
        schedule.close()  # an interrupt: the runs left store what they queued


def _stop_taking(schedule: Schedule, message: str, *args: Any) -> None:
    """After a failure (logged here): finish the sessions under way, take no more, and
    drop this thread's connection if the failure broke it (their next query)."""
    logger.exception(message, *args)
    schedule.taking = False
    connection.close_if_unusable_or_obsolete()


def _take_waiting(schedule: Schedule, worker: str) -> None:
    """Claim the sessions that have waited past WAIT_S, oldest first, while this worker
    can run each beside its others in real time; the first that does not fit, and those
    after it, stay for another worker, or for later (one query, and a claim for each)."""
    waited = timezone.now() - timedelta(seconds=scheduling.WAIT_S)
    for session_id, voice in _waiting(schedule.slots).run(waited=waited):
        if not schedule.fits(voice):
            return
        session = session_claim(session_id=session_id, worker=worker)
        if session is not None:  # else another worker was quicker
            steps = session_steps(session=session, worker=worker, beside_others=True)
            schedule.add(session.id, session.voice, steps)


@functools.cache
def _waiting(limit: int) -> Compiled:
    """The oldest sessions queued before ``waited``: a busy worker's look, every
    LOOK_EVERY_S (0.07 ms compiled on SQLite, 0.5 through the ORM: a share of a long espeak
    session's time)."""
    return Compiled.values_list(
        lambda waited: (
            TTSSession.objects.filter(status=SessionStatus.QUEUED, created_at__lte=waited)
            .order_by("created_at")
            .values_list("pk", "voice")[:limit]
        ),
        waited=TTSSession._meta.get_field("created_at"),
    )


def session_generate(*, session: TTSSession, worker: str) -> None:
    """Synthesize a claimed session from its first missing chunk to the end (its
    session_steps, all at once)."""
    for _ in session_steps(session=session, worker=worker):
        pass


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
    running = _RunningStatus(session.id, status_frame(session))
    last = _first_segment_ms.get(session.voice)
    announce = last is None or last > RUNNING_WITH_FIRST_CHUNK_MS
    try:
        yield from _generate(session, worker, running, urgent=beside_others, announce=announce)
    finally:
        running.send()  # nothing was sent (an exception): the session is still running


# The longest first segment (ms) after which the `running` status may still wait for the
# first chunk; see session_generate. Per voice, the worker's last one (not from the cache).
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
        session_fail(
            session_id=session.id,
            code="voice_unavailable",
            message=f"Voice {session.voice!r} is no longer configured.",
        )
        return
    first_seq = session.completed_chunks  # advanced with every stored chunk, atomically
    ahead = _HeadAhead.start(session, voice, urgent=urgent) if first_seq == 0 else None
    try:
        segments = session_segments(session=session, voice=voice)
        total = session.total_chunks = len(segments)
        keys = [segment_key(seg, voice=voice, engine_model=session.model) for seg in segments]
        cached = cached_keys(keys[first_seq:])
    except BaseException:
        if ahead is not None:
            ahead.abandon()  # nothing will wait for the head: the engine is not held up
        raise

    # A segment that comes again in this session (engines need not make the same bytes
    # twice) is made once: ``made`` holds its audio for the synthesis thread, to send the
    # same bytes again, and ``landed`` the blob its first chunk was stored as
    # (_blob_store), for the writer thread to refer to.
    repeats = {key for key, n in Counter(keys[first_seq:]).items() if n > 1}
    made: dict[str, SegmentAudio] = {}
    landed: dict[str, str] = {}
    # Past the first chunk, the engine works ahead on the worker's engine thread: while
    # chunk n is broadcast and queued for storage here, segment n+1 is being made, and
    # n+2 is queued behind it once chunk n is sent (SYNTHESIS_AHEAD; the GIL is released
    # while an engine runs), so the engine waits neither for this loop nor for a slow
    # store. The first segment is made here, with no hand-over between threads on the
    # way to first audio (unless a long text's head went ahead, below). Only first
    # occurrences that are not cached are synthesized.
    first_of: dict[str, int] = {}
    for i in range(first_seq, total):
        first_of.setdefault(keys[i], i)
    synthesizing = ahead.take(segments, keys) if ahead is not None else {}
    # What each chunk's listeners should hold it for, so that the rest keeps up (pacing).
    fit = _engine_fits.setdefault(session.voice, EngineFit())
    pace = Pace(
        [len(segment.speech_text) for segment in segments],
        [segment.pause_ms for segment in segments],
        [keys[i] in cached or first_of.get(keys[i]) != i for i in range(total)],
        fit=fit,
    )

    def synthesize_ahead(seq: int, *, first: bool = False) -> None:
        if seq >= total or seq in synthesizing or keys[seq] in cached:
            return
        if first_of[keys[seq]] == seq:  # a repeat is sent as its first occurrence's audio
            submit = _engine.submit_first if first else _engine.submit
            synthesizing[seq] = submit(_synthesize_segment, segments[seq], voice, keys[seq])

    if urgent:  # on the engine thread, before the syntheses the other sessions queued there
        synthesize_ahead(first_seq, first=True)

    used = narration_key(voice=voice, engine_model=session.model, text=session.text)
    stored_ms = session.audio_ms  # the audio stored so far (by an earlier run too)
    completed = False

    def store(batch: list[_Unstored]) -> bool:
        """Store the chunks that queued up while the one before them was being stored, in
        one transaction; announce each once the one before it is stored. The last ones
        complete the session in the same transaction."""
        nonlocal stored_ms, completed
        if batch[0].meta is not None:  # the chunk before it is stored
            broadcast.broadcast_chunk(session.id, batch[0].meta, batch[0].audio.pcm)
        for chunk in batch:  # a repeat refers to where its first chunk's audio landed
            chunk.row.audio_id = landed.get(chunk.row.audio_id, chunk.row.audio_id)
        last = batch[-1].row.seq == total - 1
        stored = chunks_store(
            session=session,
            chunks=[(chunk.row, chunk.audio) for chunk in batch],
            worker=worker,
            total_chunks=total if batch[0].row.seq == first_seq else None,
            complete_key=used if last else None,
        )
        if not stored:
            logger.info("session %s was cancelled or taken over; stopping", session.id)
            return False
        for chunk in batch:
            if chunk.audio.key in repeats and not chunk.audio.cached:
                landed[chunk.audio.key] = chunk.row.audio_id
        for chunk in batch[1:]:
            if chunk.meta is not None:
                broadcast.broadcast_chunk(session.id, chunk.meta, chunk.audio.pcm)
        if batch[0].row.seq == first_seq:
            # Listeners that joined between this chunk's broadcast and its commit saw it in
            # neither; the next chunk's event would fill the gap, but that is one synthesis
            # away. This is the moment most listeners join (right after the POST).
            broadcast.broadcast_stored(session.id, seq=first_seq)
        stored_ms += sum(chunk.row.duration_ms for chunk in batch)
        if last:
            completed = True
            _announce_completed(session.id, total_chunks=total, duration_ms=stored_ms)
        return True

    with (
        _heartbeats.beating(session.id, worker),
        _OrderedWriter(store, skipped=_keep_unstored) as writer,
        _keeping_what_is_made(synthesizing),
    ):
        if announce:  # a slow voice: listeners hear that it is running while it works
            running.send()
        for seq in range(first_seq, total):
            try:
                ready = synthesizing[seq].result() if seq in synthesizing else None
                synthesizing.pop(seq, None)  # made (one interrupted is kept on the way out)
                if keys[seq] in made:  # its first chunk is stored before it: in order
                    ready = replace(made[keys[seq]], cached=True, engine_ms=0)
                audio = ready or segment_audio(
                    segment=segments[seq],
                    voice=voice,
                    key=keys[seq],
                    cached=keys[seq] in cached,
                )
                if keys[seq] in repeats:
                    made.setdefault(keys[seq], audio)
                if seq == first_seq and not audio.cached:
                    _first_segment_ms[session.voice] = audio.engine_ms
            except EngineError as exc:
                writer.wait()  # keep what was made before the failure
                running.send()
                session_fail(
                    session_id=session.id,
                    code=exc.code,
                    message=f"Chunk {seq} failed: {exc.message}",
                )
                return
            if not writer.healthy():  # a store failed: cancelled or taken over (or raised)
                if not audio.cached:  # keep the audio for next time
                    _blob_create(audio.key, audio)
                return
            row = chunk_row(session.id, seq, segments[seq], audio)  # made now
            meta = chunk_meta(row, total_chunks=total)
            spent = None if audio.cached else audio.engine_ms
            pace.made(seq, duration_ms=row.duration_ms, engine_ms=spent)
            if spent is not None:
                fit.add(pace.chars[seq], spent)
            meta["cushion_ms"] = row.cushion_ms = pace.cushion_ms(seq, row.duration_ms)
            if writer.idle():  # every chunk before it is stored: send it now
                # The first chunk is sent before its store is queued, and waited for
                # (briefly): the writer thread would otherwise hold the GIL while the send
                # waits for it (5 ms switch intervals). Later ones only queue: listeners
                # have audio in hand by then, and the engine goes on at once.
                broadcast.broadcast_chunk(
                    session.id, meta, audio.pcm, wait=seq == first_seq, status=running.take()
                )
                writer.submit(_Unstored(row, audio, meta=None))
            else:  # announced by the writer once the chunk before it is stored
                writer.submit(_Unstored(row, audio, meta=meta))
            # Another session's chunk may come next (session_run); this one's next
            # syntheses are queued when it goes on, behind the other's.
            yield Made(row.duration_ms, audio.engine_ms, audio.cached)
            # Queued once this chunk is sent: the first chunk's way to its listeners does
            # not share the cores with the next synthesis (unless a long text's head is
            # on the engine already), and from the second chunk on the engine still has
            # the one queued before to make meanwhile.
            for n in range(seq + 1, seq + 1 + SYNTHESIS_AHEAD):  # in order, back to back
                synthesize_ahead(n)
        if not writer.wait():
            return
    if not completed:  # every chunk was stored by an earlier run
        running.send()
        session_complete(session_id=session.id, worker=worker, key=used)


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
                _blob_create(audio.key, audio)
            except EngineError:
                pass  # nobody waits for this segment
            except Exception:  # noqa: BLE001
                logger.warning("keeping audio made ahead failed", exc_info=True)


# Segments queued on the engine thread once a chunk is sent: the one the loop waits for
# next, and those after it. They cost nothing on a cancel or a failure: only the one the
# engine is running is finished (and kept for the cache).
SYNTHESIS_AHEAD = 2


def _close_thread_connection() -> None:
    """Close the connection a helper thread opened (not one it shares, as in tests)."""
    with suppress(DatabaseError):
        connection.close()


def _release_thread_connections() -> None:
    """On a store thread, before and after a session's stores: keep its connections
    where this process keeps connections (``CONN_MAX_AGE``: a worker's, see runworker),
    as Django does between two requests; close (or give back to the pool) those that
    are obsolete, broken, or not to be kept (``CONN_MAX_AGE`` 0: tests, the narrate
    command), as before."""
    try:
        close_old_connections()
    except Exception:  # noqa: BLE001 - the next query opens a fresh one, or fails there
        logger.warning("closing a store thread's connection failed", exc_info=True)


# The threads sessions' writers (_OrderedWriter) run on, lent to one session at a time
# and kept for the next, with their database connection. A session used to start a
# thread for its stores and open a connection on it (on SQLite also registering Django's
# SQL functions: 0.7 ms idle, two to three times that on two busy cores), right when its
# first chunk was on its way to the listeners, and close both at its end. As many are
# made as sessions ever ran at once in this process (TTS_WORKER_SESSIONS for a worker);
# daemon threads, as the writers' own threads were.
_store_threads: LentThreads[DaemonThread] = LentThreads(lambda: DaemonThread("tts-store"))


T = TypeVar("T")


@dataclass(frozen=True)
class _Unstored:
    """A chunk on its way to storage; ``meta``: its event, when not yet sent."""

    row: TTSChunk
    audio: SegmentAudio
    meta: dict | None


def _keep_unstored(chunk: _Unstored) -> None:
    """A chunk that will not be stored: its audio is still kept for the cache."""
    if not chunk.audio.cached:
        _blob_create(chunk.audio.key, chunk.audio)


class _OrderedWriter(Generic[T]):
    """One background thread that hands the items submitted to ``store`` in order, all
    those that queued up while it was busy at once (a batch: several chunks in one
    transaction, when the database is slower than the engine). Once a batch fails
    (``store`` returns False or raises), ``skipped`` is called for each item after it
    instead, and for those of a batch that raised (its transaction was rolled back):
    nothing is stored after a chunk that was not. At most MAX_QUEUED items are on their
    way; submit blocks beyond that."""

    # Enough for the engine never to wait for a SQLite checkpoint (10-20 ms on the writer's
    # thread, about once per 4 MB written) at espeak's pace of a chunk every few
    # milliseconds; 4 held it up about once a session (P59). A chunk holds its PCM here
    # until stored: at most 16 chunks' worth per session (about 3 MB at espeak's).
    MAX_QUEUED = 16

    def __init__(
        self,
        store: Callable[[list[T]], bool],
        *,
        skipped: Callable[[T], None] | None = None,
    ) -> None:
        self._store, self._skipped = store, skipped
        self._changed = threading.Condition()
        self._queued: deque[T] = deque()
        self._running = 0  # items in the batch being stored
        self._failed = False
        self._error: BaseException | None = None  # raised once, on the caller's thread
        self._closing = False
        self._thread: DaemonThread | None = None  # lent with the first item
        self._ran: Future[None] | None = None

    def _run(self) -> None:
        # A kept connection past its age, or broken by an error, is closed first; one the
        # server dropped meanwhile fails Django's health check at its first query.
        _release_thread_connections()
        try:
            while batch := self._next_batch():
                error = None
                try:
                    done = not self._failed and self._store(batch)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    done, error = False, exc
                if not done:
                    self._skip(batch if error is not None or self._failed else [])
                with self._changed:
                    self._failed = self._failed or not done
                    self._error = self._error or error
                    self._running = 0
                    self._changed.notify_all()
        finally:
            _release_thread_connections()

    def _next_batch(self) -> list[T]:
        with self._changed:
            while not self._queued and not self._closing:
                self._changed.wait()
            batch = list(self._queued)
            self._queued.clear()
            self._running = len(batch)
            return batch

    def _skip(self, items: list[T]) -> None:
        if self._skipped is None:
            return
        for item in items:
            try:
                self._skipped(item)
            except Exception:  # noqa: BLE001 - the failure before it is what matters
                logger.warning("a skipped item's clean-up failed", exc_info=True)

    def submit(self, item: T) -> None:
        if self._thread is None:
            thread = _store_threads.take()  # never None: no limit
            assert thread is not None
            ran = thread.submit(self._run)  # back to the pool once _run has returned:
            ran.add_done_callback(lambda _: _store_threads.give_back(thread))
            self._thread, self._ran = thread, ran
        with self._changed:
            self._queued.append(item)
            self._changed.notify_all()
            while len(self._queued) + self._running > self.MAX_QUEUED and not self._failed:
                self._changed.wait()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def healthy(self) -> bool:
        """False once a batch has failed; a failed batch's exception is raised (after the
        items queued behind it were skipped)."""
        if self._failed:
            self.wait()
            return False
        return True

    def idle(self) -> bool:
        """Every item so far is stored."""
        with self._changed:
            return not self._queued and not self._running and not self._failed

    def wait(self) -> bool:
        """Wait for every item submitted: True when all of them were stored (else False,
        or the failed batch's exception)."""
        with self._changed:
            while self._queued or self._running:
                self._changed.wait()
            self._raise_error()
            return not self._failed

    def __enter__(self) -> _OrderedWriter[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Queued items are stored first, even after an interrupt; then the thread goes
        # back for the next session, its connection kept or closed as this process keeps
        # connections (_release_thread_connections).
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        # Waits for _run; the store's own errors are caught there, for the caller.
        if self._ran is not None and (error := self._ran.exception()) is not None:
            logger.error("a store thread failed", exc_info=error)


def session_segments(
    *, session: TTSSession, voice: Voice, text: str | None = None
) -> list[Segment]:
    """Deterministic for a session's text and settings, so a resumed run cuts alike.
    ``text``: a prefix of the session's text to cut instead (see _HeadAhead)."""
    text = session.text if text is None else text
    return segment_text(text, language=voice.language, **_cutting(voice))


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


def _cutting(voice: Voice) -> dict[str, Any]:
    """How a text is cut for this voice (segment_text's settings; part of narration_key)."""
    return {"max_chars": get_engine(voice.engine).max_segment_chars, **cutting_settings()}


def stored_chunk_count(*, session_id: uuid.UUID) -> int:
    last = TTSChunk.objects.filter(session_id=session_id).aggregate(m=Max("seq"))["m"]
    return 0 if last is None else last + 1


def audio_key(*, voice: Voice, engine_model: str, text: str, pause_ms: int) -> str:
    return _digest(
        {**voice.cache_fields(), "model_id": engine_model, "text": text, "pause": pause_ms}
    )


def segment_key(segment: Segment, *, voice: Voice, engine_model: str) -> str:
    """The audio_key of a segment: what it says, and the pause after it."""
    return audio_key(
        voice=voice, engine_model=engine_model, text=segment.speech_text, pause_ms=segment.pause_ms
    )


def _digest(payload: dict[str, Any]) -> str:
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
    return _synthesize_segment(segment, voice, key)


_STORED_AUDIO = Compiled.values_list(  # a cached chunk's audio, maybe a session's first (P45)
    lambda key: AudioBlob.objects.filter(key=key).values_list("pcm", "sample_rate")[:1],
    key=AudioBlob._meta.pk,
)


def _synthesize_segment(segment: Segment, voice: Voice, key: str) -> SegmentAudio:
    started = time.perf_counter()
    audio = _synthesize(segment.speech_text, voice)
    engine_ms = round((time.perf_counter() - started) * 1000)
    pcm = audio.pcm + silence(segment.pause_ms, audio.sample_rate)
    return SegmentAudio(key, pcm, audio.sample_rate, cached=False, engine_ms=engine_ms)


class _HeadAhead:
    """A long text's first segments, on the engine while the whole text is cut.

    Cutting takes about 6 ms per 1,000 characters (pysbd), all before the first
    synthesis; a 10,000-character scene would wait 60 ms. So the head of the text is cut
    first and its first segments queued on the engine thread. They are used as far as
    the whole text's cut turns out identical (it practically always does: sentence ends
    are found from nearby text); the rest are cancelled, or, when already running,
    finish unused (as before the engine thread: nothing waits for them)."""

    HEAD_CHARS = 400
    # How long to wait for the engine thread to begin the head: at once, unless it is
    # still finishing a synthesis that an earlier session (cancelled) left on it.
    HAND_OVER_S = 0.005

    def __init__(self, head: list[tuple[Segment, str, Future[SegmentAudio] | None]]) -> None:
        self.head = head  # (segment, its audio key, its synthesis unless stored or repeated)

    @classmethod
    def start(cls, session: TTSSession, voice: Voice, *, urgent: bool = False) -> _HeadAhead | None:
        if len(session.text) <= 2 * cls.HEAD_CHARS:
            return None  # cut whole in a few milliseconds: nothing to win
        cut = session_segments(session=session, voice=voice, text=session.text[: cls.HEAD_CHARS])
        usable = cut[:-1][: 1 + SYNTHESIS_AHEAD]  # the last one may run past the head
        if not usable:
            return None
        keys = [segment_key(seg, voice=voice, engine_model=session.model) for seg in usable]
        stored, seen, head = cached_keys(keys), set(), []
        begun, queued = threading.Event(), False
        submit = _engine.submit_first if urgent else _engine.submit
        for segment, key in zip(usable, keys, strict=True):
            future = None
            if key not in stored and key not in seen:
                if not queued:
                    submit(begun.set)
                    queued = True
                future = submit(_synthesize_segment, segment, voice, key)
            seen.add(key)
            head.append((segment, key, future))
        # Cutting the whole text comes next, holding the GIL for milliseconds at a stretch:
        # the engine thread would wait for it (a switch interval, 5 ms, or longer while
        # the cores are busy) before it could begin. Let it in first: it hands the GIL
        # back as soon as the engine runs.
        if queued:
            begun.wait(cls.HAND_OVER_S)
        return cls(head)

    def take(self, segments: list[Segment], keys: list[str]) -> dict[int, Future[SegmentAudio]]:
        """The syntheses of the head's segments, by seq, as far as the whole text's cut
        (``segments`` and their ``keys``) agrees with the head's; the rest are cancelled."""
        taken: dict[int, Future[SegmentAudio]] = {}
        for seq, (segment, key, future) in enumerate(self.head):
            if seq >= len(segments) or (segments[seq], keys[seq]) != (segment, key):
                for _, _, later in self.head[seq:]:
                    if later is not None:
                        later.cancel()
                break
            if future is not None:
                taken[seq] = future
        return taken


class _EngineThread:
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


_engine = _EngineThread()  # the worker's one engine thread, started with its first synthesis


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


def chunk_store(
    *,
    session: TTSSession,
    chunk: TTSChunk,
    audio: SegmentAudio,
    worker: str,
    total_chunks: int | None = None,
) -> bool:
    """Store one chunk: chunks_store with one."""
    return chunks_store(
        session=session, chunks=[(chunk, audio)], worker=worker, total_chunks=total_chunks
    )


def chunks_store(
    *,
    session: TTSSession,
    chunks: list[tuple[TTSChunk, SegmentAudio]],
    worker: str,
    total_chunks: int | None = None,
    complete_key: str | None = None,
) -> bool:
    """Store chunks that follow each other (their rows from chunk_row, and their audio when
    new) and advance the session, in one transaction, only while this worker still holds
    the session. False when it does not (cancelled, taken over) or a chunk exists
    already: a seq is never stored twice. ``complete_key``: the last chunks, so the
    session is completed in the same transaction (session_complete's work, without its
    own trip to the database), keyed by it."""
    first, last = chunks[0][0], chunks[-1][0]
    values: dict[str, Any] = {
        "session_id": session.id,
        "worker": worker,
        "completed": last.seq + 1,
        "now": timezone.now(),
        "engine_ms": sum(audio.engine_ms for _, audio in chunks),
        "audio_ms": sum(chunk.duration_ms for chunk, _ in chunks),
    }
    if total_chunks is not None:
        values["total"] = total_chunks
    if complete_key is not None:
        values["key"] = complete_key
    if first.seq == 0:
        values["first_ms"] = max(
            0, round((first.created_at - session.created_at).total_seconds() * 1000)
        )
    advance = _advance(frozenset(values.keys() & _SET_AS_GIVEN.keys()))
    try:
        with transaction.atomic():
            landed: dict[str, str] = {}  # a key whose audio went under a key of its own
            for chunk, audio in chunks:  # kept even when the chunks are not: nothing made twice
                if not audio.cached:
                    chunk.audio_id = landed[audio.key] = _blob_store(audio)
                else:  # the same audio as a chunk before it in this batch, maybe
                    chunk.audio_id = landed.get(chunk.audio_id, chunk.audio_id)
            if not advance.run(**values):  # no longer this worker's to store
                return False
            compiled.insert([chunk for chunk, _ in chunks])
    except IntegrityError:  # a chunk exists already
        return False
    return True


# chunks_store's values that only some stores set, and the session's column each goes into.
_SET_AS_GIVEN = {"total": "total_chunks", "key": "narration_key", "first_ms": "first_chunk_ms"}


@functools.cache
def _advance(given: frozenset[str]) -> Compiled:
    """chunks_store's update of its session, while this worker holds it: one statement,
    compiled once (P58), for each kind of store, by which of _SET_AS_GIVEN it sets: the
    first chunks (the session's count of chunks, and the time to the first), the last (the
    session completed, under its narration key), any other."""
    field = TTSSession._meta.get_field
    fields = {
        "session_id": TTSSession._meta.pk,
        "worker": field("claimed_by"),
        "completed": field("completed_chunks"),
        "now": field("heartbeat_at"),
        "engine_ms": field("engine_ms"),
        "audio_ms": field("audio_ms"),
        **{name: field(_SET_AS_GIVEN[name]) for name in given},
    }

    def build(*, session_id, worker, completed, now, engine_ms, audio_ms, **more):
        updates: dict[str, Any] = {
            "completed_chunks": completed,
            "heartbeat_at": now,
            "engine_ms": F("engine_ms") + engine_ms,
            "audio_ms": F("audio_ms") + audio_ms,
            **{_SET_AS_GIVEN[name]: value for name, value in more.items()},
        }
        if "key" in more:  # completed; every expression reads the row as it was
            updates |= {
                "status": SessionStatus.COMPLETED,
                "finished_at": now,
                "real_time_factor": Cast(F("engine_ms") + engine_ms, FloatField())
                / NullIf(F("audio_ms") + audio_ms, 0),
            }
        held = TTSSession.objects.filter(
            pk=session_id, status=SessionStatus.RUNNING, claimed_by=worker
        )
        return held, updates

    return Compiled.update(build, **fields)


def _blob_store(audio: SegmentAudio) -> str:
    """Store the audio under its key; return the key it now lies under.

    Another worker may have stored the same key meanwhile (the same segment, narrated at
    the same moment). Engines need not make the same bytes twice (a VITS samples noise;
    libespeak-ng carries a little state from one utterance to the next), and listeners
    already have these bytes: so unless the stored ones are the same, these go under a
    key of their own (the key and their digest), which their chunk refers to. The key's
    blob stays what the cache serves."""
    if _blob_create(audio.key, audio):
        return audio.key
    stored = AudioBlob.objects.filter(key=audio.key).values_list("pcm", flat=True).first()
    if stored is not None and bytes(stored) == audio.pcm:
        return audio.key
    own = hashlib.sha256(f"{audio.key}:{hashlib.sha256(audio.pcm).hexdigest()}".encode())
    _blob_create(own.hexdigest(), audio)
    return own.hexdigest()


def _blob_create(key: str, audio: SegmentAudio) -> bool:
    """False when the key is stored already (another worker may store the same key)."""
    return AudioBlob.objects.add(
        key=key, pcm=audio.pcm, sample_rate=audio.sample_rate, samples=audio.samples
    )


def chunk_row(session_id: uuid.UUID, seq: int, segment: Segment, audio: SegmentAudio) -> TTSChunk:
    """The chunk's row, not yet saved; its created_at is now, when it was made."""
    return TTSChunk(
        session_id=session_id,
        seq=seq,
        text=segment.text,
        char_start=segment.char_start,
        char_end=segment.char_end,
        samples=audio.samples,
        sample_rate=audio.sample_rate,
        audio_id=audio.key,
        cached=audio.cached,
        engine_ms=audio.engine_ms,
    )


def chunk_meta(
    chunk: TTSChunk, *, total_chunks: int | None = None, session_running: bool = False
) -> dict:
    """The `chunk` frame's fields (plus sample_rate, so a client can decode it).
    ``total_chunks``: the session's count when the caller has it (no read of the session).
    ``session_running``: the chunk is read back while its session is still being narrated;
    it then carries what is left of the hold it went out live with (tts.pacing.cushion_left;
    the worker's clock against this one's: hosts keep their clocks in step, docs/deployment.md)."""
    if total_chunks is None and chunk.session_id:
        total_chunks = chunk.session.total_chunks
    meta = {
        "seq": chunk.seq,
        "text": chunk.text,
        "char_start": chunk.char_start,
        "char_end": chunk.char_end,
        "samples": chunk.samples,
        "sample_rate": chunk.sample_rate,
        "duration_ms": chunk.duration_ms,
        "total_chunks": total_chunks,
    }
    if session_running and chunk.cushion_ms is not None:
        age = (timezone.now() - chunk.created_at).total_seconds() * 1000
        meta["cushion_ms"] = cushion_left(chunk.cushion_ms, age)
    return meta


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


# --- Endings ------------------------------------------------------------------------------


def session_complete(*, session_id: uuid.UUID, worker: str, key: str) -> bool:
    """running -> completed; ``key``: the narration_key of what was used to make it."""
    session = TTSSession.objects.get(pk=session_id)
    rtf = session.engine_ms / session.audio_ms if session.audio_ms else None
    done = TTSSession.objects.filter(
        pk=session_id, status=SessionStatus.RUNNING, claimed_by=worker
    ).update(
        status=SessionStatus.COMPLETED,
        finished_at=timezone.now(),
        real_time_factor=rtf,
        narration_key=key,
    )
    if done:
        _announce_completed(
            session.id, total_chunks=session.total_chunks or 0, duration_ms=session.audio_ms
        )
    return bool(done)


def _announce_completed(session_id: uuid.UUID, *, total_chunks: int, duration_ms: int) -> None:
    frame = status_frame(
        TTSSession(
            status=SessionStatus.COMPLETED,
            completed_chunks=total_chunks,
            total_chunks=total_chunks,
        )
    )
    broadcast.broadcast_status(session_id, frame)
    broadcast.broadcast_done(session_id, total_chunks=total_chunks, duration_ms=duration_ms)


def session_fail(*, session_id: uuid.UUID, code: str, message: str) -> bool:
    failed = TTSSession.objects.filter(
        pk=session_id, status__in=(SessionStatus.QUEUED, SessionStatus.RUNNING)
    ).update(
        status=SessionStatus.FAILED,
        error_code=code,
        error_message=message[:2000],
        finished_at=timezone.now(),
    )
    if failed:
        logger.warning("session %s failed: %s %s", session_id, code, message)
        _announce_end(session_id, code=code, message=message)
    return bool(failed)


def session_cancel(*, session_id: uuid.UUID) -> bool:
    """Stop a queued or running session; the worker notices before its next chunk."""
    cancelled = TTSSession.objects.filter(
        pk=session_id, status__in=(SessionStatus.QUEUED, SessionStatus.RUNNING)
    ).update(
        status=SessionStatus.CANCELLED,
        error_code="cancelled",
        error_message="Narration was cancelled.",
        finished_at=timezone.now(),
    )
    if cancelled:
        _announce_end(session_id, code="cancelled", message="Narration was cancelled.")
    return bool(cancelled)


def session_retry(*, session_id: uuid.UUID, dispatch: bool = True) -> bool:
    """failed or cancelled -> queued, continuing after the last stored chunk."""
    retried = TTSSession.objects.filter(
        pk=session_id, status__in=(SessionStatus.FAILED, SessionStatus.CANCELLED)
    ).update(
        status=SessionStatus.QUEUED,
        error_code="",
        error_message="",
        finished_at=None,
        claimed_by="",
        attempts=0,
        dispatched_at=None,
    )
    if retried:
        _announce_requeued(session_id, dispatch=dispatch)
    return bool(retried)


def session_requeue_lost(*, session_id: uuid.UUID, worker: str, dispatch: bool = True) -> bool:
    """running -> queued when ``worker`` (its holder) is known dead; it resumes after its
    last stored chunk. Conditional on the holder, so it cannot race a live worker."""
    requeued = TTSSession.objects.filter(
        pk=session_id, status=SessionStatus.RUNNING, claimed_by=worker
    ).update(status=SessionStatus.QUEUED, claimed_by="", dispatched_at=None)
    if requeued:
        logger.warning("session %s lost its worker %s; requeued", session_id, worker)
        _announce_requeued(session_id, dispatch=dispatch)
    return bool(requeued)


def _announce_requeued(session_id: uuid.UUID, *, dispatch: bool) -> None:
    session = TTSSession.objects.get(pk=session_id)
    broadcast.broadcast_status(session.id, status_frame(session))
    if dispatch:
        transaction.on_commit(lambda: session_dispatch(session_id=session_id))


def _announce_end(session_id: uuid.UUID, *, code: str, message: str) -> None:
    session = TTSSession.objects.get(pk=session_id)
    broadcast.broadcast_status(session.id, status_frame(session))
    broadcast.broadcast_error(session.id, code=code, message=message)


# --- Reading ------------------------------------------------------------------------------


def session_get(*, session_id: str | uuid.UUID) -> TTSSession:
    try:
        session_id = uuid.UUID(str(session_id))
    except ValueError:
        raise NotFound("No such session.", code="no_such_session") from None
    found = _SESSION.run(session_id=session_id)
    if not found:
        raise NotFound("No such session.", code="no_such_session")
    return found[0]


_SESSION = Compiled.instances(  # every socket's opening (P45)
    lambda session_id: TTSSession.objects.filter(pk=session_id).order_by(),
    session_id=TTSSession._meta.pk,
)


def queue_position(session: TTSSession) -> int | None:
    """1 for the next session a worker will take; None unless queued."""
    if session.status != SessionStatus.QUEUED:
        return None
    ahead = TTSSession.objects.filter(
        status=SessionStatus.QUEUED, created_at__lt=session.created_at
    ).count()
    return ahead + 1


def status_frame(session: TTSSession) -> dict:
    frame = {
        "type": "status",
        "status": session.status,
        "completed_chunks": session.completed_chunks,
        "total_chunks": session.total_chunks,
    }
    position = queue_position(session)
    if position is not None:
        frame["queue_position"] = position
    return frame


def session_frame(session: TTSSession, *, sample_rate: int | None = None) -> dict:
    """``sample_rate``: pass it when the caller holds a chunk already (no extra query)."""
    if sample_rate is None:
        rates = _SAMPLE_RATE.run(session_id=session.id)
        sample_rate = rates[0][0] if rates else None
    return {
        "type": "session",
        "session_id": str(session.id),
        "status": session.status,
        "voice": session.voice,
        "sample_rate": sample_rate,
        "channels": 1,
        "format": "pcm_s16le",
        "total_chunks": session.total_chunks,
        "completed_chunks": session.completed_chunks,
    }


_SAMPLE_RATE = Compiled.values_list(  # a socket's opening, before any chunk is stored (P45)
    lambda session_id: (
        TTSChunk.objects.filter(session_id=session_id)
        .order_by("seq")
        .values_list("sample_rate")[:1]
    ),
    session_id=TTSChunk._meta.get_field("session"),
)


def done_frame(session_id: uuid.UUID, *, total_chunks: int, duration_ms: int) -> dict:
    return {
        "type": "done",
        "total_chunks": total_chunks,
        "duration_ms": duration_ms,
        "audio_url": f"/api/tts/sessions/{session_id}/audio.wav",
    }


def can_access(session: TTSSession, owner: Owner) -> bool:
    if owner.is_staff:
        return True
    if session.owner_id is not None:
        return session.owner_id == owner.user_id
    return bool(owner.session_key) and session.owner_session_key == owner.session_key


# --- Recovery -----------------------------------------------------------------------------


@dataclass
class RecoveryReport:
    redispatched: int = 0
    requeued: int = 0
    failed: int = 0


def sessions_recover(*, now=None) -> RecoveryReport:
    """Re-dispatch queued sessions whose message may be lost and requeue running ones
    whose worker died; fail those that used up their attempts."""
    close_old_connections()
    now = now or timezone.now()
    report = RecoveryReport()
    _requeue_stale_running(now, report)
    _redispatch_old_queued(now, report)
    return report


def _requeue_stale_running(now, report: RecoveryReport) -> None:
    stale = now - timedelta(seconds=settings.TTS_HEARTBEAT_TIMEOUT)
    for session_id, attempts in TTSSession.objects.filter(
        status=SessionStatus.RUNNING, heartbeat_at__lt=stale
    ).values_list("pk", "attempts"):
        if attempts >= settings.TTS_MAX_ATTEMPTS:
            report.failed += session_fail(
                session_id=session_id,
                code="worker_lost",
                message=f"The worker died {attempts} times while narrating this session.",
            )
            continue
        requeued = TTSSession.objects.filter(
            pk=session_id, status=SessionStatus.RUNNING, heartbeat_at__lt=stale
        ).update(status=SessionStatus.QUEUED, claimed_by="", dispatched_at=None)
        if requeued:
            report.requeued += 1
            logger.warning("session %s lost its worker; requeued", session_id)
            session_dispatch(session_id=session_id)


def _redispatch_old_queued(now, report: RecoveryReport) -> None:
    old = now - timedelta(seconds=settings.TTS_QUEUED_TIMEOUT)
    waiting = TTSSession.objects.filter(status=SessionStatus.QUEUED).filter(
        Q(dispatched_at__lt=old) | Q(dispatched_at__isnull=True, created_at__lt=old)
    )
    for session_id in waiting.values_list("pk", flat=True):
        report.redispatched += session_dispatch(session_id=session_id)


__all__ = [
    "EngineUnavailable",
    "Owner",
    "session_cancel",
    "session_claim",
    "session_create",
    "session_run",
]
