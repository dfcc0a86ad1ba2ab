"""The narration service, run in-process with the real espeak engine."""

from __future__ import annotations

import functools
from concurrent.futures import Future
from dataclasses import replace

import pytest
from django.db import DatabaseError

from tests.conftest import store_first_chunks
from tts import generation, services, storing, synthesis
from tts.engines import EngineError, get_engine
from tts.models import AudioBlob, SessionStatus, TTSChunk
from tts.services import Owner

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = (
    "The storm came in from the west just after four. By five the gulls had gone quiet, "
    "and the harbour lights blinked on one by one. Mara counted the seconds between the "
    "flashes. Twelve, then nine, then six."
)
OWNER = Owner(session_key="k" * 32, ip="127.0.0.1")


def create(text: str = TEXT, **kwargs):
    return services.session_create(text=text, owner=OWNER, dispatch=False, **kwargs)


@pytest.fixture
def engine_calls(monkeypatch):
    from tests.conftest import record_calls

    return record_calls(monkeypatch, get_engine("espeak"), "synthesize")  # the texts


def test_it_synthesizes_every_segment_in_order(engine_calls):
    session = create()
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    chunks = list(session.chunks.order_by("seq"))
    assert session.status == SessionStatus.COMPLETED
    assert session.total_chunks == len(chunks) == session.completed_chunks >= 3
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert session.text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.samples == len(chunk.audio.pcm) // 2 > 0
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(session.text)
    assert session.first_chunk_ms is not None and session.real_time_factor > 0
    assert len(engine_calls) == len(chunks)


def test_the_last_chunks_complete_the_session_in_their_own_transaction(monkeypatch):
    """No trip of its own to the database for the completion: the last store completes
    the session, and `done` follows the last chunk's event. A session whose every chunk an
    earlier run stored is still completed."""
    from tts import broadcast

    events, real = [], broadcast._group_send
    monkeypatch.setattr(
        broadcast,
        "_group_send",
        lambda sid, event, **kw: events.append(event) or real(sid, event, **kw),
    )
    monkeypatch.setattr(services, "session_complete", lambda **kwargs: pytest.fail("a trip"))
    session = create()
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED and session.finished_at is not None
    assert session.real_time_factor == pytest.approx(session.engine_ms / session.audio_ms)
    assert session.narration_key
    kinds = [(e["type"], e.get("seq", e.get("status"))) for e in events]
    last = ("tts.chunk", session.total_chunks - 1)
    assert kinds[kinds.index(last) + 1 :] == [("tts.status", "completed"), ("tts.done", None)]
    assert events[-1]["total_chunks"] == session.total_chunks
    assert events[-1]["duration_ms"] == session.audio_ms > 0

    monkeypatch.undo()  # a worker died after storing every chunk, before completing
    type(session).objects.filter(pk=session.id).update(
        status=SessionStatus.QUEUED, claimed_by="", finished_at=None
    )
    services.session_run(session_id=session.id, worker="w2")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED and session.claimed_by == "w2"
    assert session.finished_at is not None


def recorded_events(monkeypatch) -> list[dict]:
    from tts import broadcast

    events, real = [], broadcast._group_send
    monkeypatch.setattr(
        broadcast,
        "_group_send",
        lambda sid, event, **kw: events.append(event) or real(sid, event, **kw),
    )
    return events


def test_every_live_chunk_says_how_long_to_hold_it_and_a_quick_voice_needs_no_hold(
    monkeypatch,
):
    """cushion_ms (tts.pacing; a slow engine's hold: tests/test_browser.py, test_pacing),
    kept with each chunk's row for listeners who read it back while the session runs."""
    events = recorded_events(monkeypatch)
    session = create()
    services.session_run(session_id=session.id, worker="w1")
    chunks = [e for e in events if e["type"] == "tts.chunk"]
    assert len(chunks) > 1 and [e["cushion_ms"] for e in chunks] == [0] * len(chunks)
    assert list(session.chunks.order_by("seq").values_list("cushion_ms", flat=True)) == [
        e["cushion_ms"] for e in chunks
    ]


def test_a_chunk_read_back_while_its_session_runs_carries_what_is_left_of_its_hold():
    """A late listener, a resumed socket or the HTTP fallback: the chunk is due when it
    would have been for a listener who got it live, not later because they came later."""
    from tests.conftest import hold_left_bounds, store_held_chunks

    session = create(text="One sentence. Another one. And a third.")
    made = store_held_chunks(session.id, [3000, 500, None], age_ms=1200)

    meta = functools.partial(services.chunk_meta, total_chunks=3)
    left = [meta(c, session_running=True).get("cushion_ms") for c in chunks(session)]
    low, high = hold_left_bounds(3000, made, 1200)
    assert low <= left[0] <= high  # 3000 less the 1.2 s (and this test's own time) since
    assert left[1:] == [0, None]  # long due; a chunk stored without a hold has none
    assert all("cushion_ms" not in meta(c) for c in chunks(session))


def chunks(session) -> list[TTSChunk]:
    return list(session.chunks.order_by("seq"))


def test_running_rides_with_the_first_chunk_once_the_voice_is_known_to_be_quick(monkeypatch):
    """The first session of a voice announces `running` on its own (its speed is not
    known yet); once its first segment took at most RUNNING_WITH_FIRST_CHUNK_MS, the
    status goes in the first chunk's event: one event less, and still first."""
    monkeypatch.setattr(generation, "_first_segment_ms", {})
    events = recorded_events(monkeypatch)
    services.session_run(session_id=create().id, worker="w1")
    assert [e["type"] for e in events][:2] == ["tts.status", "tts.chunk"]
    assert events[0]["status"] == "running" and "status" not in events[1]
    assert generation._first_segment_ms["en-us"] <= generation.RUNNING_WITH_FIRST_CHUNK_MS

    events.clear()
    session = create(text="A new text, so that the engine makes its first segment.")
    services.session_run(session_id=session.id, worker="w1")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "tts.chunk" and events[0]["seq"] == 0
    assert events[0]["status"]["status"] == "running"
    assert events[0]["status"]["total_chunks"] is None  # the claim's frame, as it was
    assert ("tts.status", "running") not in [(e["type"], e.get("status")) for e in events]

    monkeypatch.setitem(generation._first_segment_ms, "en-us", 5_000)  # a slow voice
    events.clear()
    services.session_run(session_id=create(text="A slow voice's turn.").id, worker="w1")
    assert events[0]["type"] == "tts.status" and events[0]["status"] == "running"
    assert all("status" not in e for e in events if e["type"] == "tts.chunk")


def test_a_slow_voices_running_goes_out_as_its_first_synthesis_begins(monkeypatch):
    """Not beside the claim's cut and cache lookup, whose way to the engine its send
    slowed (P57); still before the first chunk."""
    monkeypatch.setitem(generation._first_segment_ms, "en-us", 5000)  # a slow voice
    events = recorded_events(monkeypatch)
    seen: dict[str, list[str]] = {}
    lookup, engine = synthesis.cached_keys, get_engine("espeak")
    synthesize = engine.synthesize

    def looking_up(keys):
        seen.setdefault("lookup", [e["type"] for e in events])
        return lookup(keys)

    def synthesizing(text, voice):
        seen.setdefault("synthesis", [e["type"] for e in events])
        return synthesize(text, voice)

    monkeypatch.setattr(synthesis, "cached_keys", looking_up)
    monkeypatch.setattr(engine, "synthesize", synthesizing)
    services.session_run(session_id=create().id, worker="w1")
    assert seen == {"lookup": [], "synthesis": ["tts.status"]}
    assert [e["type"] for e in events][:2] == ["tts.status", "tts.chunk"]
    assert "status" not in events[1]


@pytest.mark.parametrize("last_first_segment_ms", [1, 5000], ids=["held", "on-its-own"])
def test_a_held_running_status_goes_out_before_a_failure(monkeypatch, last_first_segment_ms):
    """A session that fails before its first chunk still says it ran, then failed."""
    monkeypatch.setitem(generation._first_segment_ms, "en-us", last_first_segment_ms)
    engine = get_engine("espeak")

    def broken(text, voice):
        raise EngineError("the engine is gone", code="engine_error")

    monkeypatch.setattr(engine, "synthesize", broken)
    events = recorded_events(monkeypatch)
    session = create()
    services.session_run(session_id=session.id, worker="w1")
    statuses = [e["status"] for e in events if e["type"] == "tts.status"]
    assert statuses == ["running", "failed"]
    assert not [e for e in events if e["type"] == "tts.chunk"]


