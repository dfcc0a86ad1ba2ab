"""Database access from the sockets' async code: ``socket_database_sync_to_async``.

Channels' ``database_sync_to_async`` runs the sockets' queries on asgiref's one thread
for thread-sensitive code and closes that thread's connection after every call unless
``CONN_MAX_AGE`` says otherwise. With ``CONN_MAX_AGE = 0`` (the default: under ASGI every
HTTP request has a thread of its own, and a persistent connection would stay with each)
a socket's every database trip opened a connection first; on SQLite that also
registers Django's SQL functions, about 0.7 ms on an idle machine and several on a busy
one, on the path of every socket that opens (docs/benchmarks.md, P21).

That thread is one per process and lives as long as the process, so keeping its one
connection is what a worker does with its own (``TTS_WORKER_CONN_MAX_AGE``): it is
reused for ``TTS_SOCKET_CONN_MAX_AGE`` seconds from its opening, then closed and opened
anew at the next trip. Django's health check (``CONN_HEALTH_CHECKS``) still runs before
a kept connection is reused, and a connection with unrecoverable errors is still closed.
Left alone: a database with a pool (``OPTIONS["pool"]``, which hands connections back to
it) or a ``CONN_MAX_AGE`` of its own, and any thread other than asgiref's one.
"""

from __future__ import annotations

import threading
import time

from asgiref.sync import SyncToAsync
from channels.db import DatabaseSyncToAsync
from django.db import close_old_connections, connections

from tts.conf import settings


def _on_the_shared_thread() -> bool:
    executor = SyncToAsync.single_thread_executor
    return threading.current_thread() in getattr(executor, "_threads", ())


def keep_thread_connections(max_age: float) -> None:
    """Give this thread's connections opened since the last call ``max_age`` seconds of
    life from now (counted once per connection, not renewed by use)."""
    if max_age <= 0:
        return
    for conn in connections.all(initialized_only=True):
        config = conn.settings_dict
        if config.get("CONN_MAX_AGE") != 0 or config.get("OPTIONS", {}).get("pool"):
            continue  # persistent (or pooled) already: its own settings decide
        if conn.connection is None or conn.in_atomic_block:
            continue
        if getattr(conn, "_tts_kept", None) is not conn.connection:
            conn._tts_kept = conn.connection
            conn.close_at = time.monotonic() + max_age


class SocketDatabaseSyncToAsync(DatabaseSyncToAsync):
    """``database_sync_to_async`` that keeps the shared thread's connection (see above)."""

    def thread_handler(self, loop, *args, **kwargs):
        close_old_connections()
        try:
            return SyncToAsync.thread_handler(self, loop, *args, **kwargs)
        finally:
            if _on_the_shared_thread():
                keep_thread_connections(settings.TTS_SOCKET_CONN_MAX_AGE)
            close_old_connections()


socket_database_sync_to_async = SocketDatabaseSyncToAsync
