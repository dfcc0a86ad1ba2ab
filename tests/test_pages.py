"""The server-rendered pages and the {% tts_player %} template tag."""

from __future__ import annotations

import json
import re

import pytest
from django.template import Context, Template
from django.test import RequestFactory

from scenes.models import Scene, Story
from tts.models import TTSSession

pytestmark = pytest.mark.django_db

PLAYER_JS = re.compile(r'<script type="module" src="[^"]*tts/player(\.[0-9a-f]+)?\.js"')


def make_story(scenes: int = 2, **fields) -> Story:
    story = Story.objects.create(
        title=fields.pop("title", "The Harbour"),
        slug=fields.pop("slug", "harbour"),
        description="Two short scenes.",
        **fields,
    )
    for position in range(scenes):
        Scene.objects.create(
            story=story,
            position=position,
            title=f"Scene title {position}",
            text=f"Sentence one of scene {position}. Sentence two.",
        )
    return story


def players_in(html: str) -> list[str]:
    return re.findall(r'<div class="tts-player[^"]*" id="([^"]+)" data-tts-player', html)


def text_of(html: str, dom_id: str) -> str:
    match = re.search(rf'<script id="{dom_id}-text" type="application/json">(.*?)</script>', html)
    assert match, f"no text script for {dom_id}"
    return json.loads(match.group(1))


def render(source: str, **context) -> str:
    request = RequestFactory().get("/")
    return Template("{% load tts %}" + source).render(Context({"request": request, **context}))


def test_story_list_shows_stories_and_sets_the_csrf_cookie(client):
    make_story(title="The Harbour")
    response = client.get("/")
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    html = response.content.decode()
    assert "The Harbour" in html
    assert "2 scenes" in html
    assert 'href="/narrate/"' in html


def test_story_list_explains_what_to_do_when_there_are_no_stories(client):
    html = client.get("/").content.decode()
    assert "No stories yet" in html


def test_story_page_has_a_player_per_scene_and_the_assets_once(client):
    story = make_story(scenes=3)
    response = client.get(f"/stories/{story.slug}/")
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    html = response.content.decode()
    assert len(players_in(html)) == 3
    assert len(PLAYER_JS.findall(html)) == 1
    assert len(re.findall(r'href="[^"]*tts/player(\.[0-9a-f]+)?\.css"', html)) == 1
    assert "data-tts-playlist" in html and "data-tts-play-all" in html
    first = story.scenes.first()
    assert f'data-tts-subject="{first.pk}"' in html
    assert text_of(html, "tts-player-1") == first.text


def test_story_page_player_has_labelled_controls_and_a_live_status(client):
    story = make_story(scenes=1)
    html = client.get(f"/stories/{story.slug}/").content.decode()
    assert 'role="slider"' in html and 'aria-label="Position in Scene title 0"' in html
    assert 'aria-label="Previous sentence"' in html and 'aria-label="Next sentence"' in html
    assert 'role="status" aria-live="polite"' in html
    assert '<select data-tts-role="voice">' in html
    assert 'data-tts-voices-url="/api/tts/voices/"' in html
    assert 'data-tts-sessions-url="/api/tts/sessions/"' in html


def test_scene_page_renders_the_scene_player_with_the_scene_voice(client):
    story = make_story(scenes=2)
    scene = story.scenes.last()
    scene.voice = "en-gb"
    scene.save()
    response = client.get(f"/stories/{story.slug}/scenes/{scene.pk}/")
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    html = response.content.decode()
    assert players_in(html) == ["tts-player-1"]
    assert f'data-tts-subject="{scene.pk}"' in html
    assert 'data-tts-voice="en-gb"' in html
    assert "Scene 2 of 2" in html
    assert 'rel="prev"' in html and 'rel="next"' not in html


def test_scene_of_another_story_is_not_found(client):
    make_story(scenes=1)
    other = make_story(scenes=1, title="Other", slug="other")
    response = client.get(f"/stories/harbour/scenes/{other.scenes.first().pk}/")
    assert response.status_code == 404
    assert client.get("/stories/nope/").status_code == 404


def test_narrate_page_has_an_editable_player(client):
    response = client.get("/narrate/")
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    html = response.content.decode()
    assert "tts-player--editable" in html
    assert 'data-tts-role="editor"' in html
    assert 'data-tts-subject=""' in html


def test_tag_renders_a_player_for_plain_text_with_a_voice():
    html = render('{% tts_player text=body voice="fr-fr" title="Note" %}', body="Bonjour. Salut.")
    assert players_in(html) == ["tts-player-1"]
    assert 'data-tts-voice="fr-fr"' in html
    assert 'data-tts-subject=""' in html
    assert 'data-tts-title="Note"' in html
    assert text_of(html, "tts-player-1") == "Bonjour. Salut."
    assert 'data-tts-csrf="' in html and 'data-tts-csrf=""' not in html


def test_tag_takes_any_object_with_narration_text():
    class Note:
        title = "A note"
        voice = "en-gb"

        def get_narration_text(self) -> str:
            return "Read me aloud."

    html = render("{% tts_player note %}", note=Note())
    assert text_of(html, "tts-player-1") == "Read me aloud."
    assert 'data-tts-voice="en-gb"' in html
    assert 'data-tts-subject=""' in html  # not a scene: the browser sends the text


def test_tag_sends_a_scene_by_id_and_honours_an_explicit_subject_id():
    scene = make_story(scenes=1).scenes.get()
    html = render("{% tts_player scene %}{% tts_player text='Hi.' subject_id=7 %}", scene=scene)
    assert f'data-tts-subject="{scene.pk}"' in html
    assert 'data-tts-subject="7"' in html
    assert players_in(html) == ["tts-player-1", "tts-player-2"]
    assert len(PLAYER_JS.findall(html)) == 1


