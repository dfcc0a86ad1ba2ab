"""The player in a real browser (Debian's Chromium through Playwright) against a live stack:
daphne, a worker and Redis. Every AudioBufferSourceNode.start() is recorded, so the tests
check the schedule itself: every chunk once, each one starting where the previous ends."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scenes.models import Scene, Story
from tts import testing

CHROMIUM = testing.CHROMIUM
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

from playwright.sync_api import Browser, Page, Route, sync_playwright  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# The tests' pages play without a gesture too (a playlist's next scene, a click by script).
CHROMIUM_ARGS = [*testing.CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"]
# Short sentences in the espeak voice: a whole scene plays in a few seconds.
SCENE_TEXT = (
    "The tide came in. Gulls cried over the harbour. Mara lit the lamp. The ship saw the light."
)
LONGER_TEXT = (
    "The storm broke at dusk. Rain hammered the glass. The lamp would not light. "
    "Mara found the oil. The flame caught at last. The ship turned away from the rocks."
)
TOLERANCE = 1e-6
START_LEAD = 0.03  # scheduler.js: a run that need not wait starts this soon
START_CUSHION = 0.1  # and one that waits for the engine (or ran dry before) this much later
QUANTUM = 0.005  # the AudioContext's clock may move on between two reads in one task
# ... and by several render quanta on a loaded machine: a start's recorded lead (`when`
# less the clock as the recorder read it) is the scheduler's less however far the clock
# moved since the scheduler read it (8.7 ms once in CI). The exact rule is tested on a
# fake clock (test_a_run_starts_after_the_lead_or_after_its_hold_and_cushion).
CLOCK_SLACK = 0.02


def assert_lead(lead: float, expected: float) -> None:
    """A recorded lead is the scheduler's ``expected`` one, or less by the clock's slack."""
    assert expected - CLOCK_SLACK <= lead <= expected + QUANTUM, (lead, expected)


# Records every scheduled source: when it starts, how long its buffer is, from what offset.
RECORD_STARTS = """
window.__starts = [];
window.__pageErrors = [];
window.addEventListener('error', (event) => window.__pageErrors.push(String(event.message)));
const nativeStart = AudioBufferSourceNode.prototype.start;
AudioBufferSourceNode.prototype.start = function (when = 0, offset = 0, ...rest) {
  window.__starts.push({
    when, offset, duration: this.buffer ? this.buffer.duration : null,
    at: this.context.currentTime,
  });
  return nativeStart.call(this, when, offset, ...rest);
};
"""

# Every socket's URL and close code, in order (window.__sockets). cut_first_socket() also
# cuts the first one, as a dropped network would, right after a given binary frame.
RECORD_SOCKETS = """
window.__sockets = [];
const RecordedWebSocket = window.WebSocket;
window.WebSocket = class extends RecordedWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const record = { url, code: null };
    const index = window.__sockets.push(record) - 1;
    this.addEventListener('close', (event) => { record.code = event.code; });
    let audioFrames = 0;
    let partsLeft = 0;
    this.addEventListener('message', (event) => {
      const cut = window.__cutFirstSocket;
      if (!cut || index !== 0) return;
      if (typeof event.data === 'string') {
        const frame = JSON.parse(event.data);
        if (frame.type === 'chunk') partsLeft = frame.parts || 1;
        return;
      }
      audioFrames += 1;
      partsLeft -= 1;
      const seq = new DataView(event.data).getUint32(0, true);
      if (audioFrames === cut.frames || (partsLeft === 0 && seq === cut.chunk)) this.close();
    });
  }
};
"""


def cut_first_socket(*, frames: int | None = None, chunk: int | None = None) -> str:
    """Record the sockets, and cut the first one after its ``frames``-th binary frame, or
    after the last binary frame of chunk ``chunk``."""
    cut = json.dumps({"frames": frames, "chunk": chunk})
    return f"window.__cutFirstSocket = {cut};" + RECORD_SOCKETS


# No socket ever opens: a proxy that blocks WebSockets.
BLOCK_SOCKETS = """
window.__blocked = [];
window.WebSocket = class {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) {
    window.__blocked.push(url);
    this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      this.onerror?.(new Event('error'));
      this.onclose?.({ code: 1006, reason: '', wasClean: false });
    }, 20);
  }
  send() {}
  close() {}
};
"""


@pytest.fixture(scope="module")
def browser(live_stack) -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop running in this thread, which trips Django's
    # guard against ORM calls from async code on the tests' own (synchronous) queries. Set
    # only here, after live_stack started, so the server processes never inherit it.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def recording_page(browser: Browser, base_url: str) -> Iterator[Page]:
    """A page of its own that records the sources it schedules; an uncaught error on it
    fails the test."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.add_init_script(RECORD_STARTS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture
def page(browser: Browser, live_stack) -> Iterator[Page]:
    yield from recording_page(browser, live_stack.base_url)


def make_story(*texts: str, slug: str = "harbour", voice: str = "en-us") -> Story:
    story = Story.objects.create(
        title="The Harbour Light", slug=slug, description="A short story for the browser tests."
    )
    for position, text in enumerate(texts):
        Scene.objects.create(
            story=story, position=position, title=f"Scene {position + 1}", text=text, voice=voice
        )
    return story


def open_scene(page: Page, scene: Scene) -> None:
    page.goto(scene.get_absolute_url())
    page.wait_for_function("window.__narrator && window.__narrator.players.length === 1")


def snapshot(page: Page, index: int = 0) -> dict:
    return page.evaluate("(i) => window.__narrator.snapshot()[i]", index)


def wait_for_state(page: Page, state: str, index: int = 0, timeout: float = 30_000) -> dict:
    """Wait for player ``index`` to reach ``state``; fail at once if it reports an error."""
    try:
        page.wait_for_function(
            "([i, s]) => ['error', s].includes(window.__narrator.snapshot()[i].state)",
            arg=[index, state],
            timeout=timeout,
        )
    except PlaywrightTimeout:
        pytest.fail(f"player {index} never reached {state!r}: {snapshot(page, index)}")
    current = snapshot(page, index)
    if current["state"] != state:
        pytest.fail(f"player {index} failed instead of reaching {state!r}: {current}")
    return current


def session_chunks(page: Page, index: int = 0) -> list[dict]:
    """The chunk metadata the server stored for the player's session (same owner cookie)."""
    return page.evaluate(
        """async (i) => {
            const id = window.__narrator.snapshot()[i].sessionId;
            const reply = await fetch(`/api/tts/sessions/${id}/`);
            return (await reply.json()).chunks;
        }""",
        index,
    )


def sources_per_chunk(starts: list[dict], chunks: list[dict]) -> list[int]:
    """How many sources each chunk was scheduled in (one, or one per part of it: the socket
    sends a chunk's audio in parts), checking that they hold exactly its audio, in order."""
    counts, left = [], list(starts)
    for chunk in chunks:
        want, got, count = chunk["samples"] / chunk["sample_rate"], 0.0, 0
        while got < want - TOLERANCE:
            assert left, ("a chunk's audio is missing", starts, chunks)
            got, count = got + left.pop(0)["duration"], count + 1
        assert got == pytest.approx(want, abs=TOLERANCE), (starts, chunks)
        counts.append(count)
    assert not left, ("audio beyond the last chunk", starts, chunks)
    return counts


