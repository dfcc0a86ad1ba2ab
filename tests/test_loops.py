"""uvloop's event loop for the web and worker processes (tts.loops, tts.serve)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, stack_env
from tts import loops

REPO = Path(__file__).resolve().parent.parent

# What a fresh process reports once tts.loops has had its say: the name install() gives,
# and the modules of the loop that asyncio now makes and of the policy that makes it.
PROBE = (
    "import asyncio; from tts import loops; chosen = loops.install(); "
    "print(chosen, type(asyncio.new_event_loop()).__module__, "
    "type(asyncio.get_event_loop_policy()).__module__)"
)


def fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter: an event loop policy is for the whole process."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=stack_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_uvloop_is_wanted_unless_turned_off():
    assert loops.wanted({}) is True
    assert loops.wanted({"TTS_UVLOOP": "yes"}) is True
    assert loops.wanted({"TTS_UVLOOP": " 0 "}) is False
    assert loops.wanted({"TTS_UVLOOP": "off"}) is False
    assert loops.wanted({"TTS_UVLOOP": ""}) is False  # config/env.py's reading of an empty value
    with pytest.raises(ValueError, match="TTS_UVLOOP must be a boolean"):
        loops.wanted({"TTS_UVLOOP": "sometimes"})


def test_every_loop_made_after_install_is_a_uvloop_one():
    done = fresh(PROBE)
    assert done.stdout.split() == ["uvloop", "uvloop", "uvloop"], done.stderr


def test_turned_off_the_loops_stay_asyncio_ones():
    done = fresh(PROBE, TTS_UVLOOP="0")
    assert done.stdout.split() == ["asyncio", "asyncio.unix_events", "asyncio.unix_events"], (
        done.stderr
    )


def test_without_uvloop_installed_the_loops_stay_asyncio_ones():
    done = fresh("import sys; sys.modules['uvloop'] = None; " + PROBE)
    assert done.stdout.split() == ["asyncio", "asyncio.unix_events", "asyncio.unix_events"], (
        done.stderr
    )


def test_the_stack_serves_and_narrates_on_uvloop(live_stack):
    """daphne started through tts.serve and the worker's runworker say which loop they
    run on as they start; the last such line in each log is this test run's stack."""
    daphne = (ARTIFACTS / "logs" / "daphne.log").read_text(errors="replace")
    worker = (ARTIFACTS / "logs" / "worker-0.log").read_text(errors="replace")
    said = [line for line in daphne.splitlines() if line.startswith("tts.serve:")]
    assert said[-1] == "tts.serve: daphne on uvloop's event loop"
    said = [line for line in worker.splitlines() if "tts.worker event loop:" in line]
    assert said[-1].endswith("tts.worker event loop: uvloop")


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "tts.serve", "-p", "1", "config.asgi:application"],
        [sys.executable, "manage.py", "runworker", "tts-generate"],
    ],
    ids=["daphne", "worker"],
)
def test_a_bad_tts_uvloop_stops_the_process_with_its_name(command):
    done = subprocess.run(
        command,
        cwd=REPO,
        env=stack_env(TTS_UVLOOP="sometimes"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "TTS_UVLOOP must be a boolean (1/0, true/false), got 'sometimes'" in done.stderr
    assert "Traceback" not in done.stderr
