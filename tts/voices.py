"""The voice catalog: voices from settings plus what the engines discover."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from tts.conf import settings
from tts.engines import ENGINE_NAMES, EngineUnavailable, Voice, file_signature, get_engine

_VOICE_FIELDS = {f.name for f in fields(Voice)}


def _voice_from_dict(entry: dict[str, Any]) -> Voice:
    unknown = set(entry) - _VOICE_FIELDS
    if unknown or not entry.get("id") or entry.get("engine") not in ENGINE_NAMES:
        raise ImproperlyConfigured(
            f"Bad TTS_VOICES entry {entry!r}: needs id, engine in {ENGINE_NAMES}; "
            f"unknown keys {sorted(unknown)}"
        )
    if not isinstance(entry.get("options", {}), dict):
        raise ImproperlyConfigured(
            f"Bad TTS_VOICES entry {entry!r}: options must be an object (a dict)"
        )
    voice = Voice(**{"label": entry["id"], **entry})
    check_cutting_options(voice)
    if voice.engine == "coqui":
        from tts.engines.coqui import voice_threads

        voice_threads(voice)  # its options.torch_threads, if any, is a count
    return voice


# A voice's own options that replace a cutting setting for its texts (tts.synthesis
# voice_cutting): a slow voice's first audio comes sooner from a shorter first segment,
# and its stream keeps up with a gentler ramp, without changing how the fast voices cut.
# Option -> (segment_text's argument, the setting it replaces, what it may be; 1 or more).
CUTTING_OPTIONS: dict[str, tuple[str, str, type | tuple[type, ...]]] = {
    "first_segment_chars": ("first_max_chars", "TTS_FIRST_SEGMENT_CHARS", int),
    "segment_growth": ("growth", "TTS_SEGMENT_GROWTH", (int, float)),
}


def check_cutting_options(voice: Voice) -> None:
    """Its options.first_segment_chars (a whole number, 1 or more) and
    options.segment_growth (a number, 1 or more), where given."""
    for option, (_, setting, kinds) in CUTTING_OPTIONS.items():
        if option not in voice.options:
            continue
        value = voice.options[option]
        if isinstance(value, bool) or not isinstance(value, kinds) or not value >= 1:
            kind = "a whole number" if kinds is int else "a number"
            raise ImproperlyConfigured(
                f"voice {voice.id!r}: options.{option} must be {kind}, 1 or more "
                f"(in place of {setting} for this voice), not {value!r}"
            )


def configured_voices() -> list[Voice]:
    entries = list(getattr(settings, "TTS_VOICES", []))
    extra = getattr(settings, "TTS_EXTRA_VOICES_FILE", "")
    if extra:
        try:
            entries += json.loads(Path(extra).read_text())
        except (OSError, ValueError) as exc:
            raise ImproperlyConfigured(f"TTS_EXTRA_VOICES_FILE {extra!r}: {exc}") from exc
    return [_voice_from_dict(entry) for entry in entries]


def all_voices() -> list[Voice]:
    """Configured voices, each expanded by its engine (speakers, languages)."""
    return list(_catalog().values())


# The catalog, built once: every POST and every session's worker looks its voice up, and
# building it (reading TTS_EXTRA_VOICES_FILE, making the voices) cost more than the
# lookup. Built again when a TTS_* setting changes or the extra voices file does.
_built: tuple[tuple, dict[str, Voice]] | None = None


def _catalog() -> dict[str, Voice]:
    global _built
    key = _catalog_key()
    built = _built
    if built is None or built[0] != key:
        voices: dict[str, Voice] = {}
        for voice in configured_voices():  # an error is raised, never kept
            voices.setdefault(voice.id, voice)
            for found in _expand(voice):
                voices.setdefault(found.id, found)
        built = _built = (key, voices)
    return built[1]


def _catalog_key() -> tuple:
    extra = getattr(settings, "TTS_EXTRA_VOICES_FILE", "")
    if not extra:
        return ("",)
    try:
        return (extra, *file_signature(extra))
    except OSError:
        return (extra, None)  # configured_voices says what is wrong


@receiver(setting_changed)
def _forget_catalog(*, setting: str, **kwargs: Any) -> None:
    global _built
    if setting.startswith("TTS_"):
        _built = None


def _expand(voice: Voice) -> list[Voice]:
    if voice.engine != "coqui":
        return []
    try:
        from tts.engines.coqui import expand_voice
    except ImportError:
        return []
    try:
        return [v for v in expand_voice(voice) if v.id != voice.id]
    except Exception:  # noqa: BLE001 - a broken model lists as unavailable, never crashes
        return []


def default_voice_id() -> str:
    return getattr(settings, "TTS_DEFAULT_VOICE", "en-us")


def get_voice(voice_id: str) -> Voice | None:
    return _catalog().get(voice_id)


def voice_availability(voice: Voice) -> tuple[bool, str]:
    try:
        return get_engine(voice.engine).availability(voice)
    except EngineUnavailable as exc:
        return False, exc.message


def voice_as_json(voice: Voice) -> dict[str, Any]:
    available, reason = voice_availability(voice)
    return {
        "id": voice.id,
        "label": voice.label,
        "engine": voice.engine,
        "language": voice.language,
        "speaker": voice.speaker or None,
        "speed": voice.speed,
        "available": available,
        "reason": reason or None,
        "default": voice.id == default_voice_id(),
    }