def test_a_second_session_of_the_same_text_makes_no_engine_calls(engine_calls):
    first = create()
    services.session_run(session_id=first.id, worker="w1")
    calls_for_first = len(engine_calls)
    first.delete()  # its audio stays; with its session gone there is no narration to replay
    second = create()
    assert second.status == SessionStatus.QUEUED
    services.session_run(session_id=second.id, worker="w1")
    second.refresh_from_db()
    assert second.status == SessionStatus.COMPLETED
    assert len(engine_calls) == calls_for_first
    assert all(chunk.cached for chunk in second.chunks.all())
    assert AudioBlob.objects.count() == calls_for_first


def test_claiming_is_atomic():
    session = create()
    assert services.session_claim(session_id=session.id, worker="a") is not None
    assert services.session_claim(session_id=session.id, worker="b") is None


def test_a_claim_is_one_statement_that_returns_the_claimed_session(django_assert_num_queries):
    session = create()
    with django_assert_num_queries(1):
        claimed = services.session_claim(session_id=session.id, worker="a")
    stored = type(session).objects.get(pk=session.id)
    assert claimed is not None and claimed.pk == session.id
    for name in ["status", "claimed_by", "attempts", "started_at", "heartbeat_at", "text"]:
        assert getattr(claimed, name) == getattr(stored, name), name
    assert (claimed.status, claimed.claimed_by, claimed.attempts) == ("running", "a", 1)
    assert claimed.started_at is not None and claimed.started_at == claimed.heartbeat_at


def test_update_returning_applies_expressions_and_returns_only_the_matched_rows():
    from django.db.models import F

    first, second = create(), create(text="Another text, to be left alone.")
    sessions = type(first).objects
    updated = sessions.filter(pk=first.pk).update_returning(attempts=F("attempts") + 2)
    assert [(row.pk, row.attempts) for row in updated] == [(first.pk, 2)]
    assert sessions.get(pk=second.pk).attempts == 0
    assert sessions.filter(pk=first.pk, status="failed").update_returning(attempts=9) == []
    assert sessions.get(pk=first.pk).attempts == 2


def test_a_resumed_session_continues_after_its_stored_chunks(engine_calls):
    session = create()
    _, total = store_first_chunks(session.id, 1, worker="w1")
    # The worker dies; the sweep requeues; another worker resumes.
    type(session).objects.filter(pk=session.id).update(status=SessionStatus.QUEUED)
    engine_calls.clear()
    services.session_run(session_id=session.id, worker="w2")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert len(engine_calls) == total - 1
    assert list(session.chunks.values_list("seq", flat=True)) == list(range(total))


@pytest.mark.parametrize(
    "changed",
    [
        {"TTS_FIRST_SEGMENT_CHARS": 20},  # the rest cut finer than the first run did
        {"TTS_FIRST_SEGMENT_CHARS": 200, "TTS_SEGMENT_GROWTH": 4},  # or coarser
    ],
)
def test_a_session_resumed_after_its_cut_changed_says_every_word_once(settings, changed):
    """A deploy that changes how text is cut (the cutting settings, a voice's engine, the
    cutting code) while a session is under way: the run that resumes it cuts the rest from
    where the last stored chunk ends, so that no word is said twice or lost."""
    text = " ".join(
        f"The keeper of light {n} climbed the stairs, counting every step aloud, and slept."
        for n in ["one", "two", "three", "four", "five", "six"]
    )
    session = create(text)
    stored, _ = store_first_chunks(session.id, 2, worker="w1")
    type(session).objects.filter(pk=session.id).update(status=SessionStatus.QUEUED)
    for name, value in changed.items():
        setattr(settings, name, value)
    assert [
        s.char_start
        for s in synthesis.session_segments(
            session=session, voice=services.voice_resolve(voice_id=session.voice)
        )
    ][2] != stored[1][0].char_end  # the new cut does not go on where the old one stopped

    services.session_run(session_id=session.id, worker="w2")
    session.refresh_from_db()
    chunks = list(session.chunks.order_by("seq"))
    assert session.status == SessionStatus.COMPLETED and session.total_chunks == len(chunks)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.char_start for c in chunks[1:]] == [c.char_end for c in chunks[:-1]]
    assert "".join(c.text for c in chunks) == text
    assert [c.text for c in chunks[:2]] == [row.text for row, _ in stored]
    assert session.narration_key == ""  # made by two cuts: no narration replays it


def test_a_resumed_session_whose_stored_chunks_were_cut_otherwise_is_of_two_cuts():
    """Where the new cut goes on from the last stored chunk but its segments before it
    differ (a session realigned once, resumed again), the stored chunks still stand for
    themselves and the session is marked as made by two cuts (no narration key)."""
    session = create(TEXT * 3)
    stored, _ = store_first_chunks(session.id, 2, worker="w1")
    voice = services.voice_resolve(voice_id=session.voice)
    segments = synthesis.session_segments(session=session, voice=voice)
    (first, _), (second, _) = stored
    middle = first.char_end - 3  # the new cut's first two segments end elsewhere
    moved = [
        replace(segments[0], char_end=middle, text=session.text[first.char_start : middle]),
        replace(segments[1], char_start=middle, text=session.text[middle : second.char_end]),
    ]
    resumed, one_cut = synthesis.resumed_segments(
        session=session, voice=voice, segments=moved + segments[2:], stored=2
    )
    assert not one_cut
    assert [(s.char_start, s.char_end) for s in resumed[:2]] == [
        (first.char_start, first.char_end),
        (second.char_start, second.char_end),
    ]
    assert resumed[2:] == segments[2:]
    # The same cut as the stored chunks': nothing changes.
    assert synthesis.resumed_segments(
        session=session, voice=voice, segments=segments, stored=2
    ) == (segments, True)


def test_cancel_stops_a_session_before_its_next_chunk(monkeypatch):
    session = create()
    engine = get_engine("espeak")
    original = engine.synthesize

    def cancel_during_first(text, voice):
        if not session.is_final:  # once, on the loop's thread (no database on the engine's)
            session.status = SessionStatus.CANCELLED
            services.session_cancel(session_id=session.id)
        return original(text, voice)

    monkeypatch.setattr(engine, "synthesize", cancel_during_first)
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.CANCELLED
    assert session.error_code == "cancelled"
    assert TTSChunk.objects.filter(session=session).count() == 0


def test_an_engine_failure_fails_the_session_and_keeps_what_was_stored(monkeypatch):
    session = create()
    engine = get_engine("espeak")
    original, calls = engine.synthesize, []

    def fail_second(text, voice):
        calls.append(text)
        if len(calls) == 2:
            raise EngineError("the synthesizer caught fire", code="engine_error")
        return original(text, voice)

    monkeypatch.setattr(engine, "synthesize", fail_second)
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.FAILED
    assert session.error_code == "engine_error"
    assert "caught fire" in session.error_message
    assert session.chunks.count() == 1

    monkeypatch.setattr(engine, "synthesize", original)
    assert services.session_retry(session_id=session.id, dispatch=False)
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert session.chunks.count() == session.total_chunks


def test_the_full_audio_is_the_concatenation_of_the_chunks():
    session = create()
    services.session_run(session_id=session.id, worker="w1")
    pcm = b"".join(bytes(c.audio.pcm) for c in session.chunks.order_by("seq"))
    session.refresh_from_db()
    assert session.audio_ms == sum(c.duration_ms for c in session.chunks.all())
    assert len(pcm) == 2 * sum(c.samples for c in session.chunks.all())


