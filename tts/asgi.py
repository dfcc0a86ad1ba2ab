"""Django's HTTP handling under ASGI with one thread hop per request, not one per middleware.

Django's ``ASGIHandler`` builds its middleware chain in async mode whenever every
middleware can run async, and the stock ones can: each ``MiddlewareMixin`` then runs its
``process_request`` and ``process_response`` through ``sync_to_async``, a trip to a
thread and back per middleware and direction, before and after a view that is sync
anyway (all of this project's are). That is the larger part of what a request costs
here (docs/benchmarks.md, P16). ``get_asgi_application`` below builds the chain in sync
mode, as Django's WSGI handler does, and enters it once, on the request's own thread.

Async views still work (Django runs them through ``async_to_sync`` in a sync chain), and
so do async streaming responses. A project whose middleware is async-only gains nothing.
"""

from __future__ import annotations

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class SyncChainASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        # Runs on the thread of the request's ThreadSensitiveContext (one per request).
        self._middleware_chain = sync_to_async(self._middleware_chain, thread_sensitive=True)


def get_asgi_application() -> ASGIHandler:
    """``django.core.asgi.get_asgi_application``, with the middleware chain entered once."""
    django.setup(set_prefix=False)
    return SyncChainASGIHandler()