def last_sources(starts: list[dict], chunks: list[dict]) -> list[dict]:
    """The sources at the end of ``starts`` that hold ``chunks``' audio (a later session's,
    after an earlier one's)."""
    want, got = sum(c["samples"] / c["sample_rate"] for c in chunks), 0.0
    for count, start in enumerate(reversed(starts), 1):
        got += start["duration"]
        if got >= want - TOLERANCE:
            return starts[-count:]
    return starts


def assert_gapless(starts: list[dict], chunks: list[dict]) -> list[int]:
    """Every chunk scheduled once, in order (in one source or in its parts' sources), each
    source starting where the previous one ends; how many sources each chunk had."""
    counts = sources_per_chunk(starts, chunks)
    assert all(start["offset"] == 0 for start in starts), starts
    for before, after in zip(starts, starts[1:], strict=False):
        assert after["when"] == pytest.approx(before["when"] + before["duration"], abs=TOLERANCE)
    return counts


def assert_held_then_gapless(state: dict, starts: list[dict], chunks: list[dict]) -> None:
    """A slow engine's narration: the player waited for the engine first, then played
    every chunk back to back with no underrun, where a player that had started the first
    chunk 0.1 s after it came would have found a later one missing (each source is
    scheduled when its chunk arrives)."""
    assert_gapless(starts, chunks)
    assert state["underruns"] == 0
    assert starts[0]["when"] - starts[0]["at"] > 0.5  # it waited for the engine
    due = starts[0]["at"] + 0.1
    missed = []
    for start in starts:
        missed.append(start["at"] > due)
        due += start["duration"]
    assert any(missed), starts


def test_it_plays_a_scene_gaplessly_while_progress_and_highlight_follow(page: Page):
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    page.get_by_role("button", name="Play: Scene 1").click()
    state = wait_for_state(page, "ended")

    chunks = session_chunks(page)
    assert len(chunks) >= 4  # one per sentence
    sources = assert_gapless(page.evaluate("window.__starts"), chunks)
    assert max(sources) >= 2  # a sentence's audio came, and played, in parts
    round_trip = page.evaluate("window.__narrator.players[0].stream.roundTrip")
    assert 0 < round_trip < 0.5  # loopback's, from the socket's handshake or the POST
    assert state["highlights"] == list(range(len(chunks)))
    assert state["underruns"] == 0
    assert state["played"] == 1 and state["generated"] == 1
    slider = page.get_by_role("slider")
    assert slider.get_attribute("aria-valuenow") == "100"
    played_bar = page.locator("[data-tts-role=played]")
    assert played_bar.evaluate("el => el.style.transform") == "scaleX(1)"
    assert page.get_by_role("status").inner_text() == "Finished. The audio is ready to download."
    download = page.get_by_role("link", name="Download audio")
    assert download.get_attribute("href") == f"/api/tts/sessions/{state['sessionId']}/audio.wav"
    assert page.get_by_role("button", name="Play again: Scene 1").is_visible()


def session_posts(page: Page) -> list[str]:
    """The URLs of the page's session POSTs, as they are made."""
    posts: list[str] = []
    page.on(
        "request",
        lambda r: posts.append(r.url) if r.method == "POST" and "/sessions/" in r.url else None,
    )
    return posts


def assert_held_then_played(page: Page, posts: list[str], release) -> None:
    """While Play is held the first chunks arrive and nothing plays; ``release`` clicks,
    and the click plays that one session to its end, gaplessly, the first chunk (in hand,
    from a voice that keeps ahead) at once: START_LEAD after the click, not a cushion."""
    page.wait_for_function("window.__narrator.snapshot()[0].received >= 1")
    assert snapshot(page)["state"] == "idle"
    assert page.evaluate("window.__starts") == []
    release()
    state = wait_for_state(page, "ended")

    assert len(posts) == 1, posts
    chunks = session_chunks(page)
    assert state["received"] == len(chunks) >= 4
    starts = page.evaluate("window.__starts")
    assert_gapless(starts, chunks)
    assert_lead(starts[0]["when"] - starts[0]["at"], START_LEAD)


def press(page: Page, button) -> None:
    """The mouse down on ``button``'s middle, not yet released."""
    box = button.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()


def test_a_press_on_play_begins_the_narration_and_its_click_plays_it(page: Page):
    """A mouse press on Play creates the session at once: while the button is held the
    first chunks arrive, and nothing plays; the click, on release, plays them. One
    session, gapless."""
    posts = session_posts(page)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    press(page, page.get_by_role("button", name="Play: Scene 1"))
    assert_held_then_played(page, posts, release=page.mouse.up)


# A module of tts/static/tts/ by the URL the page loaded player.js from (hashed or not).
SIBLING_OF_PLAYER = """
window.siblingOfPlayer = (name) => {
  const player = document.querySelector('script[src*="tts/player"]').src;
  return player.replace(/player(\\.[0-9a-f]+)?\\.js$/, name);
};
"""

RECORD_POST_AND_CONTEXT = """
window.__order = [];
const orderedFetch = window.fetch;
window.fetch = function (url, options = {}) {
  if ((options.method || 'GET') === 'POST') window.__order.push('post');
  return orderedFetch.apply(this, arguments);
};
const OrderedAudioContext = window.AudioContext;
window.AudioContext = class extends OrderedAudioContext {
  constructor(options) {
    window.__order.push('context');
    super(options);
  }
};
"""


def test_a_press_sends_its_post_before_the_audio_context_is_made(page: Page):
    """Making the page's AudioContext takes milliseconds: the press sends the session's
    POST first, and makes the context after it, inside the same gesture."""
    page.add_init_script(RECORD_POST_AND_CONTEXT)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    press(page, page.get_by_role("button", name="Play: Scene 1"))
    page.mouse.up()
    wait_for_state(page, "ended")
    assert page.evaluate("window.__order") == ["post", "context"]


def test_session_posts_go_out_at_once_one_at_a_time(page: Page):
    """createSession sends its POST inside the caller's handler when none is in flight (not
    a microtask later), and a second one waits until the first has settled: a first
    visitor's two POSTs in flight together would make two anonymous owners."""
    page.add_init_script(SIBLING_OF_PLAYER)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    result = page.evaluate(
        """async () => {
            const api = await import(siblingOfPlayer('api.js'));
            const log = [];
            const native = window.fetch;
            window.fetch = (url, options) => {
              log.push('post');
              return native(url, options).then((reply) => { log.push('reply'); return reply; });
            };
            try {
              const first = api.createSession('/api/tts/sessions/', { text: 'One.' }, '');
              log.push('first returned');
              const second = api.createSession('/api/tts/sessions/', { text: 'Two.' }, '');
              log.push('second returned');
              const ids = [(await first).id, (await second).id];
              return { log, ids };
            } finally {
              window.fetch = native;
            }
        }"""
    )
    assert result["log"] == ["post", "first returned", "second returned", "reply", "post", "reply"]
    assert len(set(result["ids"])) == 2


