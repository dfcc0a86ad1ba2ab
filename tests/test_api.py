"""The HTTP API: validation, errors as JSON 4xx, never a 500."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client

from tts.models import SessionStatus, TTSSession

# A session posted here and run in this process would be the live stack's worker's, in
# a run where an earlier test started that stack.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("private_channel_layer")]


def post(client: Client, body, content_type: str = "application/json"):
    data = json.dumps(body) if not isinstance(body, bytes | str) else body
    return client.post("/api/tts/sessions/", data=data, content_type=content_type)


def error_code(response) -> str:
    return response.json()["error"]["code"]


def test_it_creates_a_queued_session_with_urls(client):
    response = post(client, {"text": "Hello there. How are you?"})
    assert response.status_code == 201
    body = response.json()
    session = TTSSession.objects.get(pk=body["id"])
    assert session.status == SessionStatus.QUEUED
    assert body["ws_url"].endswith(f"/ws/tts/{session.id}/")
    assert body["status_url"] == f"/api/tts/sessions/{session.id}/"
    assert body["audio_url"] == f"/api/tts/sessions/{session.id}/audio.wav"
    assert body["voice"] == "en-us"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"text": ""}, "empty_text"),
        ({"text": "   \n\t "}, "empty_text"),
        ({}, "empty_text"),
        ({"text": 42}, "invalid_text"),
        ({"text": "... — !?"}, "nothing_to_say"),
        ({"text": ["a"]}, "invalid_text"),
        ({"text": "hi", "voice": "no-such-voice"}, "unknown_voice"),
        ({"text": "hi", "voice": 7}, "invalid_voice"),
        ({"scene": 999999}, "unknown_scene"),
        ({"scene": True}, "invalid_scene"),
        ({"text": "\ud800 lone surrogate"}, "invalid_text"),
    ],
)
def test_bad_input_gets_a_json_400(client, body, code):
    response = post(client, body)
    assert response.status_code == 400, response.content
    assert error_code(response) == code
    assert response.json()["error"]["message"]


def test_a_client_may_choose_the_id_once(client):
    """So that it can open the session's socket (?pending=1) while the POST is in flight."""
    chosen = uuid.uuid4()
    response = post(client, {"text": "Hello there.", "id": str(chosen)})
    assert response.status_code == 201 and response.json()["id"] == str(chosen)
    assert TTSSession.objects.filter(pk=chosen).exists()
    again = post(client, {"text": "Something else.", "id": str(chosen)})
    assert again.status_code == 409 and error_code(again) == "id_taken"
    assert TTSSession.objects.get(pk=chosen).text == "Hello there."


