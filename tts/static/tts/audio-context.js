// One AudioContext per page, shared by every player. Browsers (mobile Safari above all)
// only let a context make sound once it was created or resumed inside a user gesture,
// so call unlockAudio() synchronously at the top of a click or key handler, before any await.

let shared = null;

/** The page's AudioContext, created on first use (suspended until unlocked). */
export function audioContext() {
  if (!shared) {
    const Context = window.AudioContext || window.webkitAudioContext;
    // "playback" trades a little latency for fewer glitches: right for narration.
    shared = new Context({ latencyHint: "playback" });
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
