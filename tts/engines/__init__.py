"""Engines by name. Each engine class is instantiated once per process, lazily."""

from __future__ import annotations

import functools

from tts.engines.base import Audio, Engine, EngineError, EngineUnavailable, Voice, file_signature

__all__ = [
    "Audio",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "Voice",
    "file_signature",
    "get_engine",
]

ENGINE_NAMES = ("espeak", "coqui")


@functools.cache
def get_engine(name: str) -> Engine:
    if name == "espeak":
        from tts.engines.espeak import EspeakEngine

        return EspeakEngine()
    if name == "coqui":
        from tts.engines.coqui import CoquiEngine

        return CoquiEngine()
    raise EngineUnavailable(f"Unknown engine {name!r}; known engines: {', '.join(ENGINE_NAMES)}")
