"""System checks for a project that installs ``tts``: what narration needs besides the app.

    tts.E001  no default channel layer
    tts.E002  the voice catalog is invalid
    tts.E003  TTS_DEFAULT_VOICE is not in the catalog
    tts.E004  ASGI_APPLICATION is not set
    tts.E005  ASGI_APPLICATION cannot be imported
    tts.E006  the cutting settings (TTS_SEGMENT_GROWTH, TTS_FIRST_SEGMENT_CHARS, pauses) cut no text
    tts.W001  the default voice is unavailable on this machine
    tts.W002  the channel layer lives in one process (in-memory)
    tts.W003  the ASGI application does not route the worker channel
    tts.W004  the ASGI application does not route the narration socket
    tts.W005  channels' own runworker shadows the narration worker's
    tts.W006  a worker's sessions at once need more connections than its pool holds
    tts.W007  the session engine keeps no key per browser: only signed-in users narrate

Routes are found by walking the routers and middleware that Channels provides; a project
that routes in a way this cannot see silences the warning with SILENCED_SYSTEM_CHECKS.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string

from tts.broadcast import GENERATE_CHANNEL

ROUTING_DOCS = "See docs/integration.md, step 3 (asgi.py)."
IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"


@register()
def channel_layer_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    layer = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get("default")
    if not layer:
        return [
            Error(
                "Narration needs a channel layer, and CHANNEL_LAYERS has no 'default'.",
                hint="Add a channels-redis layer: CHANNEL_LAYERS = {'default': {'BACKEND': "
                "'channels_redis.core.RedisChannelLayer', 'CONFIG': {'hosts': [REDIS_URL]}}}.",
                id="tts.E001",
            )
        ]
    if layer.get("BACKEND") == IN_MEMORY_LAYER:
        return [
            Warning(
                "The in-memory channel layer cannot carry narration: the web process and the "
                "worker process (runworker tts-generate) never see each other's messages.",
                hint="Use channels_redis.core.RedisChannelLayer.",
                id="tts.W002",
            )
        ]
    return []


@register()
def routing_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not path:
        return [
            Error(
                "ASGI_APPLICATION is not set: narration runs under Channels (daphne).",
                hint="Set ASGI_APPLICATION = 'yourproject.asgi.application'. " + ROUTING_DOCS,
                id="tts.E004",
            )
        ]
    try:
        application = import_string(path)
    except Exception as exc:  # noqa: BLE001 - any import failure is the message
        return [
            Error(
                f"ASGI_APPLICATION {path!r} cannot be imported: {type(exc).__name__}: {exc}",
                hint=ROUTING_DOCS,
                id="tts.E005",
            )
        ]
    return routing_problems(application, path)


def routing_problems(application: Any, path: str = "the ASGI application") -> list[CheckMessage]:
    """Warnings for the worker channel and the socket route missing from ``application``."""
    from tts.consumers import SessionConsumer

    nodes = list(walk_asgi(application))
    problems: list[CheckMessage] = []
    if not any(GENERATE_CHANNEL in _channel_names(node) for node in nodes):
        problems.append(
            Warning(
                f"{path} does not route the {GENERATE_CHANNEL!r} channel, so no worker will "
                "ever narrate: sessions stay queued.",
                hint='In ProtocolTypeRouter add "channel": ChannelNameRouter(tts.routing.'
                "channel_routes), then run `python manage.py runworker tts-generate`. "
                + ROUTING_DOCS,
                id="tts.W003",
            )
        )
    if not any(_consumer_class(node, SessionConsumer) for node in nodes):
        problems.append(
            Warning(
                f"{path} does not route the narration socket (/ws/tts/<id>/): players cannot "
                "listen.",
                hint='In ProtocolTypeRouter add "websocket": AllowedHostsOriginValidator('
                "AuthMiddlewareStack(URLRouter(tts.routing.websocket_urlpatterns))). "
                + ROUTING_DOCS,
                id="tts.W004",
            )
        )
    return problems


def walk_asgi(node: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """``node`` and every application it routes to, through Channels' routers
    (``application_mapping``, ``routes``) and middleware (``inner``, ``application``)."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    yield node
    mapping = getattr(node, "application_mapping", None)
    if isinstance(mapping, dict):
        for child in mapping.values():
            yield from walk_asgi(child, seen)
    for route in getattr(node, "routes", None) or []:
        yield from walk_asgi(getattr(route, "callback", None), seen)
    for attribute in ("inner", "application", "app"):
        yield from walk_asgi(getattr(node, attribute, None), seen)


def _channel_names(node: Any) -> set[str]:
    from channels.routing import ChannelNameRouter

    return set(node.application_mapping) if isinstance(node, ChannelNameRouter) else set()


