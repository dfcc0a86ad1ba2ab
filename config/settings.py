"""Settings, all from environment variables with safe defaults (see .env.example)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_int, env_list, env_str
from tts.conf import DEFAULT_VOICES

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
HTTPS = env_bool("HTTPS", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and HTTPS:
        raise ImproperlyConfigured("SECRET_KEY is required when HTTPS is on (production).")
    # Development and tests only; production (HTTPS=1) refuses to start without one.
    SECRET_KEY = "insecure-dev-key-set-SECRET_KEY-in-production-0123456789abcdef"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    # Before "channels" so that its runworker (engine warm-up, recovery sweep) wins.
    "tts",
    "channels",
    "scenes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # 0: a request that finds every long-lived request thread busy runs on a thread
        # of its own, where a persistent connection would outlive it. The long-lived
        # threads keep theirs (TTS_WEB_CONN_MAX_AGE), workers theirs
        # (TTS_WORKER_CONN_MAX_AGE); PostgreSQL gets Django's connection pool (below).
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0),
        conn_health_checks=True,
    )
}
if (
    DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    and not DATABASES["default"]["CONN_MAX_AGE"]
    and env_bool("DATABASE_POOL", True)
):
    # Every web process runs requests and socket trips on several threads, and a worker's
    # writer and heartbeat threads have their own: without a pool each would open its own
    # PostgreSQL connection (a forked backend, several milliseconds). Django's psycopg
    # pool hands them back instead.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN_SIZE", 2, minimum=0),
        "max_size": env_int("DATABASE_POOL_MAX_SIZE", 20, minimum=1),
        "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0),
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool(
    "DATABASE_SERVER_SIDE_BINDING", True
):
    # A chunk's audio is 100-300 KB. Django's default client-side binding writes it into
    # the SQL text as an escaped literal, which psycopg builds and PostgreSQL parses
    # again: 4 ms a chunk here, against 1.5 ms sent apart from the query, as bytes.
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and tests write concurrently: wait for the lock, never fail fast.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file, not memory, so that the daphne and worker processes of the end-to-end
    # tests share the test database.
    DATABASES["default"]["TEST"] = {
        "NAME": env_str("TEST_DATABASE_NAME", str(BASE_DIR / ".run" / "test-db.sqlite3"))
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL") or "redis://127.0.0.1:6379/0"
# Redis Sentinel: "host:port,host:port". The master's address then comes from the
# sentinels; REDIS_URL still gives its database number, user and password.
REDIS_SENTINELS = env_list("REDIS_SENTINELS")
REDIS_SENTINEL_MASTER = env_str("REDIS_SENTINEL_MASTER", "mymaster")
REDIS_SENTINEL_PASSWORD = env_str("REDIS_SENTINEL_PASSWORD")


def _sentinel_address(entry: str) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    if not host or not port.isdigit():
        raise ImproperlyConfigured(f"REDIS_SENTINELS entries must be host:port, got {entry!r}")
    return host.strip("[]"), int(port)


def _channel_layer_host() -> dict:
    # redis-py's 5 s default socket timeout equals channels-redis's 5 s blocking
    # receive: idle workers and sockets would die. Keep it longer.
    timeouts = {"socket_timeout": 15, "socket_connect_timeout": 2}
    if not REDIS_SENTINELS:
        return {"address": REDIS_URL, **timeouts}
    url = urlparse(REDIS_URL)
    if url.scheme == "rediss":
        raise ImproperlyConfigured("REDIS_SENTINELS does not support TLS (rediss://) here.")
    sentinel_kwargs = {"socket_timeout": 2, "socket_connect_timeout": 2}
    if REDIS_SENTINEL_PASSWORD:
        sentinel_kwargs["password"] = REDIS_SENTINEL_PASSWORD
    return {
        "sentinels": [_sentinel_address(entry) for entry in REDIS_SENTINELS],
        "master_name": REDIS_SENTINEL_MASTER,
        "sentinel_kwargs": sentinel_kwargs,
        "db": int(url.path.strip("/") or 0),
        "username": url.username or None,
        "password": url.password or None,
        **timeouts,
    }


# Capacity is per channel: how many messages wait for one consumer before the layer drops
# new ones (tts-generate: queued sessions; a socket: chunk notices). Expiry drops messages
# nobody read in time. Both only cost latency: workers re-dispatch from the database.
# group_expiry must outlast the longest socket (DAPHNE_WEBSOCKET_TIMEOUT).
CHANNEL_LAYERS = {
    "default": {
        # channels-redis's core layer, with one round trip per send and two per group
        # send instead of four (tts/layers.py)
        "BACKEND": "tts.layers.RedisChannelLayer",
        "CONFIG": {
            "hosts": [_channel_layer_host()],
            "capacity": env_int("CHANNEL_LAYER_CAPACITY", 1000, minimum=1),
            "expiry": env_int("CHANNEL_LAYER_EXPIRY", 60, minimum=1),
            "group_expiry": env_int("CHANNEL_LAYER_GROUP_EXPIRY", 86400, minimum=1),
            "prefix": env_str("CHANNEL_LAYER_PREFIX", "asgi"),
        },
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT") or BASE_DIR / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = env_str("MEDIA_URL", "media/")
MEDIA_ROOT = Path(env_str("MEDIA_ROOT") or BASE_DIR / "media")
# Narration audio lives in the database (content-addressed chunks); media storage holds
# uploads and exports. "filesystem" (MEDIA_ROOT, a volume in Docker) or "s3" (any
# S3-compatible store through django-storages; credentials from AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY, read by boto3).
MEDIA_STORAGE = env_str("MEDIA_STORAGE", "filesystem")


def _media_storage() -> dict:
    if MEDIA_STORAGE == "filesystem":
        return {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    if MEDIA_STORAGE != "s3":
        raise ImproperlyConfigured(f"MEDIA_STORAGE must be filesystem or s3, got {MEDIA_STORAGE!r}")
    bucket = env_str("AWS_STORAGE_BUCKET_NAME")
    if not bucket:
        raise ImproperlyConfigured("MEDIA_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME.")
    options = {
        "bucket_name": bucket,
        "endpoint_url": env_str("AWS_S3_ENDPOINT_URL") or None,
        "region_name": env_str("AWS_S3_REGION_NAME") or None,
        "custom_domain": env_str("AWS_S3_CUSTOM_DOMAIN") or None,
        "addressing_style": env_str("AWS_S3_ADDRESSING_STYLE") or None,
        "location": env_str("AWS_LOCATION", "media"),
        "default_acl": None,  # the bucket's policy decides; objects stay private
        "querystring_auth": env_bool("AWS_QUERYSTRING_AUTH", True),
        "file_overwrite": False,
    }
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}


STATIC_MANIFEST = not DEBUG and env_bool("STATIC_MANIFEST", True)
STORAGES = {
    "default": _media_storage(),
    "staticfiles": {
        "BACKEND": "config.storage.StaticStorage"
        if STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Without a collected manifest (development, tests) serve straight from the apps' folders.
WHITENOISE_USE_FINDERS = not STATIC_MANIFEST

DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 256 * 1024, minimum=1024)

# Django's database sessions, their read compiled once (tts/sessions.py).
SESSION_ENGINE = "tts.sessions"

# Security. HTTPS=1 turns on what `check --deploy` asks for; plain http on loopback still works.
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
# Load balancers and container health checks probe over plain http on the inside.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # stdout, one line per record: containers and process managers collect it from there.
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stdout",
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        # Coqui logs every sentence it synthesizes at INFO.
        "TTS": {"level": env_str("COQUI_LOG_LEVEL", "WARNING")},
    },
}

# --- Narration ------------------------------------------------------------------------
TTS_DEFAULT_VOICE = env_str("TTS_DEFAULT_VOICE", "en-us")
TTS_MAX_CHARS = env_int("TTS_MAX_CHARS", 20000, minimum=1)
TTS_RATE_LIMIT_PER_MINUTE = env_int("TTS_RATE_LIMIT_PER_MINUTE", 30, minimum=0)
TTS_MAX_ACTIVE_PER_OWNER = env_int("TTS_MAX_ACTIVE_PER_OWNER", 3, minimum=0)
TTS_SENTENCE_PAUSE_MS = env_int("TTS_SENTENCE_PAUSE_MS", 350, minimum=0)
TTS_CLAUSE_PAUSE_MS = env_int("TTS_CLAUSE_PAUSE_MS", 150, minimum=0)
TTS_PARAGRAPH_PAUSE_MS = env_int("TTS_PARAGRAPH_PAUSE_MS", 600, minimum=0)
TTS_FIRST_SEGMENT_CHARS = env_int("TTS_FIRST_SEGMENT_CHARS", 60, minimum=10)
TTS_SEGMENT_GROWTH = env_float("TTS_SEGMENT_GROWTH", 2.0, minimum=1.0)
TTS_QUEUED_TIMEOUT = env_float("TTS_QUEUED_TIMEOUT", 30.0)
TTS_HEARTBEAT_TIMEOUT = env_float("TTS_HEARTBEAT_TIMEOUT", 30.0)
TTS_SWEEP_INTERVAL = env_float("TTS_SWEEP_INTERVAL", 10.0)
TTS_MAX_ATTEMPTS = env_int("TTS_MAX_ATTEMPTS", 3, minimum=1)
TTS_PRELOAD_VOICES = env_list("TTS_PRELOAD_VOICES")
TTS_WORKER_CONN_MAX_AGE = env_int("TTS_WORKER_CONN_MAX_AGE", 300, minimum=0)
TTS_WORKER_ASYNC_COMMIT = env_bool("TTS_WORKER_ASYNC_COMMIT", True)
TTS_SQLITE_CHECKPOINT_PAGES = env_int("TTS_SQLITE_CHECKPOINT_PAGES", 10_000, minimum=0)
TTS_WORKER_SESSIONS = env_int("TTS_WORKER_SESSIONS", 8, minimum=1)
TTS_WEB_CONN_MAX_AGE = env_int("TTS_WEB_CONN_MAX_AGE", 60, minimum=0)
TTS_REQUEST_THREADS = env_int("TTS_REQUEST_THREADS", 8, minimum=0)
# Web and worker processes open their first session's connections and compile its SQL at
# start (tts.warmup, P85).
TTS_WARM_UP = env_bool("TTS_WARM_UP", True)
TTS_PENDING_SOCKET_S = env_float("TTS_PENDING_SOCKET_S", 10.0, minimum=0)
# A page with a player gives a new visitor their session cookie, so that the first Play
# opens its socket ahead, as every later one does (tts.owners.welcome_visitor, P86).
TTS_SESSION_ON_PAGE = env_bool("TTS_SESSION_ON_PAGE", True)
# Testing only: sleep this long before every synthesis, to widen fault-injection windows.
TTS_FAULT_DELAY_MS = env_int("TTS_FAULT_DELAY_MS", 0, minimum=0)
TTS_ESPEAK_BINARY = env_str("TTS_ESPEAK_BINARY", "espeak-ng")
# libespeak-ng in-process ("auto": the system's; a path; empty: run the program per segment).
TTS_ESPEAK_LIBRARY = env_str("TTS_ESPEAK_LIBRARY", "auto")
TTS_COQUI_MODEL_PATH = env_str("TTS_COQUI_MODEL_PATH")
TTS_COQUI_CONFIG_PATH = env_str("TTS_COQUI_CONFIG_PATH")
TTS_COQUI_CACHE_DIR = env_str("TTS_COQUI_CACHE_DIR")
TTS_COQUI_DEVICE = env_str("TTS_COQUI_DEVICE", "auto")
# cuDNN for the Coqui voices on CUDA: off, since it plans anew for every text length (P84).
TTS_COQUI_CUDNN = env_bool("TTS_COQUI_CUDNN", False)
TTS_COQUI_AGREE_LICENSE = env_bool("TTS_COQUI_AGREE_LICENSE", False)
TTS_TORCH_THREADS = env_int("TTS_TORCH_THREADS", 0, minimum=0)
TTS_ONEDNN_CACHE_CAPACITY = env_int("TTS_ONEDNN_CACHE_CAPACITY", 32, minimum=0)

# The voice catalog: the app's defaults (espeak voices, a Coqui voice) plus a local Coqui
# model when TTS_COQUI_MODEL_PATH is set. More: TTS_EXTRA_VOICES_FILE, a JSON list.
TTS_VOICES: list[dict] = list(DEFAULT_VOICES)
TTS_SCENE_MODEL = "scenes.Scene"
if TTS_COQUI_MODEL_PATH:
    # Intra-op threads for this voice's synthesis (0: TTS_TORCH_THREADS); a full-size
    # model's first segment comes sooner on every core (P82).
    _coqui_options: dict = {"torch_threads": env_int("TTS_COQUI_TORCH_THREADS", 0, minimum=0)}
    # Its own cut, in place of TTS_FIRST_SEGMENT_CHARS and TTS_SEGMENT_GROWTH (unset: those): a
    # slow voice's first audio comes sooner from a shorter first segment (P83). Part of
    # its cut, so of its narrations' keys: a change means those made before are not
    # replayed.
    if _first := env_int("TTS_COQUI_FIRST_SEGMENT_CHARS", 0, minimum=10):
        _coqui_options["first_segment_chars"] = _first
    if _growth := env_float("TTS_COQUI_SEGMENT_GROWTH", 0.0, minimum=1.0):
        _coqui_options["segment_growth"] = _growth
    TTS_VOICES.append(
        {
            "id": env_str("TTS_COQUI_VOICE_ID", "coqui-local"),
            "label": env_str("TTS_COQUI_VOICE_LABEL", "Local Coqui model"),
            "engine": "coqui",
            "model_path": TTS_COQUI_MODEL_PATH,
            "config_path": TTS_COQUI_CONFIG_PATH,
            "language": env_str("TTS_COQUI_LANGUAGE", "en-us"),
            "options": _coqui_options,
        }
    )
TTS_EXTRA_VOICES_FILE = env_str("TTS_EXTRA_VOICES_FILE")
