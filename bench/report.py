"""The machine, the table, the JSON."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from scripts.stack import PYTHON, ROOT


def git_commit(root: Path = ROOT) -> str | None:
    """HEAD's commit, read from .git (no git process); in a worktree too (bench/compare.py
    and a bench run beside the checkout), whose .git is a file naming its folder."""
    git = root / ".git"
    try:
        if git.is_file():  # "gitdir: <the worktree's folder>"; refs are the repository's
            git = root / git.read_text().partition("gitdir:")[2].strip()  # maybe relative
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        common = (
            git / (git / "commondir").read_text().strip() if (git / "commondir").is_file() else git
        )
        for folder in (git, common):
            if (folder / ref).is_file():
                return (folder / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _torch_threads(env: dict[str, str]) -> int | None:
    code = "import torch; print(torch.get_num_threads())"
    try:
        done = subprocess.run(
            [PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
        )
        return int(done.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _espeak_version() -> str | None:
    if shutil.which("espeak-ng") is None:
        return None
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"espeak ng text-to-speech: (\S+)", out, re.I)
    return match.group(1) if match else out.strip()[:60]


def _event_loop(env: dict[str, str]) -> str:
    """What the stack's processes run on: tts.loops' choice for their environment."""
    from tts import loops

    try:
        chosen = loops.uvloop_policy(env) is not None
    except ValueError:
        chosen = False  # the stack's processes refuse to start: nothing is measured
    return f"uvloop {_version('uvloop')}" if chosen else "asyncio"


def _gpu() -> str | None:
    """The machine's NVIDIA GPUs by name, as nvidia-smi lists them (None without one)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        listed = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return ", ".join(line.strip() for line in listed.splitlines() if line.strip()) or None


def _coqui_device(env: dict[str, str], gpu: str | None) -> str:
    """Where the workers' Coqui voices run: TTS_COQUI_DEVICE, with ``auto`` resolved as the
    workers resolve it (CUDA where their torch sees a GPU: not a CPU-only build)."""
    wanted = (env.get("TTS_COQUI_DEVICE") or "auto").lower()
    if wanted != "auto":
        return wanted
    if gpu is None:
        return "cpu"
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    return "cuda" if probe.strip() == "True" else "cpu"


def machine(env: dict[str, str]) -> dict:
    import psutil
    import redis
    from django.db import connection

    server = redis.Redis.from_url(env["REDIS_URL"]).info("server")
    gpu = _gpu()
    with connection.cursor():
        db_version = (
            connection.Database.sqlite_version
            if connection.vendor == "sqlite"
            else (connection.pg_version if connection.vendor == "postgresql" else None)
        )
    return {
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "coqui_device": _coqui_device(env, gpu),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "torch_threads_per_worker": int(env.get("TTS_TORCH_THREADS") or 0) or _torch_threads(env),
        "coqui_tts": _version("coqui-tts"),
        "django": _version("django"),
        "channels": _version("channels"),
        "channels_redis": _version("channels-redis"),
        "daphne": _version("daphne"),
        "websockets": _version("websockets"),
        # the stack's event loops (tts/loops.py): uvloop's version, or asyncio
        "event_loop": _event_loop(env),
        "redis_server": f"{server.get('server_name', 'redis')} {server.get('redis_version')}",
        "database": f"{connection.vendor} {db_version}",
        "espeak_ng": _espeak_version(),
        "git_commit": git_commit(),
    }


@dataclass
class Row:
    scenario: str
    voice: str
    figure: str
    value: str
    target: str = ""
    met: bool | None = None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[Row]) -> str:
    headers = ("scenario", "voice", "figure", "value", "target", "met")
    cells = [
        (
            r.scenario,
            r.voice,
            r.figure,
            r.value,
            r.target,
            "" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in rows
    ]
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "-" * len(line)]
    previous = None
    for c in cells:
        shown = list(c)
        if c[0] == previous:
            shown[0] = ""
        previous = c[0]
        out.append("  ".join(v.ljust(w) for v, w in zip(shown, widths, strict=True)).rstrip())
    return "\n".join(out)


def write_json(payload: dict | list, *paths: Path) -> None:
    text = json.dumps(payload, indent=2, default=str) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
