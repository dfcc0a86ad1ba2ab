"""Fault injection with real processes: workers killed by PID, no worker at all, Redis
restarted mid-stream. Every scenario ends with complete, byte-identical audio."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from scripts.stack import EmbeddedRedis, Stack, stop_process, wait_for
from tests.conftest import ARTIFACTS, private_stack_env
from tts.client import NarrationClient
from tts.models import SessionStatus, TTSChunk, TTSSession

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FAST_RECOVERY = {
    "TTS_HEARTBEAT_TIMEOUT": "2",
    "TTS_QUEUED_TIMEOUT": "1",
    "TTS_SWEEP_INTERVAL": "0.5",
}


def story(n: int, tag: str) -> str:
    return " ".join(f"Sentence {i} of the {tag} tale rolls on." for i in range(n))


def assert_complete_and_identical(client: NarrationClient, session_id: str, pcm: bytes) -> None:
    session = TTSSession.objects.get(pk=session_id)
    assert session.status == SessionStatus.COMPLETED
    seqs = list(TTSChunk.objects.filter(session=session).values_list("seq", flat=True))
    assert seqs == list(range(session.total_chunks))
    assert pcm == client.audio(session_id)[44:]


@pytest.fixture
def make_stack(django_db_setup, django_db_blocker):
    stacks: list[Stack] = []

    def make(workers: int = 1, **env: str) -> Stack:
        with django_db_blocker.unblock():
            stack = Stack(
                env=private_stack_env(**{**FAST_RECOVERY, **env}),
                workers=workers,
                log_dir=ARTIFACTS / "logs-faults",
            )
            stacks.append(stack.start())
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def test_a_worker_killed_mid_session_is_replaced_and_listeners_get_the_rest(make_stack):
    stack = make_stack(workers=1, TTS_FAULT_DELAY_MS="100")
    client = NarrationClient(stack.base_url)
    session_id = client.create(text=story(30, "killed-worker"))["id"]
    result: dict = {}
    listener = threading.Thread(
        target=lambda: result.update(s=client.stream(session_id, timeout=90))
    )
    listener.start()
    wait_for(
        lambda: TTSChunk.objects.filter(session_id=session_id).count() >= 3,
        timeout=30,
        what="first chunks",
    )
    stop_process(stack.worker_procs[0], sig=signal.SIGKILL)
    stored_at_kill = TTSChunk.objects.filter(session_id=session_id).count()
    assert TTSSession.objects.get(pk=session_id).status == SessionStatus.RUNNING
    stack.start_worker()
    listener.join(timeout=120)
    stream = result["s"]
    assert stream.done is not None and stream.duplicates == 0
    assert stream.connections == 1  # the listener stayed connected throughout
    assert stored_at_kill < stream.done["total_chunks"]
    assert TTSSession.objects.get(pk=session_id).attempts == 2
    assert_complete_and_identical(client, session_id, stream.pcm)


def test_a_worker_running_two_sessions_at_once_killed_and_both_listeners_get_the_rest(
    make_stack,
):
    """One worker takes a second session on beside a long one (tts.scheduling); the
    second's first audio comes before the first ends. Killed with both under way, the
    worker is replaced; each listener, still connected, gets every chunk once."""
    stack = make_stack(workers=1, TTS_FAULT_DELAY_MS="100", TTS_WORKER_SESSIONS="2")
    client = NarrationClient(stack.base_url)
    first = client.create(text=story(40, "first"))["id"]
    wait_for(lambda: TTSChunk.objects.filter(session_id=first).exists(), timeout=30, what="a chunk")
    second = client.create(text=story(30, "second"))["id"]
    results: dict = {}
    listeners = [
        threading.Thread(target=lambda s=s: results.update({s: client.stream(s, timeout=120)}))
        for s in (first, second)
    ]
    for listener in listeners:
        listener.start()
    wait_for(
        lambda: TTSChunk.objects.filter(session_id=second).count() >= 2,
        timeout=30,
        what="the second session's first chunks",
    )
    assert TTSSession.objects.get(pk=first).status == SessionStatus.RUNNING  # side by side
    stop_process(stack.worker_procs[0], sig=signal.SIGKILL)
    stored_at_kill = {s: TTSChunk.objects.filter(session_id=s).count() for s in (first, second)}
    stack.start_worker()
    for listener in listeners:
        listener.join(timeout=150)
    for session_id in (first, second):
        stream = results[session_id]
        assert stream.done is not None and stream.duplicates == 0
        assert stream.connections == 1
        assert stored_at_kill[session_id] < stream.done["total_chunks"]
        assert TTSSession.objects.get(pk=session_id).attempts == 2
        assert_complete_and_identical(client, session_id, stream.pcm)


def test_a_session_created_with_no_worker_completes_once_one_starts(make_stack):
    # The message expires (expiry shortened from 60 s to 1 s), as it would over two minutes.
    stack = make_stack(workers=0, CHANNEL_LAYER_EXPIRY="1")
    client = NarrationClient(stack.base_url)
    session_id = client.create(text=story(4, "patient"))["id"]
    time.sleep(2.5)
    assert TTSSession.objects.get(pk=session_id).status == SessionStatus.QUEUED
    stack.start_worker()
    stream = client.stream(session_id, timeout=60)
    assert stream.done is not None
    assert_complete_and_identical(client, session_id, stream.pcm)


def test_redis_restarted_mid_stream_and_everything_recovers(make_stack):
    redis = EmbeddedRedis().start()
    try:
        stack = make_stack(workers=1, REDIS_URL=redis.url, TTS_FAULT_DELAY_MS="80")
        client = NarrationClient(stack.base_url)
        session_id = client.create(text=story(30, "redis-restart"))["id"]
        result: dict = {}
        listener = threading.Thread(
            target=lambda: result.update(s=client.stream(session_id, timeout=120))
        )
        listener.start()
        wait_for(
            lambda: TTSChunk.objects.filter(session_id=session_id).count() >= 3,
            timeout=30,
            what="first chunks",
        )
        redis.stop()
        time.sleep(1.5)
        redis.start()
        listener.join(timeout=150)
        stream = result["s"]
        assert stream.done is not None and stream.duplicates == 0
        assert stream.connections >= 2
        assert_complete_and_identical(client, session_id, stream.pcm)
        # The worker survived and still takes new work.
        second = client.create(text=story(3, "after-restart"))["id"]
        assert client.stream(second, timeout=60).done is not None
    finally:
        redis.stop()


def test_a_post_when_redis_is_down_is_accepted_and_recovered_later(make_stack):
    redis = EmbeddedRedis().start()
    try:
        stack = make_stack(workers=1, REDIS_URL=redis.url)
        client = NarrationClient(stack.base_url)
        client.request("GET", "/api/tts/voices/")  # the CSRF cookie
        redis.stop()
        status, body = client.request("POST", "/api/tts/sessions/", {"text": "Still here."})
        assert status == 201, body
        import json

        session_id = json.loads(body)["id"]
        redis.start()
        stream = client.stream(session_id, timeout=60)
        assert stream.done is not None
        assert_complete_and_identical(client, session_id, stream.pcm)
    finally:
        redis.stop()


def test_twenty_sessions_with_three_listeners_each_on_two_workers(make_stack):
    stack = make_stack(workers=2)
    client = NarrationClient(stack.base_url)
    ids = [client.create(text=story(6, f"load-{i}"))["id"] for i in range(20)]
    results: dict[tuple[str, int], object] = {}

    def listen(session_id: str, n: int) -> None:
        results[(session_id, n)] = client.stream(session_id, timeout=120)

    threads = [threading.Thread(target=listen, args=(sid, n)) for sid in ids for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert len(results) == 60
    for session_id in ids:
        streams = [results[(session_id, n)] for n in range(3)]
        assert all(s.done is not None and s.duplicates == 0 for s in streams)
        assert len({s.pcm for s in streams}) == 1
        assert_complete_and_identical(client, session_id, streams[0].pcm)
    workers = set(TTSSession.objects.filter(pk__in=ids).values_list("claimed_by", flat=True))
    assert len(workers) == 2
