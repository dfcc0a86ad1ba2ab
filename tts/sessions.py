"""Django's database sessions, with the read that every request and every socket of a
visitor makes compiled once (``tts.compiled``; docs/benchmarks.md, P45): a POST reads
its browser's session on its way to the dispatch, and building that query cost more than
running it. Everything else is Django's ``db`` backend.

    SESSION_ENGINE = "tts.sessions"
"""

from __future__ import annotations

import functools

from django.contrib.sessions.backends import db
from django.utils import timezone

from tts.compiled import Compiled


@functools.cache
def _live_session(model: type) -> Compiled:
    """The unexpired session with a key, of this session model."""
    return Compiled.instances(
        lambda key, now: model.objects.filter(session_key=key, expire_date__gt=now),
        key=model._meta.get_field("session_key"),
        now=model._meta.get_field("expire_date"),
    )


class SessionStore(db.SessionStore):
    def _get_session_from_db(self):
        found = []
        if self.session_key:
            found = _live_session(self.model).run(key=self.session_key, now=timezone.now())
        if not found:
            self._session_key = None
            return None
        return found[0]
