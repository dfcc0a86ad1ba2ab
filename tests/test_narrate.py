"""`manage.py narrate`: selection, options, output files, exit status, and resumption after
an interrupted or killed run. The real espeak engine; scenes made in each test."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import wave
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from scenes.models import Scene, Story
from tests.conftest import stack_env, store_first_chunks
from tts import batch, services
from tts.engines import EngineError, get_engine
from tts.models import AudioBlob, SessionStatus, TTSChunk, TTSSession

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
FIRST = "The tide came in at dusk. Gulls cried over the harbour."
SECOND = "Mara lit the lamp. The ship saw the light and turned."
WORDS = (
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
)
# One segment per sentence, every one different: each costs exactly one engine call.
LONG = " ".join(f"Night {word} came down over the harbour." for word in WORDS)

# espeak-ng behind a wrapper that logs each synthesis (the narrate process id, the text)
# and takes its time, so that a run can be interrupted halfway through.
SLOW_ESPEAK = """#!/bin/sh
for arg in "$@"; do [ "$arg" = "--voices" ] && exec espeak-ng "$@"; done
text=$(cat)
printf '%s\\t%s\\n' "$PPID" "$text" >> "$ENGINE_LOG"
sleep "${ENGINE_DELAY:-0.2}"
printf '%s' "$text" | espeak-ng "$@"
"""


@pytest.fixture(autouse=True)
def _private_channel_layer(private_channel_layer):
    """In-process runs really run in this process (conftest.private_channel_layer)."""


class SlowEngine:
    def __init__(self, directory: Path, prefix: str) -> None:
        self.binary = directory / "espeak-slow"
        self.binary.write_text(SLOW_ESPEAK)
        self.binary.chmod(0o755)
        self.log = directory / "engine.log"
        self.log.touch()
        self.env = stack_env(
            TTS_ESPEAK_BINARY=str(self.binary),
            TTS_ESPEAK_LIBRARY="",  # the wrapper runs once per segment
            ENGINE_LOG=str(self.log),
            CHANNEL_LAYER_PREFIX=prefix,
        )

    def calls(self, pid: int | None = None) -> list[str]:
        lines = [line.split("\t", 1) for line in self.log.read_text().splitlines() if line]
        return [text for who, text in lines if pid is None or int(who) == pid]


@pytest.fixture
def slow_engine(tmp_path, settings) -> SlowEngine:
    return SlowEngine(tmp_path, settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"])


@pytest.fixture
def engine_calls(monkeypatch) -> list[str]:
    engine, calls = get_engine("espeak"), []
    original = engine.synthesize

    def counting(text, voice):
        calls.append(text)
        return original(text, voice)

    monkeypatch.setattr(engine, "synthesize", counting)
    return calls


def make_story(*texts: str, slug: str = "harbour", voice: str = "") -> Story:
    story = Story.objects.create(title=f"The {slug.title()}", slug=slug)
    for position, text in enumerate(texts):
        Scene.objects.create(
            story=story, position=position, title=f"Scene {position + 1}", text=text, voice=voice
        )
    return story


def narrate(*args: str, stdout: io.StringIO | None = None) -> str:
    out = stdout or StringIO()
    call_command("narrate", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def narrate_json(*args: str) -> dict:
    return json.loads(narrate(*args, "--json"))


def failing_command(*args: str) -> CommandError:
    with pytest.raises(CommandError) as caught:
        narrate(*args)
    return caught.value


def sessions_of(scene: Scene) -> list[TTSSession]:
    return list(TTSSession.objects.filter(subject_id=str(scene.pk)).order_by("created_at"))


def chunk_samples(*sessions: TTSSession) -> int:
    return sum(TTSChunk.objects.filter(session__in=sessions).values_list("samples", flat=True))


def read_wav(path: Path) -> tuple[tuple[int, int, int, int], bytes]:
    """((channels, sample width, frame rate, frames), the frames) of a WAV file."""
    with wave.open(str(path)) as wav:
        params = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes())
        return params, wav.readframes(wav.getnframes())


def wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_narrate(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "narrate", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_at_a_terminal,
    )


def _as_at_a_terminal() -> None:
    """In the command's process: Ctrl-C interrupts it, as it does a command run at a
    terminal, also when the suite itself runs in the background (a shell starts a
    background job with SIGINT ignored, every process under it inherits that, and Python
    then leaves it ignored: the command ran to its end, deaf to the test's Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- Selection ----------------------------------------------------------------------------


def test_it_narrates_every_scene_of_a_story_in_this_process(engine_calls):
    story = make_story(FIRST, SECOND)
    other = make_story("Somewhere else entirely.", slug="other")
    output = narrate("--story", "harbour")

    for scene in story.scenes.all():
        (session,) = sessions_of(scene)
        assert session.status == SessionStatus.COMPLETED
        assert session.subject == scene and session.voice == "en-us"
        assert session.owner_id is None and session.owner_session_key == ""
        assert session.claimed_by.startswith("narrate@")
        assert f"ok harbour / {scene.title} [{scene.pk}]: narrated" in output
    assert not sessions_of(other.scenes.get())
    assert len(engine_calls) == TTSChunk.objects.count()
    assert "2/2 narrated (0 already done, 0 resumed, 0 failed)" in output


def test_it_narrates_given_scenes_or_everything():
    story = make_story(FIRST, SECOND, "A third scene here.")
    first, second, third = story.scenes.all()
    summary = narrate_json("--scene", str(third.pk), str(first.pk))
    assert [s["scene"] for s in summary["scenes"]] == [third.pk, first.pk]
    assert not sessions_of(second)

    summary = narrate_json("--all", "--missing")
    assert {s["scene"]: s["plan"] for s in summary["scenes"]} == {
        first.pk: "complete",
        second.pk: "new",
        third.pk: "complete",
    }
    assert all(s["status"] == "completed" for s in summary["scenes"])


def test_voice_overrides_each_scenes_own_voice():
    story = make_story(FIRST, SECOND, voice="en-gb")
    narrate("--story", "harbour")
    narrate("--story", "harbour", "--voice", "en-us-slow")
    for scene in story.scenes.all():
        assert [s.voice for s in sessions_of(scene)] == ["en-gb", "en-us-slow"]


def test_the_json_summary(tmp_path):
    story = make_story(FIRST, SECOND)
    summary = narrate_json("--story", "harbour", "--out", str(tmp_path))
    assert summary["ok"] is True and summary["interrupted"] is False
    assert summary["mode"] == "in-process"
    first = summary["scenes"][0]
    scene = story.scenes.first()
    session = sessions_of(scene)[0]
    assert first == {
        "scene": scene.pk,
        "title": "Scene 1",
        "story": "harbour",
        "voice": "en-us",
        "session": str(session.id),
        "plan": "new",
        "status": "completed",
        "total_chunks": session.total_chunks,
        "chunks": session.total_chunks,
        "cached_chunks": 0,
        "new_chunks": session.total_chunks,
        "duration_ms": session.audio_ms,
        "error": None,
        "file": str(tmp_path / "harbour" / "01-scene-1.wav"),
    }
    totals = summary["totals"]
    assert totals["scenes"] == totals["completed"] == 2 and totals["failed"] == 0
    assert totals["chunks"] == totals["new_chunks"] == TTSChunk.objects.count()
    assert totals["duration_ms"] == sum(s.audio_ms for s in TTSSession.objects.all())


def test_missing_skips_what_is_narrated_and_redoes_what_changed(engine_calls):
    story = make_story(FIRST, SECOND)
    first, second = story.scenes.all()
    narrate("--story", "harbour")
    Scene.objects.filter(pk=second.pk).update(text=SECOND.replace("the lamp", "the old lamp"))
    engine_calls.clear()

    summary = narrate_json("--story", "harbour", "--missing")
    assert [s["plan"] for s in summary["scenes"]] == ["complete", "new"]
    assert len(sessions_of(first)) == 1 and len(sessions_of(second)) == 2
    assert engine_calls == ["Mara lit the old lamp."]  # the rest came from the cache
    assert summary["scenes"][1]["cached_chunks"] == summary["scenes"][1]["chunks"] - 1


def test_without_missing_a_scene_is_narrated_again_from_the_cache(engine_calls):
    scene = make_story(FIRST).scenes.get()
    narrate("--story", "harbour")
    calls = len(engine_calls)
    summary = narrate_json("--story", "harbour")
    assert len(engine_calls) == calls
    assert len(sessions_of(scene)) == 2
    assert summary["scenes"][0]["cached_chunks"] == summary["scenes"][0]["chunks"]


# --- Output files -------------------------------------------------------------------------


def test_out_writes_a_wav_per_scene_and_join_one_per_story(tmp_path):
    story = make_story(FIRST, SECOND)
    make_story("Another story.", slug="other")
    narrate("--all", "--out", str(tmp_path), "--join")

    scenes = list(story.scenes.all())
    sessions = [sessions_of(scene)[0] for scene in scenes]
    for index, session in enumerate(sessions, start=1):
        params, frames = read_wav(tmp_path / "harbour" / f"{index:02d}-scene-{index}.wav")
        assert params[:3] == (1, 2, 22050)
        assert params[3] == chunk_samples(session) == len(frames) // 2
        pcm = b"".join(bytes(c.audio.pcm) for c in session.chunks.order_by("seq"))
        assert frames == pcm
    params, frames = read_wav(tmp_path / "harbour.wav")
    assert params[3] == chunk_samples(*sessions)
    singles = [read_wav(tmp_path / "harbour" / f"0{i}-scene-{i}.wav")[1] for i in (1, 2)]
    assert frames == b"".join(singles)
    assert (tmp_path / "other.wav").exists() and (tmp_path / "other" / "01-scene-1.wav").exists()
    assert not list(tmp_path.rglob("*.part"))


def test_missing_with_out_still_writes_the_files_of_skipped_scenes(tmp_path):
    make_story(FIRST, SECOND)
    narrate("--story", "harbour")
    summary = narrate_json("--story", "harbour", "--missing", "--out", str(tmp_path), "--join")
    assert [s["plan"] for s in summary["scenes"]] == ["complete", "complete"]
    assert summary["stories"][0]["file"] == str(tmp_path / "harbour.wav")
    assert read_wav(tmp_path / "harbour.wav")[0][3] == chunk_samples(*TTSSession.objects.all())


# --- Errors and exit status ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--story", "nowhere"], "No story with slug 'nowhere'."),
        (["--scene", "999998", "999999"], "No scene with id 999998, 999999."),
        (["--all", "--voice", "klingon"], "Unknown voice 'klingon'."),
        (["--all", "--join"], "--join needs --out DIR."),
        (["--all", "--timeout", "5"], "--timeout applies to --via-workers only."),
    ],
)
def test_unknown_stories_scenes_and_voices_are_usage_errors(args, message):
    make_story(FIRST)
    error = failing_command(*args)
    assert str(error) == message and error.returncode == 2
    assert not TTSSession.objects.exists()


