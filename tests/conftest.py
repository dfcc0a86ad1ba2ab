"""Shared fixtures. The suite talks to a real Redis: the one at REDIS_URL when reachable,
else an embedded one started here. End-to-end tests start real daphne and worker
processes that share the test database (a file for SQLite; the test database on
PostgreSQL)."""

from __future__ import annotations

import atexit
import copy
import os
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
from django.conf import settings
from hypothesis import settings as hypothesis_settings

from scripts.stack import EmbeddedRedis, Stack, redis_reachable

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# Property tests draw new examples on every local run (and keep what failed in
# .hypothesis/ to try first next time); in CI they draw the same ones every time, so that
# a build passes or fails by the change under test. What a local run finds becomes an
# @example.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def record_calls(monkeypatch, owner: object, name: str) -> list:
    """Put a spy in place of ``owner.name``: each call's first argument goes into the
    returned list, and the call goes on to the real one."""
    calls: list = []
    real = getattr(owner, name)

    def spy(first, *args, **kwargs):
        calls.append(first)
        return real(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def _configure_redis() -> str:
    url = os.environ.get("REDIS_URL", settings.REDIS_URL)
    if not redis_reachable(url):
        embedded = EmbeddedRedis().start()
        atexit.register(embedded.stop)
        url = embedded.url
    prefix = f"test{uuid.uuid4().hex[:8]}"
    settings.REDIS_URL = url
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    config["hosts"][0]["address"] = url
    config["prefix"] = prefix
    return url


def _private_sqlite_test_db() -> None:
    """One test database file per pytest process, so parallel runs never share one."""
    from django.db import connections

    if not settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        return
    run_dir = Path(settings.BASE_DIR / ".run")
    run_dir.mkdir(exist_ok=True)
    name = str(run_dir / f"test-db-{os.getpid()}.sqlite3")
    for db in (settings.DATABASES["default"], connections.databases["default"]):
        db.setdefault("TEST", {})["NAME"] = name

    def remove() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(name + suffix).unlink(missing_ok=True)

    atexit.register(remove)


def _plain_static_storage() -> None:
    """Tests render pages without a collected manifest."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


REDIS_URL = _configure_redis()
_plain_static_storage()
_private_sqlite_test_db()


def test_database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    original = urlparse(os.environ["DATABASE_URL"])
    return urlunparse(original._replace(path=f"/{db['NAME']}"))


def stack_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_database_url(),
        REDIS_URL=settings.REDIS_URL,
        CHANNEL_LAYER_PREFIX=settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
        TTS_RATE_LIMIT_PER_MINUTE="0",
        TTS_MAX_ACTIVE_PER_OWNER="0",
        PYTHONUNBUFFERED="1",
        STATIC_MANIFEST="0",
    )
    env.update(overrides)
    return env


def private_stack_env(**overrides: str) -> dict[str, str]:
    """For a stack of a test's own: a channel prefix of its own, so that the session-wide
    live_stack's worker (same database, same Redis) never takes its sessions."""
    return stack_env(CHANNEL_LAYER_PREFIX=f"own{uuid.uuid4().hex[:8]}", **overrides)


@pytest.fixture(scope="session")
def live_stack(django_db_setup, django_db_blocker):
    """daphne + one worker, for the whole session."""
    with django_db_blocker.unblock():
        stack = Stack(env=stack_env(), workers=1, log_dir=ARTIFACTS / "logs").start()
    yield stack
    stack.stop()


@pytest.fixture
def private_channel_layer(request, settings):
    """Dispatches go to a prefix no worker listens on (unless the test wants the workers,
    live_stack), so that a session a test runs in-process is not claimed first by the
    worker of the live stack that an earlier test in the run started."""
    if "live_stack" in request.fixturenames:
        return
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"private{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = layers


@pytest.fixture
def thread_hops(monkeypatch):
    """Every trip from the event loop to a thread (asgiref's sync_to_async), by name."""
    from asgiref.sync import SyncToAsync

    hops: list[str] = []
    original = SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    return hops


@pytest.fixture(autouse=True)
def _live_sessions_settle(request):
    """A test on the shared stack ends once its worker has stopped writing: the next
    test's flush (TRUNCATE on PostgreSQL) deadlocked with a chunk store still in flight.
    Waits for no running session (queued ones are not being written), then for the
    stored rows to stop changing for 0.2 s (a cancelled session's worker still stores
    the segments its engine made ahead, into the audio cache), at most 10 s in all."""
    if "live_stack" not in request.fixturenames or not request.node.get_closest_marker("django_db"):
        yield
        return
    request.getfixturevalue("_django_db_helper")  # torn down after this one: the flush
    yield
    import time

    from tts.models import SessionStatus, TTSSession

    deadline = time.monotonic() + 10
    while TTSSession.objects.filter(status=SessionStatus.RUNNING).exists():
        if time.monotonic() > deadline:
            import warnings

            warnings.warn("a session is still running 10 s after its test ended", stacklevel=1)
            break
        time.sleep(0.05)
    from tts.models import AudioBlob, TTSChunk

    def stored() -> tuple[int, int]:
        return TTSChunk.objects.count(), AudioBlob.objects.count()

    last, still_since = stored(), time.monotonic()
    while time.monotonic() - still_since < 0.2 and time.monotonic() < deadline:
        time.sleep(0.05)
        if (now := stored()) != last:
            last, still_since = now, time.monotonic()


@pytest.fixture(autouse=True)
def _speeds_measured_afresh():
    """Each test's worker measures its voices' speed anew (tts.scheduling), as a worker
    process does from its start: no test runs sessions side by side on another's figures."""
    from tts import scheduling

    scheduling._measured.clear()


@pytest.fixture(autouse=True)
def _no_limits(settings):
    settings.TTS_RATE_LIMIT_PER_MINUTE = 0
    settings.TTS_MAX_ACTIVE_PER_OWNER = 0


@pytest.fixture(scope="session", autouse=True)
def _close_connections_before_the_drop(django_db_setup, django_db_blocker):
    """Close every connection before the test database is dropped: PostgreSQL's pool
    keeps idle ones, asgiref's thread for thread-sensitive code keeps its own, and so do
    tts.asgi's request threads without a pool (and the workers' store threads, where they
    keep theirs); each kept the database "accessed by other users" and its drop failed (a
    warning)."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    from tts.threads import close_kept_connections

    with django_db_blocker.unblock():
        # tts.asgi's request threads and the store threads keep theirs (without a pool,
        # where their process keeps connections): close them there.
        close_kept_connections()
        # asgiref's one thread for thread-sensitive sync code (the consumers' queries)
        # keeps a connection of its own; close it there, then the pool.
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
        for connection in connections.all(initialized_only=True):
            connection.close()
            if hasattr(connection, "close_pool"):
                connection.close_pool()


def store_first_chunks(session_id, count: int, *, worker: str, adjust=None) -> tuple[list, int]:
    """Claim the session and store its first ``count`` chunks as ``worker`` would, one by
    one (``adjust``: called with each row and its seq before it is stored). Returns each
    chunk's (row, audio) and the session's count of segments."""
    from tts import services, storing, synthesis

    session = services.session_claim(session_id=session_id, worker=worker)
    voice = services.voice_resolve(voice_id=session.voice)
    segments = synthesis.session_segments(session=session, voice=voice)
    stored = []
    for seq in range(count):
        audio = synthesis.segment_audio(
            segment=segments[seq], voice=voice, engine_model=session.model
        )
        row = storing.chunk_row(session.id, seq, segments[seq], audio)
        if adjust is not None:
            adjust(row, seq)
        assert storing.chunk_store(session=session, chunk=row, audio=audio, worker=worker)
        stored.append((row, audio))
    return stored, len(segments)


def store_held_chunks(session_id, holds: list[int | None], *, age_ms: float) -> object:
    """Claim the session and store its first ``len(holds)`` chunks as a worker would, each
    made ``age_ms`` ago with the hold it went out live with (None: none). Returns when
    they were made."""
    from datetime import timedelta

    from django.utils import timezone

    made = timezone.now() - timedelta(milliseconds=age_ms)

    def held(row, seq: int) -> None:
        row.cushion_ms, row.created_at = holds[seq], made

    store_first_chunks(session_id, len(holds), worker="held-test", adjust=held)
    return made


def hold_left_bounds(hold: int, made, age_ms: float) -> tuple[int, int]:
    """What is left of ``hold`` read between ``age_ms`` after ``made`` and now: the bounds
    a chunk's ``cushion_ms`` must fall within (whole milliseconds), however slow the host."""
    from django.utils import timezone

    age_now = (timezone.now() - made).total_seconds() * 1000
    return max(0, int(hold - age_now) - 1), max(0, round(hold - age_ms) + 1)
