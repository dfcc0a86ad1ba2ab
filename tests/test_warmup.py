"""A process's start pays for its first session's SQL and connections (tts.warmup, P85)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from django.db import close_old_connections, connections

from tests.conftest import ARTIFACTS
from tts import compiled, storing, warmup
from tts.asgi import WARM_REQUEST_THREADS, SyncChainASGIHandler
from tts.db import left_to_its_settings


@pytest.mark.django_db
def test_every_hot_query_is_compiled(monkeypatch):
    from tts import replay, services

    queries = compiled.every_query()
    # the POST's replay lookup, a worker's claim, a socket's session and stored chunks
    for query in (services._REPLAY_SOURCE, services._CLAIM, services._SESSION, replay._STORED):
        assert query in queries
    for query in queries:
        monkeypatch.setattr(query, "_statements", {})  # as in a fresh process
    assert warmup.compile_queries() == len(queries)
    for query in queries:
        assert query._routed() in query._statements


def test_a_failed_warm_up_is_logged_and_not_raised(caplog):
    with caplog.at_level(logging.INFO, logger="tts.warmup"), warmup.attempt("test"):
        raise ConnectionError("no database")
    assert "test warm-up failed" in caplog.text
    assert "done" not in caplog.text


def test_a_failed_warm_up_in_async_code_is_logged_and_not_raised(caplog):
    async def broken() -> None:
        with warmup.attempt("async test"):
            await asyncio.sleep(0)
            raise ConnectionError("no Redis")

    with caplog.at_level(logging.INFO, logger="tts.warmup"):
        async_to_sync(broken)()
    assert "async test warm-up failed" in caplog.text


def _connected() -> bool:
    return any(c.connection is not None for c in connections.all(initialized_only=True))


def _pooled() -> bool:
    return bool(connections["default"].settings_dict.get("OPTIONS", {}).get("pool"))


@pytest.mark.django_db(transaction=True)
def test_the_request_threads_a_web_process_lends_first_are_warmed(settings):
    """Each holds its connection past a request's start, as a request would leave it;
    with a pool (make test-postgres), it went back to the pool, as after a request."""
    settings.TTS_WEB_CONN_MAX_AGE = 60
    handler = SyncChainASGIHandler()
    try:
        async_to_sync(handler.warm_up)()
        idle = list(handler.threads._idle)
        assert len(idle) == WARM_REQUEST_THREADS
        for executor in idle:
            executor.submit(close_old_connections).result(timeout=10)
            assert executor.submit(_connected).result(timeout=10) is not _pooled()
    finally:
        handler.threads.close_connections()


@pytest.mark.django_db(transaction=True)
def test_a_request_thread_does_not_hold_a_connection_a_request_would_not_keep(settings):
    if left_to_its_settings(connections["default"].settings_dict):
        pytest.skip("the database's own CONN_MAX_AGE or pool decides")
    settings.TTS_WEB_CONN_MAX_AGE = 0  # a connection per request: nothing to keep
    handler = SyncChainASGIHandler()
    try:
        async_to_sync(handler.warm_up)()
        for executor in handler.threads._idle:
            assert not executor.submit(_connected).result(timeout=10)
    finally:
        handler.threads.close_connections()


@pytest.mark.django_db(transaction=True)
def test_a_worker_warms_its_message_thread_and_a_store_thread(settings, caplog, monkeypatch):
    """The message thread is asgiref's one thread (runworker's sync consumers run there),
    not the main one, which keeps nothing open."""
    # a worker keeps its connections (runworker's keep_connections); tests do not
    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 60)
    lent = storing._store_threads
    monkeypatch.setattr(lent, "_idle", [])  # as in a fresh worker
    monkeypatch.setattr(lent, "_made", 0)
    message_thread = SyncToAsync.single_thread_executor
    try:
        settings.TTS_WARM_UP = False
        warmup.warm_worker()
        assert lent._made == 0
        settings.TTS_WARM_UP = True
        with caplog.at_level(logging.INFO, logger="tts.warmup"):
            warmup.warm_worker()
        assert "worker warm-up done" in caplog.text
        assert lent._made == 1 and len(lent._idle) == 1
        (thread,) = lent._idle
        assert thread.submit(_connected).result(timeout=10)
        assert message_thread.submit(_connected).result(timeout=10)
        assert not _connected()
    finally:
        lent.close_connections()
        message_thread.submit(connections.close_all).result(timeout=10)


def test_the_stacks_daphne_and_worker_warm_up_at_start(live_stack):
    """Each says so in its log, with its own process id: these are this run's lines. The
    web process warms up once its server runs, so its line may come a moment later."""
    daphne_line = "web process warm-up done in "
    pid = f"(pid {live_stack.daphne.pid})"
    deadline = time.monotonic() + 15
    while True:
        daphne = (ARTIFACTS / "logs" / "daphne.log").read_text(errors="replace")
        if any(daphne_line in line and pid in line for line in daphne.splitlines()):
            break
        assert time.monotonic() < deadline, "daphne's warm-up line did not come"
        time.sleep(0.2)
    worker = (ARTIFACTS / "logs" / "worker-0.log").read_text(errors="replace")
    worker_pid = f"(pid {live_stack.worker_procs[0].pid})"
    assert any(
        "worker warm-up done in " in line and worker_pid in line for line in worker.splitlines()
    ), socket.gethostname()