def test_it_needs_something_to_narrate():
    error = failing_command()
    assert "one of the arguments --story --scene --all is required" in str(error)


def test_a_failing_engine_fails_the_run_with_a_summary_of_what_and_why(monkeypatch, tmp_path):
    story = make_story(FIRST, "Broken lamp tonight. It will not light.")
    good, bad = story.scenes.all()
    engine = get_engine("espeak")
    original = engine.synthesize

    def broken_lamp(text, voice):
        if "lamp" in text:
            raise EngineError("the synthesizer caught fire", code="engine_error")
        return original(text, voice)

    monkeypatch.setattr(engine, "synthesize", broken_lamp)
    out = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command(
            "narrate",
            "--story",
            "harbour",
            "--json",
            "--out",
            str(tmp_path),
            "--join",
            stdout=out,
            stderr=StringIO(),
        )
    assert caught.value.returncode == 1
    assert str(caught.value) == (
        "1 of 2 narrations failed:\n"
        f"  scene {bad.pk} (Scene 2): engine_error: Chunk 0 failed: the synthesizer caught fire\n"
        "  story harbour: 1 scene(s) did not complete."
    )
    summary = json.loads(out.getvalue())
    assert summary["ok"] is False
    assert [s["status"] for s in summary["scenes"]] == ["completed", "failed"]
    assert summary["scenes"][1]["error"]["code"] == "engine_error"
    assert summary["stories"][0]["file"] is None
    assert (tmp_path / "harbour" / "01-scene-1.wav").exists()
    assert not (tmp_path / "harbour.wav").exists()
    assert sessions_of(good)[0].status == SessionStatus.COMPLETED


