"""Scenario 1e: time to first sound in a real browser (Debian's Chromium, Playwright).

Scenario 1 stops at the first binary frame at a WebSocket client; a listener hears the
narration only once the player has scheduled its first sample. Here the bundled player
on a scene page is pressed as a person presses it, and the page records, on its own
clock (``performance.now()``):

- the press (``pointerdown``) and the release (``pointerup``, the click);
- the session's POST (the player's ``fetch``);
- the first binary frame on its socket;
- the first sample: the first ``AudioBufferSourceNode.start(when)``, ``when`` taken
  from the AudioContext's clock to the page's.

Two kinds of press: a *tap* (released at once: the click comes before any audio can, so
the first sound waits for the pipeline) and a *click* of ``HOLD_MS`` (a mouse button's
usual press: the narration starts at the press, and the first chunk is often in hand
when the click plays it). The sound is counted from the press for both, and from the
click for the second.

Each session is a new scene (a new text: no replay), opened on a new page in one
browser context that narrated once before (so that it has the session cookie, and the
player opens its socket with the POST, as on a reader's second visit). The first sample
is when the player scheduled it to play (the browser has no autoplay exemption: the
press's gesture starts the page's AudioContext, as a reader's does); it is *heard* the
context's output latency later (``baseLatency`` + ``outputLatency`` as the browser
reports them: a headless browser's fake device here, whose figures follow the context's
``latencyHint``). A page that plays nothing within the voice's timeout is counted, not
waited for (``timeouts``).
"""

from __future__ import annotations

import contextlib
import os
import time

from bench.stats import summary
from tts.testing import CHROMIUM, CHROMIUM_ARGS

HOLD_MS = 100  # a mouse click's press

# The player before P88: its GET that readies the POST's connection (?warm=1) answered in
# the page, never reaching the server.
NO_CONNECTION_WARM = """
const fetchWithWarm = window.fetch;
window.fetch = function (url, options) {
  if (String(url).includes('warm=1')) return Promise.resolve(new Response('{}'));
  return fetchWithWarm.apply(this, arguments);
};
"""
KINDS = ("tap", "click")

# Records one play's moments on the page's clock (window.__sound), before the page's own
# scripts run: the first of each, so that a later chunk or source does not overwrite it.
RECORD = """
window.__sound = { origin: performance.timeOrigin };
const mark = (name, value = performance.now()) => {
  if (window.__sound[name] === undefined) window.__sound[name] = value;
};
window.addEventListener('pointerdown', () => mark('press'), true);
window.addEventListener('pointerup', () => mark('release'), true);
const nativeFetch = window.fetch;
window.fetch = function (url, options = {}) {
  if ((options.method || 'GET').toUpperCase() === 'POST' && String(url).includes('/sessions/')) {
    mark('post');
    const reply = nativeFetch.apply(this, arguments);
    reply.then(() => mark('reply'), () => {});
    return reply;
  }
  return nativeFetch.apply(this, arguments);
};
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(url, protocols) {
    super(window.__wholeChunks ? String(url).replace('&parts=1', '') : url, protocols);
    mark('socket');
    this.addEventListener('open', () => mark('open'));
    this.addEventListener('message', (event) => {
      if (typeof event.data !== 'string') mark('frame');
    });
  }
};
const NativeAudioContext = window.AudioContext;
window.AudioContext = class extends NativeAudioContext {
  constructor(options) {
    mark('context');
    super(options);
    mark('context_made');
  }
};
const nativeStart = AudioBufferSourceNode.prototype.start;
AudioBufferSourceNode.prototype.start = function (when = 0, offset = 0, ...rest) {
  const ctx = this.context;
  const now = performance.now();
  mark('sound', now + Math.max(0, when - ctx.currentTime) * 1000);
  mark('scheduled', now);
  mark('latency_ms', ((ctx.baseLatency || 0) + (ctx.outputLatency || 0)) * 1000);
  return nativeStart.call(this, when, offset, ...rest);
};
"""


def available() -> str | None:
    """Why this scenario cannot run here, or None."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is not installed (make system-deps)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (requirements-dev.txt)"
    return None


def make_scenes(texts: list[str], voice: str, tag: str) -> list[str]:
    """A story of one scene per text, in ``voice``; the scenes' page paths."""
    from scenes.models import Scene, Story

    story = Story.objects.create(title=f"Bench {tag}", slug=f"bench-{tag}-{time.time_ns()}")
    return [
        Scene.objects.create(
            story=story, position=i, title=f"Scene {i + 1}", text=text, voice=voice
        ).get_absolute_url()
        for i, text in enumerate(texts)
    ]


