"""Who is asking: the signed-in user, or the anonymous visitor's browser session."""

from __future__ import annotations

from django.conf import settings as django_settings
from django.http import HttpRequest

from tts.conf import settings
from tts.errors import NotAllowed
from tts.services import Owner

# What a page with a player puts in a new visitor's session, so that it is saved (an
# empty session is not) and its cookie set: welcome_visitor. The first POST takes it out.
VISITOR_KEY = "tts_visitor"
# How long a session that a page gave lasts if its visitor never presses Play (crawlers,
# link previews): a day, not SESSION_COOKIE_AGE. The first POST gives it the full age.
PAGE_SESSION_AGE_S = 24 * 3600
# Session engines whose key is the session itself (it changes as the data does): no key
# that a narration could keep as its owner's.
KEYLESS_SESSION_ENGINES = ("django.contrib.sessions.backends.signed_cookies",)


def session_keys_last() -> bool:
    """Whether the session engine keeps a key for each browser (a server-side store),
    which is what an anonymous visitor's narrations belong to."""
    return django_settings.SESSION_ENGINE not in KEYLESS_SESSION_ENGINES


def owner_from_request(request: HttpRequest, *, create_session: bool = False) -> Owner:
    user = request.user
    if user.is_authenticated:
        return Owner(user_id=user.pk, ip=request.META.get("REMOTE_ADDR"), is_staff=user.is_staff)
    if create_session and not session_keys_last():
        raise NotAllowed(
            "Sign in to narrate: this site's sessions (signed cookies) cannot own a narration.",
            code="sign_in_required",
        )
    session = request.session
    if create_session and not session.session_key:
        session.create()
    elif create_session and session.pop(VISITOR_KEY, None) is not None:
        session.set_expiry(None)  # a page's session that now owns a narration: full age
    return Owner(session_key=session.session_key or "", ip=request.META.get("REMOTE_ADDR"))


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
    in: the visitor is signed in or has a live session, or this response gives them one.

    A socket opened ahead needs its owner, and a new visitor had none until their first
    POST's reply set the cookie: their first Play opened its socket only after that
    reply, two round trips more on a real path than every later Play (P86). With
    ``TTS_SESSION_ON_PAGE`` (on) the page gives it instead. The session is marked, not
    created here: ``SessionMiddleware`` saves it as the response goes (one write, as a
    first POST made) and sets the cookie, for ``PAGE_SESSION_AGE_S``; nothing is written
    for a visitor who has one. The session is read first (the user's lookup reads it
    anyway): a cookie whose session is gone or expired counts as none.
    """
    if request is None:
        return False
    if getattr(getattr(request, "user", None), "is_authenticated", False):
        return True
    session = getattr(request, "session", None)
    if session is None:
        return False
    session.get(VISITOR_KEY)  # loads it: a key whose session is gone is dropped
    if session.session_key:
        return True
    if not settings.TTS_SESSION_ON_PAGE or not session_keys_last():
        return False
    session[VISITOR_KEY] = True
    session.set_expiry(PAGE_SESSION_AGE_S)
    return True
