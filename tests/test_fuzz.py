"""Property-based fuzzing: whatever arrives, the API answers without a 5xx and the socket
consumer answers without crashing."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.asgi import application
from tts import services

pytestmark = pytest.mark.django_db(transaction=True)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.one_of(
    st.dictionaries(
        st.sampled_from(["text", "voice", "scene", "extra"]), json_values, max_size=4
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    body=bodies,
    content_type=st.sampled_from(
        ["application/json", "text/plain", "application/x-www-form-urlencoded"]
    ),
)
def test_posting_anything_never_gives_a_5xx(body, content_type):
    response = Client().post("/api/tts/sessions/", data=body, content_type=content_type)
    assert response.status_code < 500
    if response.status_code >= 400:
        assert response.json()["error"]["code"]


@FUZZ
@given(
    path=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    seq=st.integers(min_value=-(2**70), max_value=2**70),
)
def test_reading_odd_ids_and_seqs_never_gives_a_5xx(path, seq):
    client = Client()
    for url in (
        f"/api/tts/sessions/{path}/",
        f"/api/tts/sessions/{path}/chunks/{seq}",
        f"/api/tts/sessions/00000000-0000-0000-0000-000000000000/chunks/{seq}",
        f"/api/tts/sessions/{path}/audio.wav",
    ):
        assert client.get(url).status_code < 500


messages = st.one_of(
    json_values.map(json.dumps),
    st.text(min_size=1, max_size=5000),
    st.binary(min_size=1, max_size=100),
    st.fixed_dictionaries({"type": st.text(max_size=10)}).map(json.dumps),
).filter(lambda m: not _is_cancel(m))  # a cancel is legitimate: it ends the session


@FUZZ
@given(sent=st.lists(messages, min_size=1, max_size=5))
def test_the_socket_survives_any_client_message(sent):
    @sync_to_async
    def session():
        owner = services.Owner(is_staff=True)
        return services.session_create(text="Fuzz me.", owner=owner, dispatch=False)

    async def run():
        created = await session()
        comm = WebsocketCommunicator(
            application, f"/ws/tts/{created.id}/", headers=[(b"origin", b"http://127.0.0.1")]
        )
        from django.contrib.auth.models import AnonymousUser

        staff = type("Staff", (AnonymousUser,), {"is_authenticated": True, "is_staff": True})
        comm.scope["user"] = staff()
        assert (await comm.connect())[0]
        await comm.receive_json_from()
        await comm.receive_json_from()
        for message in sent:
            if isinstance(message, bytes):
                await comm.send_to(bytes_data=message)
            else:
                await comm.send_to(text_data=message)
            reply = await comm.receive_json_from(timeout=3)
            assert reply["type"] in {"error", "pong"}
            if reply["type"] == "error":
                assert reply["fatal"] is False
        await comm.send_json_to({"type": "ping"})
        assert await comm.receive_json_from(timeout=3) == {"type": "pong"}
        await comm.disconnect()

    async_to_sync(run)()


def _is_cancel(message: str | bytes) -> bool:
    try:
        decoded = json.loads(message)
    except ValueError:
        return False
    return isinstance(decoded, dict) and decoded.get("type") in ("cancel", "ping")