def test_a_long_texts_head_is_synthesized_while_the_rest_is_cut(engine_calls, monkeypatch):
    """The head's segments are on the engine thread before the whole text is cut; they
    are used because the whole text's first segments are the same, so nothing is
    synthesized twice, and every synthesis runs on the engine thread, in order."""
    import threading

    calls: list[tuple[str, str]] = []
    engine = get_engine("espeak")
    counting = engine.synthesize
    cutting = synthesis.segment_text
    synthesizing, waited = threading.Event(), []

    def on_thread(text, voice):
        calls.append((threading.current_thread().name, text))
        synthesizing.set()
        return counting(text, voice)

    def cut(text, **kwargs):
        if len(text) > synthesis.HeadAhead.HEAD_CHARS:  # the whole text: the head is on
            waited.append(synthesizing.wait(5))  # the engine already (or it never comes)
        return cutting(text, **kwargs)

    monkeypatch.setattr(engine, "synthesize", on_thread)
    monkeypatch.setattr(synthesis, "segment_text", cut)
    text = " ".join(f"Sentence number {n} walks along the quiet harbour wall." for n in range(30))
    session = create(text)
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert len(engine_calls) == session.total_chunks == session.chunks.count()
    assert waited == [True]
    assert all(name.startswith("tts-engine") for name, _ in calls)
    chunks = list(session.chunks.order_by("seq").values_list("text", flat=True))
    assert [text.strip() for _, text in calls] == [c.strip() for c in chunks]  # in order


def test_the_engine_works_ahead_while_a_chunk_is_delivered(monkeypatch):
    """The first segment is made on the loop's own thread (no hand-over on the way to
    first audio), and nothing else is synthesized until the first chunk is sent; from
    then on the engine thread makes the next segments while the loop is still sending
    the chunk before them, and a cancel meanwhile keeps what was made for the cache."""
    import threading

    engine = get_engine("espeak")
    original, broadcast_chunk = engine.synthesize, services.broadcast.broadcast_chunk
    events: list[tuple[str, str]] = []
    third_made = threading.Event()

    def synthesize(text, voice):
        events.append(("synthesizing", threading.current_thread().name))
        audio = original(text, voice)
        if [kind for kind, _ in events].count("synthesizing") == 3:
            third_made.set()
        return audio

    def slow_broadcast(session_id, meta, pcm, **kwargs):
        events.append(("sending", str(meta["seq"])))
        if meta["seq"] == 1:  # a slow send: the engine must not wait for it
            assert third_made.wait(5), "the engine waited for the broadcast"
            services.session_cancel(session_id=session_id)  # and what it made is kept
        broadcast_chunk(session_id, meta, pcm, **kwargs)

    monkeypatch.setattr(engine, "synthesize", synthesize)
    monkeypatch.setattr(services.broadcast, "broadcast_chunk", slow_broadcast)
    session = create(TEXT)  # four segments
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.CANCELLED
    loop = threading.current_thread().name
    assert events[:2] == [("synthesizing", loop), ("sending", "0")]
    assert all(name.startswith("tts-engine") for kind, name in events[2:] if kind != "sending")
    voice = services.voice_resolve(voice_id="en-us")
    third = synthesis.session_segments(session=session, voice=voice)[2]
    key = synthesis.segment_key(third, voice=voice, engine_model=session.model)
    assert AudioBlob.objects.filter(key=key).exists()  # made ahead, kept, not lost


def test_leaving_early_keeps_what_the_engine_made_and_drops_what_it_did_not_begin():
    """A cancel, a failure or an interrupt: a segment made ahead, and the one the engine
    is making, go to the audio cache; those not begun are cancelled; and a failure while
    keeping them does not hide the error on its way out."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    voice = services.voice_resolve(voice_id="en-us")
    session = create(TEXT)
    segments = synthesis.session_segments(session=session, voice=voice)
    made = [synthesis.segment_audio(segment=seg, voice=voice) for seg in segments[:2]]
    running, release = threading.Event(), threading.Event()

    def making():
        running.set()
        release.wait(5)
        return made[1]

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        futures = {1: _done(made[0]), 2: pool.submit(making)}
        futures[3] = pool.submit(made.pop)  # queued behind the running one
        futures[4] = Future()
        futures[4].set_exception(EngineError("no", code="engine_error"))
        futures[5] = Future()
        futures[5].set_exception(RuntimeError("not an engine error"))
        assert running.wait(5)
        threading.Timer(0.2, release.set).start()  # still running when the way out begins
        keeping = generation._keeping_what_is_made(futures)
        with pytest.raises(KeyError, match="the error on its way out"), keeping:
            raise KeyError("the error on its way out")
    finally:
        pool.shutdown()
    assert futures[3].cancelled()
    assert futures[2].done() and not futures[2].cancelled()
    assert set(AudioBlob.objects.values_list("key", flat=True)) == {m.key for m in made}
    assert len(made) == 2  # the queued one never ran


def test_a_segment_repeated_within_a_long_texts_head_is_made_once(engine_calls):
    text = "The bell rang. The bell rang. " + " ".join(
        f"Sentence number {n} walks along the quiet harbour wall." for n in range(20)
    )
    session = create(text)
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    chunks = list(session.chunks.order_by("seq"))
    assert chunks[0].text.strip() == chunks[1].text.strip() == "The bell rang."
    assert chunks[0].audio_id == chunks[1].audio_id and chunks[1].cached
    assert len(engine_calls) == len(chunks) - 1 == len(set(engine_calls))


def test_a_head_cut_otherwise_than_the_whole_text_is_not_used():
    voice = services.voice_resolve(voice_id="en-us")
    session = create(TEXT)
    segments = synthesis.session_segments(session=session, voice=voice)
    audio = synthesis.segment_audio(segment=segments[0], voice=voice)
    head = [(segments[0], audio.key, _done(audio)), (segments[1], "a key", _done(audio))]
    ahead = synthesis.HeadAhead(head)
    keys = [audio.key, "a key"]
    assert list(ahead.take(segments[:2], keys)) == [0, 1]
    assert list(ahead.take(segments[:2], [audio.key, "another key"])) == [0]
    assert ahead.take(segments[1:2], keys) == {}
    waiting = Future()
    ahead = synthesis.HeadAhead([(segments[1], "a key", waiting)])
    assert ahead.take(segments[:1], keys) == {} and waiting.cancelled()


# A long scene naming its people by initials: every paragraph goes to pysbd, tens of
# milliseconds of cutting (docs/benchmarks.md, P74).
NAMED = "\n\n".join(
    f"J. R. Gray walked to the harbour on day {n}. The gulls had gone quiet by hour {n}. "
    f"He counted {n} boats twice and nodded."
    for n in range(40)
)


def whole_cut(monkeypatch, events: list[dict], cut=None) -> None:
    """Mark in ``events`` where the whole text's cut began (``cut``: the cut instead)."""
    cutting = synthesis.segment_text

    def marked(text, **kwargs):
        if len(text) > synthesis.HeadAhead.HEAD_CHARS:  # not the head's
            events.append({"type": "cut"})
            return (cut or cutting)(text, **kwargs)
        return cutting(text, **kwargs)

    monkeypatch.setattr(synthesis, "segment_text", marked)


def test_a_long_texts_first_chunk_goes_out_before_the_text_is_cut(monkeypatch, engine_calls):
    """Its frame's count of chunks is null (not yet known), the `running` status rides in
    it, and it is stored as sent; the chunks after it carry the count, and nothing is
    made twice."""
    monkeypatch.setitem(generation._first_segment_ms, "en-us", 1)  # a quick voice
    events = recorded_events(monkeypatch)
    whole_cut(monkeypatch, events)
    session = create(NAMED)
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED and session.narration_key
    assert [e["type"] for e in events[:2]] == ["tts.chunk", "cut"]
    chunks = [e for e in events if e["type"] == "tts.chunk"]
    assert chunks[0]["seq"] == 0 and chunks[0]["total_chunks"] is None
    assert chunks[0]["status"]["status"] == "running"
    assert [e["seq"] for e in chunks] == list(range(session.total_chunks))
    assert {e["total_chunks"] for e in chunks[1:]} == {session.total_chunks}
    stored = list(session.chunks.order_by("seq"))
    assert [(c.char_start, c.char_end, c.cushion_ms) for c in stored[:1]] == [
        (chunks[0]["char_start"], chunks[0]["char_end"], chunks[0]["cushion_ms"])
    ]
    assert len(engine_calls) == len(stored) == session.total_chunks
    assert "".join(c.text for c in stored) == NAMED


