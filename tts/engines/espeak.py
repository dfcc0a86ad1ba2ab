"""The espeak-ng engine: a program that is always available offline and instant."""

from __future__ import annotations

import functools
import shutil
import subprocess

from tts.audio import parse_wav
from tts.conf import settings
from tts.engines.base import Audio, Engine, EngineError, EngineUnavailable, Voice

# espeak-ng's default of 175 words per minute is hurried for long prose; 160 is
# the rate listeners follow most easily in audiobook-style narration.
BASE_WPM = 160
INSTALL_HINT = "apt-get install espeak-ng"


def _binary() -> str:
    return getattr(settings, "TTS_ESPEAK_BINARY", "espeak-ng")


_found: set[str] = set()


def _installed(binary: str) -> bool:
    """Whether the program is on PATH. Asked on every POST (the voice's availability):
    once found, it is not looked for again (a PATH walk per request); until then, it is,
    so that installing it needs no restart. One removed later fails its synthesis with
    EngineUnavailable, as before."""
    if binary not in _found and shutil.which(binary) is not None:
        _found.add(binary)
    return binary in _found


@functools.lru_cache(maxsize=4)
def installed_voices(binary: str) -> frozenset[str]:
    """Voice names espeak-ng knows (``en-us``, ``en-gb-x-rp``, ...), plus their files."""
    try:
        out = subprocess.run(
            [binary, "--voices"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5:
            names.update({fields[1], fields[3], fields[4].split("/")[-1]})
    return frozenset(names)


class EspeakEngine(Engine):
    name = "espeak"
    max_segment_chars = 400

    def availability(self, voice: Voice) -> tuple[bool, str]:
        binary = _binary()
        if not _installed(binary):
            return False, f"The espeak-ng program is not installed. Install it: {INSTALL_HINT}"
        if voice.name and voice.name not in installed_voices(binary):
            return False, f"espeak-ng has no voice {voice.name!r}. Install espeak-ng-data."
        return True, ""

    def model_id(self, voice: Voice) -> str:
        return f"espeak-ng:{voice.name or 'en-us'}"

    def synthesize(self, text: str, voice: Voice) -> Audio:
        wpm = max(80, min(450, round(BASE_WPM * (voice.speed or 1.0))))
        # Text goes through stdin so that nothing in it can be read as an option.
        # -z: no pause at the end; the service adds its own pauses between chunks.
        command = [
            _binary(),
            "-v",
            voice.name or "en-us",
            "-s",
            str(wpm),
            "-b",
            "1",
            "-z",
            "--stdout",
        ]
        try:
            done = subprocess.run(command, input=text.encode(), capture_output=True, timeout=60)
        except FileNotFoundError:
            raise EngineUnavailable(f"espeak-ng is not installed. {INSTALL_HINT}") from None
        except subprocess.TimeoutExpired:
            raise EngineError("espeak-ng took longer than 60 s", code="engine_timeout") from None
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip()[:200]
            raise EngineError(f"espeak-ng failed: {reason}", code="engine_error")
        try:
            pcm, sample_rate = parse_wav(done.stdout)
        except ValueError as exc:
            raise EngineError(f"espeak-ng wrote no audio: {exc}", code="engine_error") from None
        return Audio(pcm=pcm, sample_rate=sample_rate)
