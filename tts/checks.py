"""System checks: a missing channel layer, worker route or unusable default voice."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def tts_checks(app_configs, **kwargs) -> list:
    problems = []
    if not getattr(settings, "CHANNEL_LAYERS", {}).get("default"):
        problems.append(Error("No default channel layer.", hint="Set CHANNEL_LAYERS (channels-redis).",
                              id="tts.E001"))
    from tts.voices import default_voice_id, get_voice, voice_availability

    try:
        voice = get_voice(default_voice_id())
    except Exception as exc:  # noqa: BLE001
        return [*problems, Error(f"The voice catalog is invalid: {exc}", id="tts.E002")]
    if voice is None:
        problems.append(Error(f"TTS_DEFAULT_VOICE {default_voice_id()!r} is not in TTS_VOICES.",
                              id="tts.E003"))
    else:
        available, reason = voice_availability(voice)
        if not available:
            problems.append(Warning(f"The default voice {voice.id!r} is unavailable.", hint=reason,
                                    id="tts.W001"))
    return problems
