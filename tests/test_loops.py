"""uvloop's event loop for the web and worker processes (tts.loops, tts.serve)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import env as config_env
from tests.conftest import ARTIFACTS
from tts import loops

REPO = Path(__file__).resolve().parent.parent

# What a fresh process reports once tts.loops has had its say: the name install_uvloop()
# gives, and the modules of the loop that asyncio now makes and of the policy making it.
PROBE = (
    "import asyncio; from tts import loops; chosen = loops.install_uvloop(); "
    "print(chosen, type(asyncio.new_event_loop()).__module__, "
    "type(asyncio.get_event_loop_policy()).__module__)"
)
ASYNCIO = ["asyncio", "asyncio.unix_events", "asyncio.unix_events"]


def fresh(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """A new interpreter (an event loop policy is for the whole process), with uvloop
    asked for unless ``env`` says otherwise, whatever the caller's environment says."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, "TTS_UVLOOP": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_uvloop_is_wanted_unless_turned_off():
    assert loops.uvloop_wanted({}) is True
    assert loops.uvloop_wanted({"TTS_UVLOOP": "yes"}) is True
    assert loops.uvloop_wanted({"TTS_UVLOOP": " 0 "}) is False
    assert loops.uvloop_wanted({"TTS_UVLOOP": "off"}) is False
    assert loops.uvloop_wanted({"TTS_UVLOOP": ""}) is False
    with pytest.raises(ValueError, match="TTS_UVLOOP must be a boolean"):
        loops.uvloop_wanted({"TTS_UVLOOP": "sometimes"})


def test_its_words_are_those_of_every_other_boolean_variable(monkeypatch):
    """One reading (tts.environ) for it and for the settings' booleans (config/env.py)."""
    for word, meant in [("On", True), ("no", False), ("", False)]:
        monkeypatch.setenv("TTS_UVLOOP", word)
        assert loops.uvloop_wanted() is config_env.env_bool("TTS_UVLOOP") is meant
    monkeypatch.setenv("TTS_UVLOOP", "sometimes")
    with pytest.raises(ImproperlyConfigured, match="TTS_UVLOOP must be a boolean"):
        config_env.env_bool("TTS_UVLOOP")


def test_every_loop_made_after_install_is_a_uvloop_one():
    done = fresh(["-c", PROBE])
    assert done.stdout.split() == ["uvloop", "uvloop", "uvloop"], done.stderr


def test_turned_off_the_loops_stay_asyncio_ones():
    done = fresh(["-c", PROBE], TTS_UVLOOP="0")
    assert done.stdout.split() == ASYNCIO, done.stderr


def test_without_uvloop_installed_the_loops_stay_asyncio_ones():
    done = fresh(["-c", "import sys; sys.modules['uvloop'] = None; " + PROBE])
    assert done.stdout.split() == ASYNCIO, done.stderr


@pytest.mark.parametrize(("setting", "loop"), [("1", "uvloop"), ("0", "asyncio")])
def test_tts_serve_is_daphne_on_the_loop_asked_for(setting, loop):
    """The line names the loop daphne made at import, not the one asked for."""
    done = fresh(["-m", "tts.serve", "--help"], TTS_UVLOOP=setting)
    assert done.returncode == 0, done.stderr
    assert "usage: daphne" in done.stdout  # daphne's own command line
    assert f"on {loop}'s event loop" in done.stderr


def test_the_stack_serves_and_narrates_on_uvloop(live_stack):
    """daphne (through tts.serve) and the worker (runworker) each say, with their process
    id, which loop they run on as they start: these are this run's processes' lines."""
    loop = "uvloop" if loops.uvloop_policy(live_stack.env) else "asyncio"
    daphne = (ARTIFACTS / "logs" / "daphne.log").read_text(errors="replace")
    assert f"tts.serve: daphne (pid {live_stack.daphne.pid}) on {loop}'s event loop" in daphne
    worker = (ARTIFACTS / "logs" / "worker-0.log").read_text(errors="replace")
    name = f"{socket.gethostname()}:{live_stack.worker_procs[0].pid}"
    assert f"worker {name}: event loop {loop}" in worker


@pytest.mark.parametrize(
    "command",
    [
        # --help: were the value not checked, daphne would print its usage and exit 0
        ["-m", "tts.serve", "--help"],
        # were it not checked, the worker would start (and this would time out)
        ["manage.py", "runworker", "tts-generate"],
    ],
    ids=["daphne", "worker"],
)
@pytest.mark.parametrize("variable", ["TTS_UVLOOP", "TTS_GC_FREEZE"])  # tts.loops, tts.heap
def test_a_bad_variable_read_at_start_stops_the_process_with_its_name(command, variable):
    done = fresh(command, **{variable: "sometimes"})
    assert done.returncode != 0
    assert f"{variable} must be a boolean (1/0, true/false), got 'sometimes'" in done.stderr
    assert "Traceback" not in done.stderr
