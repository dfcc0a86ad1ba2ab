"""``{% tts_player %}``: a ready narration player for any text or object.

    {% load tts %}
    {% tts_player scene %}                         an object with get_narration_text()
    {% tts_player text=article.body voice="en-gb" title=article.title %}
    {% tts_player text=draft editable=True %}      a text box to narrate what is typed

The player's static files (``tts/player.css``, ``tts/player.js``) are included once per page,
with the first player, unless ``{% tts_assets %}`` already put them in the ``<head>``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from django import template
from django.middleware.csrf import get_token
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html

from tts.conf import settings
from tts.errors import InvalidInput
from tts.owners import welcome_visitor
from tts.routing import SOCKETS_PATH
from tts.validation import clean_text
from tts.voices import default_voice_id

register = template.Library()

_ASSETS_FLAG = "_tts_assets_included"
_COUNTER = "_tts_player_count"


def _page_state(context: template.Context) -> Any:
    """Where per-page flags live: the request when there is one, else this render."""
    request = context.get("request")
    if request is not None:
        return request
    return context.render_context.setdefault("tts_page", SimpleNamespace())


def _take_assets(context: template.Context) -> bool:
    """True the first time a page asks: that caller includes the static files."""
    state = _page_state(context)
    if getattr(state, _ASSETS_FLAG, False):
        return False
    setattr(state, _ASSETS_FLAG, True)
    return True


def _next_dom_id(context: template.Context) -> str:
    state = _page_state(context)
    count = getattr(state, _COUNTER, 0) + 1
    setattr(state, _COUNTER, count)
    return f"tts-player-{count}"


def _is_scene(subject: object) -> bool:
    """Whether the API resolves this object by id (its ``scene`` field, TTS_SCENE_MODEL)."""
    meta = getattr(subject, "_meta", None)
    label = settings.TTS_SCENE_MODEL or ""
    return meta is not None and meta.label_lower == label.lower()


def _narration_text(subject: object, text: str | None) -> str:
    if text is not None:
        return str(text)
    if subject is None:
        return ""
    getter = getattr(subject, "get_narration_text", None)
    return str(getter() if callable(getter) else subject)


@register.simple_tag(takes_context=True)
def tts_assets(context: template.Context) -> str:
    """The player's stylesheet and script, for a ``<head>``; players then skip them."""
    if not _take_assets(context):
        return ""
    return format_html(
        '<link rel="stylesheet" href="{}">\n<script type="module" src="{}"></script>',
        static("tts/player.css"),
        static("tts/player.js"),
    )


@register.inclusion_tag("tts/player.html", takes_context=True)
def tts_player(
    context: template.Context,
    subject: object = None,
    *,
    text: str | None = None,
    voice: str | None = None,
    subject_id: object = None,
    title: str | None = None,
    editable: bool = False,
    dom_id: str | None = None,
) -> dict[str, Any]:
    """Render a player for ``subject`` (an object with ``get_narration_text()`` and an
    optional ``voice``; a plain string counts as text) or for ``text``.

    ``subject_id`` makes the browser send that id as ``scene`` instead of the text, so the
    server reads the text itself; it defaults to the subject's pk when the subject is a
    TTS_SCENE_MODEL instance. ``voice`` defaults to the subject's, then the site's default.
    """
    if isinstance(subject, str) and text is None:
        subject, text = None, subject
    raw = _narration_text(subject, text)
    try:
        narration, problem = clean_text(raw), ""
    except InvalidInput as exc:
        narration, problem = raw.replace("\r\n", "\n"), exc.message
    if editable:
        problem = ""  # what is typed is checked when Play is pressed
    if subject_id is None and subject is not None and _is_scene(subject):
        subject_id = subject.pk
    request = context.get("request")
    dom_id = dom_id or _next_dom_id(context)
    return {
        "dom_id": dom_id,
        "text_id": f"{dom_id}-text",
        "text": narration,
        "voice": voice or getattr(subject, "voice", "") or default_voice_id(),
        "subject_id": "" if subject_id is None else subject_id,
        "title": title if title is not None else str(getattr(subject, "title", "") or ""),
        "editable": editable,
        "problem": problem,
        "csrf_token": get_token(request) if request is not None else "",
        # Its socket can be opened with the POST, or ahead of it, and be let in: the
        # visitor has a session cookie, or this page gives them one (docs/protocol.md).
        "early": welcome_visitor(request),
        # How long a socket opened before its session waits for it (the player's warmUp).
        "socket_wait_s": f"{settings.TTS_PENDING_SOCKET_S:g}",
        "sessions_url": reverse("tts:sessions"),
        "sockets_url": SOCKETS_PATH,
        "voices_url": reverse("tts:voices"),
        "include_assets": _take_assets(context),
    }