def test_a_scene_with_an_unknown_voice_fails_alone():
    story = make_story(FIRST, SECOND)
    Scene.objects.filter(pk=story.scenes.last().pk).update(voice="klingon")
    error = failing_command("--story", "harbour")
    assert error.returncode == 1 and "unknown_voice: Unknown voice 'klingon'." in str(error)
    assert TTSSession.objects.get().status == SessionStatus.COMPLETED


def test_a_rerun_after_a_failure_continues_after_the_stored_chunks(monkeypatch, engine_calls):
    scene = make_story(LONG).scenes.get()
    engine = get_engine("espeak")
    counting = engine.synthesize

    def fail_fourth(text, voice):
        if len(engine_calls) == 3:
            raise EngineError("out of ink", code="engine_error")
        return counting(text, voice)

    monkeypatch.setattr(engine, "synthesize", fail_fourth)
    assert failing_command("--scene", str(scene.pk)).returncode == 1
    (session,) = sessions_of(scene)
    assert session.status == SessionStatus.FAILED and session.chunks.count() == 3

    monkeypatch.setattr(engine, "synthesize", counting)
    summary = narrate_json("--scene", str(scene.pk))
    assert summary["scenes"][0]["plan"] == "resume"
    assert summary["scenes"][0]["session"] == str(session.id)
    assert summary["scenes"][0]["new_chunks"] == len(WORDS) - 3
    assert len(engine_calls) == len(WORDS)  # three before the failure, the rest after
    assert list(session.chunks.values_list("seq", flat=True)) == list(range(len(WORDS)))