def _consumer_class(node: Any, base: type) -> bool:
    consumer = getattr(node, "consumer_class", None)
    return isinstance(consumer, type) and issubclass(consumer, base)


@register()
def command_order_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return command_order_problems([config.name for config in apps.get_app_configs()])


def command_order_problems(app_names: list[str]) -> list[CheckMessage]:
    """Django takes a command from the first app that has it: tts's runworker (voices
    loaded before the first message, the recovery sweep) only wins above channels."""
    if "channels" in app_names and app_names.index("channels") < app_names.index("tts"):
        return [
            Warning(
                "'channels' comes before 'tts' in INSTALLED_APPS, so `runworker` is Channels' own: "
                "workers would load voices on the first message and never run the recovery sweep.",
                hint="List 'tts' above 'channels' in INSTALLED_APPS.",
                id="tts.W005",
            )
        ]
    return []


@register()
def default_voice_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from tts.voices import default_voice_id, get_voice, voice_availability

    voice_id = default_voice_id()
    try:
        voice = get_voice(voice_id)
    except Exception as exc:  # noqa: BLE001 - a broken catalog is the message
        return [
            Error(
                f"The voice catalog is invalid: {exc}",
                hint="Fix TTS_VOICES or TTS_EXTRA_VOICES_FILE.",
                id="tts.E002",
            )
        ]
    if voice is None:
        return [
            Error(
                f"TTS_DEFAULT_VOICE {voice_id!r} is not a voice in the catalog.",
                hint="Set TTS_DEFAULT_VOICE to the id of one of TTS_VOICES "
                "(GET /api/tts/voices/ lists them).",
                id="tts.E003",
            )
        ]
    available, reason = voice_availability(voice)
    if not available:
        return [
            Warning(
                f"The default voice {voice.id!r} cannot speak on this machine: every narration "
                "that names no voice will fail.",
                hint=reason or "Install its engine or model, or choose another TTS_DEFAULT_VOICE.",
                id="tts.W001",
            )
        ]
    return []


@register()
def worker_pool_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A worker holds a database connection per session it runs (its writer thread),
    besides its own thread's, its heartbeat's and its recovery sweep's."""
    from django.db import connections, router

    from tts.conf import settings as tts_settings
    from tts.models import TTSChunk

    alias = router.db_for_write(TTSChunk)
    pool = connections[alias].settings_dict.get("OPTIONS", {}).get("pool")
    if not pool:
        return []
    # psycopg_pool's defaults: min_size 4, max_size min_size
    options = pool if isinstance(pool, dict) else {}
    max_size = options.get("max_size") or options.get("min_size", 4)
    needed = tts_settings.TTS_WORKER_SESSIONS + 3
    if max_size >= needed:
        return []
    return [
        Warning(
            f"A worker runs up to TTS_WORKER_SESSIONS={tts_settings.TTS_WORKER_SESSIONS} "
            f"sessions at once and may need {needed} connections to {alias!r}, whose pool "
            f"holds {max_size}: a session's store then waits for a connection, and fails "
            "after the pool's timeout.",
            hint="Raise the pool's max_size (DATABASE_POOL_MAX_SIZE) or lower TTS_WORKER_SESSIONS.",
            id="tts.W006",
        )
    ]


@register()
def cutting_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """How texts are cut, checked at start by cutting one (segment_text's own rules), not
    found by the first session's worker."""
    from tts.segmentation import segment_text
    from tts.synthesis import CUTTING_SETTINGS, cutting_settings

    values = cutting_settings()
    try:
        segment_text("One sentence. And another, a little longer.", **values)
    except (TypeError, ValueError) as exc:
        given = ", ".join(f"{CUTTING_SETTINGS[arg]}={value!r}" for arg, value in values.items())
        return [
            Error(
                f"Texts cannot be cut with {given} ({exc}): every session would fail.",
                hint="Numbers: TTS_SEGMENT_GROWTH at least 1 (2 by default, 1.25 for a slow "
                "voice), TTS_FIRST_SEGMENT_CHARS a whole number of at least 1, pauses at "
                "least 0 (see .env.example).",
                id="tts.E006",
            )
        ]
    return []


@register()
def session_engine_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """An anonymous visitor's narrations belong to their session's key (tts.owners)."""
    from tts.owners import session_keys_last

    if session_keys_last():
        return []
    return [
        Warning(
            f"SESSION_ENGINE {settings.SESSION_ENGINE!r} keeps no key per browser, and an "
            "anonymous visitor's narrations belong to that key: only signed-in users can "
            "narrate (others get 403 sign_in_required).",
            hint="Use a server-side session engine: django.contrib.sessions.backends.db "
            "(the default), cache or cached_db.",
            id="tts.W007",
        )
    ]