# scheduler.js driven on a clock of the test's own: each case adds chunks (seq, duration
# s, cushion_ms or null, and false for a chunk's first part only) and further parts (seq,
# duration s, true for the last) at given context times, plays at a given time, and returns
# the `when` of every source started. 'gap': the round trip a next part may take (s);
# 'play' may say where (s into the narration); 'pause'.
SCHEDULE_ON_A_FAKE_CLOCK = """async ({ cases, baseLatency }) => {
  const { Scheduler } = await import(siblingOfPlayer('scheduler.js'));
  const out = [];
  for (const steps of cases) {
    const starts = [];
    const node = () => ({ connect() {}, disconnect() {}, gain: { setTargetAtTime() {} } });
    const ctx = {
      currentTime: 0,
      baseLatency,
      createGain: node,
      createBufferSource: () => ({ ...node(), start: (when) => starts.push(when), stop() {} }),
    };
    const scheduler = new Scheduler(ctx);
    for (const [at, what, ...args] of steps) {
      ctx.currentTime = at;
      if (what === 'add') scheduler.add(args[0], { duration: args[1] }, args[2], args[3]);
      else if (what === 'part') scheduler.extend(args[0], { duration: args[1] }, args[2]);
      else if (what === 'gap') scheduler.partGap = () => args[0];
      else if (what === 'pause') scheduler.pause();
      else scheduler.play(...args);
    }
    out.push(starts);
  }
  return out;
}"""


def test_a_run_starts_after_the_lead_or_after_its_hold_and_cushion(page: Page):
    """placeRun on a fake clock: a chunk in hand with nothing to wait for starts START_LEAD
    after play; one held by cushion_ms starts START_CUSHION after its hold ends, and never
    sooner than the lead, so the start moves smoothly as a hold runs out; a run after one
    that ran dry waits its doubled cushion; the lead is at least two audio buffers."""
    page.add_init_script(SIBLING_OF_PLAYER)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    cases = [
        [[10, "add", 0, 2.0, 0], [10, "play"]],  # in hand, engine ahead
        [[10, "add", 0, 2.0, None], [10, "play"]],  # no cushion (an ended session's chunk)
        [[10, "add", 0, 2.0, 500], [10, "play"]],  # held 0.5 s
        [[10, "add", 0, 2.0, 50], [10.04, "play"]],  # its hold ended 10 ms before play
        [[10, "add", 0, 2.0, 50], [11, "play"]],  # its hold long over
        [[10, "play"], [10.5, "add", 0, 2.0, 0]],  # played before it came
        [[10, "add", 0, 1.0, 0], [10, "play"], [12, "add", 1, 1.0, 0]],  # ran dry at 11.03
        # A chunk in parts: each part right after the one before, as it comes ...
        [[10, "add", 0, 0.2, 0, False], [10, "play"], [10.1, "part", 0, 0.5, True]],
        # ... and the next chunk after its last part, not before it (refused while in part).
        [
            [10, "add", 0, 0.2, 0, False],
            [10, "play"],
            [10.05, "add", 1, 1.0, 0],
            [10.1, "part", 0, 0.3, False],
            [10.2, "part", 0, 0.3, True],
            [10.3, "add", 1, 1.0, 0],
        ],
        # A part that comes after the one before has been heard: the run ran dry.
        [[10, "add", 0, 0.2, 0, False], [10, "play"], [10.5, "part", 0, 0.5, True]],
        # A round trip longer than the first part's audio: the run waits for the next part
        # to be due before that audio ends (and a cushion), then plays on without a gap ...
        [
            [10, "gap", 0.3],
            [10, "add", 0, 0.2, 0, False],
            [10, "play"],
            [10.3, "part", 0, 0.5, True],
        ],
        # ... and one well within it changes nothing.
        [[10, "gap", 0.08], [10, "add", 0, 0.2, 0, False], [10, "play"]],
        # Paused where a chunk's audio ran out while more of it was coming: resumed, the run
        # plays the rest of that chunk when it comes (not the next chunk, not the end).
        [
            [10, "add", 0, 0.2, 0, False],
            [10, "play"],
            [10.5, "pause"],
            [10.6, "play"],
            [10.7, "part", 0, 0.5, True],
        ],
        # Resumed inside a chunk still coming: from there in the part that holds it.
        [
            [10, "add", 0, 0.2, 0, False],
            [10, "part", 0, 0.3, False],
            [10, "play", 0.3],
            [10, "part", 0, 0.4, True],
        ],
    ]
    starts = page.evaluate(SCHEDULE_ON_A_FAKE_CLOCK, {"cases": cases, "baseLatency": 0.01})
    expected = [
        [10 + START_LEAD],
        [10 + START_LEAD],
        [10.5 + START_CUSHION],
        [10.05 + START_CUSHION],
        [11 + START_LEAD],
        [10.5 + START_LEAD],
        [10 + START_LEAD, 12 + 2 * START_CUSHION],
        [10 + START_LEAD, 10.23],
        [10 + START_LEAD, 10.23, 10.53, 10.83],
        [10 + START_LEAD, 10.5 + 2 * START_CUSHION],
        [10 + 0.3 - 0.2 + START_CUSHION, 10.4],
        [10 + START_LEAD],
        [10 + START_LEAD, 10.7 + START_LEAD],
        [10 + START_LEAD, 10.23],
    ]
    assert len(starts) == len(expected)
    for got, want in zip(starts, expected, strict=True):
        assert got == pytest.approx(want, abs=TOLERANCE), (cases, starts)
    # Audio buffers of 50 ms: the lead is two of them.
    slow = page.evaluate(SCHEDULE_ON_A_FAKE_CLOCK, {"cases": cases[:1], "baseLatency": 0.05})
    assert slow == [[pytest.approx(10.1, abs=TOLERANCE)]]


# stream.js's delivery, driven frame by frame: chunk 0 in three parts on one socket, cut
# after its first part; the next socket sends it again in two parts, the first of them
# straddling what the page has. Chunk 1's first part on that socket, then the HTTP
# fallback brings chunk 1 whole, and chunk 3 before chunk 2. What the page is handed.
DELIVER_IN_PARTS = """async () => {
  const { ChunkStream } = await import(siblingOfPlayer('stream.js'));
  const handed = [];
  const handlers = {
    chunk: (meta, bytes, rate, part) => handed.push([meta.seq, Array.from(bytes), part]),
  };
  const stream = new ChunkStream({ id: 'x', ws_url: '/ws/x/' }, handlers);
  const binary = (seq, bytes) => {
    const data = new Uint8Array(4 + bytes.length);
    new DataView(data.buffer).setUint32(0, seq, true);
    data.set(bytes, 4);
    return data.buffer;
  };
  const frame = (seq, samples, parts) =>
    JSON.stringify({ type: 'chunk', seq, samples, sample_rate: 8000, parts });
  const pcm = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  stream.receive(frame(0, 5, 3)); // the first socket
  stream.receive(binary(0, pcm.slice(0, 2)));
  const afterCut = stream.lastSeq;
  stream.receive(frame(0, 5, 2)); // the next one, after=-1
  stream.receive(binary(0, pcm.slice(0, 4)));
  stream.receive(binary(0, pcm.slice(4)));
  stream.receive(frame(1, 2, 2));
  stream.receive(binary(1, [20, 21]));
  const whole = (seq, bytes) => stream.accept({ seq, samples: 1 }, new Uint8Array(bytes), 8000);
  whole(1, [20, 21, 22, 23]); // the HTTP fallback, from after=0
  whole(3, [40, 41]); // fetched ahead
  whole(2, [30, 31]);
  whole(2, [30, 31]); // again
  return { handed, afterCut, lastSeq: stream.lastSeq, stats: stream.stats };
}"""