def test_a_long_texts_first_hold_counts_the_rest_by_the_voices_own_ramp(monkeypatch, settings):
    """Before the cut is known, chunk 0's hold takes the rest of the text as segments as
    long as the voice's ramp allows (P83's gentle one: 30, 37, 46, …), not all as its
    longest: more, shorter segments each cost the engine its fixed part."""
    from tts.segmentation import ramp_lengths

    settings.TTS_VOICES = [
        {"id": "en-us", "engine": "espeak", "name": "en-us"},
        {
            "id": "en-us-slow",
            "engine": "espeak",
            "name": "en-us",
            "options": {"first_segment_chars": 30, "segment_growth": 1.25},
        },
    ]
    paces: list[list[int]] = []

    class RecordingPace(generation.Pace):
        def __init__(self, chars, *args, **kwargs):
            paces.append(list(chars))
            super().__init__(chars, *args, **kwargs)

    monkeypatch.setattr(generation, "Pace", RecordingPace)
    session = create(NAMED, voice_id="en-us-slow")
    services.session_run(session_id=session.id, worker="w1")
    head_pace = paces[0]  # the first chunk's, made before the cut
    cut = synthesis.voice_cutting(services.voice_resolve(voice_id="en-us-slow"))
    limits = ramp_lengths(
        100 * len(NAMED),  # enough for every limit the head pace has
        max_chars=cut["max_chars"],
        first_max_chars=cut["first_max_chars"],
        growth=cut["growth"],
    )[: len(head_pace)]
    # The head's own segments first (a few), then the ramp's limits, the last one partial.
    past_head = next(
        h for h in range(len(head_pace)) if head_pace[h:-1] == limits[h : len(head_pace) - 1]
    )
    assert past_head <= 6 and head_pace[past_head] < cut["max_chars"]  # not all the longest
    assert head_pace[-1] <= limits[-1]
    assert sum(head_pace) >= len(NAMED) * 0.9  # the whole text, roughly


def test_a_slow_voice_says_it_runs_before_its_long_texts_first_chunk(monkeypatch):
    """A voice whose first segments took long: `running` goes out on its own as the head
    is made, not only with the first chunk (session_steps)."""
    monkeypatch.setitem(generation._first_segment_ms, "en-us", 10_000)
    events = recorded_events(monkeypatch)
    whole_cut(monkeypatch, events)
    session = create(NAMED)
    services.session_run(session_id=session.id, worker="w1")
    assert [e["type"] for e in events[:3]] == ["tts.status", "tts.chunk", "cut"]
    assert events[0]["status"] == "running" and "status" not in events[1]


def test_a_whole_cut_that_begins_otherwise_goes_on_from_the_chunk_sent(monkeypatch):
    """The chunk sent stays chunk 0, and the rest of the text is cut from where it ends:
    no word said twice, none lost. The session is then not replayed whole by its key (two
    cuts), as a resumed session cut otherwise is not."""
    events = recorded_events(monkeypatch)
    cutting = synthesis.segment_text
    monkeypatch.setitem(generation._first_segment_ms, "en-us", 1)
    whole_cut(
        monkeypatch,
        events,
        cut=lambda text, **kwargs: cutting(text, **{**kwargs, "first_max_chars": 20}),
    )
    session = create(NAMED)
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED and not session.narration_key
    stored = list(session.chunks.order_by("seq"))
    sent = next(e for e in events if e["type"] == "tts.chunk")
    assert events.index(sent) < events.index({"type": "cut"})
    assert (stored[0].char_start, stored[0].char_end) == (0, sent["char_end"])
    assert len(stored[0].text.strip()) > 20  # the head's, not the whole cut's
    assert all(a.char_end == b.char_start for a, b in zip(stored, stored[1:], strict=False))
    assert "".join(c.text for c in stored) == NAMED == session.text


@pytest.mark.parametrize("failing", ["the cut", "the pace"])
def test_a_long_texts_first_chunk_is_kept_when_its_run_fails_to_begin(monkeypatch, failing):
    """Heard, not stored: its audio goes to the cache, so the next run does not make it
    again; the run raises its own error (the worker leaves it to the sweep)."""
    monkeypatch.setitem(generation._first_segment_ms, "en-us", 1)
    events = recorded_events(monkeypatch)

    def fail(*args, **kwargs):
        raise DatabaseError(f"{failing} failed")

    if failing == "the cut":
        whole_cut(monkeypatch, events, cut=fail)
    else:  # the run's own pace, set up after the cut (the head's hold has its own)
        pace = generation.Pace
        monkeypatch.setattr(
            generation,
            "Pace",
            lambda chars, *a, **kw: fail() if len(chars) > 50 else pace(chars, *a, **kw),
        )
    session = create(NAMED)
    claimed = services.session_claim(session_id=session.id, worker="w1")
    with pytest.raises(DatabaseError, match=f"{failing} failed"):
        list(generation.session_steps(session=claimed, worker="w1"))
    sent = next(e for e in events if e["type"] == "tts.chunk")
    assert not TTSChunk.objects.filter(session=session).exists()
    voice = services.voice_resolve(voice_id="en-us")
    head = session.text[: synthesis.HeadAhead.HEAD_CHARS]
    segment = synthesis.session_segments(session=session, voice=voice, text=head)[0]
    assert segment.char_end == sent["char_end"]
    key = synthesis.segment_key(segment, voice=voice, engine_model=session.model)
    assert AudioBlob.objects.filter(key=key).exists()


def test_a_long_text_beats_while_its_run_waits_for_its_first_segment(monkeypatch):
    """The wait for the head's first segment comes before the run's steps: a slow voice's
    (or an engine still finishing a cancelled session's segment) must not look dead."""
    beating, waited = [], synthesis.HeadAhead.first_made

    def first_made(self):
        beating.append(set(generation._heartbeats._beating))
        return waited(self)

    monkeypatch.setattr(synthesis.HeadAhead, "first_made", first_made)
    session = create(NAMED)
    services.session_run(session_id=session.id, worker="w1")
    assert beating == [{session.id}]


def test_a_long_texts_hold_counts_from_when_its_first_chunk_was_made():
    """The wall time between a run's chunks bounds its engine's pace (tts.pacing): a first
    chunk sent before the cut counts from when it was made, not from its store."""
    from tts.pacing import Pace

    now = [100.0]
    pace = Pace([10, 10, 10], [0, 0, 0], [False] * 3, clock=lambda: now[0])
    pace.made(0, duration_ms=1000, engine_ms=5, at=99.0)
    pace.made(1, duration_ms=1000, engine_ms=5)
    assert pace.first_made == 99.0 and pace.wall_chars == 10


def test_a_chunk_frame_reads_nothing_whether_its_count_is_known_or_not(
    django_assert_num_queries,
):
    session = create()
    services.session_run(session_id=session.id, worker="w1")
    chunk, total = TTSChunk.objects.get(session=session, seq=0), session.chunks.count()
    with django_assert_num_queries(0):
        assert services.chunk_meta(chunk, total_chunks=None)["total_chunks"] is None
        assert services.chunk_meta(chunk, total_chunks=total)["total_chunks"] == total


def test_a_long_text_whose_cut_fails_raises_its_own_error_and_frees_the_engine(monkeypatch):
    """The head is on the engine thread when the whole text's cache lookup fails: the
    lookup's error is what the run raises (the worker logs it and leaves the session to
    the recovery sweep), and the head's syntheses not begun are cancelled."""
    heads: list = []
    start = synthesis.HeadAhead.start.__func__
    looked_up = synthesis.cached_keys

    def recording(cls, *args, **kwargs):
        heads.append(start(cls, *args, **kwargs))
        return heads[-1]

    def failing(keys, **kwargs):
        if len(heads) == 1 and len(keys) > 1 + synthesis.SYNTHESIS_AHEAD:  # the whole text's
            raise DatabaseError("the database went away")
        return looked_up(keys, **kwargs)

    monkeypatch.setattr(synthesis.HeadAhead, "start", classmethod(recording))
    monkeypatch.setattr(synthesis, "cached_keys", failing)
    text = " ".join(f"Sentence number {n} walks along the quiet harbour wall." for n in range(30))
    session = create(text)
    claimed = services.session_claim(session_id=session.id, worker="w1")
    with pytest.raises(DatabaseError, match="went away"):
        services.session_generate(session=claimed, worker="w1")
    futures = [future for _, _, future in heads[0].head if future is not None]
    assert len(futures) == 1 + synthesis.SYNTHESIS_AHEAD
    for future in futures:  # each one cancelled, or made (the engine had begun it)
        assert future.cancelled() or future.result(timeout=5).pcm