def test_via_workers_gives_up_after_the_timeout_when_no_worker_runs():
    scene = make_story(FIRST).scenes.get()
    error = failing_command("--scene", str(scene.pk), "--via-workers", "--timeout", "0.5")
    assert error.returncode == 1 and "timeout: Still queued after 0.5 s" in str(error)
    assert sessions_of(scene)[0].status == SessionStatus.QUEUED  # left for the workers


@pytest.mark.e2e
def test_via_workers_dispatches_to_the_running_workers_and_follows_them(live_stack):
    story = make_story(FIRST, SECOND)
    summary = narrate_json("--story", "harbour", "--via-workers", "--timeout", "60")
    assert summary["ok"] and summary["mode"] == "workers"
    for scene in story.scenes.all():
        (session,) = sessions_of(scene)
        assert session.status == SessionStatus.COMPLETED
        assert not session.claimed_by.startswith("narrate@")  # a worker did it


def held_session(scene: Scene, *, holder: str, heartbeat_age_s: float) -> TTSSession:
    """A command-line session of ``scene`` that ``holder`` claimed, with one chunk stored."""
    session = services.session_create(
        text=scene.text, owner=batch.CLI_OWNER, subject=scene, voice_id="en-us", dispatch=False
    )
    store_first_chunks(session.id, 1, worker=holder)
    beat = timezone.now() - timedelta(seconds=heartbeat_age_s)
    TTSSession.objects.filter(pk=session.id).update(heartbeat_at=beat)
    return session


def test_a_session_whose_holder_stopped_beating_is_taken_over(engine_calls):
    scene = make_story(LONG).scenes.get()
    session = held_session(scene, holder="elsewhere:42", heartbeat_age_s=3600)
    engine_calls.clear()
    summary = narrate_json("--scene", str(scene.pk))["scenes"][0]
    assert summary["plan"] == "resume" and summary["session"] == str(session.id)
    assert summary["status"] == "completed" and summary["new_chunks"] == len(WORDS) - 1
    assert len(engine_calls) == len(WORDS) - 1


def test_a_session_with_a_live_holder_is_followed_not_taken_over():
    scene = make_story(LONG).scenes.get()
    session = held_session(scene, holder="elsewhere:42", heartbeat_age_s=0)
    error = failing_command("--scene", str(scene.pk), "--via-workers", "--timeout", "0.5")
    assert "timeout: Still running after 0.5 s" in str(error)
    session.refresh_from_db()
    assert session.status == SessionStatus.RUNNING and session.claimed_by == "elsewhere:42"


# --- Progress -----------------------------------------------------------------------------


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_on_a_terminal_and_none_otherwise(capsys):
    make_story(FIRST, SECOND)
    narrate("--story", "harbour")
    assert capsys.readouterr().err == ""

    narrate("--story", "harbour", stdout=Terminal())
    bar = capsys.readouterr().err
    assert "Narrating 2 scenes" in bar and "chunk" in bar
    assert "s audio" in bar and "x real time" in bar and "100%" in bar