def test_a_page_with_a_player_gives_a_new_visitor_a_session_once(client, settings):
    """P86: the page gives a visitor with no session cookie one (one write, for a day),
    so that its player opens its first socket ahead, as it does every later one; the
    first POST, which it then owns, gives it the full age."""
    from django.contrib.sessions.models import Session

    from tts.owners import PAGE_SESSION_AGE_S

    story = make_story(scenes=1)
    path = f"/stories/{story.slug}/scenes/{story.scenes.first().pk}/"
    response = client.get(path)
    assert response.status_code == 200
    cookie = response.cookies["sessionid"]
    assert cookie["max-age"] == PAGE_SESSION_AGE_S
    assert list(Session.objects.values_list("session_key", flat=True)) == [cookie.value]
    assert "data-tts-early" in response.content.decode()

    again = client.get(path)  # the cookie is sent: nothing written, nothing set
    assert "sessionid" not in again.cookies and "data-tts-early" in again.content.decode()
    assert Session.objects.count() == 1

    created = client.post(
        "/api/tts/sessions/",
        {"text": "Hello there.", "voice": "en-us"},
        content_type="application/json",
    )
    assert created.status_code == 201
    assert created.cookies["sessionid"].value == cookie.value  # the same session, ...
    assert created.cookies["sessionid"]["max-age"] == settings.SESSION_COOKIE_AGE  # kept
    assert TTSSession.objects.get().owner_session_key == cookie.value  # it owns the narration
    assert Session.objects.count() == 1


def test_a_cookie_whose_session_is_gone_gets_a_new_one_from_the_page(client):
    from django.contrib.sessions.models import Session

    client.get("/narrate/")
    Session.objects.all().delete()  # expired and cleared, or a database restored
    response = client.get("/narrate/")
    assert "data-tts-early" in response.content.decode()
    assert list(Session.objects.values_list("session_key", flat=True)) == [
        response.cookies["sessionid"].value
    ]


def test_with_signed_cookie_sessions_pages_give_none_and_posts_ask_to_sign_in(client, settings):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    response = client.get("/narrate/")
    assert "sessionid" not in response.cookies
    assert "data-tts-early" not in response.content.decode()
    created = client.post(
        "/api/tts/sessions/",
        {"text": "Hello there.", "voice": "en-us"},
        content_type="application/json",
    )
    assert created.status_code == 403
    assert created.json()["error"]["code"] == "sign_in_required"
    assert not TTSSession.objects.exists()


def test_a_page_with_several_players_gives_one_session(client):
    from django.contrib.sessions.models import Session

    story = make_story(scenes=3)
    response = client.get(f"/stories/{story.slug}/")
    assert response.content.decode().count("data-tts-early") == 3
    assert list(Session.objects.values_list("session_key", flat=True)) == [
        response.cookies["sessionid"].value
    ]


def test_a_page_with_no_player_gives_no_session(client):
    from django.contrib.sessions.models import Session

    make_story(scenes=1)
    response = client.get("/")
    assert response.status_code == 200 and "sessionid" not in response.cookies
    assert Session.objects.count() == 0


def test_with_sessions_on_pages_off_the_first_post_gives_the_cookie(client, settings):
    from django.contrib.sessions.models import Session

    settings.TTS_SESSION_ON_PAGE = False
    response = client.get("/narrate/")
    assert "sessionid" not in response.cookies and Session.objects.count() == 0
    assert "data-tts-early" not in response.content.decode()  # its first socket after the reply
    created = client.post(
        "/api/tts/sessions/",
        {"text": "Hello there.", "voice": "en-us"},
        content_type="application/json",
    )
    assert created.status_code == 201 and "sessionid" in created.cookies
    assert "data-tts-early" in client.get("/narrate/").content.decode()


def test_tag_defaults_to_the_site_default_voice(settings):
    settings.TTS_DEFAULT_VOICE = "en-gb"
    html = render("{% tts_player text='Hello.' %}")
    assert 'data-tts-voice="en-gb"' in html


def test_tag_tells_the_player_how_long_a_socket_opened_ahead_waits(settings):
    """The player takes a socket opened before the press only while the server still
    holds it (TTS_PENDING_SOCKET_S: docs/protocol.md)."""
    assert 'data-tts-socket-wait="10"' in render("{% tts_player text='Hello.' %}")
    settings.TTS_PENDING_SOCKET_S = 2.5
    assert 'data-tts-socket-wait="2.5"' in render("{% tts_player text='Hello.' %}")


def test_tag_normalises_text_like_the_server():
    html = render("{% tts_player text=body %}", body="One.\r\nTwo.\x07")
    assert text_of(html, "tts-player-1") == "One.\nTwo."


def test_tag_explains_text_that_cannot_be_narrated(settings):
    settings.TTS_MAX_CHARS = 10
    html = render("{% tts_player text=body %}", body="This is far longer than ten characters.")
    assert re.search(r'data-tts-problem="[^"]*limit is 10[^"]*"', html)


def test_tts_assets_in_the_head_means_players_skip_them():
    html = render("{% tts_assets %}{% tts_player text='One.' %}{% tts_player text='Two.' %}")
    assert len(PLAYER_JS.findall(html)) == 1
    assert html.index("tts/player") < html.index("data-tts-player")


def test_tag_escapes_text_in_the_page():
    html = render("{% tts_player text=body %}", body="</script><b>bold</b>")
    assert "<b>bold</b>" not in html
    assert text_of(html, "tts-player-1") == "</script><b>bold</b>"