def _done(value):
    future = Future()
    future.set_result(value)
    return future


def test_a_failed_store_leaves_no_hole(monkeypatch, caplog):
    """Chunk 1's store fails (a database error): nothing after it is stored, so a resumed
    run continues at chunk 1 and listeners never meet a gap they cannot fill."""
    from django.db import OperationalError

    real_store, failed = storing.chunks_store, []

    def flaky(**kwargs):
        if any(chunk.seq == 1 for chunk, _ in kwargs["chunks"]) and not failed:
            failed.append(1)
            raise OperationalError("database is locked")
        return real_store(**kwargs)

    monkeypatch.setattr(storing, "chunks_store", flaky)
    session = create()
    services.session_run(session_id=session.id, worker="w1")
    assert f"generation of {session.id} crashed" in caplog.text
    session.refresh_from_db()
    # Chunk 0 is stored on its own, or in one batch with chunk 1 when the engine made
    # chunk 1 before the writer took chunk 0 (then the batch fails whole): either way,
    # nothing from chunk 1 on.
    stored = list(session.chunks.values_list("seq", flat=True))
    assert stored in ([0], [])
    assert session.completed_chunks == len(stored)
    type(session).objects.filter(pk=session.id).update(status=SessionStatus.QUEUED)
    services.session_run(session_id=session.id, worker="w2")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert list(session.chunks.values_list("seq", flat=True)) == list(range(session.total_chunks))


def test_the_sender_loop_survives_a_send_that_raises_cancelled():
    import asyncio

    from tts.broadcast import _sender

    async def cancelled():
        raise asyncio.CancelledError

    async def fine():
        return "ok"

    with pytest.raises(asyncio.CancelledError):
        _sender.run(cancelled(), "a cancelled send")
    assert _sender.run(fine(), "the next send", timeout=2) == "ok"


# Replay: a text narrated before is not narrated again --------------------------------------

CHUNK_FIELDS = ("seq", "text", "char_start", "char_end", "samples", "sample_rate", "audio_id")


def narrated(text: str = TEXT, **kwargs):
    session = create(text, **kwargs)
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    return session


def chunk_rows(session) -> list[tuple]:
    return list(session.chunks.order_by("seq").values_list(*CHUNK_FIELDS))


@pytest.fixture
def notices(monkeypatch):
    """What session_create rang once its transaction committed: the workers' doorbell,
    or the `done` event a socket opened with the POST waits for."""
    from tts import broadcast

    rung: list[tuple] = []
    monkeypatch.setattr(broadcast, "dispatch_generate", lambda sid: rung.append(("generate", sid)))
    monkeypatch.setattr(
        broadcast, "broadcast_done", lambda sid, **totals: rung.append(("done", sid, totals))
    )
    return rung


def test_a_text_narrated_before_is_replayed_at_creation(engine_calls, notices):
    first = narrated()
    calls = len(engine_calls)
    notices.clear()  # the first one's own `done`
    second = services.session_create(text=TEXT, owner=OWNER)  # dispatch=True, as the API

    assert len(engine_calls) == calls  # no synthesis, and no worker asked for any
    stored = type(second).objects.get(pk=second.id)
    assert stored.status == SessionStatus.COMPLETED == second.status
    assert stored.total_chunks == stored.completed_chunks == first.total_chunks
    assert stored.audio_ms == first.audio_ms and stored.engine_ms == 0
    assert stored.first_chunk_ms == 0 and stored.real_time_factor == 0.0
    assert stored.dispatched_at is None and stored.claimed_by == ""
    assert chunk_rows(stored) == chunk_rows(first)
    assert all(chunk.cached and chunk.engine_ms == 0 for chunk in stored.chunks.all())
    totals = {"total_chunks": first.total_chunks, "duration_ms": first.audio_ms}
    assert notices == [("done", second.id, totals)]


def test_narrations_from_before_the_growth_setting_keep_their_key(settings):
    """TTS_SEGMENT_GROWTH's default cuts as the fixed ramp before it did: the keys of
    narrations made then are the keys of the same texts now (they are still replayed)."""
    voice = services.voice_resolve(voice_id=None)
    settings.TTS_SEGMENT_GROWTH = 2.0
    key = services.narration_key(voice=voice, engine_model="", text=TEXT)
    cut = {k: v for k, v in synthesis.voice_cutting(voice).items() if k != "growth"}
    before = {"version": services.SEGMENTATION_VERSION, **cut}
    assert key == synthesis.digest(
        {**voice.cache_fields(), "model_id": "", "text": TEXT, "cut": before}
    )
    settings.TTS_SEGMENT_GROWTH = 1.5
    assert services.narration_key(voice=voice, engine_model="", text=TEXT) != key


def test_a_voice_cuts_with_its_own_first_segment_and_growth(settings, engine_calls):
    """A voice's options.first_segment_chars and options.segment_growth replace
    TTS_FIRST_SEGMENT_CHARS and TTS_SEGMENT_GROWTH for its sessions alone (a slow voice's
    first audio sooner, the fast ones cut as before), and its narration key follows."""
    import dataclasses

    short = {"first_segment_chars": 20, "segment_growth": 1.25}
    settings.TTS_VOICES = [
        {"id": "en-us", "engine": "espeak", "name": "en-us"},
        {"id": "en-us-short", "engine": "espeak", "name": "en-us", "options": short},
    ]
    plain, own = narrated(voice_id="en-us"), narrated(voice_id="en-us-short")

    def lengths(session) -> list[int]:
        return [c.char_end - c.char_start for c in session.chunks.order_by("seq")]

    assert lengths(plain)[0] > 20 >= len(own.chunks.get(seq=0).text.strip())
    assert len(lengths(own)) > len(lengths(plain))  # the gentler ramp: more, smaller chunks
    for session in (plain, own):
        text = "".join(c.text for c in session.chunks.order_by("seq"))
        assert text.split() == TEXT.split()  # every word, once, in order
    voice = services.voice_resolve(voice_id="en-us-short")
    assert synthesis.voice_cutting(voice)["first_max_chars"] == 20
    assert synthesis.voice_cutting(voice)["growth"] == 1.25
    without = dataclasses.replace(voice, options={})
    assert services.narration_key(voice=voice, engine_model="", text=TEXT) != (
        services.narration_key(voice=without, engine_model="", text=TEXT)
    )


@pytest.mark.parametrize(
    "change",
    [
        "another voice",
        "another first segment length",
        "another segment growth",
        "a chunk deleted",
        "cancelled",
        "running",
    ],
)
def test_only_a_whole_completed_narration_of_the_same_settings_is_replayed(
    change, notices, settings
):
    from tts.models import TTSSession

    first = narrated()
    kwargs = {}
    if change == "another voice":
        kwargs["voice_id"] = "en-gb"
    elif change == "another first segment length":
        settings.TTS_FIRST_SEGMENT_CHARS = 30
    elif change == "another segment growth":
        settings.TTS_SEGMENT_GROWTH = 1.25
    elif change == "a chunk deleted":
        first.chunks.filter(seq=1).delete()
    else:
        TTSSession.objects.filter(pk=first.pk).update(status=change)
    notices.clear()
    second = services.session_create(text=TEXT, owner=OWNER, **kwargs)
    assert type(second).objects.get(pk=second.id).status == SessionStatus.QUEUED
    assert not second.chunks.exists()
    assert notices == [("generate", second.id)]


