"""Bench-only instrumentation and experiments, loaded into daphne and the workers by
bench/procs.py (`bench/run.py --patch NAME`). Nothing here changes the app's files:

- ``timings``: wall time of each named function on the hot paths (count, mean, p50,
  p99, max), per process, into ``$BENCH_TIMINGS_DIR/<pid>.json``.
- the other names try a change proposed in docs/benchmarks.md, so that its effect can be
  measured before anyone edits the app; each docstring names the change.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

PATCHES: dict[str, Callable[[], None]] = {}


def patch(func: Callable[[], None]) -> Callable[[], None]:
    PATCHES[func.__name__] = func
    return func


def switched_on() -> bool:
    """In paired A/B runs (BENCH_SWITCH_FILE set), experiments apply only while that file
    exists, so the bench alternates sessions with and without them under the same load."""
    flag = os.environ.get("BENCH_SWITCH_FILE")
    return flag is None or os.path.exists(flag)


def replace(owner: object, name: str, new: Callable) -> None:
    """Put ``new`` in place of ``owner.name``, behind the A/B switch when there is one."""
    original = getattr(owner, name)
    if not os.environ.get("BENCH_SWITCH_FILE"):
        setattr(owner, name, new)
        return

    @functools.wraps(original)
    def switch(*args, **kwargs):
        return (new if switched_on() else original)(*args, **kwargs)

    setattr(owner, name, switch)


def apply(names: list[str]) -> None:
    for name in names:
        if name not in PATCHES:
            raise SystemExit(f"unknown patch {name!r}; known: {', '.join(sorted(PATCHES))}")
        PATCHES[name]()


# Timings -----------------------------------------------------------------------------------

TIMED = {
    # worker
    "tts.services": [
        "session_run",
        "session_claim",
        "session_claim_next",
        "session_generate",
        "session_segments",
        "stored_chunk_count",
        "segment_audio",
        "_synthesize",
        "chunk_store",
        "chunk_meta",
        "session_complete",
        "status_frame",
        "queue_position",
        "get_voice",
        "voice_resolve",
        "session_create",
        "session_dispatch",
        "session_frame",
        "session_get",
        "segment_text",
        "audio_key",
    ],
    "tts.broadcast": ["broadcast_chunk", "broadcast_status", "broadcast_done", "dispatch_generate"],
    "tts.limits": ["check_owner_limits", "record_creation"],
    # web
    "tts.views": ["session_create"],
    "tts.replay": ["stored_chunks", "send_from_storage"],
    # the consumer imported these by name
    "tts.consumers": ["send_from_storage", "deliver_live"],
}
CONSUMER_METHODS = ["connect", "_load", "_snapshot", "tts_chunk", "send_chunk", "_finish_if_over"]

_samples: dict[str, list[float]] = {}
_lock = threading.Lock()


def _record(name: str, seconds: float) -> None:
    with _lock:
        _samples.setdefault(name, []).append(seconds * 1000)


def _dump_forever() -> None:
    while True:
        time.sleep(0.25)
        _dump()


def _dump() -> None:
    directory = Path(os.environ.get("BENCH_TIMINGS_DIR", "/tmp"))
    directory.mkdir(parents=True, exist_ok=True)
    with _lock:
        data = {name: list(values) for name, values in _samples.items()}
    path = directory / f"{os.getpid()}.json"
    path.with_suffix(".tmp").write_text(json.dumps(data))
    path.with_suffix(".tmp").replace(path)


def _timed(name: str, func: Callable) -> Callable:
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def timed_async(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await func(*args, **kwargs)
            finally:
                _record(name, time.perf_counter() - started)

        return timed_async

    @functools.wraps(func)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            _record(name, time.perf_counter() - started)

    return timed


@patch
def timings() -> None:
    threading.Thread(target=_dump_forever, name="bench-timings", daemon=True).start()
    for module_name, names in TIMED.items():
        module = importlib.import_module(module_name)
        for name in names:
            func = getattr(module, name, None)
            if callable(func) and not inspect.ismodule(func) and not inspect.isclass(func):
                setattr(module, name, _timed(f"{module_name.split('.')[-1]}.{name}", func))
    from tts.consumers import SessionConsumer

    for name in CONSUMER_METHODS:
        setattr(SessionConsumer, name, _timed(f"consumer.{name}", getattr(SessionConsumer, name)))


# Experiments: the worker's per-chunk path ----------------------------------------------------


def _fast_generate(*, pipelined: bool) -> Callable:
    """``services.session_generate`` as proposed in docs/benchmarks.md:

    - one transaction per chunk: the AudioBlob insert joins the session update and the chunk
      insert (today: two commits per synthesized chunk);
    - ``total_chunks`` goes into the first chunk's update instead of its own UPDATE before
      the first synthesis (one commit less before the first audio);
    - the chunk is created with ``session=session``, so ``chunk_meta`` reads
      ``chunk.session.total_chunks`` without a SELECT per chunk;
    - ``pipelined``: a writer thread stores and broadcasts chunk n while the engine
      synthesizes chunk n+1 (a cancel is then noticed one chunk later).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from django.db import IntegrityError, connection, transaction
    from django.db.models import F
    from django.utils import timezone

    from tts import broadcast, services
    from tts.audio import silence
    from tts.engines import EngineError
    from tts.models import AudioBlob, SessionStatus, TTSChunk, TTSSession

    def produce(segment, voice, engine_model: str) -> tuple:
        key = services.audio_key(
            voice=voice,
            engine_model=engine_model,
            text=segment.speech_text,
            pause_ms=segment.pause_ms,
        )
        blob = AudioBlob.objects.filter(key=key).first()
        if blob is not None:
            return key, bytes(blob.pcm), blob.sample_rate, True, 0, blob
        started = time.perf_counter()
        audio = services._synthesize(segment.speech_text, voice)
        engine_ms = round((time.perf_counter() - started) * 1000)
        pcm = audio.pcm + silence(segment.pause_ms, audio.sample_rate)
        return key, pcm, audio.sample_rate, False, engine_ms, None

    def store(session, seq: int, segment, item: tuple, worker: str, total: int | None):
        key, pcm, rate, cached, engine_ms, blob = item
        now, samples = timezone.now(), len(pcm) // 2
        updates = {
            "completed_chunks": seq + 1,
            "heartbeat_at": now,
            "engine_ms": F("engine_ms") + engine_ms,
            "audio_ms": F("audio_ms") + round(samples * 1000 / rate),
        }
        if total is not None:
            updates["total_chunks"] = total
        if seq == 0:
            updates["first_chunk_ms"] = max(
                0, round((now - session.created_at).total_seconds() * 1000)
            )
        try:
            with transaction.atomic():
                held = TTSSession.objects.filter(
                    pk=session.id, status=SessionStatus.RUNNING, claimed_by=worker
                ).update(**updates)
                if not held:
                    return None
                if blob is None:
                    blob, _ = AudioBlob.objects.get_or_create(
                        key=key, defaults={"pcm": pcm, "sample_rate": rate, "samples": samples}
                    )
                chunk = TTSChunk.objects.create(
                    session=session,
                    seq=seq,
                    text=segment.text,
                    char_start=segment.char_start,
                    char_end=segment.char_end,
                    samples=blob.samples,
                    sample_rate=blob.sample_rate,
                    audio=blob,
                    cached=cached,
                    engine_ms=engine_ms,
                )
        except IntegrityError:
            return None
        broadcast.broadcast_chunk(session.id, services.chunk_meta(chunk), pcm)
        return chunk

    def _close_connection() -> None:
        connection.close()

    def session_generate(*, session, worker: str) -> None:
        voice = services.get_voice(session.voice)
        if voice is None:
            services.session_fail(
                session_id=session.id,
                code="voice_unavailable",
                message=f"Voice {session.voice!r} is no longer configured.",
            )
            return
        segments = services.session_segments(session=session, voice=voice)
        session.total_chunks = len(segments)
        next_seq = services.stored_chunk_count(session_id=session.id)
        writer = ThreadPoolExecutor(1, thread_name_prefix="tts-store") if pipelined else None
        pending: Future | None = None
        try:
            with services._heartbeat(session.id, worker):
                for seq in range(next_seq, len(segments)):
                    try:
                        item = produce(segments[seq], voice, session.model)
                    except EngineError as exc:
                        services.session_fail(
                            session_id=session.id,
                            code=exc.code,
                            message=f"Chunk {seq} failed: {exc.message}",
                        )
                        return
                    if pending is not None and pending.result() is None:
                        return  # cancelled or taken over
                    total = len(segments) if seq == next_seq else None
                    args = (session, seq, segments[seq], item, worker, total)
                    if writer is None or seq == next_seq:
                        # The first chunk goes out at once: overlapping it with the next
                        # synthesis would only slow the first audio down.
                        if store(*args) is None:
                            return
                    else:
                        pending = writer.submit(store, *args)
                if pending is not None and pending.result() is None:
                    return
        finally:
            if writer is not None:
                writer.submit(_close_connection).result()  # the writer thread's own
                writer.shutdown()
        services.session_complete(session_id=session.id, worker=worker)

    return session_generate


