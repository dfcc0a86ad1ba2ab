"""The engine interface: what every speech engine offers the tts service."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar


class EngineError(Exception):
    """A synthesis failed. ``code`` is stable and shown to clients."""

    def __init__(self, message: str, *, code: str = "engine_error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EngineUnavailable(EngineError):
    """The engine or its model is absent. The message says how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="voice_unavailable")


@dataclass(frozen=True)
class Voice:
    """One entry of the voice catalog (see ``tts.voices``)."""

    id: str
    label: str
    engine: str
    language: str = "en-us"
    # Engine-specific selectors. espeak: ``name`` is the espeak voice (``en-us``).
    # coqui: ``model`` (a Coqui model name) or ``model_path`` + ``config_path``;
    # ``speaker`` and ``speaker_wav`` for multi-speaker models; ``name`` unused.
    name: str = ""
    model: str = ""
    model_path: str = ""
    config_path: str = ""
    speaker: str = ""
    speaker_wav: str = ""
    speed: float = 1.0
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def cache_fields(self) -> dict[str, Any]:
        """What makes audio of this voice unique (the cache key, with the text)."""
        return {
            "engine": self.engine,
            "name": self.name,
            "model": self.model or self.model_path,
            "speaker": self.speaker,
            "speaker_wav": self.speaker_wav,
            "language": self.language,
            "speed": self.speed,
        }


@dataclass(frozen=True)
class Audio:
    """Mono 16-bit little-endian PCM."""

    pcm: bytes
    sample_rate: int

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2

    @property
    def duration_ms(self) -> int:
        return round(self.samples * 1000 / self.sample_rate) if self.sample_rate else 0


class Engine(abc.ABC):
    """A speech engine. One instance per process; ``load`` is called once per voice
    when the worker starts, never at import time."""

    name: ClassVar[str]
    # Longest segment the engine handles well, in characters.
    max_segment_chars: ClassVar[int] = 300

    @abc.abstractmethod
    def availability(self, voice: Voice) -> tuple[bool, str]:
        """(available, reason). The reason names the command that fixes it. Cheap."""

    @abc.abstractmethod
    def model_id(self, voice: Voice) -> str:
        """A short name of the model that ``voice`` resolves to (stored on sessions)."""

    def load(self, voice: Voice) -> None:  # noqa: B027 - optional hook
        """Load and warm up what ``voice`` needs. Idempotent."""

    @abc.abstractmethod
    def synthesize(self, text: str, voice: Voice) -> Audio:
        """Speech for ``text`` with no leading or trailing padding added."""

    def discover_voices(self) -> list[Voice]:
        """Voices the engine finds by itself (speakers of a loaded model)."""
        return []


def file_signature(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """What changes when a file is written or replaced: its modification time (ns), size
    and inode; for files kept as read and read again only when they change (a model's
    config, the extra voices file). Raises OSError."""
    stat = os.stat(path)
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