def test_the_replay_lookup_searches_the_key_index_not_the_completed_sessions():
    """The lookup runs on every POST: with the key alone indexed, SQLite (which has no
    statistics) chose the status index and scanned every completed session."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    narrated()
    with CaptureQueriesContext(connection) as queries:
        create("A text nobody narrated before.")
    lookup = next(
        q["sql"] for q in queries if q["sql"].startswith("SELECT") and "narration_key" in q["sql"]
    )
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + lookup)
        else:  # PostgreSQL: a table this small is scanned anyway, unless told not to
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + lookup)
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "tts_session_replay_idx" in plan, plan


def test_a_replay_is_replayed_in_turn():
    first = narrated()
    replays = [create() for _ in range(3)]
    assert all(r.status == SessionStatus.COMPLETED for r in replays)
    assert all(chunk_rows(r) == chunk_rows(first) for r in replays)
    first.delete()  # the original goes (retention); its replays still serve
    assert create().status == SessionStatus.COMPLETED


def test_a_replay_keeps_a_chosen_id_and_refuses_a_taken_one():
    import uuid

    from tts.errors import Conflict

    first = narrated()
    chosen = uuid.uuid4()
    second = create(session_id=chosen)
    assert second.id == chosen and second.status == SessionStatus.COMPLETED
    assert chunk_rows(second) == chunk_rows(first)
    with pytest.raises(Conflict):
        create(session_id=chosen)
    assert second.chunks.count() == first.total_chunks


def test_a_slow_store_holds_up_neither_the_engine_nor_the_order_of_announcements(monkeypatch):
    """Chunk 0's commit takes 600 ms (a checkpoint, a busy disk): chunks 1 and 2 are
    synthesized meanwhile, and each is announced only once the one before it is stored."""
    import time

    from tts import broadcast

    engine, events = get_engine("espeak"), []
    real_synthesize, real_store, real_broadcast = (
        engine.synthesize,
        storing.chunks_store,
        broadcast.broadcast_chunk,
    )

    def synthesize(text, voice):
        events.append(("synthesized", text, time.monotonic()))
        return real_synthesize(text, voice)

    def store(**kwargs):
        if kwargs["chunks"][0][0].seq == 0:
            time.sleep(0.6)
        stored = real_store(**kwargs)
        events.extend(("stored", chunk.seq, time.monotonic()) for chunk, _ in kwargs["chunks"])
        return stored

    def announce(session_id, meta, pcm, **kwargs):
        events.append(("announced", meta["seq"], time.monotonic()))
        return real_broadcast(session_id, meta, pcm, **kwargs)

    monkeypatch.setattr(engine, "synthesize", synthesize)
    monkeypatch.setattr(storing, "chunks_store", store)
    monkeypatch.setattr(broadcast, "broadcast_chunk", announce)
    session = create()
    services.session_run(session_id=session.id, worker="w1")
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED and session.total_chunks >= 3

    when = {(kind, key): at for kind, key, at in events}
    synthesized = [at for kind, _, at in events if kind == "synthesized"]
    assert synthesized[2] < when["stored", 0]  # the engine went on during the slow store
    for seq in range(1, session.total_chunks):
        assert when["stored", seq - 1] <= when["announced", seq]
    assert [key for kind, key, _ in events if kind == "stored"] == list(range(session.total_chunks))


def test_a_narration_is_keyed_by_the_settings_its_worker_used(settings, notices):
    """Created under one pause setting, narrated by a worker that runs another (a rolling
    deploy): it is replayed only for requests made under the worker's settings."""
    first = create()
    settings.TTS_SENTENCE_PAUSE_MS = 500
    services.session_run(session_id=first.id, worker="w1")
    first.refresh_from_db()
    assert first.status == SessionStatus.COMPLETED
    assert create().status == SessionStatus.COMPLETED  # made with 500: replayed
    settings.TTS_SENTENCE_PAUSE_MS = 350
    assert create().status == SessionStatus.QUEUED  # asks for 350: narrated afresh


def test_the_writer_stores_what_queued_up_meanwhile_in_one_batch_in_order():
    import threading

    batches, entered, gate = [], threading.Event(), threading.Event()

    def store(batch):
        entered.set()
        gate.wait(5)
        batches.append(batch)
        return True

    with storing.OrderedWriter(store) as writer:
        assert writer.idle()
        writer.submit("a")
        assert entered.wait(5)  # "a" is being stored
        writer.submit("b")
        writer.submit("c")
        assert not writer.idle()
        gate.set()
        assert writer.wait() and writer.idle()
    assert batches == [["a"], ["b", "c"]]


def test_the_writer_holds_back_a_caller_that_runs_too_far_ahead():
    import threading

    gate = threading.Event()
    writer = storing.OrderedWriter(lambda batch: gate.wait(5))
    with writer:
        for item in range(writer.MAX_QUEUED):
            writer.submit(item)
        submitting = threading.Thread(target=writer.submit, args=(writer.MAX_QUEUED,))
        submitting.start()
        submitting.join(0.2)
        assert submitting.is_alive()  # one too many: it waits for the writer
        gate.set()
        submitting.join(5)
        assert not submitting.is_alive() and writer.wait()


def test_the_writer_skips_everything_after_a_failed_batch_and_raises_its_error():
    """A batch that raised was rolled back: its items are skipped too (their audio is
    kept). One that returned False (the session is no longer held) stored its audio."""
    import threading

    from django.db import OperationalError

    stored, skipped, entered, gate = [], [], threading.Event(), threading.Event()

    def store(batch):
        entered.set()
        gate.wait(5)
        if "b" in batch:
            raise OperationalError("disk I/O error")
        stored.extend(batch)
        return True

    with storing.OrderedWriter(store, skipped=skipped.append) as writer:
        writer.submit("a")
        assert entered.wait(5)
        writer.submit("b")
        writer.submit("c")  # stored with "b", and skipped with it
        assert writer.healthy() and not writer.idle()  # nothing has failed yet
        gate.set()
        with pytest.raises(OperationalError):
            while writer.healthy():
                pass
        writer.submit("d")
        assert not writer.healthy() and not writer.wait()  # raised once
    assert stored == ["a"] and skipped == ["b", "c", "d"]

    skipped.clear()
    with storing.OrderedWriter(lambda batch: "e" not in batch, skipped=skipped.append) as w:
        w.submit("e")
        assert w.wait() is False and not w.healthy()
        w.submit("f")
        assert w.wait() is False
    assert skipped == ["f"]


@pytest.mark.parametrize("max_age, opened", [(60, 1), (0, 3)], ids=["kept", "not kept"])
def test_sessions_store_on_kept_threads_that_keep_a_connection_where_the_process_does(
    monkeypatch, max_age, opened
):
    """Three sessions, one after another, store on one thread. A worker keeps
    connections (CONN_MAX_AGE, from TTS_WORKER_CONN_MAX_AGE): that thread opens one for
    all three. Where connections are not kept, each session's is closed after it, as
    before (a pool takes them back)."""
    import threading

    from django.db import connection
    from django.db.backends.signals import connection_created

    if max_age and connection.settings_dict.get("OPTIONS", {}).get("pool"):
        pytest.skip("a pool takes connections back; CONN_MAX_AGE is not for it")
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", max_age)
    storing._store_threads.close_connections()  # none kept from before
    threads, created = set(), []

    def on_created(sender, connection, **kwargs):
        if threading.current_thread().name == "tts-store":
            created.append(connection)

    def store(batch):
        threads.add(threading.current_thread())  # not its ident, which may be reused
        if connection.vendor == "sqlite":  # its log copies at SQLite's default (tts/db.py)
            assert _checkpoint_pages(connection) == 1_000
        return AudioBlob.objects.filter(key="none").exists() is False

    connection_created.connect(on_created)
    try:
        for _ in range(3):
            with storing.OrderedWriter(store) as writer:
                writer.submit("a")
                assert writer.wait()
    finally:
        connection_created.disconnect(on_created)
        storing._store_threads.close_connections()
    assert len(threads) == 1 and len(created) == opened


def _sqlite_database(path, alias: str = "default"):
    """A connection of its own to a new SQLite database in WAL mode, as the project's are
    (config/settings.py), whatever the tests' own database is: made on the calling
    thread, whose connection it is. Under the narration tables' alias unless told."""
    from django.db import connections
    from django.db.backends.sqlite3.base import DatabaseWrapper

    settings_dict = {
        **connections["default"].settings_dict,
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            "init_command": "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; "
            "PRAGMA synchronous=NORMAL;"
        },
    }
    return DatabaseWrapper(settings_dict, alias=alias)


