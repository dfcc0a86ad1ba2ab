"""A process's start pays for what its first session would pay on the way to first audio.

The first session after a web process and its workers started reached its first audio
70 to 85 ms later than the third (``bench/coldstart.py``, docs/benchmarks.md, P85). Most
of it was first use:

- the hot queries' SQL, compiled once per process (``tts.compiled``, P45);
- a database connection on each thread that serves the session (a web process's request
  thread and its sockets' thread, a worker's message thread and store thread);
- the Redis connection of the workers' doorbell (a blocking one, on a request thread).

``warm_web`` (daphne, once its reactor runs: ``tts.asgi.warm_up_when_served``) and
``warm_worker`` (``runworker``, after the voices) open them at start. A connection kept
this way lives as long as any: a web thread's ``TTS_WEB_CONN_MAX_AGE`` (60 s) from now,
so a reader who comes later meets a fresh one; the compiled SQL stays. Nothing here
writes, and a failure is logged, never raised: the first session then pays, as before.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable

from django.db import connections, router

logger = logging.getLogger("tts.warmup")


def narration_aliases() -> list[str]:
    """The databases the narration tables live in (routers decide)."""
    from tts.models import AudioBlob, TTSChunk, TTSSession

    models = (TTSSession, TTSChunk, AudioBlob)
    aliases = {router.db_for_read(m) for m in models} | {router.db_for_write(m) for m in models}
    return sorted(aliases)


def open_connections() -> None:
    """This thread's connections to the narration tables' databases."""
    for alias in narration_aliases():
        connections[alias].ensure_connection()


def compile_queries() -> int:
    """Compile the SQL of every hot query made so far, for the database each runs on;
    returns how many."""
    from tts import compiled

    queries = compiled.every_query()
    for query in queries:
        query.prepare()
    return len(queries)


def ping_doorbell() -> None:
    """The blocking Redis connection a web process rings the workers' doorbell on
    (``tts.layers.RedisChannelLayer.send_blocking``), opened on this thread's pool."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is not None and hasattr(layer, "ping_blocking"):
        layer.ping_blocking()


def warm_request_thread() -> None:
    """On a web process's request thread: its connection, kept as a request keeps it."""
    from tts.db import keep_thread_connections

    open_connections()
    keep_thread_connections()
    ping_doorbell()


def warm_socket_thread() -> int:
    """On a web process's sockets' thread: its connection and the compiled SQL."""
    from tts.db import keep_thread_connections

    open_connections()
    keep_thread_connections()
    return compile_queries()


def wanted() -> bool:
    """``TTS_WARM_UP`` (on by default)."""
    from tts.conf import settings

    return bool(settings.TTS_WARM_UP)


def warm_worker() -> None:
    """In a worker, before its message loop: the compiled SQL and the connections of the
    thread that runs the messages (this one) and of a store thread."""
    from tts import storing

    if not wanted():
        return

    def steps() -> None:
        compile_queries()
        open_connections()
        storing.warm_store_thread()

    attempt("worker", steps)


async def attempt_async(what: str, steps: Callable[[], Awaitable[object]]) -> None:
    """``attempt``, for steps that are awaited."""
    started = time.perf_counter()
    try:
        await steps()
    except Exception:  # noqa: BLE001 - the first session pays instead, as before
        logger.warning("%s warm-up failed; the first session opens what it needs", what)
        logger.debug("%s warm-up failure", what, exc_info=True)
        return
    logger.info(
        "%s warm-up done in %.0f ms (pid %d)",
        what,
        (time.perf_counter() - started) * 1000,
        os.getpid(),
    )


def attempt(what: str, steps: Callable[[], object]) -> None:
    """Run ``steps``; log how long it took, or why it failed, and never raise."""
    started = time.perf_counter()
    try:
        steps()
    except Exception:  # noqa: BLE001 - the first session pays instead, as before
        logger.warning("%s warm-up failed; the first session opens what it needs", what)
        logger.debug("%s warm-up failure", what, exc_info=True)
        return
    logger.info(
        "%s warm-up done in %.0f ms (pid %d)",
        what,
        (time.perf_counter() - started) * 1000,
        os.getpid(),
    )
