"""The stack under test: a private database, a private Redis (or a unique prefix on a given
one), random-weight Coqui models, daphne and N workers, all on loopback.

The processes are the ones `make run` and the end-to-end tests start (scripts/stack.py),
with the voices configured the documented way: TTS_COQUI_MODEL_PATH (+ CONFIG_PATH,
VOICE_ID) for the full-size VITS and TTS_EXTRA_VOICES_FILE for the tiny one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse, urlunparse

from bench import proxies, tls
from scripts.stack import (
    PYTHON,
    ROOT,
    EmbeddedRedis,
    Stack,
    port_open,
    redis_reachable,
    wait_for,
)

# The bench's names for the three voices, and the catalog ids they get in the stack.
VOICE_IDS = {"espeak": "en-us", "tiny": "coqui-tiny", "full": "coqui-vits-full"}


@dataclass
class ModelFiles:
    model_path: Path
    config_path: Path


def build_models(directory: Path, *, tiny: bool, full: bool) -> dict[str, ModelFiles]:
    """Random-weight VITS models (tts.testing.build_vits), built in a child process so the
    client process never imports torch."""
    wanted = [name for name, on in (("tiny", tiny), ("full", full)) if on]
    if not wanted:
        return {}
    code = (
        "import json, sys; from pathlib import Path; from tts.testing import build_vits\n"
        "out = {}\n"
        "for name in sys.argv[2:]:\n"
        "    m, c = build_vits(Path(sys.argv[1]) / name, full_size=name == 'full')\n"
        "    out[name] = [str(m), str(c)]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", code, str(directory), *wanted],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    paths = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: ModelFiles(Path(m), Path(c)) for name, (m, c) in paths.items()}


def fresh_postgres(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url``; return the URL that points to it."""
    import psycopg

    parsed = urlparse(url)
    admin = urlunparse(parsed._replace(path="/postgres"))
    with psycopg.connect(admin.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunparse(parsed._replace(path=f"/{name}"))


def drop_postgres(url: str) -> None:
    import psycopg

    parsed = urlparse(url)
    admin = urlunparse(parsed._replace(path="/postgres"))
    with psycopg.connect(admin.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.path.strip("/")}" WITH (FORCE)')


@dataclass
class BenchStack:
    run_dir: Path
    log_dir: Path
    voices: tuple[str, ...] = ("espeak", "tiny", "full")
    workers: int = 2
    database_url: str | None = None
    redis_url: str | None = None
    torch_threads: int = 0
    full_threads: int = 0  # TTS_COQUI_TORCH_THREADS (0: TTS_TORCH_THREADS)
    # Bench-only monkeypatches (bench/patches.py) and profiling, applied in the processes
    # through bench/procs.py; empty means the stock launch of scripts/stack.py.
    patches: tuple[str, ...] = ()
    profile_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # --env NAME=VALUE
    switch_file: Path | None = None  # paired A/B: experiments on while this file exists
    tls_port: int = 0  # daphne also serves TLS here (--path-tls); 0: not
    tls_spki: str = ""  # its certificate's key, for the browser to trust (bench/tls.py)
    tls_proxy: str = "daphne"  # what serves tls_port: daphne, or nginx or caddy before it
    nginx_buffer: str = "16k"  # nginx's ssl_buffer_size
    proxy: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)
    models: dict[str, ModelFiles] = field(default_factory=dict)
    stack: Stack | None = None
    redis: EmbeddedRedis | None = None
    created_db: str | None = None

    # Setup ---------------------------------------------------------------------------------

    def prepare(self) -> BenchStack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.models = build_models(
            self.run_dir / "models", tiny="tiny" in self.voices, full="full" in self.voices
        )
        self.env = self._env(self._database(), self._redis())
        return self

    def _database(self) -> str:
        if not self.database_url:
            return f"sqlite:///{self.run_dir / 'bench.sqlite3'}"
        if not self.database_url.startswith(("postgres://", "postgresql://")):
            return self.database_url
        # A fresh database per run: the audio cache starts empty, as on the SQLite default.
        name = f"ttsbench_{time.strftime('%Y%m%d%H%M%S')}_{uuid.uuid4().hex[:6]}"
        self.created_db = fresh_postgres(self.database_url, name)
        return self.created_db

    def _redis(self) -> str:
        if self.redis_url:
            if not redis_reachable(self.redis_url):
                raise SystemExit(f"Redis at {self.redis_url} is not reachable")
            return self.redis_url
        self.redis = EmbeddedRedis().start()
        return self.redis.url

    def _env(self, database_url: str, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        for name in list(env):  # never inherit a developer's narration settings
            if name.startswith(("TTS_", "CHANNEL_LAYER_")):
                del env[name]
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            CHANNEL_LAYER_PREFIX=f"bench{uuid.uuid4().hex[:8]}",
            TTS_RATE_LIMIT_PER_MINUTE="0",
            TTS_MAX_ACTIVE_PER_OWNER="0",
            STATIC_MANIFEST="0",
            PYTHONUNBUFFERED="1",
            DEBUG="0",
            TTS_PRELOAD_VOICES=",".join(VOICE_IDS[v] for v in self.voices),
        )
        if self.torch_threads:
            env["TTS_TORCH_THREADS"] = str(self.torch_threads)
        if "full" in self.models:
            full = self.models["full"]
            env.update(
                TTS_COQUI_MODEL_PATH=str(full.model_path),
                TTS_COQUI_CONFIG_PATH=str(full.config_path),
                TTS_COQUI_VOICE_ID=VOICE_IDS["full"],
                TTS_COQUI_VOICE_LABEL="Full-size VITS (random weights)",
                TTS_COQUI_TORCH_THREADS=str(self.full_threads),
            )
        if "tiny" in self.models:
            tiny = self.models["tiny"]
            extra = self.run_dir / "voices.json"
            extra.write_text(
                json.dumps(
                    [
                        {
                            "id": VOICE_IDS["tiny"],
                            "label": "Tiny VITS (random weights)",
                            "engine": "coqui",
                            "model_path": str(tiny.model_path),
                            "config_path": str(tiny.config_path),
                            "language": "en-us",
                        }
                    ]
                )
            )
            env["TTS_EXTRA_VOICES_FILE"] = str(extra)
        env.update(self.extra_env)
        if self.patches:
            env["BENCH_PATCHES"] = ",".join(self.patches)
            env["BENCH_TIMINGS_DIR"] = str(self.log_dir / "timings")
        if self.switch_file is not None:
            env["BENCH_SWITCH_FILE"] = str(self.switch_file)
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            env["BENCH_PROFILE_DIR"] = str(self.profile_dir)
        return env

    def setup_django(self) -> None:
        """Point this (client) process at the same database, migrate it, import the models."""
        for name in (
            "DJANGO_SETTINGS_MODULE",
            "DATABASE_URL",
            "REDIS_URL",
            "CHANNEL_LAYER_PREFIX",
            "TTS_EXTRA_VOICES_FILE",
            "TTS_COQUI_MODEL_PATH",
            "TTS_COQUI_CONFIG_PATH",
            "TTS_COQUI_VOICE_ID",
            "STATIC_MANIFEST",
            "DEBUG",
        ):
            if name in self.env:
                os.environ[name] = self.env[name]
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)

    # Processes -----------------------------------------------------------------------------

    def start(self) -> BenchStack:
        stack_class = PatchedStack if (self.patches or self.profile_dir) else Stack
        self.stack = stack_class(env=self.env, workers=self.workers, log_dir=self.log_dir)
        if self.tls_port:
            cert, key, self.tls_spki = tls.make_certificate(self.run_dir / "tls")
            if self.tls_proxy == "daphne":
                self.stack.daphne_args = tls.daphne_endpoint(self.tls_port, cert, key)
            else:  # the proxy's X-Forwarded-Proto: https (bench/proxies.py)
                self.stack.daphne_args = ["--proxy-headers"]
        self.stack.start()  # returns once every worker has loaded and warmed its voices
        if self.tls_port:
            if self.tls_proxy != "daphne":
                self.proxy = proxies.start(
                    self.tls_proxy,
                    self.run_dir / self.tls_proxy,
                    self.log_dir / f"{self.tls_proxy}.log",
                    port=self.tls_port,
                    upstream=self.stack.port,
                    cert=cert,
                    key=key,
                    nginx_buffer=self.nginx_buffer,
                )  # serving once it returns
            else:
                wait_for(lambda: port_open("127.0.0.1", self.tls_port), timeout=30, what="TLS")
        return self

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    @property
    def port(self) -> int:
        return self.stack.port

    @property
    def worker_pids(self) -> list[int]:
        return [proc.pid for proc in self.stack.worker_procs]

    @property
    def daphne_pid(self) -> int:
        return self.stack.daphne.pid

    def pause_workers(self) -> None:
        """SIGSTOP: sessions stay queued while listeners gather (fan-out, idle sockets)."""
        for pid in self.worker_pids:
            os.kill(pid, signal.SIGSTOP)

    def resume_workers(self) -> None:
        for pid in self.worker_pids:
            os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.patches or self.profile_dir:
            time.sleep(0.6)  # timings are written every 0.25 s, profiles after each session
        if self.proxy is not None:
            proxies.stop(self.proxy)
        if self.stack is not None:
            with contextlib.suppress(ProcessLookupError):
                self.resume_workers()
            self.stack.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.created_db:
            from django.db import connections

            connections.close_all()
            drop_postgres(self.created_db)


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def uss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_full_info().uss / 2**20


class PatchedStack(Stack):
    """The same processes, started through bench/procs.py so that bench-only patches and
    the profiler load first."""

    daphne_launcher: ClassVar[list[str]] = [PYTHON, "-m", "bench.procs", "daphne"]
    worker_command: ClassVar[list[str]] = [PYTHON, "-m", "bench.procs", "worker"]