def test_a_requests_round_trip_comes_from_resource_timing_and_the_quickest_is_kept(page: Page):
    """The POST's round trip (Resource Timing: its request to its reply's first byte, no
    connection set-up) beside the socket's handshake: the stream keeps the quickest."""
    page.add_init_script(SIBLING_OF_PLAYER)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    result = page.evaluate(
        """async () => {
            const { requestRoundTrip } = await import(siblingOfPlayer('api.js'));
            const { ChunkStream } = await import(siblingOfPlayer('stream.js'));
            const perf = (...entries) => ({ getEntriesByName: () => entries });
            const timed = requestRoundTrip('/api/tts/sessions/', perf(
              { requestStart: 5, responseStart: 400 },
              { requestStart: 1000, responseStart: 1120 },
            ));
            const unknown = [
              requestRoundTrip('/x/', perf()),
              requestRoundTrip('/x/', perf({ requestStart: 0, responseStart: 0 })),
              requestRoundTrip('/x/', {}),
            ];
            const stream = new ChunkStream({ id: 'x', ws_url: '/ws/x/' }, {});
            const kept = [0.3, null, 0.12, 0, 0.2].map((s) => {
              stream.noteRoundTrip(s);
              return stream.roundTrip;
            });
            return { timed, unknown, kept };
        }"""
    )
    assert result["timed"] == pytest.approx(0.12)  # the latest request's
    assert result["unknown"] == [None, None, None]
    assert result["kept"] == [0.3, 0.3, 0.12, 0.12, 0.12]


def test_a_chunk_in_parts_is_handed_on_byte_by_byte_once_across_a_resume(page: Page):
    page.add_init_script(SIBLING_OF_PLAYER)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    result = page.evaluate(DELIVER_IN_PARTS)
    middle, first, last = (
        {"first": False, "last": False},
        {"first": True, "last": False},
        {"first": False, "last": True},
    )
    whole = {"first": True, "last": True}
    assert result["handed"] == [
        [0, [1, 2], first],
        [0, [3, 4], middle],  # of the resent [1, 2, 3, 4]: what the page lacked
        [0, [5, 6, 7, 8, 9, 10], last],
        [1, [20, 21], first],
        [1, [22, 23], last],  # of the fallback's whole chunk
        [2, [30, 31], whole],
        [3, [40, 41], whole],
    ]
    assert result["afterCut"] == -1  # a chunk in part does not count: resume before it
    assert result["lastSeq"] == 3 and result["stats"]["duplicates"] == 1


def test_space_on_play_begins_the_narration_as_it_goes_down(page: Page):
    """Space clicks a button as it comes up: the session is created as it goes down, as
    for a mouse press, and the click plays it."""
    posts = session_posts(page)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    page.get_by_role("button", name="Play: Scene 1").focus()
    page.keyboard.down("Space")
    assert_held_then_played(page, posts, release=lambda: page.keyboard.up("Space"))


def play_with_a_cut(page: Page, **cut) -> tuple[dict, list[str], list[dict]]:
    """Play a scene to its end with its first socket cut as cut_first_socket(**cut) says:
    the player's last state, its sockets' URLs and the session's stored chunks."""
    page.add_init_script(cut_first_socket(**cut))
    scene = make_story(LONGER_TEXT).scenes.get()
    open_scene(page, scene)
    page.get_by_role("button", name="Play: Scene 1").click()
    state = wait_for_state(page, "ended")
    sockets = [s["url"] for s in page.evaluate("window.__sockets")]
    return state, sockets, session_chunks(page)


def test_a_socket_cut_mid_stream_resumes_with_no_gap_and_no_duplicate(page: Page):
    state, sockets, chunks = play_with_a_cut(page, chunk=1)
    assert len(sockets) >= 2
    assert sockets[0].endswith("?after=-1&pending=1&parts=1")  # opened ahead (P86)
    assert sockets[1].endswith("?after=1&parts=1")  # resumed after the last chunk it had
    assert_gapless(page.evaluate("window.__starts"), chunks)
    assert state["highlights"] == list(range(len(chunks)))
    assert state["underruns"] == 0
    assert state["stream"]["reconnects"] >= 1


def test_a_socket_cut_inside_a_chunk_resumes_with_the_rest_of_it_once(page: Page):
    """Cut after the first chunk's first part: the next socket asks again from before that
    chunk, and the player takes only the bytes it lacks, so every sample is scheduled once,
    in order (the run may have run dry while the socket came back)."""
    state, sockets, chunks = play_with_a_cut(page, frames=1)
    assert sockets[0].endswith("?after=-1&pending=1&parts=1")
    assert sockets[1].endswith("?after=-1&parts=1")  # the first chunk was not whole yet
    sources = sources_per_chunk(page.evaluate("window.__starts"), chunks)
    assert sources[0] >= 2  # its first part from the first socket, the rest from the next
    assert state["stream"]["duplicates"] == 0 and state["highlights"] == list(range(len(chunks)))


def test_with_sockets_blocked_the_http_fallback_plays_everything(page: Page):
    page.add_init_script(BLOCK_SOCKETS)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    page.get_by_role("button", name="Play: Scene 1").click()
    state = wait_for_state(page, "ended")

    assert len(page.evaluate("window.__blocked")) == 3  # three failures, then HTTP
    assert state["transport"] == "http"
    chunks = session_chunks(page)
    assert_gapless(page.evaluate("window.__starts"), chunks)
    assert state["highlights"] == list(range(len(chunks)))
    assert state["completed"] and state["audioUrl"]


def test_pause_freezes_the_position_and_a_clicked_sentence_plays_from_its_start(page: Page):
    scene = make_story(LONGER_TEXT).scenes.get()
    open_scene(page, scene)
    page.get_by_role("button", name="Play: Scene 1").click()
    page.wait_for_function("() => window.__narrator.snapshot()[0].position > 0.6")
    page.get_by_role("button", name="Pause: Scene 1").click()
    paused = wait_for_state(page, "paused")
    page.wait_for_timeout(600)
    still = snapshot(page)
    assert still["position"] == paused["position"]
    assert still["currentSeq"] == paused["currentSeq"] == 0
    assert page.get_by_role("status").inner_text() == "Paused."

    # Resume: the first chunk picks up at the paused offset, into the part that holds it
    # (the first run's sources: the first chunk's parts, then the next chunks').
    played = page.evaluate("window.__starts")
    page.get_by_role("button", name="Resume: Scene 1").click()
    resumed = page.evaluate("window.__starts")[len(played)]
    part_at = 0.0
    for source in played:
        if part_at + source["duration"] > paused["position"]:
            break
        part_at += source["duration"]
    assert resumed["offset"] == pytest.approx(paused["position"] - part_at, abs=1e-3)

    page.wait_for_function(
        "() => { const s = window.__narrator.snapshot()[0];"
        " return s.total !== null && s.received === s.total; }"
    )
    chunks = session_chunks(page)
    target = 3
    before = len(page.evaluate("window.__starts"))
    page.locator(f".tts-chunk[data-seq='{target}']").click()
    starts = page.evaluate("window.__starts")[before:]
    assert starts, "seeking scheduled nothing"
    assert_gapless(starts, chunks[target:])
    page.wait_for_function("() => window.__narrator.snapshot()[0].currentSeq === 3")
    at = snapshot(page)
    chunk_start = sum(c["samples"] / c["sample_rate"] for c in chunks[:target])
    assert at["position"] >= chunk_start - TOLERANCE
    assert page.locator(".tts-chunk.is-speaking").get_attribute("data-seq") == "3"
    assert wait_for_state(page, "ended")["highlights"][-1] == len(chunks) - 1


