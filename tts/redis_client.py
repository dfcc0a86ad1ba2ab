"""One Redis client for the app's own keys (rate limits, worker liveness), pointed at the
same server as the channel layer, Sentinel included."""

from __future__ import annotations

import functools

import redis
from redis.sentinel import Sentinel

from tts.conf import settings

TIMEOUTS = {"socket_timeout": 1, "socket_connect_timeout": 1}


def _layer_config() -> dict:
    return settings.CHANNEL_LAYERS.get("default", {}).get("CONFIG", {})


def prefix() -> str:
    """The channel layer's key prefix, so the app's own keys live beside the layer's."""
    return _layer_config().get("prefix", "asgi")


def _layer_host() -> dict:
    hosts = _layer_config().get("hosts") or []
    host = hosts[0] if hosts else settings.REDIS_URL
    return {"address": host} if isinstance(host, str) else host


@functools.cache
def client() -> redis.Redis:
    return client_for(_layer_host())


def client_for(host: dict) -> redis.Redis:
    """A blocking client for one of the channel layer's hosts (its CONFIG form: an
    ``address``, or ``sentinels`` and a ``master_name``), with short timeouts."""
    if "sentinels" in host:
        sentinel = Sentinel(
            host["sentinels"], sentinel_kwargs=host.get("sentinel_kwargs"), **TIMEOUTS
        )
        return sentinel.master_for(
            host["master_name"],
            db=host.get("db", 0),
            username=host.get("username"),
            password=host.get("password"),
            **TIMEOUTS,
        )
    address = host.get("address", settings.REDIS_URL)
    if isinstance(address, str):
        return redis.Redis.from_url(address, **TIMEOUTS)
    return redis.Redis(host=address[0], port=address[1], **TIMEOUTS)
