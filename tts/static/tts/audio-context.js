// One AudioContext per page, shared by every player. Browsers (mobile Safari above all)
// only let a context make sound once it was created or resumed inside a user gesture,
// so call unlockAudio() synchronously in a click or key handler, before any await (after
// sending what the gesture should send first: making the context takes milliseconds).

let shared = null;

/** The page's AudioContext, created on first use (suspended until unlocked). */
export function audioContext() {
  if (!shared) {
    const Context = window.AudioContext || window.webkitAudioContext;
    // "balanced": the browser weighs latency against power. "playback" (the largest
    // buffers) put about 50 ms more between a press and the first sound in Chromium
    // (95 ms of output latency against 42; docs/benchmarks.md, scenario 1e), and the
    // graph here is only buffer sources, which even small buffers keep fed.
    shared = new Context({ latencyHint: "balanced" });
  }
  return shared;
}

/** Create and resume the context from inside a user gesture. Returns the context. */
export function unlockAudio() {
  const ctx = audioContext();
  if (ctx.state !== "running") {
    ctx.resume().catch(() => {});
  }
  return ctx;
}
