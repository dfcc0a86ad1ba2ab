// The HTTP fallback: read the session's JSON for chunk metadata and status, fetch each
// chunk as a WAV in seq order. The same audio as the socket, for networks that block it.

import { fetchChunk, requestJson } from "./api.js";
import { parseWav } from "./pcm.js";

const POLL_EVERY = 600; // ms between status reads while the narrator works
const RETRY_MAX = 8000;
const FINAL = new Set(["completed", "failed", "cancelled"]);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A chunk of a session still being narrated carries what was left of its hold when the
 * session's JSON was read (`cushion_ms`, docs/protocol.md); less the time since. A held
 * chunk means an engine with little lead, and the chunks after it reach this fallback up
 * to a poll later than a socket would bring them: the hold covers that too. A chunk held
 * for 0 gets no such allowance (its engine is ahead, as a rule): where one still comes
 * late, the player's own cushion doubles, as on any network that runs it dry.
 */
function holdLeft(meta, readAt) {
  const left = Math.max(0, meta.cushion_ms - (performance.now() - readAt));
  return meta.cushion_ms > 0 ? left + POLL_EVERY : left;
}

export class HttpPoller {
  /**
   * @param {string} statusUrl the session's JSON URL
   * @param {{after: number, status, chunk, done, error}} handlers
   */
  constructor(statusUrl, { after = -1, status, chunk, done, error }) {
    this.statusUrl = statusUrl;
    this.lastSeq = after;
    this.handlers = { status, chunk, done, error };
    this.stopped = false;
    this.lastStatus = null;
    this.failures = 0;
  }

  start() {
    this.loop();
  }

  stop() {
    this.stopped = true;
  }

  async loop() {
    while (!this.stopped) {
      let wait = POLL_EVERY;
      try {
        const over = await this.step();
        if (over) return;
        this.failures = 0;
      } catch (error) {
        if (this.giveUp(error)) return;
        this.failures += 1;
        wait = Math.min(RETRY_MAX, POLL_EVERY * 2 ** this.failures);
      }
      await sleep(wait);
    }
  }

  /** One round: status, then every chunk it lists that we lack. True when it is over. */
  async step() {
    const info = await requestJson(this.statusUrl);
    const readAt = performance.now();
    this.reportStatus(info);
    for (const meta of info.chunks) {
      if (meta.seq <= this.lastSeq) continue;
      if (this.stopped) return true;
      const got = await fetchChunk(this.statusUrl, meta.seq);
      if (!got.ready) break;
      const { sampleRate, bytes } = parseWav(got.data);
      this.lastSeq = meta.seq;
      const frame = { ...meta, total_chunks: info.total_chunks };
      if (typeof meta.cushion_ms === "number") frame.cushion_ms = holdLeft(meta, readAt);
      this.handlers.chunk(frame, bytes, sampleRate);
    }
    return this.finishIfOver(info);
  }

  reportStatus(info) {
    if (info.status === this.lastStatus && info.status !== "queued") return;
    this.lastStatus = info.status;
    this.handlers.status({
      type: "status",
      status: info.status,
      completed_chunks: info.completed_chunks,
      total_chunks: info.total_chunks,
      queue_position: info.queue_position,
    });
  }

  finishIfOver(info) {
    if (!FINAL.has(info.status) || this.lastSeq + 1 < info.chunks.length) return false;
    if (info.status === "completed") {
      if (this.lastSeq + 1 < info.total_chunks) return false;
      this.handlers.done({
        type: "done",
        total_chunks: info.total_chunks,
        duration_ms: info.duration_ms,
        audio_url: info.audio_url,
      });
    } else {
      const error = info.error || {};
      this.handlers.error({
        type: "error",
        code: error.code || info.status,
        message: error.message || "",
        fatal: true,
      });
    }
    return true;
  }

  /** 403 and 404 will not get better by asking again. */
  giveUp(error) {
    if (error.status !== 403 && error.status !== 404) return false;
    this.handlers.error({ code: error.code, message: error.message, fatal: true });
    return true;
  }
}
