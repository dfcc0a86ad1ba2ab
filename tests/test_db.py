"""tts.db: the sockets' one database thread keeps its connection (TTS_WEB_CONN_MAX_AGE)."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import SyncToAsync
from django.db import connection, connections

from tts.db import left_to_its_settings, socket_database_sync_to_async
from tts.models import TTSSession

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def _query():
    """A socket's trip: one query; returns this thread's connection handler and the DB-API
    connection it used."""
    TTSSession.objects.exists()
    handler = connections["default"]  # this thread's own (not the proxy)
    return handler, handler.connection


def _pooled_or_persistent() -> bool:
    return left_to_its_settings(connection.settings_dict)


@pytest.fixture
def shared_thread_closed():
    """Start and end on a shared thread with no connection: tests must not see another's."""
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


@pytest.mark.usefixtures("shared_thread_closed")
async def test_the_shared_thread_keeps_its_connection_between_trips(settings):
    settings.TTS_WEB_CONN_MAX_AGE = 60
    handler, first = await socket_database_sync_to_async(_query)()
    _, second = await socket_database_sync_to_async(_query)()
    if _pooled_or_persistent():  # its own settings decide: nothing kept by tts.db
        assert not hasattr(handler, "_tts_kept")
        return
    assert second is first
    assert handler.connection is first  # still open after the trip


@pytest.mark.usefixtures("shared_thread_closed")
async def test_a_kept_connection_is_replaced_once_it_is_old(settings):
    if _pooled_or_persistent():
        pytest.skip("the database's own CONN_MAX_AGE or pool decides")
    settings.TTS_WEB_CONN_MAX_AGE = 1
    _, first = await socket_database_sync_to_async(_query)()
    _, again = await socket_database_sync_to_async(_query)()
    assert again is first  # use does not renew it ...
    await asyncio.sleep(1.1)
    handler, later = await socket_database_sync_to_async(_query)()
    assert later is not first  # ... its age does: closed after the trip that found it old
    assert handler.connection is later


@pytest.mark.usefixtures("shared_thread_closed")
async def test_zero_means_a_connection_per_trip(settings):
    settings.TTS_WEB_CONN_MAX_AGE = 0
    handler, first = await socket_database_sync_to_async(_query)()
    if _pooled_or_persistent():
        pytest.skip("the database's own CONN_MAX_AGE or pool decides")
    assert handler.connection is None  # closed at the end of the trip, as Channels does
    _, second = await socket_database_sync_to_async(_query)()
    assert second is not first


async def test_other_threads_close_theirs(settings):
    settings.TTS_WEB_CONN_MAX_AGE = 60
    handler, _ = await socket_database_sync_to_async(_query, thread_sensitive=False)()
    if _pooled_or_persistent():
        pytest.skip("the database's own CONN_MAX_AGE or pool decides")
    assert handler.connection is None  # a thread that may end would take it along