def test_the_narrate_page_plays_typed_text(page: Page):
    page.goto("/narrate/")
    page.wait_for_function("window.__narrator && window.__narrator.players.length === 1")
    page.get_by_label("Text to narrate").fill("Hello there. This is typed text.")
    page.get_by_role("button", name="Play: Your text").click()
    state = wait_for_state(page, "ended")
    assert state["received"] == state["total"] >= 2
    assert page.locator(".tts-chunk").first.inner_text().startswith("Hello there.")
    assert page.get_by_role("button", name="Edit text").is_visible()


def test_a_new_visitors_first_play_opens_its_socket_ahead_of_the_post(page: Page):
    """P86: the page gave this new browser its session cookie, so its very first Play
    opens the session's socket before the POST's reply (?pending=1, the page chose the id)
    and is let in at once, as every later Play."""
    page.add_init_script(RECORD_SOCKETS)
    page.goto("/narrate/")
    assert "sessionid" in {cookie["name"] for cookie in page.context.cookies()}
    page.wait_for_function("window.__narrator && window.__narrator.players.length === 1")
    page.get_by_label("Text to narrate").fill("Hello there. This is typed text.")
    page.get_by_role("button", name="Play: Your text").click()
    first = wait_for_state(page, "ended")

    sockets = page.evaluate("window.__sockets")
    assert [s["url"].split("/ws/tts/")[1] for s in sockets] == [
        f"{first['sessionId']}/?after=-1&pending=1&parts=1"
    ]
    assert [s["code"] for s in sockets] == [1000]
    assert first["stream"]["sockets"] == 1 and first["stream"]["reconnects"] == 0
    assert first["received"] == first["total"] >= 2
    chunks = session_chunks(page)
    assert_gapless(last_sources(page.evaluate("window.__starts"), chunks), chunks)


def forget_session(page: Page) -> None:
    """The open page as a browser with no session cookie has it from a site with
    TTS_SESSION_ON_PAGE off: no cookie, and its players not told that their sockets
    would be let in (no data-tts-early). (A page served through page.route would do, but
    Chromium then opens none of its sockets.)"""
    page.context.clear_cookies(name="sessionid")
    page.evaluate("for (const player of window.__narrator.players) player.earlySockets = false")


def test_with_no_session_cookie_the_first_socket_opens_after_the_reply(page: Page):
    """With no session cookie (TTS_SESSION_ON_PAGE off) the first Play opens the socket
    after the POST's reply, which sets the cookie; from then on each session's socket
    opens with its POST, or before it as the pointer comes onto Play (?pending=1, the
    page chose the id), and is let in at once."""
    page.add_init_script(RECORD_SOCKETS)
    page.goto("/narrate/")
    page.wait_for_function("window.__narrator && window.__narrator.players.length === 1")
    forget_session(page)
    page.get_by_label("Text to narrate").fill("Hello there. This is typed text.")
    page.get_by_role("button", name="Play: Your text").click()
    first = wait_for_state(page, "ended")
    page.get_by_role("button", name="Edit text").click()
    page.get_by_label("Text to narrate").fill("A second text. It opens its socket early.")
    play = page.get_by_role("button", name=re.compile(r"^Play( again)?: Your text$"))
    play.hover()  # a text not narrated yet in the editor: the socket opens ahead
    page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
    warm = snapshot(page)["warm"]["sessionId"]
    play.click()
    second = wait_for_state(page, "ended")
    assert second["sessionId"] == warm

    sockets = page.evaluate("window.__sockets")
    assert [s["url"].split("/ws/tts/")[1] for s in sockets] == [
        f"{first['sessionId']}/?after=-1&parts=1",
        f"{second['sessionId']}/?after=-1&pending=1&parts=1",
    ]
    assert [s["code"] for s in sockets] == [1000, 1000]
    assert second["stream"]["sockets"] == 1 and second["stream"]["reconnects"] == 0
    assert second["received"] == second["total"] >= 2
    chunks = session_chunks(page)
    assert_gapless(last_sources(page.evaluate("window.__starts"), chunks), chunks)


def test_a_text_narrated_before_plays_from_the_replay_the_post_made(page: Page):
    """Back to a text this site narrated before: its POST creates the session completed
    (no worker), and the socket opened with it plays every chunk, gaplessly."""
    page.add_init_script(RECORD_SOCKETS)
    page.goto("/narrate/")
    page.wait_for_function("window.__narrator && window.__narrator.players.length === 1")
    texts = ["Hello there. This is typed text.", "A second text. It opens its socket early."]
    states = []
    for text in [*texts, texts[0]]:
        if states:
            page.get_by_role("button", name="Edit text").click()
        page.get_by_label("Text to narrate").fill(text)
        page.get_by_role("button", name=re.compile(r"^Play( again)?: Your text$")).click()
        states.append(wait_for_state(page, "ended"))

    first, replayed = states[0], states[2]
    assert replayed["sessionId"] != first["sessionId"]
    detail = page.evaluate(
        "async (id) => (await fetch(`/api/tts/sessions/${id}/`)).json()", replayed["sessionId"]
    )
    assert detail["status"] == "completed" and detail["engine"] == "espeak"
    assert detail["first_chunk_ms"] == 0 and detail["started_at"] == detail["finished_at"]
    assert page.evaluate("window.__sockets")[-1]["url"].endswith("&pending=1&parts=1")
    assert replayed["received"] == replayed["total"] == first["total"] >= 2
    chunks = session_chunks(page)
    assert_gapless(last_sources(page.evaluate("window.__starts"), chunks), chunks)