@patch
def store_fast() -> None:
    """One commit per chunk, total_chunks with the first chunk, no SELECT in chunk_meta."""
    from tts import services

    replace(services, "session_generate", _fast_generate(pipelined=False))


@patch
def pipeline() -> None:
    """store_fast, plus storing and broadcasting chunk n while chunk n+1 is synthesized."""
    from tts import services

    replace(services, "session_generate", _fast_generate(pipelined=True))


@patch
def sqlite_normal() -> None:
    """config/settings.py: PRAGMA synchronous=NORMAL next to journal_mode=WAL (SQLite):
    a commit then waits for no fsync (WAL stays consistent; a power cut may lose the last
    commits, which the worker's recovery sweep redoes)."""
    from django.db.backends.signals import connection_created

    def pragma(sender, connection, **kwargs) -> None:
        if connection.vendor == "sqlite":
            level = "NORMAL" if switched_on() else "FULL"
            connection.cursor().execute(f"PRAGMA synchronous={level}")

    connection_created.connect(pragma, weak=False)


@patch
def async_broadcast() -> None:
    """tts/broadcast.py: hand group events to one sender task on a background event loop
    (in order, without waiting for Redis), so the synthesis thread never blocks on
    group_send (today: about 4 Redis round trips per event, 2-3 ms, on the hot path)."""
    import asyncio
    import logging

    from channels.layers import get_channel_layer

    from tts import broadcast

    loop = asyncio.new_event_loop()
    queue: asyncio.Queue = asyncio.Queue()
    logger = logging.getLogger("tts.broadcast")

    async def sender() -> None:
        layer = get_channel_layer()
        while True:
            group, event = await queue.get()
            try:
                await layer.group_send(group, event)
            except Exception:  # noqa: BLE001 - listeners recover from storage
                logger.warning("broadcast of %s failed", event["type"], exc_info=True)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.create_task(sender())
        loop.run_forever()

    threading.Thread(target=run, name="tts-broadcast", daemon=True).start()

    def group_send(session_id, event) -> None:
        group = broadcast.session_group(session_id)
        loop.call_soon_threadsafe(queue.put_nowait, (group, event))

    replace(broadcast, "_group_send", group_send)


@patch
def dispatch_first() -> None:
    """tts/services.py session_dispatch: write dispatched_at before ringing the worker, not
    after. Today the worker's claim (an UPDATE of the same row) races the view's
    UPDATE ... dispatched_at; on SQLite the loser sleeps in the busy handler (1, 2, 5 ms
    ...). If the send fails, the recovery sweep still re-dispatches after
    TTS_QUEUED_TIMEOUT, exactly as for a lost message."""
    from django.utils import timezone

    from tts import broadcast, services
    from tts.models import TTSSession

    def session_dispatch(*, session_id) -> bool:
        TTSSession.objects.filter(pk=session_id).update(dispatched_at=timezone.now())
        return broadcast.dispatch_generate(session_id)

    replace(services, "session_dispatch", session_dispatch)