# --- Interrupted and killed runs ----------------------------------------------------------


def test_a_killed_run_resumes_after_its_stored_chunks_and_synthesizes_nothing_twice(
    slow_engine, tmp_path
):
    scene = make_story(LONG).scenes.get()
    first = start_narrate("--scene", str(scene.pk), env=slow_engine.env)
    wait_for(
        lambda: TTSChunk.objects.count() >= 3 or first.poll() is not None,
        timeout=60,
        what="the first chunks",
    )
    first.kill()
    first.communicate(timeout=10)  # reaped: its pid no longer exists
    (session,) = sessions_of(scene)
    assert session.status == SessionStatus.RUNNING  # left behind, heartbeat still fresh
    stored = dict(session.chunks.values_list("seq", "pk"))
    assert 3 <= len(stored) < len(WORDS)

    second = start_narrate(
        "--scene", str(scene.pk), "--json", "--out", str(tmp_path), env=slow_engine.env
    )
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    summary = json.loads(out)["scenes"][0]
    assert summary["plan"] == "resume" and summary["session"] == str(session.id)

    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert [s.pk for s in sessions_of(scene)] == [session.pk]
    chunks = list(session.chunks.order_by("seq"))
    assert [c.seq for c in chunks] == list(range(len(WORDS)))
    assert {c.seq: c.pk for c in chunks if c.seq in stored} == stored  # kept as they were
    resumed_calls = slow_engine.calls(second.pid)
    assert not set(resumed_calls) & {c.text.strip() for c in chunks if c.seq in stored}
    assert len(resumed_calls) == len(set(resumed_calls)) <= len(WORDS) - len(stored)
    assert AudioBlob.objects.count() == len(WORDS)
    params, _ = read_wav(tmp_path / "harbour" / "01-scene-1.wav")
    assert params[3] == chunk_samples(session)


def cut_short(*, in_transaction: bool) -> None:
    """What Ctrl-C can leave: a query sent, its result never read (psycopg cancels only a
    query it is waiting on when the signal comes); in a transaction, the interrupt then
    goes through its atomic block."""
    connection.ensure_connection()
    if not in_transaction:
        connection.connection.pgconn.send_query(b"SELECT 1")
        return
    with pytest.raises(KeyboardInterrupt), transaction.atomic():
        TTSSession.objects.exists()
        connection.connection.pgconn.send_query(b"SELECT 1")
        raise KeyboardInterrupt


@pytest.mark.parametrize("in_transaction", [False, True], ids=["query", "transaction"])
def test_an_interrupt_that_cut_a_query_short_still_cancels_the_run(in_transaction):
    """Such a connection refuses every later query; the cancel after the interrupt goes
    through on a fresh one (CI once failed here on PostgreSQL)."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no query in flight to cut short")
    scene = make_story(LONG).scenes.get()
    session = held_session(scene, holder="elsewhere:42", heartbeat_age_s=0)
    narration = batch.Narration(
        subject=scene, text=scene.text, session_id=session.id, status=session.status
    )
    run = batch.BatchRun([narration])
    cut_short(in_transaction=in_transaction)

    run.interrupt()

    session.refresh_from_db()
    assert session.status == SessionStatus.CANCELLED
    assert narration.error_code == "interrupted"


def test_ctrl_c_cancels_cleanly_and_the_next_run_continues(slow_engine, settings, engine_calls):
    scene = make_story(LONG).scenes.get()
    run = start_narrate("--scene", str(scene.pk), env=slow_engine.env)
    wait_for(
        lambda: TTSChunk.objects.count() >= 2 or run.poll() is not None,
        timeout=60,
        what="the first chunks",
    )
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=30)
    assert run.returncode == 130, (out, err)
    assert "Interrupted; run the same command again to continue." in err

    (session,) = sessions_of(scene)
    assert session.status in (SessionStatus.CANCELLED, SessionStatus.FAILED)
    stored = session.chunks.count()
    assert 2 <= stored < len(WORDS)

    summary = narrate_json("--scene", str(scene.pk))["scenes"][0]
    assert summary["plan"] == "resume" and summary["status"] == "completed"
    session.refresh_from_db()
    assert list(session.chunks.values_list("seq", flat=True)) == list(range(len(WORDS)))
    synthesized_before = set(slow_engine.calls(run.pid))
    assert not synthesized_before & set(engine_calls)