def test_the_pointer_on_play_opens_the_sessions_socket_and_the_press_only_posts(page: Page):
    """With the session cookie, the pointer's arrival on Play opens the next session's
    socket (?pending=1, an id the page chose) before any press; it waits there, and the
    press's POST names that id: the session plays over that one socket, gaplessly. Before
    the cookie (a site with TTS_SESSION_ON_PAGE off), the pointer on Play opens nothing."""
    page.add_init_script(RECORD_SOCKETS)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    forget_session(page)
    button = page.get_by_role("button", name="Play: Scene 1")
    button.hover()
    page.wait_for_timeout(100)
    assert page.evaluate("window.__sockets") == [] and snapshot(page)["warm"] is None
    button.click()  # the first session gives the browser its cookie
    wait_for_state(page, "ended")

    open_scene(page, scene)  # a new page, rendered with the cookie
    posts: list[dict] = []
    page.on(
        "request",
        lambda r: (
            posts.append(r.post_data_json) if r.method == "POST" and "/sessions/" in r.url else None
        ),
    )
    button = page.get_by_role("button", name="Play: Scene 1")
    button.hover()
    page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
    warm = snapshot(page)["warm"]["sessionId"]
    page.wait_for_timeout(300)  # open and waiting, as a hover before a click
    assert snapshot(page)["warm"] == {"sessionId": warm, "waiting": True}
    assert posts == [] and snapshot(page)["state"] == "idle"
    page.mouse.move(5, 5)  # off and back on, past WARM_EVERY_MS: the same socket waits
    page.wait_for_timeout(2200)
    button.hover()
    assert snapshot(page)["warm"] == {"sessionId": warm, "waiting": True}
    button.click()
    state = wait_for_state(page, "ended")

    assert state["sessionId"] == warm and [post["id"] for post in posts] == [warm]
    sockets = page.evaluate("window.__sockets")
    assert [s["url"].split("/ws/tts/")[1] for s in sockets] == [
        f"{warm}/?after=-1&pending=1&parts=1"
    ]
    assert [s["code"] for s in sockets] == [1000]
    assert state["stream"]["sockets"] == 1 and state["warm"] is None
    assert state["received"] == state["total"] >= 2
    assert_gapless(page.evaluate("window.__starts"), session_chunks(page))


def test_the_pointer_on_play_after_a_quiet_while_also_readies_the_posts_connection(
    page: Page,
):
    """P88: when no HTTP reply came for CONNECTION_IDLE_MS (3 s), the page's kept-alive
    connection may have been closed as idle: the pointer's arrival on Play sends a small
    GET (the voice list, ?warm=1) beside the socket it opens, so that the press's POST
    finds a connection open. Not again while that GET's reply is recent."""
    page.add_init_script(RECORD_SOCKETS)
    warm: list[str] = []
    page.on("request", lambda r: warm.append(r.url) if "warm=1" in r.url else None)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    page.wait_for_load_state("networkidle")  # the voice list came: a reply just now
    button = page.get_by_role("button", name="Play: Scene 1")
    button.hover()
    page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
    assert warm == []  # a reply came a moment ago
    page.mouse.move(5, 5)
    page.evaluate("window.__narrator.players[0].dropWarm()")
    page.wait_for_timeout(3300)  # quiet for longer than CONNECTION_IDLE_MS
    button.hover()
    page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
    page.wait_for_timeout(300)
    assert len(warm) == 1 and warm[0].endswith("/api/tts/voices/?warm=1")
    page.mouse.move(5, 5)
    page.evaluate("window.__narrator.players[0].dropWarm()")
    page.wait_for_timeout(2200)  # past WARM_EVERY_MS, within CONNECTION_IDLE_MS of its reply
    button.hover()
    page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
    button.click()
    state = wait_for_state(page, "ended")
    assert len(warm) == 1 and state["stream"]["sockets"] == 1


def test_a_socket_opened_ahead_and_refused_opens_no_more_until_a_reply(page: Page):
    """The page believed the browser had a session cookie, and the pointer's arrival on
    Play opened a socket ahead: refused (4403), it is dropped unseen, and the pointer's
    moves open no other until a POST's reply has set the cookie. The press then opens
    the session's socket after the reply."""
    page.add_init_script(RECORD_SOCKETS)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    forget_session(page)  # the cookie the page knew of expired
    page.evaluate("window.__narrator.players[0].earlySockets = true")
    button = page.get_by_role("button", name="Play: Scene 1")
    box = button.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_function("window.__sockets.length === 1 && window.__sockets[0].code !== null")
    for step in range(6):  # moving on Play for longer than WARM_EVERY_MS
        page.wait_for_timeout(500)
        page.mouse.move(x + step % 2, y)
    assert len(page.evaluate("window.__sockets")) == 1
    assert snapshot(page)["warm"] is None and snapshot(page)["state"] == "idle"
    page.mouse.down()
    page.mouse.up()
    state = wait_for_state(page, "ended")

    sockets = page.evaluate("window.__sockets")
    assert [s["code"] for s in sockets] == [4403, 1000]
    assert sockets[0]["url"].endswith("/?after=-1&pending=1&parts=1")
    assert sockets[1]["url"].endswith(f"{state['sessionId']}/?after=-1&parts=1")


def test_a_page_keeps_one_socket_opened_ahead_for_the_player_last_pointed_at(page: Page):
    """On a story page, the pointer going from one scene's Play to the next's moves the
    socket opened ahead: the first player's is closed as the second's opens."""
    page.add_init_script(RECORD_SOCKETS)
    story = make_story("The first scene. It is short.", "The second scene. Also short.")
    page.goto(story.get_absolute_url())
    page.wait_for_function("window.__narrator && window.__narrator.players.length === 2")
    page.get_by_role("button", name="Play: Scene 1").click()  # the cookie
    wait_for_state(page, "ended")
    page.goto(story.get_absolute_url())
    page.wait_for_function("window.__narrator && window.__narrator.players.length === 2")

    page.get_by_role("button", name="Play: Scene 1").hover()
    page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
    first = snapshot(page, 0)["warm"]["sessionId"]
    page.get_by_role("button", name="Play: Scene 2").hover()
    page.wait_for_function("window.__narrator.snapshot()[1].warm?.waiting")
    page.wait_for_function("window.__sockets[0].code !== null")
    assert snapshot(page, 0)["warm"] is None
    second = snapshot(page, 1)["warm"]["sessionId"]
    sockets = page.evaluate("window.__sockets")
    assert [s["url"].split("/ws/tts/")[1].split("/")[0] for s in sockets] == [first, second]
    assert sockets[1]["code"] is None
    page.get_by_role("button", name="Play: Scene 2").click()
    state = wait_for_state(page, "ended", index=1)
    assert state["sessionId"] == second and state["stream"]["sockets"] == 1


def test_an_early_socket_refused_before_the_reply_opens_again_after_it(page: Page):
    """The page believed the browser had a session (it expired, or the user signed out in
    another tab): its early socket is refused with 4403, and the stream opens again once
    the POST's reply has set the new session cookie."""
    page.add_init_script(RECORD_SOCKETS)
    scene = make_story(SCENE_TEXT).scenes.get()
    open_scene(page, scene)
    forget_session(page)  # the cookie the page knew of expired
    button = page.get_by_role("button", name="Play: Scene 1")
    button.hover()  # the pointer comes while the page knows of no cookie: no socket yet
    page.evaluate("window.__narrator.players[0].earlySockets = true")

    def slow_post(route: Route) -> None:
        # On a fast host the POST's reply could set the cookie before the browser sent
        # the early socket's handshake, which then carried it and was not refused.
        if route.request.method == "POST":
            time.sleep(0.3)
        route.continue_()

    page.route("**/api/tts/sessions/", slow_post)
    page.mouse.down()  # where the pointer is: the socket opens with the POST
    page.mouse.up()
    state = wait_for_state(page, "ended")

    sockets = page.evaluate("window.__sockets")
    assert [s["code"] for s in sockets] == [4403, 1000]
    assert sockets[0]["url"].endswith(f"{state['sessionId']}/?after=-1&pending=1&parts=1")
    assert sockets[1]["url"].endswith(f"{state['sessionId']}/?after=-1&parts=1")
    assert_gapless(page.evaluate("window.__starts"), session_chunks(page))


