"""Hot queries compiled once (tts.compiled): the same rows as the ORM's, on SQLite and on
PostgreSQL (make test-postgres), for any values, from any thread."""

from __future__ import annotations

import datetime
import threading
import uuid

import pytest
from django.db import connection, models
from django.db.models import F
from django.utils import timezone

from tts import services, storing, synthesis
from tts.compiled import Compiled
from tts.models import SessionStatus, TTSSession
from tts.services import Owner

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(session_key="k" * 32, ip="127.0.0.1")


def narrated(text: str) -> TTSSession:
    session = services.session_create(text=text, owner=OWNER, dispatch=False)
    services.session_run(session_id=session.id, worker="test")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    return session


def test_the_replay_lookup_returns_what_the_orm_returns():
    first = narrated("The first text. It has two sentences.")
    second = narrated("Another text, narrated too.")
    for session in (first, second):
        rows = services._REPLAY_SOURCE.run(key=session.narration_key)
        assert rows == list(services._replay_source(session.narration_key))
        assert [row[2] for row in rows] == list(range(session.total_chunks))  # seq, ordered
    assert services._REPLAY_SOURCE.run(key="0" * 64) == []


def test_the_claim_returns_the_claimed_session_as_a_read_does(django_assert_num_queries):
    sessions = [
        services.session_create(text=f"Text {n}.", owner=OWNER, dispatch=False) for n in (1, 2)
    ]
    now = timezone.now()
    for session in sessions:  # the SQL is reused; the values are each call's own
        with django_assert_num_queries(1):
            [claimed] = services._CLAIM.run(session_id=session.id, worker="w", now=now)
        stored = TTSSession.objects.get(pk=session.id)
        for field in TTSSession._meta.concrete_fields:
            assert getattr(claimed, field.attname) == getattr(stored, field.attname), field.name
        assert (claimed.status, claimed.claimed_by, claimed.attempts) == ("running", "w", 1)
        assert claimed.heartbeat_at == now and isinstance(claimed.id, uuid.UUID)
        assert claimed._state.db == "default" and not claimed._state.adding
    later = now + datetime.timedelta(seconds=5)
    assert services._CLAIM.run(session_id=sessions[0].id, worker="w", now=later) == []


def test_a_compiled_query_runs_from_many_threads_at_once():
    sessions = [
        services.session_create(text=f"Text {n}.", owner=OWNER, dispatch=False) for n in range(8)
    ]
    query = Compiled.values_list(
        lambda session_id: TTSSession.objects.filter(pk=session_id).values_list("text"),
        session_id=TTSSession._meta.pk,
    )
    found, errors = {}, []

    def read(session):
        try:
            found[session.id] = query.run(session_id=session.id)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=read, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert found == {s.id: [(s.text,)] for s in sessions}


def test_a_value_that_is_not_a_parameter_of_the_sql_fails_at_once():
    query = Compiled.values_list(
        lambda text: TTSSession.objects.filter(status="queued").values_list("pk"),
        text=TTSSession._meta.get_field("text"),
    )
    with pytest.raises(ValueError, match="text is not a parameter of the compiled SQL"):
        query.run(text="anything")


def test_values_are_checked():
    query = Compiled.update_returning(
        lambda session_id: (TTSSession.objects.filter(pk=session_id), {"attempts": F("attempts")}),
        session_id=TTSSession._meta.pk,
    )
    with pytest.raises(ValueError, match="None"):  # the ORM would have made it IS NULL
        query.run(session_id=None)
    with pytest.raises(TypeError, match="expected the values"):
        query.run(session=uuid.uuid4())
    with pytest.raises(TypeError, match="no stand-in"):
        Compiled.values_list(
            lambda data: TTSSession.objects.filter(pk=data).values_list("pk"),
            data=models.BinaryField(),
        ).run(data=b"x")


def test_a_sockets_reads_return_what_the_orm_returns():
    from tts.models import TTSChunk
    from tts.replay import BATCH, stored_chunks

    session = narrated(" ".join(f"Sentence number {n} is here." for n in range(40)))
    assert session.total_chunks > BATCH  # a second batch, and a batch before a seq
    for after, before in [(-1, None), (2, None), (BATCH, None), (-1, 3), (5, 9), (7, 8)]:
        got = stored_chunks(session.id, after=after, before=before)
        bounds = {"seq__gt": after} | ({} if before is None else {"seq__lt": before})
        rows = list(
            TTSChunk.objects.filter(session_id=session.id, **bounds)
            .order_by("seq")
            .values_list("seq", "audio__pcm")[:BATCH]
        )
        assert [(c.meta["seq"], c.pcm) for c in got] == [(r[0], bytes(r[-1])) for r in rows]
        assert len(got) == min(BATCH, len(rows)) and (not got or got[0].meta["seq"] == after + 1)
    assert services.session_get(session_id=session.id).__dict__.keys() >= {"text", "status"}
    assert services.session_get(session_id=str(session.id)).text == session.text
    rate = TTSSession.objects.get(pk=session.id).chunks.first().sample_rate
    assert services.session_frame(session)["sample_rate"] == rate
    with pytest.raises(services.NotFound):
        services.session_get(session_id=uuid.uuid4())
    with pytest.raises(services.NotFound):
        services.session_get(session_id="not-an-id")