@pytest.mark.django_db(transaction=True)  # the view's own autocommit, as in production
def test_a_chosen_id_is_inserted_without_a_transaction_around_it_and_refused_when_taken(client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    chosen = uuid.uuid4()
    post(client, {"text": "A warm-up, for the browser's session row."})
    with CaptureQueriesContext(connection) as queries:
        response = post(client, {"text": "Hello there.", "id": str(chosen)})
    assert response.status_code == 201
    statements = [query["sql"].split()[0].upper() for query in queries.captured_queries]
    assert "SAVEPOINT" not in statements and "BEGIN" not in statements, statements
    again = post(client, {"text": "Something else.", "id": str(chosen)})
    assert again.status_code == 409 and error_code(again) == "id_taken"
    assert TTSSession.objects.get(pk=chosen).text == "Hello there."
    assert TTSSession.objects.count() == 2


@pytest.mark.django_db(transaction=True)  # the worker stores on a thread of its own
def test_a_text_narrated_before_is_answered_completed_with_its_audio(client):
    from tts import services

    first_id = post(client, {"text": "Hello there. How are you?"}).json()["id"]
    services.session_run(session_id=first_id, worker="test")
    response = post(client, {"text": "Hello there. How are you?"})
    assert response.status_code == 201 and response.json()["status"] == "completed"
    detail = client.get(response.json()["status_url"]).json()
    assert detail["completed_chunks"] == detail["total_chunks"] == len(detail["chunks"]) > 1
    for seq in range(detail["total_chunks"]):
        replayed = client.get(f"{response.json()['status_url']}chunks/{seq}")
        assert replayed.status_code == 200
        assert replayed.content == client.get(f"/api/tts/sessions/{first_id}/chunks/{seq}").content


@pytest.mark.parametrize("bad", ["not-a-uuid", str(uuid.UUID(int=0)), 42, ["x"], "1234"])
def test_a_bad_chosen_id_gets_a_400(client, bad):
    response = post(client, {"text": "Hello there.", "id": bad})
    assert response.status_code == 400 and error_code(response) == "invalid_id"
    assert response.json()["error"]["fields"] == {"id": "must be a UUID"}
    assert not TTSSession.objects.exists()


def test_text_over_the_limit_is_refused(client, settings):
    settings.TTS_MAX_CHARS = 50
    response = post(client, {"text": "word " * 20})
    assert response.status_code == 400
    assert error_code(response) == "text_too_long"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe\x00"])
def test_malformed_json_gets_a_400(client, raw):
    response = post(client, raw)
    assert response.status_code == 400
    assert error_code(response) in {"invalid_json", "invalid_utf8"}


def test_control_characters_are_stripped(client):
    response = post(client, {"text": "Hello\x00 wor\x07ld.\r\nNext line."})
    assert response.status_code == 201
    session = TTSSession.objects.get(pk=response.json()["id"])
    assert session.text == "Hello world.\nNext line."


def test_unknown_session_is_404_and_bad_ids_too(client):
    assert client.get(f"/api/tts/sessions/{uuid.uuid4()}/").status_code == 404
    assert client.get("/api/tts/sessions/not-a-uuid/").status_code == 404


def test_another_visitor_cannot_read_a_session(client):
    session_id = post(client, {"text": "Mine."}).json()["id"]
    stranger = Client()
    assert stranger.get(f"/api/tts/sessions/{session_id}/").status_code == 403
    assert stranger.get(f"/api/tts/sessions/{session_id}/chunks/0").status_code == 403
    assert client.get(f"/api/tts/sessions/{session_id}/").status_code == 200


def test_browser_posts_need_the_csrf_token():
    client = Client(enforce_csrf_checks=True)
    assert post(client, {"text": "Hi."}).status_code == 403
    client.get("/api/tts/voices/")
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/api/tts/sessions/",
        data=json.dumps({"text": "Hi."}),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 201


def test_voices_lists_availability_and_the_default(client):
    body = client.get("/api/tts/voices/").json()
    assert body["default"] == "en-us"
    voices = {v["id"]: v for v in body["voices"]}
    assert voices["en-us"]["available"] is True
    assert voices["en-us"]["default"] is True
    assert {"id", "label", "engine", "language", "available", "reason", "default"} <= set(
        voices["en-us"]
    )
    missing = voices["coqui-ljspeech-vits"]
    assert missing["available"] is False
    assert "tts_models" in missing["reason"]


def test_an_unavailable_voice_is_refused_not_swapped(client):
    response = post(client, {"text": "Hi.", "voice": "coqui-ljspeech-vits"})
    assert response.status_code == 400
    assert error_code(response) == "voice_unavailable"


def test_rate_limit_answers_429_with_retry_after(client, settings):
    settings.TTS_RATE_LIMIT_PER_MINUTE = 0
    settings.TTS_MAX_ACTIVE_PER_OWNER = 2
    assert post(client, {"text": "One."}).status_code == 201
    assert post(client, {"text": "Two."}).status_code == 201
    response = post(client, {"text": "Three."})
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert error_code(response) == "too_many_active"


@pytest.mark.django_db(transaction=True)  # the worker's writer thread has its own connection
def test_a_replay_is_not_held_back_by_the_active_limit(client, settings):
    """The active limit guards the workers; a text narrated before takes none."""
    from tts import services

    settings.TTS_RATE_LIMIT_PER_MINUTE = 0
    settings.TTS_MAX_ACTIVE_PER_OWNER = 1
    earlier = services.Owner(session_key="e" * 32)
    done = services.session_create(text="Told before.", owner=earlier, dispatch=False)
    services.session_run(session_id=done.id, worker="w")
    assert post(client, {"text": "Queued."}).status_code == 201  # takes the one slot
    replay = post(client, {"text": "Told before."})
    assert replay.status_code == 201 and replay.json()["status"] == "completed"
    refused = post(client, {"text": "Something new."})
    assert refused.status_code == 429 and error_code(refused) == "too_many_active"


def test_a_chunk_not_made_yet_differs_from_one_that_never_will(client):
    session_id = post(client, {"text": "One sentence only."}).json()["id"]
    pending = client.get(f"/api/tts/sessions/{session_id}/chunks/0")
    assert pending.status_code == 404 and error_code(pending) == "chunk_pending"
    assert pending["Retry-After"] == "1"
    assert client.post(f"/api/tts/sessions/{session_id}/cancel/").status_code == 200
    gone = client.get(f"/api/tts/sessions/{session_id}/chunks/0")
    assert gone.status_code == 410 and error_code(gone) == "chunk_gone"


def test_the_per_minute_limit_is_counted_in_redis_and_answers_429(client, settings):
    settings.TTS_RATE_LIMIT_PER_MINUTE = 2
    assert post(client, {"text": "One."}).status_code == 201
    assert post(client, {"text": "Two."}).status_code == 201
    response = post(client, {"text": "Three."})
    assert response.status_code == 429 and error_code(response) == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60


def test_the_voice_catalog_follows_its_settings_and_extra_voices_file(client, settings, tmp_path):
    """Built once (every POST and worker looks a voice up), and built again when a TTS_
    setting or the extra voices file changes."""
    extra = tmp_path / "voices.json"
    voice = {"id": "extra-one", "engine": "espeak", "name": "en-us", "language": "en-us"}
    extra.write_text(json.dumps([voice]))
    settings.TTS_EXTRA_VOICES_FILE = str(extra)

    def ids() -> set[str]:
        return {v["id"] for v in client.get("/api/tts/voices/").json()["voices"]}

    assert "extra-one" in ids()
    extra.write_text(json.dumps([{**voice, "id": "extra-second"}]))
    assert {"extra-one", "extra-second"} & ids() == {"extra-second"}
    settings.TTS_VOICES = [{"id": "only-this", "engine": "espeak", "name": "en-us"}]
    assert ids() == {"only-this", "extra-second"}


def test_a_garbage_session_cookie_is_just_a_new_visitor(client):
    """The session engine's compiled read (tts.sessions) with keys no session has."""
    for key in ("x" * 5000, "'; DROP TABLE django_session; --", "short"):
        client.cookies["sessionid"] = key
        assert client.get("/api/tts/voices/").status_code == 200
        created = client.post(
            "/api/tts/sessions/", {"text": "Hello there."}, content_type="application/json"
        )
        assert created.status_code == 201, created.content
        assert client.cookies["sessionid"].value != key  # a fresh session of its own


def test_the_chunks_of_a_running_session_carry_what_is_left_of_their_hold(client):
    """The HTTP fallback's player holds a slow engine's chunks as a socket's would
    (docs/protocol.md, tts/static/tts/poll.js); a finished session's chunks are not held."""
    from tests.conftest import hold_left_bounds, store_held_chunks

    session_id = post(client, {"text": "One sentence. And another."}).json()["id"]
    made = store_held_chunks(session_id, [2500], age_ms=500)

    running = client.get(f"/api/tts/sessions/{session_id}/").json()
    low, high = hold_left_bounds(2500, made, 500)
    assert running["status"] == "running"
    assert low <= running["chunks"][0]["cushion_ms"] <= high
    TTSSession.objects.filter(pk=session_id).update(status=SessionStatus.COMPLETED)
    finished = client.get(f"/api/tts/sessions/{session_id}/").json()
    assert "cushion_ms" not in finished["chunks"][0]


def test_json_nested_too_deeply_gets_a_400_not_a_500(client):
    """json's parser raises RecursionError, not ValueError, on deep nesting: 3 KB of '['."""
    for raw in ["[" * 5000, '{"text": ' + "[" * 5000]:
        response = post(client, raw)
        assert response.status_code == 400, response.content
        assert error_code(response) == "invalid_json"
    assert not TTSSession.objects.exists()


def test_under_a_prefix_the_done_frame_names_the_same_audio_url_as_the_post(client, settings):
    """The socket's `done` frame gives the whole narration's URL, which the player's
    Download link takes: where tts.urls is mounted, not a fixed path."""
    from tts import services

    settings.ROOT_URLCONF = "tests.prefixed_urls"
    response = client.post(
        "/narration/api/tts/sessions/", {"text": "Hello there."}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["audio_url"] == f"/narration/api/tts/sessions/{body['id']}/audio.wav"
    done = services.done_frame(uuid.UUID(body["id"]), total_chunks=1, duration_ms=900)
    assert done["audio_url"] == body["audio_url"]


@pytest.mark.django_db(transaction=True)  # SQLite's schema editor needs no transaction open
def test_a_scene_model_keyed_by_uuid_or_text_is_narrated_by_its_id(client, settings, monkeypatch):
    """TTS_SCENE_MODEL may name any model with get_narration_text(): the id the page sends
    is read as that model's own key, not as an integer."""
    from django.apps import apps
    from django.db import connection, models
    from django.test.utils import isolate_apps

    with isolate_apps("scenes"):

        class Narrated(models.Model):
            text = models.TextField()

            class Meta:
                abstract = True
                app_label = "scenes"

            def __str__(self) -> str:
                return self.text

            def get_narration_text(self) -> str:
                return self.text

        class Chapter(Narrated):
            id = models.UUIDField(primary_key=True, default=uuid.uuid4)

        class Page(Narrated):
            slug = models.SlugField(primary_key=True)

    registered = apps.get_model
    monkeypatch.setattr(
        apps,
        "get_model",
        lambda *a, **kw: (
            {"scenes.Chapter": Chapter, "scenes.Page": Page}.get(a[0]) or registered(*a, **kw)
        ),
    )
    from django.contrib.contenttypes.models import ContentType

    with connection.schema_editor() as editor:
        editor.create_model(Chapter)
        editor.create_model(Page)
    try:
        for model in (Chapter, Page):  # as migrate makes them for an installed model
            ContentType.objects.get_or_create(app_label="scenes", model=model._meta.model_name)
        chapter = Chapter.objects.create(text="The chapter begins here.")
        page = Page.objects.create(slug="the-first-page", text="The page begins here.")
        for label, key, text in [
            ("scenes.Chapter", str(chapter.pk), chapter.text),
            ("scenes.Page", page.pk, page.text),
        ]:
            settings.TTS_SCENE_MODEL = label
            response = post(client, {"scene": key})
            assert response.status_code == 201, response.content
            session = TTSSession.objects.get(pk=response.json()["id"])
            assert (session.text, session.subject_id) == (text, key)
        settings.TTS_SCENE_MODEL = "scenes.Chapter"
        for bad, code in [
            ("not-a-uuid", "unknown_scene"),
            (str(uuid.uuid4()), "unknown_scene"),
            ("x" * 65, "invalid_scene"),
            ("a\x00b", "invalid_scene"),
        ]:
            response = post(client, {"scene": bad})
            assert response.status_code == 400 and error_code(response) == code, bad
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Chapter)
            editor.delete_model(Page)


def test_a_refused_post_creates_no_browser_session(client):
    """A visitor's session is made for a POST that may narrate, not for bad input."""
    from django.contrib.sessions.models import Session

    response = post(client, {"text": ""})
    assert response.status_code == 400 and error_code(response) == "empty_text"
    assert "sessionid" not in response.cookies and not Session.objects.exists()
    response = post(client, {"text": "Hello there."})
    assert response.status_code == 201 and "sessionid" in response.cookies
    assert Session.objects.count() == 1
