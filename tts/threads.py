"""Long-lived threads lent to one user at a time, each keeping its database connection.

Two kinds of work borrow them: a web process's HTTP requests (``tts.asgi``: Django's
handler would make a thread, and with it a connection, per request) and a worker's
sessions' stores (``tts.storing``: a thread and a connection per session). Both used to
pay for a thread and a connection each time; a lent thread keeps its connection as its
process says (``tts.db``, ``CONN_MAX_AGE``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any, Generic, Protocol, TypeVar

from django.db import connections


class Runner(Protocol):
    """One thread that runs what it is given, in order (a one-thread executor)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]: ...


R = TypeVar("R", bound=Runner)

_every: weakref.WeakSet[LentThreads[Any]] = weakref.WeakSet()


class LentThreads(Generic[R]):
    """Threads made by ``make``, lent to one user at a time and given back for the next;
    at most ``size`` of them (None: as many as are ever lent at once)."""

    def __init__(self, make: Callable[[], R], size: int | None = None) -> None:
        self.make, self.size, self._made = make, size, 0
        self._idle: list[R] = []
        self._lock = threading.Lock()
        _every.add(self)

    def take(self) -> R | None:
        """An idle thread, or a new one; None when ``size`` are lent out."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self.size is not None and self._made >= self.size:
                return None
            self._made += 1
        return self.make()

    def give_back(self, thread: R) -> None:
        with self._lock:
            self._idle.append(thread)

    def give_back_once_idle(self, thread: R) -> None:
        """Lend it again only once what it runs now has ended (a call that cannot be
        stopped, of a user that is gone)."""
        thread.submit(lambda: None).add_done_callback(lambda _: self.give_back(thread))

    def close_connections(self) -> None:
        """Close the database connections the idle threads keep."""
        with self._lock:
            idle = list(self._idle)
        for thread in idle:
            thread.submit(connections.close_all).result(timeout=10)

    def _forget(self) -> None:
        """In a forked child: the parent's threads do not exist there."""
        self._lock, self._idle, self._made = threading.Lock(), [], 0


def close_kept_connections() -> None:
    """Close what every idle lent thread of this process keeps: before a database is
    dropped (a test run's) or the process ends."""
    for threads in list(_every):
        threads.close_connections()


def _forget_all() -> None:
    for threads in list(_every):
        threads._forget()


os.register_at_fork(after_in_child=_forget_all)


class DaemonThread:
    """A daemon thread that runs the functions handed to it, one at a time, in order: a
    one-thread executor that does not hold up the process's exit."""

    def __init__(self, name: str) -> None:
        self._jobs: SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, lambda: fn(*args)))
        return future

    def _serve(self) -> None:
        while True:
            future, fn = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                future.set_exception(exc)
            del future, fn  # not kept alive while the thread waits
