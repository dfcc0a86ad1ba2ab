"""Liveness of what narration needs: the database, the channel layer, the workers.
Workers announce themselves with a short-lived Redis key, refreshed by their sweep."""

from __future__ import annotations

import contextlib
import logging

import redis
from django.db import connection

from tts import redis_client

logger = logging.getLogger(__name__)
WORKER_KEY = "tts:worker:"


def worker_beat(name: str, *, ttl: float) -> None:
    try:
        redis_client.client().set(WORKER_KEY + name, "1", ex=max(1, int(ttl)))
    except redis.RedisError:
        logger.warning("could not announce worker %s", name)


def worker_gone(name: str) -> None:
    with contextlib.suppress(redis.RedisError):
        redis_client.client().delete(WORKER_KEY + name)


def check() -> dict:
    report: dict = {"database": False, "channel_layer": False, "workers": 0}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        report["database"] = True
    except Exception:  # noqa: BLE001
        logger.warning("health: database unreachable", exc_info=True)
    try:
        client = redis_client.client()
        report["channel_layer"] = bool(client.ping())
        report["workers"] = sum(1 for _ in client.scan_iter(WORKER_KEY + "*", count=100))
    except redis.RedisError:
        logger.warning("health: redis unreachable")
    report["ok"] = report["database"] and report["channel_layer"] and report["workers"] > 0
    return report
