"""The benchmark's own logic: bench/run.py's options (a count that cannot be one is an
error, not an empty run) and bench/fanout.py's model of the bundled player."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import fanout, netdelay, report
from bench.run import Context, concurrency_voices, parse_args, warm_up_voices


def test_defaults():
    args = parse_args([])
    assert args.sessions == 50 and args.sound_sessions == 20 and args.listeners == [1, 10, 100]
    assert args.memory_checkpoints == (100, 250) and args.torch_threads == 0
    assert (args.idle_sessions, args.idle_s) == (20, 1.0)
    assert args.full_threads == (os.cpu_count() or 1)  # P82: the full-size voice on every core
    quick = parse_args(["--quick"])
    assert quick.sessions == 15 and quick.sound_sessions == 3 and quick.voices == ("espeak", "tiny")
    assert quick.idle_sessions == 3
    assert "before" not in args.scenarios  # a diagnostic, run only when named
    assert parse_args(["--scenarios", "ttfa,before"]).scenarios == ("ttfa", "before")


@pytest.mark.parametrize(
    ("voices", "warmed"),
    [
        (["espeak", "tiny", "full"], ["espeak", "tiny"]),
        (["full", "tiny"], ["tiny"]),
        (["full"], ["full"]),  # alone, its first measured session was cold
    ],
)
def test_warm_up_runs_a_fast_voice_or_else_the_full_one(voices, warmed):
    assert warm_up_voices(voices) == warmed


def test_counts_are_read():
    argv = ["--sessions", "7", "--sound-sessions", "2", "--listeners", "1, 5"]
    args = parse_args([*argv, "--memory-checkpoints", ""])
    assert (args.sessions, args.sound_sessions, args.listeners) == (7, 2, [1, 5])
    assert args.memory_checkpoints == ()
    args = parse_args(["--idle-sessions", "0", "--idle-s", "2.5"])
    assert (args.idle_sessions, args.idle_s) == (0, 2.5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sessions", "0"], "--sessions: must be at least 1, got 0"),
        (["--sound-sessions", "-3"], "--sound-sessions: must be at least 1, got -3"),
        (["--full-sessions", "two"], "--full-sessions: not a whole number: 'two'"),
        (["--idle-sessions", "-1"], "--idle-sessions: must be at least 0, got -1"),
        (["--idle-s", "-1"], "--idle-s: must be at least 0 and at most 60, got -1"),
        (["--workers", "0"], "--workers: must be at least 1, got 0"),
        (["--torch-threads", "-1"], "--torch-threads: must be at least 0, got -1"),
        (["--full-threads", "all"], "--full-threads: not a whole number: 'all'"),
        (["--listeners", "1,0,10"], "--listeners: must be at least 1, got 0"),
        (["--memory-checkpoints", "100,x"], "--memory-checkpoints: not a whole number: 'x'"),
        (["--max-minutes", "0"], "--max-minutes: must be more than 0, got 0"),
        (["--link-mbit", "0"], "--link-mbit: must be at least 0.1 and at most 100000, got 0"),
        (["--link-mbit", "fast"], "--link-mbit: not a number: 'fast'"),
        (["--path-rtt-ms", "-1"], "--path-rtt-ms: must be at least 0 and at most 10000, got -1"),
        (["--link-no-idle-restart"], "--link-no-idle-restart needs --link-mbit"),
        (["--rtt-ms", "0,x"], "--rtt-ms: not a number: 'x'"),
        (["--rtt-ms", "20,20000"], "--rtt-ms: must be at least 0 and at most 10000, got 20000"),
        (["--rtt-ms", ","], "--rtt-ms: give one or more round trips, ms"),
        (["--voices", "nope"], "unknown voice 'nope'"),
        (["--scenarios", "ttfa,after"], "unknown scenario 'after'"),
    ],
)
def test_bad_counts_exit_with_a_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def _stream(arrivals, cushions=None):
    return SimpleNamespace(arrivals=dict(enumerate(arrivals)), cushions=cushions or {})


def _row(*seconds):
    chunks = [
        SimpleNamespace(seq=i, samples=int(s * 1000), sample_rate=1000)
        for i, s in enumerate(seconds)
    ]
    return SimpleNamespace(chunks=chunks)


def test_held_player_model_runs_dry_as_the_scheduler_does():
    # The first chunk plays from 0.03 s (the lead) to 1.03 s.
    row = _row(1.0, 1.0)
    assert fanout.late_held(_stream([0.0, 0.9]), row) == (0, pytest.approx(0.03))
    # Due at 1.03 s: arriving 5 ms before is inside scheduler.js's LATE_MARGIN (10 ms).
    assert fanout.late_held(_stream([0.0, 1.025]), row)[0] == 1
    assert fanout.late_held(_stream([0.0, 1.015]), row)[0] == 0
    # Held by cushion_ms: the hold plus the 0.1 s cushion.
    assert fanout.late_held(_stream([0.0, 0.9], {0: 500}), row) == (0, pytest.approx(0.6))


FAST = netdelay.Link(100_000)  # serialization negligible: the flights are the window's
SEG = netdelay.SEGMENT


def test_link_model_slow_start():
    # 150 KB (a first chunk of about 3.4 s) on a fresh connection, 80 ms round trip:
    # flights of 10, 20 and 40 segments, one round trip each, then the rest.
    sender = netdelay._Sender(FAST, one_way_s=0.04)
    pieces = sender.send(0.0, 150_000)
    assert [n for _, n in pieces] == [10 * SEG, 20 * SEG, 40 * SEG, 150_000 - 70 * SEG]
    assert [round(t, 3) for t, _ in pieces] == [0.04, 0.12, 0.2, 0.28]
    # Busy again right after: the window it opened (80 segments) stays, and grows no more
    # than the sender used (40 in flight at most).
    again = sender.send(0.32, 150_000)
    assert [n for _, n in again] == [80 * SEG, 150_000 - 80 * SEG]
    assert again[0][0] == pytest.approx(0.36, abs=0.001)


def test_link_model_restarts_after_idle_as_linux_does():
    for idle_rtos, window in ((0.5, 80), (1.5, 40), (2.5, 20), (20, 10)):
        sender = netdelay._Sender(FAST, one_way_s=0.04)
        sender.send(0.0, 150_000)  # the window is 80 segments once it is all acknowledged
        resumed = sender.last_sent + idle_rtos * sender.rto
        assert sender.send(resumed, 150_000)[0][1] == window * SEG, idle_rtos


def test_link_model_serializes_at_the_links_rate():
    # 1 Mbit/s, 20 ms round trip: 125 KB take a second on the wire, and slow start adds
    # nothing once a flight outlasts a round trip; each byte counted once.
    sender = netdelay._Sender(netdelay.Link(1), one_way_s=0.01)
    pieces = sender.send(0.0, 125_000)
    assert pieces[-1][0] == pytest.approx(1.0 + 0.01, abs=0.005)
    # 20 Mbit/s, 80 ms: 144 KB's four flights, each segment acknowledged a round trip after
    # it was serialized (not after its whole flight).
    sender = netdelay._Sender(netdelay.Link(20), one_way_s=0.04)
    assert sender.send(0.0, 144_000)[-1][0] == pytest.approx(0.299, abs=0.002)


def test_link_model_without_idle_restart():
    # net.ipv4.tcp_slow_start_after_idle=0: the window opened by the first 150 KB stays.
    sender = netdelay._Sender(netdelay.Link(100_000, idle_restart=False), one_way_s=0.04)
    sender.send(0.0, 150_000)
    later = sender.send(sender.last_sent + 5.0, 150_000)
    assert [n for _, n in later] == [80 * SEG, 150_000 - 80 * SEG]


def test_delay_proxy_carries_every_byte_in_order_over_the_link():
    async def run(link):
        payload = bytes(range(256)) * 600  # 153,600 bytes

        async def serve(reader, writer):
            writer.write(payload)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, netdelay.DelayProxy(port, 40, link=link) as proxy:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            got = await asyncio.wait_for(reader.read(-1), 10)
            took = time.monotonic() - started
            writer.close()
        return got == payload, took

    ideal_ok, ideal = asyncio.run(run(None))
    slow_ok, slow = asyncio.run(run(FAST))
    assert ideal_ok and slow_ok
    # A handshake and half a round trip on the ideal link; three round trips more from
    # slow start (sleeps are never shorter than asked, so these bounds hold on any host).
    assert ideal >= 0.06 and slow >= 0.06 + 3 * 0.04


def test_proxy_thread_serves_a_client_that_is_not_asyncio():
    payload = bytes(range(256)) * 100
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        connection, _ = server.accept()
        with connection:
            connection.sendall(payload)

    threading.Thread(target=serve, daemon=True).start()
    got = b""
    with server, netdelay.proxy_thread(server.getsockname()[1], 20) as port:
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client:
            while chunk := client.recv(65536):
                got += chunk
    assert got == payload


def test_link_label_names_the_window_rule():
    assert netdelay.Link(20).label == "20 Mbit/s from slow start"
    assert netdelay.Link(2.5, idle_restart=False).label == (
        "2.5 Mbit/s from slow start, window kept when idle"
    )


@pytest.mark.parametrize(("on_gpu", "voices"), [(False, ["tiny"]), (True, ["tiny", "full"])])
def test_concurrency_takes_the_full_size_voice_only_on_a_gpu(on_gpu, voices):
    ctx = Context(args=parse_args(["--voices", "tiny,full"]), bench=None, deadline=0)
    ctx.coqui_on_gpu = on_gpu
    assert concurrency_voices(ctx) == voices


def test_the_gpu_is_named_as_nvidia_smi_lists_it(monkeypatch, tmp_path):
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    assert report._gpu() is None
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = --query-gpu=name ] && printf "NVIDIA H200\\n\\n"\n')
    smi.chmod(0o755)
    monkeypatch.setattr(report.shutil, "which", lambda name: str(smi))
    assert report._gpu() == "NVIDIA H200"


def test_the_coqui_device_is_the_one_the_workers_would_take():
    env = dict(os.environ)
    assert report._coqui_device(env | {"TTS_COQUI_DEVICE": "cuda:1"}, None) == "cuda:1"
    assert report._coqui_device(env | {"TTS_COQUI_DEVICE": "auto"}, None) == "cpu"
    import torch

    # a GPU listed by nvidia-smi counts only where torch can use it
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert report._coqui_device(env | {"TTS_COQUI_DEVICE": ""}, "NVIDIA H200") == expected


def test_shapes_measures_new_and_repeated_text_lengths(tmp_path):
    """bench/shapes.py on the tiny model: a figure for each kind of text, and the heap."""
    import json
    import subprocess
    import sys

    out = tmp_path / "shapes.json"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "bench/shapes.py", "--texts", "3", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "3 new lengths" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["texts"] == 3 and figures["cudnn"] is None
    assert figures["same_shape_ms"]["p50"] > 0
    assert figures["new_shape_ms"]["p50"] > 0


def test_coldstart_times_the_first_sessions_after_a_start(tmp_path):
    """bench/coldstart.py on a real stack (daphne, two workers, Redis): a POST and a first
    audio frame for each session, in order."""
    import json
    import subprocess
    import sys

    out = tmp_path / "cold.json"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [
            sys.executable,
            "bench/coldstart.py",
            "--sessions",
            "2",
            "--wait-s",
            "0",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["voice"] == "en-us"
    assert len(figures["post_ms"]) == len(figures["ttfa_ms"]) == 2
    assert all(ms > 0 for ms in figures["post_ms"] + figures["ttfa_ms"])


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("bench/shapes.py", ["--texts", "0"], "--texts must be at least 1"),
        ("bench/shapes.py", ["--device", "tpu"], "--device is cpu or cuda"),
        ("bench/coldstart.py", ["--sessions", "0"], "--sessions must be at least 1"),
        ("bench/coldstart.py", ["--wait-s", "-1"], "--wait-s at least 0"),
        ("bench/coldstart.py", ["--env", "TTS_WARM_UP"], "--env takes NAME=VALUE"),
        ("bench/coldstart.py", ["--patch", "nope"], "invalid choice: 'nope'"),
        ("bench/run.py", ["--sound-read-s", "-1"], "--sound-read-s"),
        ("bench/run.py", ["--path-idle-close-s", "soon"], "--path-idle-close-s"),
        ("bench/run.py", ["--path-idle-close-s", "5"], "--path-idle-close-s needs --path-rtt-ms"),
        ("bench/run.py", ["--path-tls"], "--path-tls needs --path-rtt-ms"),
        ("bench/run.py", ["--path-tls-proxy", "nginx"], "--path-tls-proxy needs --path-tls"),
        ("bench/run.py", ["--path-tls-proxy", "apache"], "invalid choice: 'apache'"),
        ("bench/run.py", ["--nginx-ssl-buffer-size", "4k"], "needs --path-tls-proxy nginx"),
        ("bench/run.py", ["--nginx-ssl-buffer-size", "16k"], "needs --path-tls-proxy nginx"),
        (
            "bench/run.py",
            [*["--path-tls", "--path-rtt-ms", "80", "--path-tls-proxy", "nginx"]]
            + ["--nginx-ssl-buffer-size", "4 k"],
            "--nginx-ssl-buffer-size is nginx's size",
        ),
        (
            "bench/run.py",
            ["--path-tls", "--path-rtt-ms", "80", "--path-idle-close-s", "5"],
            "--path-tls and --path-idle-close-s cannot be combined",
        ),
    ],
)
def test_the_new_bench_tools_refuse_bad_arguments_before_anything_starts(script, argv, message):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, script, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux's CPU affinity")
def test_the_worker_patches_run_in_a_worker():
    """bench/procs.py names the process's role before it applies the patches: the ones for
    workers looked for `runworker` in sys.argv, not there yet, and were no-ops until
    round 36. Whole runs: set as the process starts, every thread."""
    import subprocess
    import sys

    script = (
        "import os; os.environ['DJANGO_SETTINGS_MODULE'] = 'config.settings'\n"
        "import django; django.setup()\n"
        "from bench.patches import apply; apply(['worker_nice', 'affinity'])\n"
        "print(os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0)))\n"
    )
    base = os.getpriority(os.PRIO_PROCESS, 0)  # a run under `nice` starts higher
    if base > 10 and os.geteuid() != 0:
        pytest.skip("this process's nice is above the patch's 10: lowering it takes root")
    cpus = sorted(os.sched_getaffinity(0))
    for role, nice, pinned in [("worker", 10, cpus[-1:]), ("daphne", base, cpus[:1])]:
        env = {**os.environ, "BENCH_ROLE": role, "BENCH_NICE": "10"}
        env.update(BENCH_CPUS_WEB=str(cpus[0]), BENCH_CPUS_WORKER=str(cpus[-1]))
        env.pop("BENCH_SWITCH_FILE", None)
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split(" ", 1) == [str(nice), f"{pinned}\n"], role
