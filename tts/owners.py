"""Who is asking: the signed-in user, or the anonymous visitor's browser session."""

from __future__ import annotations

from django.http import HttpRequest

from tts.conf import settings
from tts.services import Owner

# What a page with a player puts in a new visitor's session, so that it is saved (an
# empty session is not) and its cookie set: welcome_visitor.
VISITOR_KEY = "tts_visitor"


def owner_from_request(request: HttpRequest, *, create_session: bool = False) -> Owner:
    user = request.user
    if user.is_authenticated:
        return Owner(user_id=user.pk, ip=request.META.get("REMOTE_ADDR"), is_staff=user.is_staff)
    if create_session and not request.session.session_key:
        request.session.create()
    return Owner(session_key=request.session.session_key or "", ip=request.META.get("REMOTE_ADDR"))


def owner_from_scope(scope: dict) -> Owner:
    user = scope.get("user")
    client = scope.get("client") or [None]
    if user is not None and user.is_authenticated:
        return Owner(user_id=user.pk, ip=client[0], is_staff=user.is_staff)
    session = scope.get("session")
    key = getattr(session, "session_key", None) or ""
    return Owner(session_key=key, ip=client[0])


def known_visitor(user: object, session: object) -> bool:
    """Signed in, or with a session cookie: someone a narration can belong to. The session
    key is looked at first, so a lazy user is not loaded (no database read) when it is
    there; without one, a lazy user resolves to the anonymous one by itself."""
    return bool(getattr(session, "session_key", None)) or bool(
        getattr(user, "is_authenticated", False)
    )


def welcome_visitor(request: HttpRequest | None) -> bool:
    """Whether a socket that this page's player opens before its POST's reply will be let
    in: the visitor is signed in or has a session cookie, or this response gives them one.

    A socket opened ahead needs its owner, and a new visitor had none until their first
    POST's reply set the cookie: their first Play opened its socket only after that
    reply, two round trips more on a real path than every later Play (P86). With
    ``TTS_SESSION_ON_PAGE`` (on) the page gives it instead. The session is marked, not
    created here: ``SessionMiddleware`` saves it as the response goes (one write, as a
    first POST made) and sets the cookie; nothing is written for a visitor who has one.
    """
    if request is None:
        return False
    user, session = getattr(request, "user", None), getattr(request, "session", None)
    if known_visitor(user, session):
        return True
    if session is None or not settings.TTS_SESSION_ON_PAGE:
        return False
    session[VISITOR_KEY] = True
    return True
