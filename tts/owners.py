"""Who is asking: the signed-in user, or the anonymous visitor's browser session."""

from __future__ import annotations

from django.http import HttpRequest

from tts.services import Owner


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