def test_play_all_plays_the_scenes_in_order_and_prepares_the_next(page: Page):
    # What the next scene looked like when the first one ended, before Play all moved on.
    page.add_init_script(
        "window.addEventListener('tts:ended', (event) => {"
        "  if (event.detail.player === window.__narrator.players[0])"
        "    window.__nextWhenFirstEnded = window.__narrator.snapshot()[1];"
        "}, true);"
    )
    story = make_story("The first scene is short. It has two sentences.", "The second follows.")
    page.goto(story.get_absolute_url())
    page.wait_for_function("window.__narrator && window.__narrator.players.length === 2")
    page.get_by_role("button", name="Play all").click()
    first = wait_for_state(page, "playing", index=0)
    assert page.get_by_role("status").first.inner_text().startswith("Scene 1 of 2")
    second = wait_for_state(page, "ended", index=1)

    prepared = page.evaluate("window.__nextWhenFirstEnded")
    assert prepared["sessionId"] == second["sessionId"]  # created while the first played
    assert prepared["received"] > 0 and prepared["state"] == "idle"
    assert second["sessionId"] != first["sessionId"]
    chunks = session_chunks(page, 0) + session_chunks(page, 1)
    assert len(chunks) == first["total"] + second["total"]
    sources_per_chunk(page.evaluate("window.__starts"), chunks)  # each scene once, in order
    assert snapshot(page, 0)["state"] == "ended"
    assert page.get_by_role("status").first.inner_text() == "Finished the story."


@pytest.fixture(scope="module")
def slow_stack(django_db_blocker) -> Iterator:
    """daphne + a worker whose engine takes 2 s per segment: slower than the espeak
    sentences it makes last (a full-size voice on a busy CPU). Its sockets wait
    PENDING_SOCKET_S for a session that does not exist yet."""
    from scripts.stack import Stack
    from tests.conftest import private_stack_env

    env = private_stack_env(
        TTS_FAULT_DELAY_MS=str(SLOW_SEGMENT_MS), TTS_PENDING_SOCKET_S=str(PENDING_SOCKET_S)
    )
    with django_db_blocker.unblock():
        stack = Stack(env=env, workers=1, log_dir=ARTIFACTS / "logs-slow").start()
    yield stack
    stack.stop()


SLOW_SEGMENT_MS = 2000
# A socket opened before its session waits this long for it: a player takes one for a
# press up to 1.5 s before that (2.5 s here), and opens another at most every 2 s.
PENDING_SOCKET_S = 4


@pytest.fixture
def slow_page(browser: Browser, slow_stack) -> Iterator[Page]:
    yield from recording_page(browser, slow_stack.base_url)


def test_a_slow_engine_waits_first_then_plays_through_without_a_gap(slow_page: Page):
    """Each live chunk's cushion_ms: the player holds the first chunk until the engine is
    far enough ahead, says so, and then plays every chunk back to back, where a player
    starting at once would have run dry after the first."""
    page = slow_page
    scene = make_story(SCENE_TEXT, slug="slow").scenes.get()
    open_scene(page, scene)
    page.get_by_role("button", name="Play: Scene 1").click()
    page.wait_for_function("window.__narrator.snapshot()[0].pacing", timeout=30_000)
    assert "without a break" in snapshot(page)["message"]
    state = wait_for_state(page, "ended", timeout=60_000)

    chunks = session_chunks(page)
    assert len(chunks) >= 4
    assert_held_then_gapless(state, page.evaluate("window.__starts"), chunks)


def test_a_press_released_off_play_drops_the_session_it_began(slow_page: Page):
    """A press that ends off the button is no click: the session it began is cancelled
    (its synthesis stops), and the player is as it was: idle, nothing played."""
    page = slow_page
    scene = make_story(SCENE_TEXT, slug="pressed").scenes.get()
    open_scene(page, scene)
    press(page, page.get_by_role("button", name="Play: Scene 1"))
    page.wait_for_function("window.__narrator.snapshot()[0].sessionId", timeout=30_000)
    session_id = snapshot(page)["sessionId"]
    page.mouse.move(5, 5)
    page.mouse.up()
    page.wait_for_function("window.__narrator.snapshot()[0].sessionId === null")
    page.wait_for_function(
        """async (id) => {
            const reply = await fetch(`/api/tts/sessions/${id}/`);
            return (await reply.json()).status === "cancelled";
        }""",
        arg=session_id,
        timeout=10_000,
        polling=200,
    )
    assert snapshot(page)["state"] == "idle"
    assert page.evaluate("window.__starts") == []
    assert page.get_by_role("button", name="Play: Scene 1").is_visible()


def test_a_socket_opened_for_a_press_that_never_came_ends_unseen(slow_page: Page):
    """The pointer comes onto Play and goes, and no press comes: the server closes the
    waiting socket after TTS_PENDING_SOCKET_S (4404), and the player shows nothing of it.
    The pointer's next move on Play opens another, which the press then takes."""
    page = slow_page
    page.add_init_script(RECORD_SOCKETS)
    scene = make_story(SCENE_TEXT, slug="hover").scenes.get()
    open_scene(page, scene)
    button = page.get_by_role("button", name="Play: Scene 1")  # the page gave the cookie
    before = len(page.evaluate("window.__sockets"))

    box = button.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
    first = snapshot(page)["warm"]["sessionId"]
    page.mouse.move(5, 5)  # gone from Play: nothing renews it
    page.wait_for_function(
        "(n) => window.__sockets.length > n && window.__sockets[n].code !== null",
        arg=before,
        timeout=(PENDING_SOCKET_S + 5) * 1000,
    )
    shown = snapshot(page)
    assert shown["state"] == "idle" and shown["transport"] == "idle"
    assert shown["warm"] is None and shown["message"] == ""

    page.mouse.move(x, y)  # the pointer's next move on Play
    page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
    second = snapshot(page)["warm"]["sessionId"]
    page.mouse.down()
    page.mouse.up()
    page.wait_for_function("window.__narrator.snapshot()[0].received >= 1", timeout=30_000)
    assert snapshot(page)["sessionId"] == second != first
    sockets = page.evaluate("window.__sockets")[before:]
    assert [(s["url"].split("/ws/tts/")[1], s["code"]) for s in sockets] == [
        (f"{first}/?after=-1&pending=1&parts=1", 4404),
        (f"{second}/?after=-1&pending=1&parts=1", None),
    ]
    page.evaluate("(p => { p.pause(); p.discardSession(); })(window.__narrator.players[0])")


