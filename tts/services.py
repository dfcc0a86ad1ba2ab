"""Narration services: the only code that changes sessions and chunks.

Every status transition happens through these functions, by conditional updates, so
that two workers (or a worker and a cancel) can never both win. Views, consumers, the
worker consumer and commands parse input and call them.

session_run hands each claimed session to tts.generation, which makes its chunks with
tts.synthesis (the audio) and stores them with tts.storing: a store advances the
session only while its worker holds it, and the last one completes it in the same
transaction (storing.chunks_store, the one transition made there); a failure, a cancel
or a completion with nothing left to store is one of the services below.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import (
    IntegrityError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import F, Max, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from tts import broadcast, generation, limits, scheduling, synthesis, waiting
from tts.compiled import Compiled
from tts.conf import settings
from tts.engines import EngineUnavailable, Voice, get_engine
from tts.errors import Conflict, InvalidInput, NotFound
from tts.models import SessionStatus, TTSChunk, TTSSession
from tts.pacing import cushion_left
from tts.scheduling import Schedule
from tts.segmentation import VERSION as SEGMENTATION_VERSION
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
    owner: Owner | Callable[[], Owner],
    voice_id: str | None = None,
    subject: object | None = None,
    dispatch: bool = True,
    session_id: uuid.UUID | None = None,
) -> TTSSession:
    """Validate, create a queued session and dispatch it once the transaction commits.
    ``owner``: or a callable that makes it, called once the text and voice are valid
    (the API's view: a browser's session is created only for a request that may
    narrate). ``session_id``: the id the client chose (so that it could open the
    session's socket while this request was in flight); Conflict when it is taken."""
    text = clean_text(text)
    voice = voice_resolve(voice_id=voice_id)
    if callable(owner):
        owner = owner()
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
    cut = {"version": SEGMENTATION_VERSION, **synthesis.voice_cutting(voice)}
    if cut["growth"] == 2:  # the ramp before it was a setting: those keys still replay
        del cut["growth"]
    return synthesis.digest(
        {**voice.cache_fields(), "model_id": engine_model, "text": text, "cut": cut}
    )


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
    generation.session_steps, which follows every claim, tells listeners it is running."""
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
            schedule.add(
                session.id, session.voice, generation.session_steps(session=session, worker=worker)
            )
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
            steps = generation.session_steps(session=session, worker=worker, beside_others=True)
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
    for _ in generation.session_steps(session=session, worker=worker):
        pass


def stored_chunk_count(*, session_id: uuid.UUID) -> int:
    last = TTSChunk.objects.filter(session_id=session_id).aggregate(m=Max("seq"))["m"]
    return 0 if last is None else last + 1


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
        announce_completed(
            session.id, total_chunks=session.total_chunks or 0, duration_ms=session.audio_ms
        )
    return bool(done)


def announce_completed(session_id: uuid.UUID, *, total_chunks: int, duration_ms: int) -> None:
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
    session = TTSSession.objects.filter(pk=session_id).first()
    if session is None:  # deleted since
        return
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


def done_frame(
    session_id: uuid.UUID, *, total_chunks: int, duration_ms: int, script_prefix: str = ""
) -> dict:
    """``script_prefix``: where the project is served from, as a request's URLs begin
    (FORCE_SCRIPT_NAME, or the server's root path; a socket's scope sets no prefix)."""
    path = reverse("tts:audio", args=[session_id])  # where tts.urls is mounted
    return {
        "type": "done",
        "total_chunks": total_chunks,
        "duration_ms": duration_ms,
        "audio_url": script_prefix.rstrip("/") + path if script_prefix else path,
    }


def chunk_meta(chunk: TTSChunk, *, total_chunks: int | None, session_running: bool = False) -> dict:
    """The `chunk` frame's fields (plus sample_rate, so a client can decode it); it reads
    nothing. ``total_chunks``: the session's count, which every caller has at hand; None
    where it is not known yet (a long text's first chunk, sent before its text is cut).
    ``session_running``: the chunk is read back while its session is still being narrated;
    it then carries what is left of the hold it went out live with (tts.pacing.cushion_left;
    the worker's clock against this one's: hosts keep their clocks in step, docs/deployment.md)."""
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
            _announce_requeued(session_id, dispatch=True)  # its listeners hear `queued`


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