def test_the_session_engine_reads_what_djangos_reads():
    from django.contrib.sessions.backends.db import SessionStore as Djangos
    from django.contrib.sessions.models import Session

    from tts.sessions import SessionStore

    store = SessionStore()
    store["owner"] = "someone"
    store.create()
    for reader in (SessionStore, Djangos):
        assert reader(store.session_key).load() == {"owner": "someone"}
    expired = Session.objects.filter(pk=store.session_key)
    expired.update(expire_date=timezone.now() - datetime.timedelta(seconds=1))
    for key in (store.session_key, "x" * 32, "x" * 5000, "'; DROP TABLE x; --", None):
        again = SessionStore(key)
        assert again.load() == {} and again.session_key is None


def test_stored_audio_keys_are_found_by_lists_of_any_length():
    session = narrated("One sentence here. And a second one there.")
    keys = list(session.chunks.values_list("audio_id", flat=True))
    unknown = [f"{n:064x}" for n in range(70)]
    for ask in ([], keys[:1], keys, [*keys, *keys], [*unknown[:3], *keys], [*unknown, *keys]):
        assert synthesis.cached_keys(ask) == set(keys) & set(ask)
    assert synthesis.cached_keys([*unknown, *keys], batch=2) == set(keys)


class _ElsewhereRouter:
    """Sends sessions to a database alias of their own (not configured: any query there
    fails, which shows where it went)."""

    def db_for_read(self, model, **hints):
        return "elsewhere" if model is TTSSession else None

    db_for_write = db_for_read


def test_a_compiled_query_goes_where_the_routers_send_its_model(settings):
    from django.utils.connection import ConnectionDoesNotExist

    query = Compiled.instances(
        lambda session_id: TTSSession.objects.filter(pk=session_id), session_id=TTSSession._meta.pk
    )
    assert query.run(session_id=uuid.uuid4()) == []  # the default database
    settings.DATABASE_ROUTERS = [f"{__name__}._ElsewhereRouter"]  # Django reloads them
    try:
        with pytest.raises(ConnectionDoesNotExist):
            query.run(session_id=uuid.uuid4())
        assert query.run(session_id=uuid.uuid4(), using="default") == []
    finally:
        settings.DATABASE_ROUTERS = []


def _running(text: str, worker: str = "w") -> TTSSession:
    session = services.session_create(text=text, owner=OWNER, dispatch=False)
    return services.session_claim(session_id=session.id, worker=worker)


@pytest.mark.parametrize("total", [False, True])
@pytest.mark.parametrize("complete", [False, True])
@pytest.mark.parametrize("first", [False, True])
def test_a_stores_update_sets_what_the_orms_update_sets(total, complete, first):
    kinds = {"total": total, "key": complete, "first_ms": first}
    advance = storing._advance(frozenset(name for name, on in kinds.items() if on))
    compiled_one, orm_one = _running("Compiled."), _running("Through the ORM.")
    now = timezone.now()
    values = {"completed": 3, "now": now, "engine_ms": 41, "audio_ms": 2900}
    values |= {"total": 7} if total else {}
    values |= {"key": "k" * 64} if complete else {}
    values |= {"first_ms": 12} if first else {}
    for _ in range(1 if complete else 2):  # the SQL is reused; the increments add up
        assert advance.run(session_id=compiled_one.id, worker="w", **values) == 1
        held, updates = advance._build(session_id=orm_one.id, worker="w", **values)
        assert held.update(**updates) == 1
    got, want = (TTSSession.objects.get(pk=s.id) for s in (compiled_one, orm_one))
    changed = [
        "status", "completed_chunks", "heartbeat_at", "engine_ms", "audio_ms", "total_chunks",
        "finished_at", "real_time_factor", "first_chunk_ms",
    ] + (["narration_key"] if complete else [])  # fmt: skip
    for name in changed:
        assert getattr(got, name) == getattr(want, name), name
    runs = 1 if complete else 2
    assert (got.engine_ms, got.audio_ms, got.heartbeat_at) == (41 * runs, 2900 * runs, now)
    assert (got.total_chunks == 7) is total and (got.first_chunk_ms == 12) is first
    if complete:
        assert (got.status, got.finished_at, got.narration_key) == ("completed", now, "k" * 64)
        assert got.real_time_factor == pytest.approx(41 / 2900)
    else:
        assert (got.status, got.finished_at) == ("running", None)
    # Not held by this worker (or no longer running): nothing changes.
    assert advance.run(session_id=compiled_one.id, worker="other", **values) == 0
    assert advance.run(session_id=uuid.uuid4(), worker="w", **values) == 0
    assert TTSSession.objects.get(pk=compiled_one.id).engine_ms == 41 * runs


