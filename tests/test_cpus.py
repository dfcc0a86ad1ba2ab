"""CPUs of its own for a web process and for the workers (tts.cpus: TTS_WEB_CPUS,
TTS_WORKER_CPUS): the lists, their refusals, and a real stack pinned as asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_faults import make_stack  # noqa: F401 - the fixture
from tts import cpus
from tts.client import NarrationClient
from tts.models import SessionStatus, TTSSession

ROOT = Path(__file__).resolve().parent.parent
AVAILABLE = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", {0}), ("2-3", {2, 3}), ("0,2,4-6", {0, 2, 4, 5, 6}), (" 1 , 3 ", {1, 3})],
)
def test_a_cpu_list_names_its_cpus(value, expected):
    assert cpus.parse(value) == expected


@pytest.mark.parametrize(
    "value", ["x", "1-", "-1", "1,,2", "3-1", "0.5", "1;2", "\u00b2", "0-4294967295"]
)
def test_a_malformed_cpu_list_is_refused_with_the_reason(value):
    with pytest.raises(ValueError, match="CPU list|backwards|beyond Linux's 8191"):
        cpus.parse(value)


def test_a_cpu_list_is_written_back_shortest():
    assert cpus.format_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert cpus.format_list(cpus.parse("4,0-1")) == "0-1,4"


def test_unset_asks_for_nothing_and_cpus_not_available_are_refused_by_name():
    assert cpus.wanted(cpus.WEB, {}) is None
    assert cpus.wanted(cpus.WEB, {cpus.WEB: "  "}) is None
    assert cpus.wanted(cpus.WEB, {cpus.WEB: str(AVAILABLE[0])}) == {AVAILABLE[0]}
    with pytest.raises(ValueError, match=r"TTS_WORKER_CPUS=4096: CPU 4096 is not available"):
        cpus.wanted(cpus.WORKER, {cpus.WORKER: "4096"})
    with pytest.raises(ValueError, match="TTS_WEB_CPUS: 'zero' is not a CPU list"):
        cpus.wanted(cpus.WEB, {cpus.WEB: "zero"})


def _allowed(pid: int | str, tid: int | str) -> str:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return next(
        line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list")
    )


def _threads(pid: int) -> dict[str, str]:
    """Each thread of ``pid``, by id: the CPUs it may run on."""
    return {tid: _allowed(pid, tid) for tid in os.listdir(f"/proc/{pid}/task")}


def test_every_thread_is_pinned_and_the_threads_started_later_inherit_it():
    script = (
        "import os, sys, threading; from tts import cpus\n"
        "early = threading.Thread(target=threading.Event().wait, daemon=True); early.start()\n"
        "cpus.pin_from(cpus.WEB)\n"
        "late = threading.Thread(target=threading.Event().wait, daemon=True); late.start()\n"
        "print(len(os.listdir('/proc/self/task')), flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, cpus.WEB: str(AVAILABLE[-1])},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "3"
        assert set(_threads(child.pid).values()) == {str(AVAILABLE[-1])}
    finally:
        child.communicate("")


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        ([sys.executable, "-m", "tts.serve", "config.asgi:application"], cpus.WEB),
        ([sys.executable, "manage.py", "runworker", "tts-generate"], cpus.WORKER),
    ],
)
def test_a_process_asked_for_cpus_it_cannot_have_stops_with_a_message(command, variable):
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, variable: "0-4096"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    assert f"{variable}=0-4096: CPU" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(len(AVAILABLE) < 2, reason="a web CPU and a worker CPU need two")
def test_a_stack_with_its_web_and_workers_on_cpus_of_their_own_narrates(make_stack):  # noqa: F811
    web, worker = str(AVAILABLE[0]), cpus.format_list(set(AVAILABLE[1:]))
    stack = make_stack(workers=1, TTS_WEB_CPUS=web, TTS_WORKER_CPUS=worker)
    client = NarrationClient(stack.base_url)
    session_id = client.create(text="Pinned processes narrate as any other.")["id"]
    result = client.stream(session_id, timeout=60)
    assert result.done and TTSSession.objects.get(pk=session_id).status == SessionStatus.COMPLETED
    assert set(_threads(stack.daphne.pid).values()) == {web}
    (process,) = stack.worker_procs
    assert set(_threads(process.pid).values()) == {worker}  # the engine's threads too
