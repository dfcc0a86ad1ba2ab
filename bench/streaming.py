"""Scenarios 2 and 3 on a ~2,000-character text: streaming against the blocking baseline
(time to first audio over time to the whole WAV) and throughput (a session's wall time
over the sum of its engine time)."""

from __future__ import annotations

import asyncio
import subprocess
import time

from bench.client import Http, Narration
from bench.db import fetch_sessions
from bench.stack import ModelFiles
from bench.stats import summary
from bench.ttfa import run_sessions
from scripts.stack import PYTHON, ROOT, free_port, port_open, stop_process, wait_for
from tts.audio import parse_wav


def run_long(port: int, voice: str, texts: list[str], *, timeout: float) -> list[Narration]:
    return run_sessions(port, voice, texts, timeout=timeout)


def throughput(narrations: list[Narration]) -> dict:
    """Per session: worker wall time (claim -> finished) and end-to-end wall time (POST ->
    `done` at the client), each over the summed engine time of its chunks."""
    rows = fetch_sessions([n.session_id for n in narrations])
    per = []
    for n in narrations:
        row = rows[n.session_id]
        if not row.engine_ms or row.finished_at is None or n.stream is None:
            continue
        worker_ms = (row.finished_at - row.started_at) * 1000
        e2e_ms = ((n.stream.t_end or row.finished_at) - n.t_post) * 1000
        chunks = len(row.chunks)
        per.append(
            {
                "chars": len(n.text),
                "chunks": chunks,
                "audio_s": row.audio_ms / 1000,
                "engine_s": row.engine_ms / 1000,
                "worker_wall_s": worker_ms / 1000,
                "e2e_wall_s": e2e_ms / 1000,
                "worker_ratio": worker_ms / row.engine_ms,
                "e2e_ratio": e2e_ms / row.engine_ms,
                "overhead_per_chunk_ms": (worker_ms - row.engine_ms) / chunks,
                "ttfa_ms": n.ttfa_ms,
                "complete": bool(n.stream.complete),
            }
        )
    return {
        "sessions": per,
        "worker_ratio": summary((p["worker_ratio"] for p in per), digits=3),
        "e2e_ratio": summary((p["e2e_ratio"] for p in per), digits=3),
        "overhead_per_chunk_ms": summary(p["overhead_per_chunk_ms"] for p in per),
        "ttfa_ms": summary(p["ttfa_ms"] for p in per if p["ttfa_ms"] is not None),
    }


class BaselineServer:
    """bench/baseline.py in a child process, warmed up before it listens."""

    def __init__(
        self, engine: str, model: ModelFiles | None, env: dict[str, str], log_path
    ) -> None:
        self.port = free_port()
        args = [PYTHON, "-m", "bench.baseline", "--port", str(self.port), "--engine", engine]
        if model is not None:
            args += ["--model-path", str(model.model_path), "--config-path", str(model.config_path)]
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def __enter__(self) -> BaselineServer:
        wait_for(
            lambda: self.process.poll() is None and port_open("127.0.0.1", self.port),
            timeout=300,
            what="the blocking baseline server",
        )
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.process)
        self.log.close()


async def _blocking(port: int, text: str, timeout: float) -> dict:
    http = Http("127.0.0.1", port)
    started = time.time()
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = text.encode()
        writer.write(
            b"POST /api/tts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        response = await http._read(reader)
        writer.close()
    finished = time.time()
    return {
        "status": response.status,
        "time_to_audio_ms": (finished - started) * 1000,
        "synthesis_ms": float(response.headers.get("x-synthesis-ms", "nan")),
        "audio_s": _duration_s(response.body),
        "wav_bytes": len(response.body),
    }


def _duration_s(wav: bytes) -> float:
    try:
        pcm, rate = parse_wav(wav)
    except ValueError:
        return 0.0
    return len(pcm) / 2 / rate


def run_blocking(server: BaselineServer, texts: list[str], *, timeout: float) -> list[dict]:
    return [asyncio.run(_blocking(server.port, text, timeout)) for text in texts]


def compare(streaming: list[Narration], blocking: list[dict]) -> dict:
    """TTFA(streaming) / time-to-audio(blocking), pairwise on the same texts, and medians."""
    ratios = [
        n.ttfa_ms / b["time_to_audio_ms"]
        for n, b in zip(streaming, blocking, strict=False)
        if n.ttfa_ms is not None and b["status"] == 200
    ]
    return {
        "streaming_ttfa_ms": summary(n.ttfa_ms for n in streaming if n.ttfa_ms is not None),
        "blocking_time_to_audio_ms": summary(b["time_to_audio_ms"] for b in blocking),
        "blocking_audio_s": summary((b["audio_s"] for b in blocking), digits=2),
        "ratio": summary(ratios, digits=4),
        "runs": blocking,
    }
