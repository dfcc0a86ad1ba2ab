"""The app's settings, each with a default, so a project only sets what it changes.

``from tts.conf import settings`` reads Django's settings and falls back to these."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

DEFAULT_VOICES: list[dict[str, Any]] = [
    {
        "id": "en-us",
        "label": "English (US)",
        "engine": "espeak",
        "name": "en-us",
        "language": "en-us",
        "speed": 1.0,
    },
    {
        "id": "en-gb",
        "label": "English (UK)",
        "engine": "espeak",
        "name": "en-gb-x-rp",
        "language": "en-gb",
        "speed": 1.0,
    },
    {
        "id": "en-gb-scotland",
        "label": "English (Scotland)",
        "engine": "espeak",
        "name": "en-gb-scotland",
        "language": "en-gb",
        "speed": 1.0,
    },
    {
        "id": "en-us-slow",
        "label": "English (US), slower",
        "engine": "espeak",
        "name": "en-us",
        "language": "en-us",
        "speed": 0.8,
    },
    {
        "id": "fr-fr",
        "label": "French",
        "engine": "espeak",
        "name": "fr-fr",
        "language": "fr-fr",
        "speed": 1.0,
    },
    {
        "id": "de-de",
        "label": "German",
        "engine": "espeak",
        "name": "de",
        "language": "de-de",
        "speed": 1.0,
    },
    {
        "id": "es-es",
        "label": "Spanish",
        "engine": "espeak",
        "name": "es",
        "language": "es-es",
        "speed": 1.0,
    },
    {
        "id": "coqui-ljspeech-vits",
        "label": "LJSpeech VITS (Coqui)",
        "engine": "coqui",
        "model": "tts_models/en/ljspeech/vits",
        "language": "en-us",
    },
]

DEFAULTS: dict[str, Any] = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "TTS_VOICES": DEFAULT_VOICES,
    "TTS_EXTRA_VOICES_FILE": "",
    "TTS_DEFAULT_VOICE": "en-us",
    # "app_label.Model" whose ids POST /api/tts/sessions/ accepts as `scene`; the model
    # needs get_narration_text() (and may have a `voice`). Empty: no scene narration.
    "TTS_SCENE_MODEL": "",
    "TTS_MAX_CHARS": 20000,
    "TTS_RATE_LIMIT_PER_MINUTE": 30,
    "TTS_MAX_ACTIVE_PER_OWNER": 3,
    "TTS_SENTENCE_PAUSE_MS": 350,
    "TTS_CLAUSE_PAUSE_MS": 150,
    "TTS_PARAGRAPH_PAUSE_MS": 600,
    "TTS_FIRST_SEGMENT_CHARS": 60,
    # Each segment's length limit is this times the one before (60, 120, 240, … up to the
    # engine's maximum): the engine keeps ahead of the listener while its real-time factor
    # is below about 1 / TTS_SEGMENT_GROWTH. Lower it for a voice that runs slower than
    # that on your hardware (1.25 for a real-time factor up to about 0.8).
    "TTS_SEGMENT_GROWTH": 2.0,
    "TTS_QUEUED_TIMEOUT": 30.0,
    "TTS_HEARTBEAT_TIMEOUT": 30.0,
    "TTS_SWEEP_INTERVAL": 10.0,
    "TTS_MAX_ATTEMPTS": 3,
    "TTS_PRELOAD_VOICES": [],
    # Seconds a worker keeps its database connection between messages (each message
    # otherwise opens one). 0 leaves DATABASES alone; a pooled database (OPTIONS["pool"])
    # is left alone. Web processes: TTS_WEB_CONN_MAX_AGE, below.
    "TTS_WORKER_CONN_MAX_AGE": 300,
    # PostgreSQL: a worker's commits do not wait for the disk (synchronous_commit=off on
    # its connections). What a crash of the database may lose of them, the recovery sweep
    # redoes; the web processes' commits (a session's creation) still wait.
    "TTS_WORKER_ASYNC_COMMIT": True,
    # SQLite: the pages of write-ahead log past which a connection to the narration tables'
    # database copies the log back into the file, except on the threads that store chunks,
    # which keep SQLite's own 1,000 (tts/db.py). 0: SQLite's own everywhere.
    "TTS_SQLITE_CHECKPOINT_PAGES": 10_000,
    # The most sessions a worker runs at once, chunk by chunk, while its engine keeps up
    # with all of them (tts.scheduling). Each holds a database connection for its writer
    # thread. 1: one at a time, from start to end.
    "TTS_WORKER_SESSIONS": 8,
    # Seconds a web process's long-lived threads (the sockets' one, and the request
    # threads of tts.asgi) keep their database connection (tts/db.py). 0: as DATABASES
    # says (a connection per request or socket trip).
    "TTS_WEB_CONN_MAX_AGE": 60,
    # Long-lived request threads per web process (tts.asgi); busy beyond them, a request
    # gets a fresh thread of its own, as under Django's handler. 0: always a fresh one.
    "TTS_REQUEST_THREADS": 8,
    # Web and worker processes open their first session's database and Redis connections
    # and compile its SQL at start (tts.warmup). False: the first session does.
    "TTS_WARM_UP": True,
    # Seconds a socket opened with ?pending=1 waits for its session to be created (the
    # client chose the id and opened the socket while its POST was in flight).
    "TTS_PENDING_SOCKET_S": 10.0,
    # A page with a player gives a visitor with no session cookie one (one session write),
    # so that the first Play opens its socket ahead. False: the first POST does.
    "TTS_SESSION_ON_PAGE": True,
    "TTS_FAULT_DELAY_MS": 0,
    "TTS_ESPEAK_BINARY": "espeak-ng",
    # libespeak-ng in the worker's process: "auto", a path, or "" (the program per segment)
    "TTS_ESPEAK_LIBRARY": "auto",
}


class _Settings:
    def __getattr__(self, name: str) -> Any:
        if name in DEFAULTS:
            return getattr(django_settings, name, DEFAULTS[name])
        return getattr(django_settings, name)


settings = _Settings()
