"""System checks that tell a project what narration still needs."""

from __future__ import annotations

import pytest
from channels.auth import AuthMiddlewareStack
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.checks import run_checks
from django.core.management import call_command
from django.urls import path

from tts import checks
from tts.routing import channel_routes, websocket_urlpatterns

# ASGI applications for ASGI_APPLICATION overrides (import_string needs module attributes).
SOCKETS_ONLY = ProtocolTypeRouter(
    {
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        )
    }
)
WORKER_ONLY = ProtocolTypeRouter({"channel": ChannelNameRouter(channel_routes)})
NESTED = ProtocolTypeRouter(
    {
        "websocket": AuthMiddlewareStack(
            URLRouter([path("embedded/", URLRouter(websocket_urlpatterns))])
        ),
        "channel": ChannelNameRouter({"other": WORKER_ONLY, **channel_routes}),
    }
)


def tts_ids() -> list[str]:
    return sorted(m.id for m in run_checks() if m.id and m.id.startswith("tts."))


def test_the_project_passes_every_narration_check():
    assert tts_ids() == []
    call_command("check", fail_level="WARNING")


def test_a_missing_channel_layer_is_an_error(settings):
    settings.CHANNEL_LAYERS = {}
    assert "tts.E001" in tts_ids()


def test_the_in_memory_channel_layer_is_a_warning(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert "tts.W002" in tts_ids()


def test_an_asgi_application_without_the_worker_channel_is_a_warning(settings):
    settings.ASGI_APPLICATION = "tests.test_checks.SOCKETS_ONLY"
    (message,) = [m for m in run_checks() if m.id == "tts.W003"]
    assert "tts-generate" in message.msg and "ChannelNameRouter" in message.hint
    assert "tts.W004" not in tts_ids()


def test_an_asgi_application_without_the_socket_route_is_a_warning(settings):
    settings.ASGI_APPLICATION = "tests.test_checks.WORKER_ONLY"
    assert tts_ids() == ["tts.W004"]


def test_routes_are_found_through_middleware_and_nested_routers():
    assert checks.routing_problems(NESTED) == []


def test_an_unset_or_broken_asgi_application_is_an_error(settings):
    settings.ASGI_APPLICATION = None
    assert "tts.E004" in tts_ids()
    settings.ASGI_APPLICATION = "no_such_module.asgi.application"
    (message,) = [m for m in run_checks() if m.id == "tts.E005"]
    assert "no_such_module" in message.msg


@pytest.mark.parametrize(
    ("apps", "warned"),
    [
        (["daphne", "tts", "channels"], False),
        (["daphne", "channels", "tts"], True),
        (["tts"], False),
    ],
)
def test_channels_above_tts_shadows_the_narration_runworker(apps, warned):
    assert bool(checks.command_order_problems(apps)) is warned


def test_an_unknown_default_voice_is_an_error(settings):
    settings.TTS_DEFAULT_VOICE = "klingon"
    (message,) = [m for m in run_checks() if m.id == "tts.E003"]
    assert "klingon" in message.msg


def test_an_unavailable_default_voice_is_a_warning_with_the_fix(settings):
    settings.TTS_ESPEAK_BINARY = "/nonexistent/espeak-ng"
    (message,) = [m for m in run_checks() if m.id == "tts.W001"]
    assert "en-us" in message.msg
    assert "apt-get install espeak-ng" in message.hint


def test_a_broken_voice_catalog_is_an_error(settings):
    settings.TTS_VOICES = [{"id": "x", "engine": "nonesuch"}]
    assert "tts.E002" in tts_ids()


def test_a_coqui_voice_with_a_bad_thread_count_is_a_catalog_error(settings):
    settings.TTS_VOICES = [
        {"id": "x", "engine": "coqui", "model_path": "m", "options": {"torch_threads": "all"}}
    ]
    (message,) = [m for m in run_checks() if m.id == "tts.E002"]
    assert "options.torch_threads must be a whole number" in message.msg


def test_voice_options_that_are_not_an_object_are_a_catalog_error(settings):
    settings.TTS_VOICES = [{"id": "x", "engine": "espeak", "name": "en-us", "options": None}]
    (message,) = [m for m in run_checks() if m.id == "tts.E002"]
    assert "options must be an object" in message.msg


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"first_segment_chars": 0}, "options.first_segment_chars must be a whole number, 1"),
        ({"first_segment_chars": "30"}, "options.first_segment_chars must be a whole number"),
        ({"segment_growth": 0.5}, "options.segment_growth must be a number, 1 or more"),
        ({"segment_growth": True}, "options.segment_growth must be a number"),
    ],
)
def test_a_voice_with_a_bad_cutting_option_is_a_catalog_error(settings, options, message):
    settings.TTS_VOICES = [{"id": "x", "engine": "espeak", "name": "en-us", "options": options}]
    (error,) = [m for m in run_checks() if m.id == "tts.E002"]
    assert message in error.msg


def test_espeak_is_looked_for_until_found_then_remembered(tmp_path):
    """Asked on every POST: found once, no PATH walk again; installed later, found
    without a restart."""
    from tts.engines.espeak import _installed

    binary = tmp_path / "espeak-later"
    assert not _installed(str(binary))
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert _installed(str(binary))
    binary.unlink()
    assert _installed(str(binary))  # remembered: its synthesis reports it gone


def test_a_worker_pool_smaller_than_its_sessions_need_is_a_warning(settings, monkeypatch):
    from django.db import connection

    options = {**connection.settings_dict.get("OPTIONS", {}), "pool": {"max_size": 10}}
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", options)
    settings.TTS_WORKER_SESSIONS = 8  # and the worker's own three threads: 11 > 10
    (message,) = [m for m in run_checks() if m.id == "tts.W006"]
    assert "TTS_WORKER_SESSIONS=8" in message.msg and "holds 10" in message.msg
    assert "DATABASE_POOL_MAX_SIZE" in message.hint
    settings.TTS_WORKER_SESSIONS = 7  # 10: enough
    assert "tts.W006" not in tts_ids()
    options["pool"] = True  # psycopg_pool's default size: 4
    assert "tts.W006" in tts_ids()
    settings.TTS_WORKER_SESSIONS = 1  # 1 + 3: enough
    assert "tts.W006" not in tts_ids()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TTS_SEGMENT_GROWTH", 0.5),
        ("TTS_SEGMENT_GROWTH", float("nan")),
        ("TTS_SEGMENT_GROWTH", "2"),
        ("TTS_FIRST_SEGMENT_CHARS", 0),
        ("TTS_FIRST_SEGMENT_CHARS", 60.5),
    ],
)
def test_a_cutting_setting_out_of_range_is_an_error(settings, name, value):
    setattr(settings, name, value)
    (message,) = [m for m in run_checks() if m.id == "tts.E006"]
    assert name in message.msg and "every session would fail" in message.msg


def test_a_gentler_segment_ramp_passes(settings):
    settings.TTS_SEGMENT_GROWTH = 1.25
    assert "tts.E006" not in tts_ids()


def test_signed_cookie_sessions_are_a_warning(settings):
    assert "tts.W007" not in tts_ids()
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    (message,) = [m for m in run_checks() if m.id == "tts.W007"]
    assert "only signed-in users" in message.msg
