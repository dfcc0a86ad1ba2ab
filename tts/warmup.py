"""A process's start pays for what its first session would pay on the way to first audio.

The first session after a web process and its workers started reached its first audio
70 to 85 ms later than the third (``bench/coldstart.py``, docs/benchmarks.md, P85). Most
of it was first use:

- the hot queries' SQL, compiled once per process (``tts.compiled``, P45);
- a database connection on each thread that serves the session (a web process's request
  thread and its sockets' thread, a worker's message thread and store thread);
- the doorbell's Redis script, loaded on a fresh Redis by the first POST's send;
- a worker's Redis connections: its broadcasts' (``tts.broadcast``'s sender loop) and
  its consumer's own channel (``tts.worker.Worker``), opened by the first session;
- the URL resolver's reverse map, built by a web process's first ``reverse()`` (the
  POST's reply names the session's URLs), and the voices' availability (the first
  asking runs ``espeak-ng --voices``).

``warm_up_web`` (daphne, once its reactor runs: ``tts.asgi.warm_up_when_served``) and
``warm_worker`` (``runworker``, after the voices) do these at start. A connection opened
here is kept only where a request or a session would keep it (``CONN_MAX_AGE``, a web
thread's ``TTS_WEB_CONN_MAX_AGE``, 60 s from now); a reader who comes later meets a
fresh one, but the compiled SQL and the loaded script stay. Nothing here writes to the
database, and a failure, or a database that does not answer within
``WORKER_WARM_UP_TIMEOUT_S``, is logged, never raised: the first session then pays, as
before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator

from asgiref.sync import SyncToAsync
from django.db import connections, router

logger = logging.getLogger("tts.warmup")

# How long a worker's start waits for its warm-up (a database that does not answer).
WORKER_WARM_UP_TIMEOUT_S = 10.0


def wanted() -> bool:
    """``TTS_WARM_UP`` (on by default)."""
    from tts.conf import settings

    return bool(settings.TTS_WARM_UP)


def narration_aliases() -> list[str]:
    """The databases the narration tables live in (the routers decide)."""
    from tts.models import NARRATION_MODELS

    return sorted(
        {router.db_for_read(m) for m in NARRATION_MODELS}
        | {router.db_for_write(m) for m in NARRATION_MODELS}
    )


def open_connections() -> None:
    """This thread's connections to the narration tables' databases."""
    for alias in narration_aliases():
        connections[alias].ensure_connection()


def compile_queries() -> int:
    """Compile the SQL of every hot query made so far, for the database each runs on
    (those made per length or per model on first use are not among them yet); returns
    how many compiled. One that fails is logged and skipped."""
    from tts import compiled

    done = 0
    for query in compiled.every_query():
        try:
            query.prepare()
        except Exception:  # noqa: BLE001 - its first run compiles it, as before
            logger.debug("a query did not compile at start", exc_info=True)
        else:
            done += 1
    return done


def load_doorbell_scripts() -> None:
    """Load the Redis script the doorbell runs (``tts.layers``) on every host now: on a
    fresh Redis the first POST's send would find it missing and load it."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is not None and hasattr(layer, "load_blocking_scripts"):
        layer.load_blocking_scripts()


def warm_thread() -> None:
    """On a web process's long-lived thread (a request thread, the sockets' thread): its
    connections, kept as a request or a socket's trip keeps them, and closed where they
    would not be kept (a pool's go back to it)."""
    from tts.db import release_thread_connections

    open_connections()
    release_thread_connections()


def build_url_maps() -> None:
    """The URL resolver's reverse map, which a process's first ``reverse()`` builds for
    every pattern (the admin's too): 3.6 ms of the first POST's reply, which names the
    session's URLs (P85)."""
    from django.urls import reverse

    reverse("tts:sessions")


def check_voices() -> None:
    """Ask each voice's availability, as every POST and the voice list do: the first
    asking runs ``espeak-ng --voices`` (33 ms here, in the first POST when the page's
    voice list had not come first)."""
    from tts.voices import all_voices, voice_availability

    for voice in all_voices():
        voice_availability(voice)


def warm_web_process() -> None:
    """A web process's own (off its event loop): the URL resolver's reverse map, the
    voices' availability, the doorbell's Redis script; each tried on its own."""
    for what, step in (
        ("URL map", build_url_maps),
        ("voices", check_voices),
        ("doorbell", load_doorbell_scripts),
    ):
        with attempt(what):
            step()


def warm_socket_thread() -> int:
    """On a web process's sockets' thread: ``warm_thread``, and the compiled SQL."""
    warm_thread()
    return compile_queries()


def warm_worker() -> None:
    """In a worker, before its message loop: the compiled SQL and the connections of the
    thread its messages run on (asgiref's one thread: a sync consumer's handlers run
    there under ``runworker``) and of a store thread, and the broadcasts' sender loop with
    its Redis connections and scripts. The main thread only runs the event loop after
    this, so whatever it opened is closed again. (``tts.worker.Worker`` then makes the
    message loop's consumer before it listens.)"""
    from tts import broadcast, storing

    if not wanted():
        return

    def steps() -> None:
        compile_queries()
        open_connections()
        storing.warm_store_thread()

    started = time.monotonic()
    with attempt("worker"):
        try:
            SyncToAsync.single_thread_executor.submit(steps).result(
                timeout=WORKER_WARM_UP_TIMEOUT_S
            )
        finally:
            connections.close_all()  # this thread's, if anything opened one here
    # The sender loop's (tts.broadcast): its thread, its Redis connections, its scripts;
    # tried whether or not the database answered.
    with attempt("worker broadcasts"):
        left = WORKER_WARM_UP_TIMEOUT_S - (time.monotonic() - started)
        broadcast.warm_sender(timeout=max(left, 0.5))


@contextlib.contextmanager
def attempt(what: str) -> Iterator[None]:
    """Run the block; log how long it took, or that it failed, and never raise."""
    started = time.perf_counter()
    try:
        yield
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