def test_rows_are_inserted_as_bulk_create_inserts_them(django_assert_num_queries):
    from django.db import IntegrityError

    from tts import compiled
    from tts.models import AudioBlob, TTSChunk

    AudioBlob.objects.add(key="a" * 64, pcm=b"\x00\x01" * 10, sample_rate=22050, samples=10)
    sessions = [_running("Inserted here."), _running("Created by the ORM.")]

    def rows(session, seqs):
        return [
            TTSChunk(
                session_id=session.id, seq=seq, text=f"Chunk {seq}, «ünïcode».", char_start=seq,
                char_end=seq + 9, samples=10, sample_rate=22050, audio_id="a" * 64,
                cached=seq % 2 == 0, engine_ms=seq * 3, cushion_ms=None if seq else 250,
            )
            for seq in seqs
        ]  # fmt: skip

    with django_assert_num_queries(1):
        compiled.insert(rows(sessions[0], range(3)))
    TTSChunk.objects.bulk_create(rows(sessions[1], range(3)))
    got, want = (
        list(TTSChunk.objects.filter(session_id=s.id).order_by("seq").values()) for s in sessions
    )
    assert len(got) == 3
    for inserted, created in zip(got, want, strict=True):
        for name in ("id", "session_id", "created_at"):
            del inserted[name], created[name]
        assert inserted == created
    # A row that breaks a constraint: none of the statement's rows is inserted.
    with pytest.raises(IntegrityError):
        compiled.insert(rows(sessions[0], [3, 2]))
    assert TTSChunk.objects.filter(session_id=sessions[0].id).count() == 3
    # More rows than one statement may carry on SQLite (999 values): in batches.
    compiled.insert(rows(sessions[1], range(3, 203)))
    assert TTSChunk.objects.filter(session_id=sessions[1].id).count() == 203
    with django_assert_num_queries(0):
        compiled.insert([])  # nothing to insert
    with pytest.raises(TypeError, match="one model"):
        compiled.insert([*rows(sessions[0], [4]), AudioBlob(key="b" * 64)])


def test_the_queues_oldest_session_is_the_one_the_orm_finds():
    assert services._OLDEST_QUEUED.run() == []
    sessions = [
        services.session_create(text=f"Queued {n}.", owner=OWNER, dispatch=False) for n in (1, 2, 3)
    ]
    now = timezone.now()
    for age, session in zip((5, 9, 7), sessions, strict=True):  # the second is the oldest
        TTSSession.objects.filter(pk=session.id).update(
            created_at=now - datetime.timedelta(seconds=age)
        )
    orm = (
        TTSSession.objects.filter(status=SessionStatus.QUEUED)
        .order_by("created_at")
        .values_list("pk", flat=True)
    )
    assert services._OLDEST_QUEUED.run() == [(sessions[1].id,)] == [(orm.first(),)]
    claimed = services.session_claim_next(worker="w")
    assert claimed.id == sessions[1].id and claimed.status == "running"
    assert services._OLDEST_QUEUED.run() == [(sessions[2].id,)] == [(orm.first(),)]


def test_a_cached_segments_audio_is_read_as_the_orm_reads_it():
    from tts.models import AudioBlob

    pcm = bytes(range(256)) * 40
    AudioBlob.objects.add(key="c" * 64, pcm=pcm, sample_rate=22050, samples=len(pcm) // 2)
    [(got, rate)] = synthesis._STORED_AUDIO.run(key="c" * 64)
    orm = AudioBlob.objects.filter(key="c" * 64).values_list("pcm", "sample_rate").first()
    assert (bytes(got), rate) == (bytes(orm[0]), orm[1]) == (pcm, 22050)
    assert synthesis._STORED_AUDIO.run(key="d" * 64) == []