def _checkpoint_pages(database) -> int:
    with database.cursor() as cursor:
        cursor.execute("PRAGMA wal_autocheckpoint")
        return cursor.fetchone()[0]


def _commits_of(database, rows: int) -> None:
    """``rows`` commits of 200 KB each (49 pages of 4 KB)."""
    with database.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS t (b BLOB)")
        for _ in range(rows):
            cursor.execute("INSERT INTO t VALUES (?)", [bytes(200_000)])


def test_only_the_store_threads_copy_sqlite_s_log_back(tmp_path, settings):
    """SQLite runs a checkpoint (its log copied back into the database file, 15 to 25 ms)
    in the commit that takes the log past ``wal_autocheckpoint`` pages. A session's stores
    (a store thread) do so at SQLite's default, 1,000 pages; every other connection (a
    POST's insert, a worker's claim, on the way to first audio) only past
    TTS_SQLITE_CHECKPOINT_PAGES. Watched on the database file itself, which grows only
    when a checkpoint copies pages into it."""
    from tts.db import CHECKPOINT_PAGES_STORING

    settings.TTS_SQLITE_CHECKPOINT_PAGES = 10_000
    path = tmp_path / "wal.sqlite3"
    elsewhere = _sqlite_database(path)
    try:
        assert _checkpoint_pages(elsewhere) == 10_000
        _commits_of(elsewhere, 30)  # 1,470 pages: past SQLite's default, not past 10,000
        assert path.stat().st_size < 1_000_000  # not copied back
        assert (tmp_path / "wal.sqlite3-wal").stat().st_size > 6_000_000

        def store() -> int:
            database = _sqlite_database(path)  # this thread's connection
            try:
                pages = _checkpoint_pages(database)
                _commits_of(database, 1)  # the log is past 1,000 pages: this commit copies
                return pages
            finally:
                database.close()

        thread = storing._store_threads.take()
        try:
            assert thread.submit(store).result(timeout=30) == CHECKPOINT_PAGES_STORING == 1_000
        finally:
            storing._store_threads.give_back(thread)
        assert path.stat().st_size > 6_000_000  # copied back by the store thread's commit
    finally:
        elsewhere.close()


@pytest.mark.parametrize("pages, alias", [(0, "default"), (10_000, "other")])
def test_sqlite_s_own_checkpoints_where_told_or_not_the_narration_database(
    tmp_path, settings, pages, alias
):
    """TTS_SQLITE_CHECKPOINT_PAGES=0 leaves SQLite's default (1,000) on every connection,
    and a project's other databases keep it whatever the setting."""
    settings.TTS_SQLITE_CHECKPOINT_PAGES = pages
    database = _sqlite_database(tmp_path / "other.sqlite3", alias=alias)
    try:
        assert _checkpoint_pages(database) == 1_000
    finally:
        database.close()


def test_a_forked_child_makes_its_own_store_threads():
    """A child forked after sessions stored has none of the parent's threads: its first
    writer starts one of its own instead of waiting on a thread that is not there."""
    import os
    import select
    import signal

    with storing.OrderedWriter(lambda batch: True) as writer:  # a thread in the pool
        writer.submit("a")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: store once, report, and leave at once
        try:
            with storing.OrderedWriter(lambda batch: True) as writer:
                writer.submit("b")
                ok = writer.wait()
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 10)
        reported = os.read(read, 1) if ready else b"hung"
    finally:
        os.close(read)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert reported == b"1"


@pytest.fixture
def sent(monkeypatch) -> dict[int, bytes]:
    """The audio each chunk was broadcast with, by seq."""
    from tts import broadcast

    audio: dict[int, bytes] = {}
    real = broadcast.broadcast_chunk

    def record(session_id, meta, pcm, **kwargs):
        audio[meta["seq"]] = pcm
        return real(session_id, meta, pcm, **kwargs)

    monkeypatch.setattr(broadcast, "broadcast_chunk", record)
    return audio


def stored_audio(session) -> dict[int, bytes]:
    return {c.seq: bytes(c.audio.pcm) for c in session.chunks.select_related("audio")}


def test_a_segment_that_comes_again_is_made_once_and_stored_as_it_was_sent(engine_calls, sent):
    """Engines need not make the same bytes twice (libespeak-ng carries state from one
    utterance to the next; a VITS samples noise): a repeated segment is the same audio
    live and from storage."""
    refrain = "Row, row, row the boat."
    session = narrated(f"{refrain} The sea was calm that night. {refrain} The stars came out.")
    texts = [c.text.strip() for c in session.chunks.order_by("seq")]
    assert texts.count(refrain) == 2
    assert [text.strip() for text in engine_calls].count(refrain) == 1
    assert sent == stored_audio(session)
    first, again = session.chunks.filter(text__startswith=refrain).order_by("seq")
    assert (first.cached, again.cached) == (False, True)
    assert again.audio_id == first.audio_id


def test_a_segment_that_comes_again_refers_to_the_audio_its_first_chunk_stored(monkeypatch, sent):
    """Another worker stored the refrain's key first, with other bytes: both chunks of it
    refer to this session's own bytes, which is what their listeners got."""
    from tts.models import AudioBlob

    real, raced = storing.blob_create, []

    def another_worker_first(key, audio):
        if not raced:
            raced.append(key)
            AudioBlob.objects.create(
                key=key,
                pcm=bytes(len(audio.pcm)),
                sample_rate=audio.sample_rate,
                samples=audio.samples,
            )
        return real(key, audio)

    monkeypatch.setattr(storing, "blob_create", another_worker_first)
    refrain = "Row, row, row the boat."
    session = narrated(f"{refrain} The sea was calm that night. {refrain} The stars came out.")
    assert sent == stored_audio(session)
    first, again = session.chunks.filter(text__startswith=refrain).order_by("seq")
    assert first.audio_id == again.audio_id != raced[0]


@pytest.mark.parametrize("same_bytes", [True, False])
def test_a_chunk_stores_the_audio_it_was_sent_with_when_another_worker_stored_its_key(
    monkeypatch, sent, same_bytes
):
    """Another worker narrating the same segment stores its audio under the key first:
    the chunk refers to the bytes its listeners got, and the key keeps the other's."""
    from tts.models import AudioBlob

    real, raced = storing.blob_create, []

    def another_worker_first(key, audio):
        if not raced:  # the first segment: the other worker's audio lands just before
            raced.append(key)
            pcm = audio.pcm if same_bytes else bytes(len(audio.pcm))
            AudioBlob.objects.create(
                key=key, pcm=pcm, sample_rate=audio.sample_rate, samples=audio.samples
            )
        return real(key, audio)

    monkeypatch.setattr(storing, "blob_create", another_worker_first)
    session = narrated()
    assert sent == stored_audio(session)
    first = session.chunks.get(seq=0)
    assert (first.audio_id == raced[0]) is same_bytes
    assert bytes(AudioBlob.objects.get(key=raced[0]).pcm) == (
        sent[0] if same_bytes else bytes(len(sent[0]))
    )


def test_one_heartbeat_thread_beats_for_every_running_session_until_it_leaves(settings):
    import threading
    import time

    settings.TTS_HEARTBEAT_TIMEOUT = 1.5  # a beat every 0.5 s
    sessions = type(create()).objects
    first, second, stopped = create(), create(text="A second text."), create(text="A third.")
    for session, worker in [(first, "w1"), (second, "w2"), (stopped, "w3")]:
        services.session_claim(session_id=session.id, worker=worker)
    claimed_at = {s.pk: sessions.get(pk=s.pk).heartbeat_at for s in (first, second, stopped)}
    sessions.filter(pk=stopped.pk).update(status=SessionStatus.CANCELLED)
    beats = generation._Heartbeats()  # its thread starts with the interval above
    before = {t for t in threading.enumerate() if t.name == "tts-heartbeat"}
    with (
        beats.beating(first.id, "w1"),
        beats.beating(second.id, "w2"),
        beats.beating(stopped.id, "w3"),
    ):
        threads = {t for t in threading.enumerate() if t.name == "tts-heartbeat"} - before
        time.sleep(0.8)
    assert len(threads) == 1  # one thread for the three sessions
    assert sessions.get(pk=first.pk).heartbeat_at > claimed_at[first.pk]
    assert sessions.get(pk=second.pk).heartbeat_at > claimed_at[second.pk]
    assert sessions.get(pk=stopped.pk).heartbeat_at == claimed_at[stopped.pk]  # not running
    left = sessions.get(pk=first.pk).heartbeat_at
    time.sleep(0.7)
    assert sessions.get(pk=first.pk).heartbeat_at == left  # no beats once it has left


