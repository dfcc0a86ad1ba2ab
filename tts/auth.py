"""Socket authentication without a database trip of its own.

Channels' ``AuthMiddlewareStack`` loads the user (a trip to the database, on a thread)
before the consumer starts, so every socket pays for it before its handshake completes.
``LazyAuthMiddlewareStack`` puts a lazy ``scope["user"]`` there instead, which the
narration consumer resolves inside the one database trip it makes anyway. Read
``scope["user"]`` from synchronous code only (``database_sync_to_async``), as that
consumer does. Both stacks work with ``tts.routing.websocket_urlpatterns``.
"""

from __future__ import annotations

from types import SimpleNamespace

from channels.auth import AuthMiddleware
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.utils.functional import SimpleLazyObject


def _user_for(scope: dict):
    from django.contrib.auth import get_user

    # django.contrib.auth.get_user reads (and on a stale hash, flushes) request.session only.
    return get_user(SimpleNamespace(session=scope["session"]))


class LazyAuthMiddleware(AuthMiddleware):
    def populate_scope(self, scope: dict) -> None:
        if "session" not in scope:
            raise ValueError("LazyAuthMiddleware needs SessionMiddleware above it.")
        if "user" not in scope:
            scope["user"] = SimpleLazyObject(lambda: _user_for(scope))

    async def resolve_scope(self, scope: dict) -> None:
        """Nothing now: the user is loaded where it is first read."""


def LazyAuthMiddlewareStack(inner):  # noqa: N802 - named like Channels' AuthMiddlewareStack
    return CookieMiddleware(SessionMiddleware(LazyAuthMiddleware(inner)))
