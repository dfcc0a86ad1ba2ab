"""Database connections kept by a web process's long-lived threads; and which
connections (a worker's store threads) copy SQLite's write-ahead log back into the file.

With ``CONN_MAX_AGE = 0`` (the default, and right under Django's ASGI handler, where
every HTTP request has a thread of its own that a kept connection would outlive) every
request and every socket trip opened a connection first; on SQLite that also registers
Django's SQL functions, about 0.7 ms on an idle machine and several on a busy one, on
the path of every POST and every socket that opens (docs/benchmarks.md, P21 and P23).

Two kinds of threads here live as long as the process: asgiref's one thread for
thread-sensitive code, where ``socket_database_sync_to_async`` runs the sockets' queries,
and the request threads of ``tts.asgi``. They keep their connection as a worker keeps
its own (``TTS_WORKER_CONN_MAX_AGE``): for ``TTS_WEB_CONN_MAX_AGE`` seconds from its
opening, then it is closed and opened anew at the next use. Django's health check
(``CONN_HEALTH_CHECKS``) still runs before a kept connection is reused, and one with
unrecoverable errors is still closed. Left alone: a database with a pool
(``OPTIONS["pool"]``, which takes connections back) or a ``CONN_MAX_AGE`` of its own,
and every other thread.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress

from asgiref.sync import SyncToAsync
from channels.db import DatabaseSyncToAsync
from django.db import DatabaseError, close_old_connections, connections

from tts.conf import settings

_long_lived = threading.local()
_checkpointing = threading.local()


def mark_long_lived() -> None:
    """Mark the calling thread as one that lives as long as the process (an executor's
    initializer: tts.asgi's request threads)."""
    _long_lived.marked = True


def _on_a_long_lived_thread() -> bool:
    if getattr(_long_lived, "marked", False):
        return True
    if threading.current_thread() in getattr(SyncToAsync.single_thread_executor, "_threads", ()):
        mark_long_lived()  # asgiref's one thread: found once, then remembered
        return True
    return False


def left_to_its_settings(config: dict) -> bool:
    """A database whose own settings keep its connections (a ``CONN_MAX_AGE``) or pool
    them: nothing here touches those."""
    return config.get("CONN_MAX_AGE") != 0 or bool(config.get("OPTIONS", {}).get("pool"))


def keep_thread_connections() -> None:
    """On a long-lived thread, give its connections opened since the last call
    ``TTS_WEB_CONN_MAX_AGE`` seconds of life from now (counted once per connection, not
    renewed by use). Anywhere else, nothing: those threads end, and their connections
    are closed as DATABASES says."""
    max_age = settings.TTS_WEB_CONN_MAX_AGE
    if max_age <= 0 or not _on_a_long_lived_thread():
        return
    for conn in connections.all(initialized_only=True):
        if left_to_its_settings(conn.settings_dict):
            continue
        if conn.connection is None or conn.in_atomic_block:
            continue
        if getattr(conn, "_tts_kept", None) is not conn.connection:
            conn._tts_kept = conn.connection
            conn.close_at = time.monotonic() + max_age


def release_thread_connections() -> None:
    """After a long-lived thread's database work: keep its connections as this process
    keeps them (``keep_thread_connections``) and close the rest (a pool's go back to it),
    as Django does after a request."""
    keep_thread_connections()
    close_old_connections()


class SocketDatabaseSyncToAsync(DatabaseSyncToAsync):
    """``database_sync_to_async`` for the sockets: it keeps the shared thread's connection
    (see above)."""

    def thread_handler(self, loop, *args, **kwargs):
        close_old_connections()
        try:
            return SyncToAsync.thread_handler(self, loop, *args, **kwargs)
        finally:
            release_thread_connections()


socket_database_sync_to_async = SocketDatabaseSyncToAsync


# SQLite's write-ahead log (WAL) is copied back into the database file, a checkpoint, by
# whichever commit leaves the log at ``wal_autocheckpoint`` pages or more: 15 to 25 ms
# here, most of it two disk syncs, once per 4 MB written at SQLite's default of 1,000
# pages. A session's chunks are nearly all of those megabytes, but the commit that ran
# the checkpoint was now and then a POST's insert or a worker's claim, on the way to the
# first audio: one session in thirty to fifty waited for it (docs/benchmarks.md, P76).
# The threads that store chunks (tts.storing) keep SQLite's default, and every other
# connection to the narration tables' database checkpoints only past
# TTS_SQLITE_CHECKPOINT_PAGES (10,000: 40 MB), a safety net for a process whose store
# threads never reach the default (a web process on its own writes sessions' rows but no
# audio), not a limit that is met while chunks are being stored. What the next commit
# after a checkpoint still pays is the log's restart: one sync of its header, under a
# millisecond. Other databases of the project, and other engines, are left alone.
CHECKPOINT_PAGES_STORING = 1_000  # SQLite's own default


def mark_checkpointing() -> None:
    """Mark the calling thread as one whose SQLite connection copies the log back at
    SQLite's default threshold (a store thread's first job, tts.storing)."""
    _checkpointing.marked = True


def sqlite_checkpoint_pages(sender, connection, **kwargs) -> None:
    """``connection_created`` receiver: set a new SQLite connection's
    ``wal_autocheckpoint`` for the thread it belongs to (see above), on the narration
    tables' database; anywhere else, or with ``TTS_SQLITE_CHECKPOINT_PAGES`` 0, nothing."""
    if connection.vendor != "sqlite" or not settings.TTS_SQLITE_CHECKPOINT_PAGES:
        return
    from django.db import router

    from tts.models import TTSChunk

    if connection.alias != router.db_for_write(TTSChunk):
        return
    if getattr(_checkpointing, "marked", False):
        pages = CHECKPOINT_PAGES_STORING
    else:
        pages = settings.TTS_SQLITE_CHECKPOINT_PAGES
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")


def drop_interrupted_connections() -> None:
    """After an interrupt (Ctrl-C, or SIGTERM raised as one) on this thread: close each
    of its connections that the interrupt left mid-query, so that the next query opens a
    fresh one instead of failing.

    A ``KeyboardInterrupt`` can land between psycopg's sending a query and its reading
    the result (psycopg cancels the query itself only when the signal comes while it
    waits); such a connection refuses every later query ("another command is already in
    progress"), and the cancel and summary after a Ctrl-C would fail with it. A pool
    would log a warning as it discards the connection; it is expected here, so not said.
    Connections inside an atomic block are left to it (it rolls back, or closes them).
    """
    broken = [
        conn
        for conn in connections.all(initialized_only=True)
        if conn.connection is not None and not conn.in_atomic_block and not conn.is_usable()
    ]
    if not broken:
        return
    pool_log = logging.getLogger("psycopg.pool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        for conn in broken:
            with suppress(DatabaseError):  # Django lets go of it all the same
                conn.close()
    finally:
        pool_log.setLevel(level)