def _pcm_storage() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
            [AudioBlob._meta.db_table, AudioBlob._meta.get_field("pcm").column],
        )
        return cursor.fetchone()[0]


def test_postgresql_stores_the_audio_without_trying_to_compress_it():
    """Migration 0005: the PCM column's storage is EXTERNAL (out of line, no pglz attempt,
    which cost 4 ms a chunk on speech), EXTENDED again when it is unapplied; the audio
    reads back byte for byte."""
    import importlib

    from django.apps import apps
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL column setting; other databases have none")
    migration = importlib.import_module("tts.migrations.0005_audio_stored_uncompressed")
    (operation,) = migration.Migration.operations
    assert _pcm_storage() == "e"  # e: EXTERNAL (x, EXTENDED, is bytea's default)
    try:
        with connection.schema_editor() as editor:
            operation.reverse_code(apps, editor)
        assert _pcm_storage() == "x"
    finally:
        with connection.schema_editor() as editor:
            operation.code(apps, editor)
    assert _pcm_storage() == "e"
    pcm = bytes(range(256)) * 800  # compressible, and stored as it is
    assert AudioBlob.objects.add(key="k" * 64, pcm=pcm, sample_rate=22050, samples=len(pcm) // 2)
    assert bytes(AudioBlob.objects.get(key="k" * 64).pcm) == pcm


# --- Several sessions on one worker (tts.scheduling) --------------------------------------


# Thirty sentences, each its own segment: none is a repeat that the worker makes once.
LONG = " ".join(f"Sentence {n} of the long tale rolls on toward its end." for n in range(30))


def _chunks_made(session) -> list:
    return list(session.chunks.order_by("seq").values_list("created_at", flat=True))


@pytest.fixture
def slow_engine(settings):
    """A segment takes 20 ms more: a long narration keeps the worker busy for a while."""
    settings.TTS_FAULT_DELAY_MS = 20


def test_a_busy_worker_gives_waiting_sessions_their_first_audio_before_it_finishes(
    settings, slow_engine
):
    settings.TTS_WORKER_SESSIONS = 3
    long = create(text=LONG)
    shorts = [create(text=f"A short scene, number {n}. It is over quickly.") for n in (1, 2)]
    services.session_run(session_id=long.id, worker="w1")
    long.refresh_from_db()
    for session in (long, *shorts):
        session.refresh_from_db()
        assert session.status == SessionStatus.COMPLETED and session.claimed_by == "w1"
        assert list(session.chunks.values_list("seq", flat=True)) == list(
            range(session.total_chunks)
        )
    long_made = _chunks_made(long)
    for short in shorts:
        short_made = _chunks_made(short)
        assert long_made[0] < short_made[0] < long_made[-1]  # in between, not after
        # within the first half of the long one's run, not at its end
        assert short_made[0] - short.created_at < (long_made[-1] - long.created_at) / 2


def test_with_one_session_per_worker_a_waiting_session_waits_for_the_one_before(
    settings, slow_engine
):
    settings.TTS_WORKER_SESSIONS = 1
    long, short = create(text=LONG), create(text="A short scene. It is over quickly.")
    services.session_run(session_id=long.id, worker="w1")
    long.refresh_from_db()
    short.refresh_from_db()
    assert long.status == short.status == SessionStatus.COMPLETED
    assert _chunks_made(long)[-1] < _chunks_made(short)[0]


def test_a_session_whose_store_fails_beside_another_is_logged_and_that_one_finishes(
    monkeypatch, settings, slow_engine, caplog
):
    """The failing session is logged by its id and left to the recovery sweep, as on its
    own; the one beside it completes."""
    from django.db import OperationalError

    settings.TTS_WORKER_SESSIONS = 2
    long = create(text=LONG)
    failing = create(text="This one fails. Its second chunk cannot be stored. Then more.")
    real_store = storing.chunks_store

    def flaky(**kwargs):
        if kwargs["session"].id == failing.id and any(c.seq == 1 for c, _ in kwargs["chunks"]):
            raise OperationalError("disk I/O error")
        return real_store(**kwargs)

    monkeypatch.setattr(storing, "chunks_store", flaky)
    services.session_run(session_id=long.id, worker="w1")
    assert f"generation of {failing.id} crashed" in caplog.text
    assert "disk I/O error" in caplog.text
    for session in (long, failing):
        session.refresh_from_db()
    assert long.status == SessionStatus.COMPLETED
    assert long.completed_chunks == long.total_chunks
    # Chunk 0 stored alone, or in one batch with chunk 1 (the engine can make chunk 1
    # before the writer has taken chunk 0), which then fails with it.
    assert failing.status == SessionStatus.RUNNING and failing.completed_chunks in (0, 1)
    assert failing.chunks.count() == failing.completed_chunks  # no hole
    assert failing.started_at < _chunks_made(long)[-1]  # it ran beside the long one


def test_an_interrupt_closes_every_session_on_the_worker_with_what_it_made_stored(
    monkeypatch, settings, slow_engine
):
    """A worker stopped (KeyboardInterrupt, SystemExit) with two sessions under way: each
    keeps a gapless run of stored chunks and stays running, for the recovery sweep to
    resume; resumed, each completes."""
    settings.TTS_WORKER_SESSIONS = 2
    long, short = create(text=LONG), create(text="A short scene. It stops in the middle.")
    engine = get_engine("espeak")
    real = engine.synthesize

    def interrupted(text, voice):
        if "middle" in text:
            raise KeyboardInterrupt
        return real(text, voice)

    monkeypatch.setattr(engine, "synthesize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        services.session_run(session_id=long.id, worker="w1")
    for session in (long, short):
        session.refresh_from_db()
        assert session.status == SessionStatus.RUNNING
        assert list(session.chunks.values_list("seq", flat=True)) == list(
            range(session.completed_chunks)
        )
    assert 0 < long.completed_chunks < long.total_chunks
    monkeypatch.setattr(engine, "synthesize", real)
    type(long).objects.filter(pk__in=[long.pk, short.pk]).update(status=SessionStatus.QUEUED)
    services.session_run(session_id=long.id, worker="w2")
    for session in (long, short):
        session.refresh_from_db()
        assert session.status == SessionStatus.COMPLETED
        assert session.completed_chunks == session.total_chunks


def test_a_failed_look_at_the_queue_lets_the_sessions_under_way_finish(
    monkeypatch, settings, slow_engine, caplog
):
    from django.db import OperationalError

    settings.TTS_WORKER_SESSIONS = 2
    long, waiting = create(text=LONG), create(text="Waiting for a look that fails.")

    def broken(limit):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "_waiting", broken)
    services.session_run(session_id=long.id, worker="w1")
    assert "looking for waiting sessions failed" in caplog.text
    long.refresh_from_db()
    waiting.refresh_from_db()
    assert long.status == SessionStatus.COMPLETED
    assert waiting.status == SessionStatus.QUEUED  # taken by the next message, or the sweep


def test_the_engine_thread_makes_first_segments_before_the_others_queued():
    import threading

    engine = synthesis.EngineThread()
    gate, order = threading.Event(), []
    engine.submit(gate.wait)  # busy: everything below queues
    rest = [engine.submit(order.append, f"rest {n}") for n in range(3)]
    cancelled = engine.submit(order.append, "cancelled")
    assert cancelled.cancel()
    first = [engine.submit_first(order.append, f"first {n}") for n in range(2)]
    failing = engine.submit_first(lambda: 1 / 0)
    gate.set()
    for future in [*rest, *first]:
        future.result(timeout=5)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=5)
    assert order == ["first 0", "first 1", "rest 0", "rest 1", "rest 2"]
