// Words a listener understands, for every state and error the player can meet.

const ERRORS = {
  network: "Can't reach the server. Check your connection, then press Play again.",
  rate_limited: "You've started many narrations in a short time.",
  empty_text: "There's no text to narrate yet. Type something first.",
  forbidden: "This narration was started in another browser session. Press Play to start a new one.",
  not_found: "This narration no longer exists. Press Play to start it again.",
  no_such_session: "This narration no longer exists. Press Play to start it again.",
  cancelled: "Narration was cancelled.",
  voice_unavailable: "That voice isn't available on this server.",
};

function sentence(text) {
  const trimmed = String(text || "").trim();
  if (!trimmed) return "";
  const capital = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?)]$/.test(capital) ? capital : `${capital}.`;
}

function seconds(n) {
  return n === 1 ? "1 second" : `${n} seconds`;
}

/** A message for an ApiError (from a request) or an `error` frame (from the stream). */
export function describeError(error) {
  const code = error.code || "";
  if (code === "rate_limited" || error.status === 429) {
    const wait = error.retryAfter ? ` Try again in ${seconds(error.retryAfter)}.` : " Try again soon.";
    return ERRORS.rate_limited + wait;
  }
  if (error.status === 503) {
    return "The narration service is offline or busy right now. Please try again in a moment.";
  }
  if (code === "voice_unavailable" && error.message) {
    return `That voice isn't available: ${sentence(error.message.replace(/^Voice '[^']*' is unavailable: /, ""))}`;
  }
  if (ERRORS[code]) return ERRORS[code];
  if (error.status >= 400 && error.status < 500 && error.message) return sentence(error.message);
  if (error.fatal) {
    return `Narration stopped: ${sentence(error.message) || "the narrator ran into a problem."}`;
  }
  if (error.status >= 500) {
    return `Something went wrong on the server (error ${error.status}). Please try again.`;
  }
  return sentence(error.message) || "Something went wrong. Please try again.";
}

/** A message for a `status` frame, or "" when nothing needs saying. */
export function describeStatus(frame) {
  if (frame.status === "queued") {
    const ahead = (frame.queue_position || 1) - 1;
    if (ahead > 0) {
      return `Waiting for a free narrator: ${ahead} ${ahead === 1 ? "narration" : "narrations"} ahead.`;
    }
    return "Starting the narrator…";
  }
  if (frame.status === "running") return "Narrating…";
  return "";
}

export const STATE_MESSAGES = {
  starting: "Preparing the narration…",
  buffering: "Loading audio…",
  pacing: "Getting ahead of the narrator, so that it plays without a break…",
  playing: "",
  paused: "Paused.",
  ended: "Finished.",
  reconnecting: "Connection lost. Reconnecting…",
  fallback: "The live connection is blocked; loading the audio another way.",
};

/** 83.4 -> "1:23". */
export function formatTime(totalSeconds) {
  const whole = Math.max(0, Math.floor(totalSeconds + 1e-6));
  const minutes = Math.floor(whole / 60);
  const secs = String(whole % 60).padStart(2, "0");
  return `${minutes}:${secs}`;
}
