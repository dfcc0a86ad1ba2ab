"""Per-owner limits: sessions created per minute (a Redis counter shared by every web
process) and sessions active at once (counted in the database, the source of truth)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import redis
from django.utils import timezone

from tts import redis_client
from tts.conf import settings
from tts.errors import RateLimited
from tts.models import ACTIVE_STATUSES, TTSSession

if TYPE_CHECKING:
    from tts.services import Owner

logger = logging.getLogger(__name__)
WINDOW_S = 60


def _keys(owner: Owner) -> list[str]:
    # Under the channel layer's prefix: sites (or test runs) sharing a Redis count apart.
    window = int(time.time() // WINDOW_S)
    base = f"{redis_client.prefix()}:tts:rate"
    if owner.user_id is not None:
        return [f"{base}:user:{owner.user_id}:{window}"]
    keys = [f"{base}:anon:{owner.session_key}:{window}"] if owner.session_key else []
    if owner.ip:
        keys.append(f"{base}:ip:{owner.ip}:{window}")
    return keys


def _active_count(owner: Owner) -> int:
    sessions = TTSSession.objects.filter(status__in=ACTIVE_STATUSES)
    if owner.user_id is not None:
        return sessions.filter(owner_id=owner.user_id).count()
    return sessions.filter(owner__isnull=True, owner_session_key=owner.session_key).count()


def _created_last_minute(owner: Owner) -> int:
    since = timezone.now() - timezone.timedelta(seconds=WINDOW_S)
    sessions = TTSSession.objects.filter(created_at__gte=since)
    if owner.user_id is not None:
        return sessions.filter(owner_id=owner.user_id).count()
    return sessions.filter(owner__isnull=True, owner_ip=owner.ip).count() if owner.ip else 0


def _rate_count(owner: Owner) -> int:
    keys = _keys(owner)
    if not keys:
        return 0
    try:
        values = redis_client.client().mget(keys)
        return max(int(v or 0) for v in values)
    except redis.RedisError:
        # Redis is down: fall back to the database so the limit still holds.
        return _created_last_minute(owner)


def check_rate_limit(owner: Owner) -> None:
    """Sessions created per minute: every new session counts, a replayed one too."""
    if owner.is_staff:
        return
    per_minute = settings.TTS_RATE_LIMIT_PER_MINUTE
    if per_minute and _rate_count(owner) >= per_minute:
        retry = WINDOW_S - int(time.time() % WINDOW_S)
        raise RateLimited(
            f"At most {per_minute} narrations a minute; try again in {retry} s.", retry_after=retry
        )


def check_active_limit(owner: Owner) -> None:
    """Sessions queued or running at once: what holds workers (a replay never does)."""
    if owner.is_staff:
        return
    active = settings.TTS_MAX_ACTIVE_PER_OWNER
    if active and _active_count(owner) >= active:
        raise RateLimited(
            f"At most {active} narrations may run at once; wait for one to finish or cancel it.",
            retry_after=5,
            code="too_many_active",
        )


def record_creation(owner: Owner) -> None:
    if not settings.TTS_RATE_LIMIT_PER_MINUTE:
        return
    try:
        pipe = redis_client.client().pipeline()
        for key in _keys(owner):
            pipe.incr(key)
            pipe.expire(key, WINDOW_S * 2)
        pipe.execute()
    except redis.RedisError:
        logger.warning("rate-limit counter unavailable; using the database")