def rest_on_play(page: Page, by: str) -> None:
    """The mouse comes to rest on Play, or the keyboard brings the focus to it. "away and
    back": the mouse comes, goes before the socket's renewal is due and comes back after
    it, while the socket is still usable (the renewal, missed, is due at once)."""
    button = page.get_by_role("button", name="Play: Scene 1")
    if by in ("mouse", "away and back"):
        box = button.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        if by == "away and back":
            page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
            page.mouse.move(5, 5)
            page.wait_for_timeout(1800)  # the renewal was due at 1.5 s; usable to 2.5 s
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    else:
        page.keyboard.press("Shift")  # the last input was the keyboard's
        button.focus()
        assert page.evaluate("document.activeElement.matches(':focus-visible')")


@pytest.mark.parametrize("by", ["mouse", "keyboard", "away and back"])
def test_a_socket_opened_ahead_is_renewed_while_the_mouse_rests_or_the_focus_stays(
    slow_page: Page, by: str
):
    """The mouse rests on Play, or Play keeps the keyboard's focus, for longer than a
    socket opened ahead can wait: a second before it is too late for a press to take it,
    the player opens another in its place, and closes the old one itself once no press
    could take it (no 4404), so that the press, whenever it comes, has only its POST to
    make."""
    page = slow_page
    page.add_init_script(RECORD_SOCKETS)
    # A text of its own: one narrated before would be replayed whole, and its socket end.
    slug = f"rest-{by.replace(' ', '-')}"
    scene = make_story(f"{SCENE_TEXT} The {by} rested.", slug=slug).scenes.get()
    open_scene(page, scene)
    before = len(page.evaluate("window.__sockets"))
    rest_on_play(page, by)
    page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
    # Renewed every 1.5 s: PENDING_SOCKET_S less the 1.5 s margin, less RENEW_LEAD_MS.
    page.wait_for_function("(n) => window.__sockets.length >= n + 3", arg=before, timeout=12_000)
    page.wait_for_function("window.__narrator.snapshot()[0].warm?.waiting")
    last = snapshot(page)["warm"]["sessionId"]
    if by == "keyboard":
        page.keyboard.press("Space")
    else:
        page.mouse.down()
        page.mouse.up()
    page.wait_for_function("window.__narrator.snapshot()[0].received >= 1", timeout=30_000)

    shown = snapshot(page)
    assert shown["sessionId"] == last and shown["stream"]["sockets"] == 1
    sockets = page.evaluate("window.__sockets")[before:]
    assert all(s["url"].endswith("/?after=-1&pending=1&parts=1") for s in sockets)
    (taken,) = [s for s in sockets if f"/ws/tts/{last}/" in s["url"]]
    assert taken["code"] is None  # the session's, open
    assert [s["code"] for s in sockets if s is not taken] == [1000] * (len(sockets) - 1)
    page.evaluate("(p => { p.pause(); p.discardSession(); })(window.__narrator.players[0])")


def test_a_resting_mouse_renews_the_socket_ahead_for_a_while_only(slow_page: Page):
    """The renewal lasts lingerMs (a minute) from the pointer's last move on Play: a
    pointer left on Play for longer opens no more, and the last socket ends unseen."""
    page = slow_page
    page.add_init_script(RECORD_SOCKETS)
    scene = make_story(SCENE_TEXT, slug="rest-long").scenes.get()
    open_scene(page, scene)
    page.evaluate("window.__narrator.players[0].lingerMs = 2000")  # one renewal, at 1.5 s
    before = len(page.evaluate("window.__sockets"))
    rest_on_play(page, "mouse")
    page.wait_for_function(
        "(n) => window.__sockets.length > n + 1 && window.__sockets[n + 1].code !== null",
        arg=before,
        timeout=(PENDING_SOCKET_S + 8) * 1000,
    )
    page.wait_for_timeout(500)
    sockets = page.evaluate("window.__sockets")[before:]
    assert [s["code"] for s in sockets] == [1000, 4404]
    shown = snapshot(page)
    assert shown["warm"] is None and shown["state"] == "idle" and shown["message"] == ""


def test_a_slow_engine_plays_through_over_the_http_fallback_too(slow_page: Page):
    """With sockets blocked, the chunks come by polling: the session's JSON gives each
    chunk of a running session what is left of its hold, and the player adds a poll's
    delay to a held one. Without them, every chunk after the first would be late."""
    page = slow_page
    page.add_init_script(BLOCK_SOCKETS)
    text = (
        "The keeper climbed the stair. The wind pulled at the door. The boat rocked. "
        "A gull called once. The rope held. Then the lamp caught."
    )
    scene = make_story(text, slug="slow-http").scenes.get()
    open_scene(page, scene)
    page.get_by_role("button", name="Play: Scene 1").click()
    state = wait_for_state(page, "ended", timeout=60_000)

    assert state["transport"] == "http"
    chunks = session_chunks(page)
    assert len(chunks) >= 3
    assert_held_then_gapless(state, page.evaluate("window.__starts"), chunks)


# A client that knows nothing of holds (an older player): chunk frames lose cushion_ms.
IGNORE_HOLDS = """
const parse = JSON.parse;
JSON.parse = function (text, reviver) {
  const value = parse.call(this, text, reviver);
  if (value && value.type === 'chunk') delete value.cushion_ms;
  return value;
};
"""


def test_a_player_that_runs_dry_waits_and_plays_on_to_the_end(slow_page: Page):
    """Without holds a slow engine starves the player: each time a chunk comes after the
    one before has finished, it counts an underrun, waits a longer cushion and plays on.
    An underrun re-renders the player from inside the scheduling of the late chunk; that
    once threw (the chunk's text was recorded after it was scheduled) and left the player
    broken for the rest of the narration."""
    page = slow_page
    page.add_init_script(IGNORE_HOLDS)
    text = "Snow fell on the quay. The ferry was late. Nobody spoke. At last, a horn."
    scene = make_story(text, slug="slow-dry").scenes.get()
    open_scene(page, scene)
    page.get_by_role("button", name="Play: Scene 1").click()
    state = wait_for_state(page, "ended", timeout=60_000)

    chunks = session_chunks(page)
    assert state["underruns"] >= 1
    assert state["highlights"] == list(range(len(chunks)))
    starts = page.evaluate("window.__starts")
    sources_per_chunk(starts, chunks)  # every chunk once, in order
    assert page.evaluate("window.__pageErrors") == []
    # The first chunk, with no hold, plays at once; a run after one ran dry waits for its
    # doubled cushion.
    leads = [start["when"] - start["at"] for start in starts]
    assert_lead(leads[0], START_LEAD)
    assert max(leads) >= 2 * START_CUSHION - CLOCK_SLACK, leads


def test_story_page_screenshot(page: Page):
    from scenes.demo import demo_load

    story = demo_load()
    page.goto(story.get_absolute_url())
    page.wait_for_function("window.__narrator && window.__narrator.players.length === 4")
    page.wait_for_function("document.querySelector('select option[value=\"en-gb\"]') !== null")
    page.get_by_role("button", name="Play: The Storm Comes In").click()
    page.wait_for_function("() => window.__narrator.snapshot()[0].currentSeq === 1", timeout=30_000)
    page.wait_for_timeout(400)  # let the highlight's fade settle
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "story-page.png"), full_page=True)
    assert (ARTIFACTS / "story-page.png").stat().st_size > 10_000