def run_sessions(
    base_url: str,
    paths: list[str],
    kinds: list[str],
    timeout: float,
    *,
    whole_chunks: bool = False,
    play_through: bool = False,
    hover_ms: float = 0.0,
    first_visit: bool = False,
    read_s: float = 0.0,
    connection_warm: bool = True,
    trusted_spki: str = "",
) -> list[dict]:
    """Open each scene, press Play as ``kinds`` says, and return each page's moments.
    ``whole_chunks``: the player's sockets without ?parts=1 (each chunk in one frame).
    ``hover_ms``: the pointer rests on Play this long before the press (the player opens
    the next session's socket as the pointer comes onto Play; with 0 the press follows
    at once, and the socket opens milliseconds before the POST: as if with it).
    ``play_through``: let each narration play to its end, and count its underruns (each
    time the player ran dry: a gap the reader hears). ``first_visit``: each page in a
    browser context of its own, with no cookies: a new visitor's first Play. ``read_s``:
    the page is left this long after it loaded before the pointer comes. With
    ``connection_warm`` off, the player's GET that readies the POST's connection
    (``?warm=1``, P88) is answered in the page, as if the player never sent it.
    ``trusted_spki``: a certificate key Chromium trusts (an https ``base_url``)."""
    from playwright.sync_api import sync_playwright

    marks = []
    with sync_playwright() as playwright:
        # No autoplay flag: the page's AudioContext starts by the press's gesture.
        args = list(CHROMIUM_ARGS)
        if trusted_spki:  # --path-tls: daphne's throwaway certificate (bench/tls.py)
            args.append(f"--ignore-certificate-errors-spki-list={trusted_spki}")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)

        def new_context():
            context = browser.new_context(base_url=base_url)
            if whole_chunks:
                context.add_init_script("window.__wholeChunks = true;")
            if not connection_warm:
                context.add_init_script(NO_CONNECTION_WARM)
            context.add_init_script(RECORD)
            return context

        try:
            context = new_context()
            for path, kind in zip(paths, kinds, strict=True):
                if first_visit:
                    context.close()
                    context = new_context()
                marks.append(
                    _press_play(context, path, kind, timeout, play_through, hover_ms, read_s)
                )
        finally:
            browser.close()
    return marks


def _press_play(
    context,
    path: str,
    kind: str,
    timeout: float,
    play_through: bool,
    hover_ms: float,
    read_s: float = 0.0,
) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = context.new_page()
    try:
        page.goto(path)
        page.wait_for_function("window.__narrator && window.__narrator.players.length === 1")
        page.wait_for_load_state("networkidle")  # the voices fetched, nothing else in flight
        button = page.locator("[data-tts-role=play]").first
        if read_s:
            page.wait_for_timeout(read_s * 1000)
        box = button.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        if hover_ms:
            page.wait_for_timeout(hover_ms)
        page.mouse.down()
        if kind == "click":
            page.wait_for_timeout(HOLD_MS)
        page.mouse.up()
        try:
            page.wait_for_function("window.__sound.sound !== undefined", timeout=timeout * 1000)
        except PlaywrightTimeout:
            return {"kind": kind, "timeout": True}
        marks = page.evaluate("window.__sound")
        marks["kind"] = kind
        if play_through:
            ended = "['ended', 'error'].includes(window.__narrator.snapshot()[0].state)"
            with contextlib.suppress(PlaywrightTimeout):
                page.wait_for_function(ended, timeout=(timeout + 60) * 1000)
            state = page.evaluate("window.__narrator.snapshot()[0]")
            marks["ended"] = state["state"] == "ended"
            marks["underruns"] = state["underruns"]
        # Stop it, and cancel its synthesis if unfinished: the next press meets an idle stack.
        page.evaluate("(p => { p.pause(); p.discardSession(); })(window.__narrator.players[0])")
        return marks
    finally:
        page.close()


def analyse(marks: list[dict]) -> dict:
    """Per kind of press: press → first sample, and its parts (ms)."""
    out: dict = {}
    for kind in KINDS:
        mine = [m for m in marks if m.get("kind") == kind and "press" in m and "sound" in m]
        if not mine:
            continue
        res = out[kind] = {
            "sessions": len(mine),
            "press_to_sound": summary(m["sound"] - m["press"] for m in mine),
            "press_to_heard": summary(
                m["sound"] + m.get("latency_ms", 0) - m["press"] for m in mine
            ),
            "press_to_post": summary(m["post"] - m["press"] for m in mine if "post" in m),
            "post_to_frame": summary(
                m["frame"] - m["post"] for m in mine if "post" in m and "frame" in m
            ),
            "frame_to_sound": summary(m["sound"] - m["frame"] for m in mine if "frame" in m),
            "output_latency_ms": summary(m.get("latency_ms", 0) for m in mine),
            "early_sockets": sum(  # opened with the POST, not after its reply
                1 for m in mine if "socket" in m and "reply" in m and m["socket"] < m["reply"]
            ),
            "timeouts": sum(1 for m in marks if m.get("kind") == kind and m.get("timeout")),
        }
        if through := [m for m in mine if "underruns" in m]:  # played to the end
            res["played_through"] = {
                "sessions": len(through),
                "ended": sum(1 for m in through if m["ended"]),
                "with_a_gap": sum(1 for m in through if m["underruns"]),
                "underruns": sum(m["underruns"] for m in through),
            }
        if kind == "click":
            res["click_to_sound"] = summary(m["sound"] - m["release"] for m in mine)
            res["frame_before_click"] = sum(
                1 for m in mine if "frame" in m and m["frame"] <= m["release"]
            )
    out["timelines"] = [  # each session's moments, ms after its press, for a rerun to read
        {
            "kind": m.get("kind"),
            "press_epoch_ms": round(m["origin"] + m["press"], 1),  # to line up with the server
            **{
                k: round(v - m["press"], 1)
                for k, v in sorted(_moments(m).items(), key=lambda kv: kv[1])
                if k != "press"
            },
        }
        for m in marks
        if "press" in m
    ]
    return out


def trace_events(marks: list[dict]) -> list[tuple[float, str]]:
    """The pages' moments as ``--patch trace`` events (epoch seconds, label), so that
    ``bench/trace.py --start "browser.press >"`` lines them up with the server's steps."""
    return [
        ((m["origin"] + v) / 1000, "browser.press >" if k == "press" else f"browser.{k}")
        for m in marks
        for k, v in _moments(m).items()
    ]


def _moments(marks: dict) -> dict[str, float]:
    """A page's moments (ms on its clock): its marks less the clock's origin and the
    output latency, which are not moments."""
    return {
        k: v
        for k, v in marks.items()
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and k not in ("origin", "latency_ms", "underruns")
    }
