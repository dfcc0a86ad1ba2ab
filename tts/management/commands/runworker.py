"""`runworker` with what a narration worker needs before the first message: the voices
loaded and warm, and the recovery sweep running beside the message loop."""

from __future__ import annotations

import logging
import threading
import time

from channels.management.commands.runworker import Command as ChannelsRunworker
from django.core.management.base import CommandError
from django.db import close_old_connections, connections, router

from tts import cpus, health, heap, loops, segmentation, services, warmup
from tts.conf import settings
from tts.engines import get_engine
from tts.models import NARRATION_MODELS
from tts.voices import default_voice_id, get_voice
from tts.worker import Worker, worker_name

logger = logging.getLogger("tts.worker")


def preload_voices() -> None:
    """Load each preloaded voice's model once, in this process, and warm it up."""
    for voice_id in settings.TTS_PRELOAD_VOICES or [default_voice_id()]:
        voice = get_voice(voice_id)
        if voice is None:
            logger.warning("TTS_PRELOAD_VOICES names unknown voice %r", voice_id)
            continue
        engine = get_engine(voice.engine)
        available, reason = engine.availability(voice)
        if not available:
            logger.warning("voice %s unavailable: %s", voice_id, reason)
            continue
        engine.load(voice)
        segmentation.warm_up(voice.language)
        logger.info("voice %s ready (%s)", voice_id, engine.model_id(voice))


def keep_connections(max_age: int) -> None:
    """Persistent connections for this worker: its messages all run on one thread."""
    if max_age <= 0:
        return
    for connection in connections.all(initialized_only=False):
        config = connection.settings_dict
        if not config.get("CONN_MAX_AGE") and not config.get("OPTIONS", {}).get("pool"):
            config["CONN_MAX_AGE"] = max_age


def commit_without_waiting_for_disk() -> None:
    """PostgreSQL: this process's commits to the narration tables' database return once
    PostgreSQL has them, before they reach the disk (``synchronous_commit=off`` in the
    ``options`` every connection to that alias opens with): one disk sync less on every
    session's way to first audio (its claim), and one per stored batch. Anything else
    this worker process writes there (a consumer of a project's own, routed to the same
    ``runworker``) commits so too.

    A crash of the database server (not of a worker: PostgreSQL has what it was sent) may
    then lose the last of them, up to three times ``wal_writer_delay`` (0.6 s by default),
    in order and never half of one: a claim, a batch of chunks with the session's
    progress (and, for the last batch, its completion). The recovery sweep handles each
    as it handles a worker that died at that moment: a session left queued is dispatched
    again, one left running resumes from its last stored chunk (within
    ``TTS_MAX_ATTEMPTS``). The web processes' commits, which record what users asked for,
    still wait for the disk, and since the log is written in order, each makes every
    commit before it durable too: a replay never refers to audio a crash lost.

    Called at the start of ``handle``, before any other thread: only this thread's
    connection is closed, and the pool, so that every connection after this one gets the
    option. Behind PgBouncer, which does not pass ``options`` on, set
    ``TTS_WORKER_ASYNC_COMMIT=0`` (docs/deployment.md)."""
    aliases = {router.db_for_write(model) for model in NARRATION_MODELS}
    for alias in sorted(aliases):
        connection = connections[alias]
        if connection.vendor != "postgresql":
            continue
        options = connection.settings_dict.setdefault("OPTIONS", {})
        if "synchronous_commit=off" in options.get("options", ""):
            continue
        options["options"] = f"{options.get('options', '')} -c synchronous_commit=off".strip()
        connection.close()  # a connection (or pool) made before goes: new ones get this
        if options.get("pool"):
            connection.close_pool()


def sweep_forever(stop: threading.Event, name: str) -> None:
    interval = settings.TTS_SWEEP_INTERVAL
    while True:
        health.worker_beat(name, ttl=interval * 3)
        try:
            report = services.sessions_recover()
            if report.redispatched or report.requeued or report.failed:
                logger.info("recovery sweep: %s", report)
        except Exception:  # noqa: BLE001 - the sweep must outlive a database hiccup
            logger.warning("recovery sweep failed", exc_info=True)
        finally:
            close_old_connections()
        if stop.wait(interval):
            return


class Command(ChannelsRunworker):
    """Restarts the message loop when Redis goes away (restart, failover) instead of
    exiting: sessions in flight keep running and storing chunks meanwhile, and the
    recovery sweep re-dispatches anything whose message was lost."""

    help = ChannelsRunworker.help + " Narration: warms the voices and runs the recovery sweep."
    worker_class = Worker

    def handle(self, *args, **options) -> None:
        # Before the loops this worker runs are made: its message loop's, its sender
        # loop's (django.setup() has made daphne's, which a worker never runs).
        try:
            pinned = cpus.pin_from(cpus.WORKER)  # before the engine's and torch's threads
            loop = loops.install_uvloop()
            freeze = heap.freeze_wanted()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        logger.info("worker %s: event loop %s", worker_name(), loop)
        if pinned is not None:
            logger.info(
                "worker %s: on CPUs %s (%s)", worker_name(), cpus.format_list(pinned), cpus.WORKER
            )
        if settings.TTS_WORKER_ASYNC_COMMIT:
            commit_without_waiting_for_disk()
        keep_connections(settings.TTS_WORKER_CONN_MAX_AGE)
        preload_voices()
        warmup.warm_worker()  # the first session's SQL and connections, paid now (P85)
        if freeze:  # the models loaded and warm: what the worker serves with (tts.heap)
            frozen, ms = heap.freeze_startup_heap()
            logger.info(
                "worker %s: %d objects of its start kept out of the collector (%.0f ms)",
                worker_name(),
                frozen,
                ms,
            )
        name, stop = worker_name(), threading.Event()
        thread = threading.Thread(
            target=sweep_forever, args=(stop, name), daemon=True, name="tts-sweep"
        )
        thread.start()
        try:
            self._run_until_stopped(*args, **options)
        finally:
            stop.set()
            health.worker_gone(name)

    def _run_until_stopped(self, *args, **options) -> None:
        delay = 0.5
        while True:
            started = time.monotonic()
            try:
                super().handle(*args, **options)
                return
            except KeyboardInterrupt:
                return
            except Exception:  # noqa: BLE001 - typically Redis unreachable
                logger.warning("worker loop stopped; restarting in %.1f s", delay, exc_info=True)
            if time.monotonic() - started > 30:
                delay = 0.5
            time.sleep(delay)
            delay = min(delay * 2, 10)
