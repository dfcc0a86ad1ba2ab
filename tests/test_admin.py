"""The narration admin: session pages, their actions, and narrating scenes from the admin.

Signed in as staff through Django's test client; sessions are synthesized in-process with
the real espeak engine."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from scenes.models import Scene, Story
from scripts.stack import ROOT, Stack
from tests.conftest import ARTIFACTS, stack_env
from tts import services, testing
from tts.engines import EngineError, get_engine
from tts.models import AudioBlob, SessionStatus, TTSChunk, TTSSession
from tts.services import Owner

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = "/admin/tts/ttssession/"
TEXT = "The tide came in at dusk. Gulls cried over the harbour. Mara lit the lamp."
OTHER_TEXT = "A different night entirely. The fog rolled over the rocks."
CLI = Owner(is_staff=True)


@pytest.fixture(autouse=True)
def _private_channel_layer(request, settings):
    """Dispatches from these tests go to a prefix no worker listens on, so nothing but the
    test itself runs their sessions."""
    if "live_stack" in request.fixturenames:
        return
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"admin{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = layers


@pytest.fixture(autouse=True)
def _plain_static_files(settings):
    # The manifest in STATIC_ROOT is built by collectstatic for deployments; tests render
    # templates against the source files.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def create(text: str = TEXT, *, owner: Owner = CLI, **kwargs) -> TTSSession:
    return services.session_create(text=text, owner=owner, dispatch=False, **kwargs)


def generate(session: TTSSession) -> None:
    """Run this one session in-process (session_run would drain the whole queue)."""
    claimed = services.session_claim(session_id=session.id, worker="test")
    services.session_generate(session=claimed, worker="test")


def generate_on_a_thread(session: TTSSession) -> None:
    """generate() as a worker thread runs it: the thread's connection is closed at the end
    (an open one would keep PostgreSQL's test database from being dropped)."""
    from django.db import connections

    try:
        generate(session)
    finally:
        connections.close_all()


def narrated(text: str = TEXT, **kwargs) -> TTSSession:
    session = create(text, **kwargs)
    if session.status == SessionStatus.QUEUED:  # not replayed from an earlier narration
        generate(session)
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    return session


def failed_after_first_chunk(monkeypatch, text: str = TEXT) -> TTSSession:
    engine, calls = get_engine("espeak"), []
    original = engine.synthesize

    def fail_second(text, voice):
        calls.append(text)
        if len(calls) == 2:
            raise EngineError("the synthesizer caught fire", code="engine_error")
        return original(text, voice)

    monkeypatch.setattr(engine, "synthesize", fail_second)
    session = create(text)
    generate(session)
    monkeypatch.setattr(engine, "synthesize", original)
    session.refresh_from_db()
    assert session.status == SessionStatus.FAILED and session.chunks.count() == 1
    return session


def make_story(*texts: str, slug: str = "harbour") -> Story:
    story = Story.objects.create(title="The Harbour", slug=slug)
    for position, text in enumerate(texts):
        Scene.objects.create(
            story=story, position=position, title=f"Scene {position + 1}", text=text, voice="en-us"
        )
    return story


def listed(client: Client, query: str = "") -> set:
    response = client.get(f"{SESSIONS}?{query}")
    assert response.status_code == 200
    return {session.id for session in response.context["cl"].result_list}


def run_action(client: Client, action: str, *sessions: TTSSession, url: str = SESSIONS):
    return client.post(
        url, {"action": action, "_selected_action": [str(s.pk) for s in sessions]}, follow=True
    )


def generate_messages(count: int) -> list[dict]:
    """What the workers would receive on the generate channel."""
    layer = get_channel_layer()

    async def receive() -> list[dict]:
        return [await layer.receive("tts-generate") for _ in range(count)]

    return async_to_sync(receive)()


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- The session list ---------------------------------------------------------------------


def test_the_list_shows_status_voice_subject_progress_timings_and_owner(admin_client):
    scene = make_story(TEXT).scenes.get()
    writer = User.objects.create_user("writer")
    done = narrated(subject=scene, owner=Owner(user_id=writer.pk))
    waiting = create(OTHER_TEXT, owner=Owner(session_key="k" * 32))

    response = admin_client.get(SESSIONS)
    html = response.content.decode()
    assert response.status_code == 200
    assert str(done.id)[:8] in html and str(waiting.id)[:8] in html
    assert "Completed" in html and "Queued" in html
    assert f"{done.total_chunks} / {done.total_chunks}" in html and "0 / ?" in html
    assert f"/admin/scenes/scene/{scene.pk}/change/" in html
    assert "writer" in html and "anonymous browser kkkkkkkk" in html
    assert f"{done.first_chunk_ms / 1000:.2f} s" in html
    assert f"{done.real_time_factor:.3f}" in html
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', html)
    assert headers == [
        "short_id",
        "status_badge",
        "voice",
        "subject_link",
        "progress",
        "first_chunk",
        "rtf",
        "audio_duration",
        "owner_display",
        "created_at",
    ]


def test_the_list_filters_by_status_voice_engine_and_date(admin_client, monkeypatch):
    done = narrated()
    british = create(OTHER_TEXT, voice_id="en-gb")
    failed = failed_after_first_chunk(monkeypatch, "Broken lamp tonight. It will not light.")
    TTSSession.objects.filter(pk=british.pk).update(created_at=timezone.now() - timedelta(days=3))

    assert listed(admin_client, "status__exact=completed") == {done.id}
    assert listed(admin_client, "status__exact=failed") == {failed.id}
    assert listed(admin_client, "voice=en-gb") == {british.id}
    assert listed(admin_client, "engine=espeak") == {done.id, british.id, failed.id}
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    since = urlencode({"created_at__gte": str(today)})
    assert listed(admin_client, since) == {done.id, failed.id}


def test_the_list_searches_text_and_ids(admin_client):
    first, second = create(TEXT), create(OTHER_TEXT)
    assert listed(admin_client, "q=harbour") == {first.id}
    assert listed(admin_client, f"q={second.id}") == {second.id}
    assert listed(admin_client, f"q={str(second.id)[:8]}") == {second.id}
    assert listed(admin_client, "q=nothing-like-this") == set()


# --- The session page ---------------------------------------------------------------------


def test_the_session_page_shows_text_timings_every_chunk_and_the_full_audio(admin_client):
    session = narrated(owner=Owner(session_key="s" * 32))
    chunks = list(session.chunks.order_by("seq"))
    response = admin_client.get(f"{SESSIONS}{session.id}/change/")
    html = response.content.decode()
    assert response.status_code == 200
    assert TEXT in html
    for field in ("First chunk", "Real-time factor", "Engine time", "Heartbeat at"):
        assert field in html
    assert "Error code" not in html  # shown only when there is one
    rows = re.findall(r'<tr data-seq="(\d+)">', html)
    assert rows == [str(c.seq) for c in chunks]
    for chunk in chunks:
        assert chunk.text in html
        assert f'src="/api/tts/sessions/{session.id}/chunks/{chunk.seq}"' in html
    assert f'src="/api/tts/sessions/{session.id}/audio.wav"' in html
    assert "session_live.js" not in html  # nothing left to follow


def test_staff_hear_every_chunk_and_the_full_audio_of_someone_elses_session(admin_client):
    session = narrated(owner=Owner(session_key="s" * 32))
    chunk = session.chunks.get(seq=0)
    response = admin_client.get(f"/api/tts/sessions/{session.id}/chunks/0")
    assert response.status_code == 200 and response["Content-Type"] == "audio/wav"
    assert response.content[44:] == bytes(chunk.audio.pcm)
    full = admin_client.get(f"/api/tts/sessions/{session.id}/audio.wav")
    assert full.status_code == 200


def test_a_running_session_page_listens_on_its_socket(admin_client):
    session = create()
    services.session_claim(session_id=session.id, worker="test")
    html = admin_client.get(f"{SESSIONS}{session.id}/change/").content.decode()
    assert "tts/admin/session_live.js" in html
    assert f'data-ws-path="/ws/tts/{session.id}/"' in html
    assert 'data-status="running"' in html and 'data-after="-1"' in html
    assert 'data-tts-field="status"' in html and 'data-tts-field="progress"' in html
    assert "Cancel narration" in html
    assert "Available once the narration has completed." in html


def test_a_failed_session_page_shows_the_error_and_offers_retry(admin_client, monkeypatch):
    session = failed_after_first_chunk(monkeypatch)
    html = admin_client.get(f"{SESSIONS}{session.id}/change/").content.decode()
    assert "engine_error" in html and "caught fire" in html
    assert "Retry from chunk 1" in html


def test_sessions_are_read_only(admin_client):
    session = narrated()
    assert admin_client.get(f"{SESSIONS}add/").status_code == 403
    response = admin_client.post(f"{SESSIONS}{session.id}/change/", {"text": "Changed."})
    assert response.status_code == 403
    session.refresh_from_db()
    assert session.text == TEXT


# --- Access -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [SESSIONS, "/admin/scenes/story/", "/admin/scenes/scene/"])
def test_people_who_are_not_staff_are_sent_to_the_login_page(client, url):
    assert client.get(url).status_code == 302
    client.force_login(User.objects.create_user("reader"))
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_non_staff_cannot_hear_someone_elses_session(client):
    session = narrated(owner=Owner(session_key="s" * 32))
    client.force_login(User.objects.create_user("reader"))
    assert client.get(f"/api/tts/sessions/{session.id}/chunks/0").status_code == 403


def test_staff_who_may_only_view_get_no_cancel_retry_or_delete(client):
    session = create()
    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_ttssession"))
    client.force_login(viewer)
    response = client.get(SESSIONS)
    assert response.status_code == 200
    form = response.context["action_form"]
    choices = [value for value, _ in form.fields["action"].choices] if form else []
    assert "cancel_sessions" not in choices and "delete_selected" not in choices
    assert client.post(f"{SESSIONS}{session.id}/cancel/").status_code == 403
    session.refresh_from_db()
    assert session.status == SessionStatus.QUEUED


# --- Actions ------------------------------------------------------------------------------


def test_cancel_stops_queued_and_running_sessions_and_leaves_the_rest(admin_client):
    queued, running, done = create(TEXT), create(OTHER_TEXT), narrated("Already done here.")
    services.session_claim(session_id=running.id, worker="test")
    response = run_action(admin_client, "cancel_sessions", queued, running, done)
    assert "2 narrations cancelled." in messages_of(response)
    assert any("1 left as they were" in m for m in messages_of(response))
    statuses = dict(TTSSession.objects.values_list("pk", "status"))
    assert statuses[queued.id] == statuses[running.id] == SessionStatus.CANCELLED
    assert statuses[done.id] == SessionStatus.COMPLETED


def test_retry_continues_a_failed_session_after_its_last_stored_chunk(admin_client, monkeypatch):
    session = failed_after_first_chunk(monkeypatch)
    first = session.chunks.get(seq=0)
    response = run_action(admin_client, "retry_sessions", session)
    assert "1 narration queued again." in messages_of(response)
    session.refresh_from_db()
    assert session.status == SessionStatus.QUEUED and not session.error_code

    generate(session)
    session.refresh_from_db()
    seqs = list(session.chunks.order_by("seq").values_list("seq", flat=True))
    assert session.status == SessionStatus.COMPLETED
    assert seqs == list(range(session.total_chunks))
    assert session.chunks.get(seq=0).pk == first.pk  # kept, not made again


def test_the_cancel_and_retry_buttons_of_the_session_page(admin_client):
    session = create()
    assert admin_client.get(f"{SESSIONS}{session.id}/cancel/").status_code == 405
    response = admin_client.post(f"{SESSIONS}{session.id}/cancel/", follow=True)
    assert "Narration cancelled." in messages_of(response)
    session.refresh_from_db()
    assert session.status == SessionStatus.CANCELLED

    response = admin_client.post(f"{SESSIONS}{session.id}/retry/", follow=True)
    assert any("queued again" in m for m in messages_of(response))
    session.refresh_from_db()
    assert session.status == SessionStatus.QUEUED
    response = admin_client.post(f"{SESSIONS}{session.id}/retry/", follow=True)
    assert any("Only a failed or cancelled" in m for m in messages_of(response))


def test_delete_removes_audio_no_other_session_uses_and_keeps_shared_audio(admin_client):
    shared_a, shared_b, alone = narrated(TEXT), narrated(TEXT), narrated(OTHER_TEXT)
    shared_keys = set(shared_b.chunks.values_list("audio_id", flat=True))
    alone_keys = set(alone.chunks.values_list("audio_id", flat=True))
    assert all(c.cached for c in shared_b.chunks.all())

    url = SESSIONS
    confirm = admin_client.post(
        url, {"action": "delete_selected", "_selected_action": [str(shared_a.pk), str(alone.pk)]}
    )
    assert confirm.status_code == 200 and b"Are you sure you want to delete" in confirm.content
    response = admin_client.post(
        url,
        {
            "action": "delete_selected",
            "post": "yes",
            "_selected_action": [str(shared_a.pk), str(alone.pk)],
        },
        follow=True,
    )
    assert any(f"kept {len(shared_keys)}" in m for m in messages_of(response))
    assert set(TTSSession.objects.values_list("pk", flat=True)) == {shared_b.id}
    assert set(AudioBlob.objects.values_list("key", flat=True)) == shared_keys
    assert not alone_keys & shared_keys

    # The delete button of the session page does the same for the last one.
    response = admin_client.post(f"{SESSIONS}{shared_b.id}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not TTSSession.objects.exists()
    assert not TTSChunk.objects.exists() and not AudioBlob.objects.exists()


def test_deleting_a_running_session_cancels_it_first(admin_client):
    session = create()
    services.session_claim(session_id=session.id, worker="test")
    admin_client.post(
        SESSIONS,
        {"action": "delete_selected", "post": "yes", "_selected_action": [str(session.pk)]},
    )
    assert not TTSSession.objects.exists()


# --- Stories and scenes -------------------------------------------------------------------


def test_a_story_and_its_scene_order_are_edited_inline(admin_client):
    story = make_story("First scene text.", "Second scene text.")
    first, second = story.scenes.all()
    page = admin_client.get(f"/admin/scenes/story/{story.pk}/change/")
    assert page.status_code == 200 and b"Second scene text." in page.content

    data = {
        "title": "The Harbour, revised",
        "slug": story.slug,
        "description": "",
        "scenes-TOTAL_FORMS": "2",
        "scenes-INITIAL_FORMS": "2",
        "scenes-MIN_NUM_FORMS": "0",
        "scenes-MAX_NUM_FORMS": "1000",
    }
    for index, (scene, position) in enumerate([(first, 1), (second, 0)]):
        data.update(
            {
                f"scenes-{index}-id": scene.pk,
                f"scenes-{index}-story": story.pk,
                f"scenes-{index}-position": position,
                f"scenes-{index}-title": scene.title,
                f"scenes-{index}-voice": "",
                f"scenes-{index}-text": scene.text,
            }
        )
    response = admin_client.post(f"/admin/scenes/story/{story.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    story.refresh_from_db()
    assert story.title == "The Harbour, revised"
    assert list(story.scenes.values_list("pk", flat=True)) == [second.pk, first.pk]


def test_narrate_selected_scenes_queues_a_session_per_scene_for_the_workers(
    admin_client, admin_user
):
    story = make_story(TEXT, OTHER_TEXT)
    scenes = list(story.scenes.all())
    response = run_action(admin_client, "narrate_scenes", *scenes, url="/admin/scenes/scene/")
    assert any("2 narration(s) queued" in m for m in messages_of(response))

    sessions = list(TTSSession.objects.order_by("created_at"))
    assert [s.subject for s in sessions] == scenes
    assert {s.status for s in sessions} == {SessionStatus.QUEUED}
    assert {s.owner_id for s in sessions} == {admin_user.pk}
    assert all(s.dispatched_at is not None for s in sessions)
    rung = {message["session_id"] for message in generate_messages(len(sessions))}
    assert rung == {str(s.id) for s in sessions}

    # Pressed again: nothing new while they are on their way.
    response = run_action(admin_client, "narrate_scenes", *scenes, url="/admin/scenes/scene/")
    assert any("0 narration(s) queued, 2 resumed" in m for m in messages_of(response))
    assert TTSSession.objects.count() == 2


def test_narrating_an_already_narrated_scene_reuses_its_narration(admin_client):
    scene = make_story(TEXT).scenes.get()
    session = narrated(subject=scene)
    narrated(OTHER_TEXT)  # another session, not of this scene
    response = run_action(admin_client, "narrate_scenes", scene, url="/admin/scenes/scene/")
    assert any("1 already narrated" in m for m in messages_of(response))
    assert TTSSession.objects.count() == 2
    listing = admin_client.get("/admin/scenes/scene/").content.decode()
    link = re.search(r'href="/admin/tts/ttssession/\?([^"]+)">completed</a>', listing)
    assert link, listing
    assert listed(admin_client, link.group(1).replace("&amp;", "&")) == {session.id}


def test_a_scene_with_an_unknown_voice_is_reported_not_narrated(admin_client):
    scene = make_story(TEXT).scenes.get()
    Scene.objects.filter(pk=scene.pk).update(voice="klingon")
    response = run_action(admin_client, "narrate_scenes", scene, url="/admin/scenes/scene/")
    assert any("Unknown voice 'klingon'" in m for m in messages_of(response))
    assert not TTSSession.objects.exists()


def test_narrate_every_scene_of_the_selected_stories(admin_client):
    story = make_story(TEXT, OTHER_TEXT)
    make_story("Another story altogether.", slug="other")
    response = admin_client.post(
        "/admin/scenes/story/",
        {"action": "narrate_stories", "_selected_action": [str(story.pk)]},
        follow=True,
    )
    assert any("2 narration(s) queued" in m for m in messages_of(response))
    assert {s.subject for s in TTSSession.objects.all()} == set(story.scenes.all())


# --- Live updates in a real browser -------------------------------------------------------

CHROMIUM = testing.CHROMIUM
LONG = " ".join(
    f"Wave {word} broke on the rocks."
    for word in ("one", "two", "three", "four", "five", "six", "seven", "eight")
)


@pytest.fixture
def admin_stack(django_db_setup, django_db_blocker, settings, tmp_path):
    """daphne alone, sharing this test's database and channel layer, serving the static
    files collected from the source tree."""
    env = stack_env(
        STATIC_ROOT=str(tmp_path / "static"),
        CHANNEL_LAYER_PREFIX=settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
    )
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    with django_db_blocker.unblock():
        stack = Stack(env=env, workers=0, log_dir=ARTIFACTS / "logs-admin").start()
    yield stack
    stack.stop()


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
def test_a_running_session_page_follows_the_narration_live(admin_stack, admin_user, monkeypatch):
    from playwright.sync_api import sync_playwright

    client = Client()
    client.force_login(admin_user)
    session = create(LONG)
    engine = get_engine("espeak")
    original = engine.synthesize

    def slow(text, voice):
        time.sleep(0.3)
        return original(text, voice)

    monkeypatch.setattr(engine, "synthesize", slow)
    # Playwright's sync API runs an event loop in this thread; the ORM calls are ours.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    rows = "document.querySelectorAll('#tts-chunks tbody tr[data-seq]').length"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(testing.CHROMIUM_ARGS)
        )
        context = browser.new_context(base_url=admin_stack.base_url)
        context.add_cookies(
            [
                {
                    "name": "sessionid",
                    "value": client.cookies["sessionid"].value,
                    "url": admin_stack.base_url,
                }
            ]
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{SESSIONS}{session.id}/change/")
        assert page.locator('[data-tts-field="status"]').inner_text() == "Queued"

        worker = threading.Thread(target=generate_on_a_thread, args=(session,))
        worker.start()
        page.wait_for_function(f"{rows} >= 2", timeout=30_000)
        assert page.locator('[data-tts-field="status"]').inner_text() == "Running"
        page.wait_for_function(  # the `done` frame, after the last chunk
            "document.querySelector('[data-tts-field=note]').textContent.includes('Completed.')",
            timeout=30_000,
        )
        assert page.locator('[data-tts-field="status"]').inner_text() == "Completed"
        worker.join()
        session.refresh_from_db()
        total = session.total_chunks
        assert page.evaluate(rows) == total
        assert page.locator('[data-tts-field="progress"]').inner_text() == f"{total} / {total}"
        last = page.locator(f'#tts-chunks tr[data-seq="{total - 1}"] audio')
        assert last.get_attribute("src") == f"/api/tts/sessions/{session.id}/chunks/{total - 1}"
        assert page.get_by_role("link", name="Reload the page").is_visible()
        browser.close()
    assert not errors, errors
