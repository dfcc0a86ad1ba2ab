"""The espeak-ng engine: always available offline, and instant.

Speech is made in-process by libespeak-ng (the library the ``espeak-ng`` program is
built on, in the same package) when it loads: no process to start per segment, which is
most of what a short segment costs. Otherwise, or with ``TTS_ESPEAK_LIBRARY=""``, the
program runs once per segment, as before. Both make the same speech from the same
options (`-b 1 -z`: UTF-8 text, no pause at the end)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import shutil
import subprocess
import threading
import time

from tts.audio import parse_wav
from tts.conf import settings
from tts.engines.base import Audio, Engine, EngineError, EngineUnavailable, Voice

logger = logging.getLogger(__name__)

# espeak-ng's default of 175 words per minute is hurried for long prose; 160 is
# the rate listeners follow most easily in audiobook-style narration.
BASE_WPM = 160
INSTALL_HINT = "apt-get install espeak-ng"
WARM_UP_TEXT = "Ready."
TIMEOUT_S = 60  # one segment, either way


def _no_voice(name: str) -> str:
    return f"espeak-ng has no voice {name!r}. Install espeak-ng-data."


def _timed_out() -> EngineError:
    return EngineError(f"espeak-ng took longer than {TIMEOUT_S} s", code="engine_timeout")


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


def installed_voices(binary: str) -> frozenset[str]:
    """Voice names espeak-ng knows (``en-us``, ``en-gb-x-rp``, ...), plus their files;
    none when the program cannot list them. A listing is asked once per process (a web
    process's warm-up asks it), but a failed one is not kept: the next asking runs it
    again, so that a slow start does not leave every voice unavailable until a restart."""
    try:
        return _listed_voices(binary)
    except (OSError, subprocess.SubprocessError):
        return frozenset()


@functools.lru_cache(maxsize=4)
def _listed_voices(binary: str) -> frozenset[str]:
    out = subprocess.run(
        [binary, "--voices"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5:
            names.update({fields[1], fields[3], fields[4].split("/")[-1]})
    return frozenset(names)


# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # a missing data folder is an error, not exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PHONEMES = 0x100  # [[...]] is phoneme input, as the program's default
_RATE = 1
_EE_OK = 0
_BUFFER_MS = 10_000  # audio per callback (one per clause below that): few trips back for the GIL


class _VoiceProperties(ctypes.Structure):  # espeak_VOICE
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Library:
    """libespeak-ng, initialized once per process. It keeps one global synthesizer, so
    one synthesis runs at a time (a lock); the GIL is released while it runs (ctypes),
    and taken back to collect the audio once per clause (or ``_BUFFER_MS`` of audio)."""

    def __init__(self, cdll: ctypes.CDLL) -> None:
        cdll.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        cdll.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        cdll.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_VoiceProperties)]
        cdll.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        cdll.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib = cdll
        self._lock = threading.Lock()
        self._voice = b""
        self._parts: list[bytes] = []
        self._deadline = 0.0
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive as long as the library
        rate = cdll.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, None, _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise OSError("espeak_Initialize failed (is espeak-ng-data installed?)")
        self.sample_rate = rate
        cdll.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, samples: int, events) -> int:  # noqa: ANN001 - C pointers
        if samples > 0:
            self._parts.append(ctypes.string_at(wav, samples * 2))
        return 1 if time.monotonic() > self._deadline else 0  # 1: stop there

    def _select(self, name: bytes) -> bool:
        """The voice by its name, else by language (``fr-fr``), as the program's -v."""
        if self._lib.espeak_SetVoiceByName(name) == _EE_OK:
            return True
        wanted = _VoiceProperties(languages=name)
        return self._lib.espeak_SetVoiceByProperties(ctypes.byref(wanted)) == _EE_OK

    def synthesize(self, text: str, voice_name: str, wpm: int) -> bytes:
        encoded = text.encode() + b"\0"
        with self._lock:
            name = voice_name.encode()
            if name != self._voice:
                self._voice = b""
                if not self._select(name):
                    raise EngineUnavailable(_no_voice(voice_name))
                self._voice = name
            self._lib.espeak_SetParameter(_RATE, wpm, 0)
            self._parts = []
            self._deadline = time.monotonic() + TIMEOUT_S
            status = self._lib.espeak_Synth(
                encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _PHONEMES, None, None
            )
            parts, self._parts = self._parts, []
            late = time.monotonic() > self._deadline
        if late:
            raise _timed_out()
        if status != _EE_OK:
            raise EngineError(f"espeak-ng failed (status {status})", code="engine_error")
        return b"".join(parts)


_libraries: dict[str, _Library | None] = {}  # by setting
_by_handle: dict[int, _Library] = {}  # libespeak-ng has one synthesizer per process
_libraries_lock = threading.Lock()


def _library() -> _Library | None:
    """The in-process library named by TTS_ESPEAK_LIBRARY ("auto": the system's), or None
    (off, not installed, or it failed to start: the program is used). Loaded once per
    process, on first use."""
    wanted = settings.TTS_ESPEAK_LIBRARY
    if not wanted:
        return None
    with _libraries_lock:
        if wanted not in _libraries:
            _libraries[wanted] = _load_library(wanted)
        return _libraries[wanted]


def _load_library(wanted: str) -> _Library | None:
    path = ctypes.util.find_library("espeak-ng") if wanted == "auto" else wanted
    try:
        if not path:
            raise OSError("libespeak-ng not found")
        cdll = ctypes.CDLL(path)  # the same file twice is the same handle: one instance
        if cdll._handle not in _by_handle:
            _by_handle[cdll._handle] = _Library(cdll)
        return _by_handle[cdll._handle]
    except (OSError, AttributeError) as exc:
        log = logger.info if wanted == "auto" else logger.warning
        log("espeak-ng runs as a program per segment: the library did not load (%s)", exc)
        return None


class EspeakEngine(Engine):
    name = "espeak"
    max_segment_chars = 400

    def availability(self, voice: Voice) -> tuple[bool, str]:
        binary = _binary()
        if not _installed(binary):
            return False, f"The espeak-ng program is not installed. Install it: {INSTALL_HINT}"
        if voice.name and voice.name not in installed_voices(binary):
            return False, _no_voice(voice.name)
        return True, ""

    def model_id(self, voice: Voice) -> str:
        return f"espeak-ng:{voice.name or 'en-us'}"

    def load(self, voice: Voice) -> None:
        """Start the library (its phoneme data) and the voice's dictionary now, not on the
        first session."""
        if _library() is None:
            return
        try:
            self.synthesize(WARM_UP_TEXT, voice)
        except EngineError as exc:  # the voice's sessions will say so; the worker starts
            logger.warning("espeak-ng voice %r did not warm up: %s", voice.name, exc.message)

    def synthesize(self, text: str, voice: Voice) -> Audio:
        wpm = max(80, min(450, round(BASE_WPM * (voice.speed or 1.0))))
        library = _library()
        if library is not None:
            pcm = library.synthesize(text, voice.name or "en-us", wpm)
            return Audio(pcm=pcm, sample_rate=library.sample_rate)
        return self._run_program(text, voice, wpm)

    def _run_program(self, text: str, voice: Voice, wpm: int) -> Audio:
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
            done = subprocess.run(
                command, input=text.encode(), capture_output=True, timeout=TIMEOUT_S
            )
        except FileNotFoundError:
            raise EngineUnavailable(f"espeak-ng is not installed. {INSTALL_HINT}") from None
        except subprocess.TimeoutExpired:
            raise _timed_out() from None
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip()[:200]
            raise EngineError(f"espeak-ng failed: {reason}", code="engine_error")
        try:
            pcm, sample_rate = parse_wav(done.stdout)
        except ValueError as exc:
            raise EngineError(f"espeak-ng wrote no audio: {exc}", code="engine_error") from None
        return Audio(pcm=pcm, sample_rate=sample_rate)
