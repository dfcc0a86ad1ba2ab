"""A process's start pays for its first session's SQL and connections (tts.warmup, P85)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from django.db import close_old_connections, connections

from tests.conftest import ARTIFACTS
from tts import broadcast, compiled, storing, warmup
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
    senders: list[bool] = []
    monkeypatch.setattr(broadcast, "warm_sender", lambda timeout: senders.append(timeout > 0))
    try:
        settings.TTS_WARM_UP = False
        warmup.warm_worker()
        assert lent._made == 0
        settings.TTS_WARM_UP = True
        with caplog.at_level(logging.INFO, logger="tts.warmup"):
            warmup.warm_worker()
        assert "worker warm-up done" in caplog.text
        assert lent._made == 1 and len(lent._idle) == 1
        assert senders == [True]  # and the broadcasts' sender loop (next test)
        (thread,) = lent._idle
        assert thread.submit(_connected).result(timeout=10)
        assert message_thread.submit(_connected).result(timeout=10)
        assert not _connected()
    finally:
        lent.close_connections()
        message_thread.submit(connections.close_all).result(timeout=10)


def test_the_stacks_daphne_and_worker_warm_up_at_start(live_stack):
    """Each says so in its log, with its own process id: these are this run's lines. The
    web process warms up once its server runs, and a worker makes its consumer as its
    message loop starts, so their lines may come a moment after the stack is ready."""

    def wait_for_line(log: str, text: str, pid: int) -> None:
        deadline = time.monotonic() + 15
        while True:
            lines = (ARTIFACTS / "logs" / log).read_text(errors="replace").splitlines()
            if any(text in line and f"(pid {pid})" in line for line in lines):
                return
            assert time.monotonic() < deadline, f"{text!r} did not come in {log}"
            time.sleep(0.2)

    wait_for_line("daphne.log", "web process warm-up done in ", live_stack.daphne.pid)
    worker = live_stack.worker_procs[0].pid
    wait_for_line("worker-0.log", "worker warm-up done in ", worker)
    wait_for_line("worker-0.log", "worker broadcasts warm-up done in ", worker)
    wait_for_line("worker-0.log", "worker instances warm-up done in ", worker)


def test_the_sender_loop_loads_its_scripts_on_every_redis():
    """A worker's first broadcast would open its loop's connection and load the group
    send's scripts on a Redis that has them not (a fresh one, or one that restarted): the
    warm-up does both. On a private Redis, whose scripts no other process loads."""
    import redis

    from scripts.stack import EmbeddedRedis
    from tts import layers

    server = EmbeddedRedis().start()
    client = redis.Redis.from_url(server.url)
    try:
        sources = (layers.SEND_LUA, layers.GROUP_SEND_LUA, layers.KNOWN_GROUP_SEND_LUA)
        digests = [client.script_load(source) for source in sources]
        client.script_flush()
        assert client.script_exists(*digests) == [False] * len(digests)
        layer = layers.RedisChannelLayer(hosts=[{"address": server.url}])

        async def warm() -> None:
            try:
                await layer.warm_up()
            finally:
                await layer.close_pools()

        asyncio.run(warm())
        assert client.script_exists(*digests) == [True] * len(digests)
    finally:
        client.close()
        server.stop()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_web_process_builds_its_url_map_and_asks_its_voices_at_start(monkeypatch):
    from django.urls import clear_url_caches, get_resolver
    from django.utils.translation import get_language

    from tts.engines import espeak

    clear_url_caches()  # as in a fresh process
    espeak._listed_voices.cache_clear()
    asked = []
    monkeypatch.setattr(warmup, "load_doorbell_scripts", lambda: asked.append("doorbell"))
    warmup.warm_web_process()
    assert get_language() in get_resolver()._reverse_dict  # reverse() builds it no more
    assert espeak._listed_voices.cache_info().currsize == 1  # `espeak-ng --voices` ran
    assert asked == ["doorbell"]


def test_a_worker_makes_its_consumer_before_the_first_message(settings):
    """tts.worker.Worker: each channel's application instance (the consumer and its own
    channel's receive) is made as the worker starts, and the first message goes to it."""
    from channels.consumer import SyncConsumer
    from channels.layers import get_channel_layer

    from tts.worker import Worker

    got: list[dict] = []

    class Echo(SyncConsumer):
        def test_message(self, message: dict) -> None:
            got.append(message)

    async def run(warm: bool) -> tuple[list[str], list[dict]]:
        settings.TTS_WARM_UP = warm
        layer = get_channel_layer()
        channel = f"warm-test-{time.monotonic_ns()}"
        worker = Worker(application=Echo.as_asgi(), channels=[channel], channel_layer=layer)
        task = asyncio.ensure_future(worker.handle())
        try:
            await asyncio.sleep(0.3)
            made = list(worker.application_instances)
            await layer.send(channel, {"type": "test.message", "n": 1})
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.05)
            return made, list(got)
        finally:
            task.cancel()
            for details in worker.application_instances.values():
                details["future"].cancel()
            await asyncio.gather(task, return_exceptions=True)

    made, messages = async_to_sync(run)(True)
    assert len(made) == 1 and messages == [{"type": "test.message", "n": 1}]
    got.clear()
    made, messages = async_to_sync(run)(False)
    assert made == [] and messages == [{"type": "test.message", "n": 1}]
