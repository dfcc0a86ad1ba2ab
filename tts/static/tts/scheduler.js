// Gapless playback on the AudioContext clock. Chunks are scheduled back to back at
// exact times (start = previous start + previous duration), never chained from `onended`,
// so there is no gap between sentences however busy the page is. A "run" is one stretch
// of scheduled sources; pause, seek and resume end a run and start a new one. A chunk may
// come in parts (the socket's ?parts=1): each part is scheduled as it comes, right after
// the one before, so a run can start on a chunk's first part while the rest is on its way.
// A run that starts on a chunk still coming in parts starts late enough for the next part
// to come about a round trip after the last (the `partGap` hook: the player's estimate): on a
// path slower than a part's audio, a little later rather than with a gap.
//
// A run starts as soon as the audio thread can take it (START_LEAD) when its audio is in
// hand and the engine ahead. Where the server says its engine would otherwise fall
// behind, it starts later: every chunk sent live (and one read back while its session
// runs) carries `cushion_ms`, how long after its arrival it should start for the chunks
// after it to arrive in time (0 for an engine fast enough; docs/protocol.md). The run
// starts late enough for the freshest of them, plus a cushion against the jitter of the
// arrivals; so does a run after one that ran dry, with the cushion doubled each time.

// Seconds from "play" to the first sample of a run that need not wait: a few render
// quanta, for the start to reach the audio thread before its time has passed (a start in
// the past plays at once, later than the next chunk's slot assumes). At least two of the
// audio thread's buffers (startLead).
const START_LEAD = 0.03;
const START_CUSHION = 0.1; // seconds added to a run that waits for the engine: absorbs jitter
const MAX_CUSHION = 2.0;
const MAX_PACED_WAIT = 10.0; // the longest a run waits for the engine to get ahead
const LATE_MARGIN = 0.01; // a chunk due sooner than this has missed its slot: underrun
const FADE = 0.012; // a short fade on stop avoids a click

export class Scheduler {
  /**
   * @param {AudioContext} ctx
   * @param {{onEnded?: () => void, onUnderrun?: (cushion: number) => void,
   *   partGap?: () => number}} hooks
   */
  constructor(ctx, { onEnded = () => {}, onUnderrun = () => {}, partGap = () => 0 } = {}) {
    this.ctx = ctx;
    this.onEnded = onEnded;
    this.onUnderrun = onUnderrun;
    this.cushion = START_CUSHION;
    this.underruns = 0;
    this.items = []; // by seq, contiguous: { seq, start, duration, parts, complete }
    this.paced = null; // the latest chunk with a cushion, if it holds: { start, due } (ctx time)
    this.partGap = partGap; // () => seconds the next part of a chunk may take after the last
    this.partAt = 0; // when the latest part came (ctx time)
    this.total = null;
    this.playing = false;
    this.ended = false;
    this.pausedAt = 0;
    this.run = null;
  }

  /** Chunks received so far (contiguous from 0). */
  get received() {
    return this.items.length;
  }

  /** Seconds of audio received so far. */
  get receivedDuration() {
    const last = this.items[this.items.length - 1];
    return last ? last.start + last.duration : 0;
  }

  get complete() {
    const last = this.items[this.items.length - 1];
    return this.total !== null && this.items.length >= this.total && (!last || last.complete);
  }

  /**
   * Add chunk `seq` (or its first part: `complete` false); false for a duplicate or
   * out-of-order chunk (the stream orders them), or while the one before is in part.
   * `cushionMs`: the chunk frame's `cushion_ms` (a session still running), if any.
   */
  add(seq, buffer, cushionMs = null, complete = true) {
    const last = this.items[this.items.length - 1];
    if (seq !== this.items.length || (last && !last.complete)) return false;
    const start = this.receivedDuration;
    const item = { seq, start, duration: 0, parts: [], complete: true };
    this.items.push(item);
    this.addPart(item, buffer, complete);
    if (typeof cushionMs === "number" && cushionMs >= 0) {
      const due = this.ctx.currentTime + cushionMs / 1000;
      this.paced = cushionMs > 0 ? { start, due } : null;
    }
    if (this.playing) this.pump();
    return true;
  }

  /** The next part of chunk `seq`, the last one received (`complete`: the chunk's end). */
  extend(seq, buffer, complete = true) {
    const item = this.items[seq];
    if (!item || item.complete || seq !== this.items.length - 1) return false;
    this.addPart(item, buffer, complete);
    if (this.playing) this.pump();
    return true;
  }

  addPart(item, buffer, complete) {
    this.partAt = this.ctx.currentTime;
    const duration = buffer ? buffer.duration : 0;
    item.parts.push({ at: item.duration, duration, buffer });
    item.duration += duration;
    item.complete = complete;
  }

  setTotal(total) {
    if (total === null || total === undefined) return;
    this.total = total;
    this.checkEnd();
  }

  /** Start (or resume) playing at `position` seconds into the narration. */
  play(position = this.pausedAt) {
    this.playing = true;
    this.ended = false;
    this.startRun(Math.max(0, Math.min(position, this.receivedDuration)));
  }

  pause() {
    if (!this.playing) return;
    this.pausedAt = this.position();
    this.playing = false;
    this.stopRun();
  }

  /** Jump to the start of chunk `seq` (keeps playing or paused). False if not received. */
  seek(seq) {
    const item = this.items[seq];
    if (!item) return false;
    this.ended = false;
    if (this.playing) {
      this.startRun(item.start);
    } else {
      this.pausedAt = item.start;
    }
    return true;
  }

  /** Forget everything (a new session). */
  reset() {
    this.stopRun();
    this.items = [];
    this.total = null;
    this.playing = false;
    this.ended = false;
    this.pausedAt = 0;
    this.cushion = START_CUSHION;
    this.paced = null;
    this.partAt = 0;
  }

  /** Seconds into the narration that the listener is hearing now. */
  position() {
    const run = this.run;
    if (!this.playing || !run) return this.pausedAt;
    if (run.anchorTime === null) return run.anchorPos;
    const elapsed = Math.max(0, this.ctx.currentTime - run.anchorTime);
    return Math.min(run.anchorPos + elapsed, run.endPos);
  }

  /**
   * True while playing but starved: nothing more to hear until the next chunk arrives, or
   * a run waiting (beyond its cushion) for the engine to get ahead.
   */
  starved() {
    const run = this.run;
    if (!this.playing || !run) return false;
    if (run.anchorTime === null || this.pacing) return true;
    return this.ctx.currentTime >= run.nextTime; // all received is scheduled (pump)
  }

  /** True while a run waits for the engine to get ahead (a cushion_ms beyond its own). */
  get pacing() {
    const run = this.run;
    if (!this.playing || !run || run.anchorTime === null) return false;
    return this.ctx.currentTime < run.anchorTime - this.cushion;
  }

  /**
   * The seq of the chunk that holds `position`: received.length past the end, except at
   * the end of a chunk still coming in parts, which holds the rest of it (a run resumed
   * there plays its next parts).
   */
  seqAt(position) {
    let low = 0;
    let high = this.items.length - 1;
    while (low <= high) {
      const mid = (low + high) >> 1;
      const item = this.items[mid];
      if (position < item.start) high = mid - 1;
      else if (position >= item.start + item.duration) low = mid + 1;
      else return mid;
    }
    const last = this.items[this.items.length - 1];
    return low === this.items.length && last && !last.complete ? last.seq : low;
  }

  startRun(position) {
    this.stopRun();
    const gain = this.ctx.createGain();
    gain.connect(this.ctx.destination);
    const seq = this.seqAt(position);
    const offset = this.items[seq] ? position - this.items[seq].start : 0;
    this.run = {
      gain,
      sources: [],
      nextSeq: seq,
      nextPart: 0, // of chunk nextSeq: the first part not scheduled yet
      firstOffset: offset, // into chunk nextSeq, where the run begins
      nextTime: null,
      anchorTime: null,
      anchorPos: position,
      endPos: position,
    };
    this.pump();
  }

  /** Schedule every received chunk (and part) not yet scheduled, right after the previous. */
  pump() {
    const run = this.run;
    if (!run) return;
    for (let item = this.items[run.nextSeq]; item; item = this.items[run.nextSeq]) {
      while (run.nextPart < item.parts.length) {
        const part = item.parts[run.nextPart];
        run.nextPart += 1;
        const offset = Math.max(0, run.firstOffset - part.at);
        if (offset >= part.duration) continue; // before where the run begins, or empty
        this.placeRun(run, item.start + part.at + offset);
        this.startSource(run, item.seq, part.buffer, offset);
        run.nextTime += part.duration - offset;
        run.endPos = item.start + part.at + part.duration;
      }
      if (!item.complete) break; // its next part is on its way
      run.firstOffset = 0;
      run.nextPart = 0;
      run.nextSeq += 1;
    }
    this.checkEnd();
  }

  /** Give the run a start time, first or after an underrun. */
  placeRun(run, position) {
    const now = this.ctx.currentTime;
    if (run.nextTime !== null && run.nextTime >= now + LATE_MARGIN) return;
    if (run.nextTime !== null) {
      // The previous chunk finished before this one arrived: wait a little longer next time.
      this.underruns += 1;
      this.cushion = Math.min(MAX_CUSHION, this.cushion * 2);
      this.onUnderrun(this.cushion);
    }
    // A run that need not wait starts after the lead (after the doubled cushion, once one
    // ran dry); one held for the engine starts a cushion after its hold ends, against the
    // jitter of the arrivals, and never sooner than the lead: no jump as a hold runs out.
    const lead = this.cushion > START_CUSHION ? this.cushion : this.startLead;
    const held = Math.max(this.pacedStart(position), this.partsStart(position));
    const paced = Math.min(held, now + MAX_PACED_WAIT);
    run.nextTime = Math.max(now + lead, paced + this.cushion);
    run.anchorTime = run.nextTime;
    run.anchorPos = position;
  }

  /**
   * The start lead: START_LEAD, or two of the audio thread's buffers where they are longer
   * (some phones and Linux setups), so that a start never lands in the past.
   */
  get startLead() {
    return Math.max(START_LEAD, 2 * (this.ctx.baseLatency || 0));
  }

  /**
   * The earliest time a run starting at `position` keeps up with the engine, by the latest
   * chunk's cushion: it reaches that chunk no sooner than the chunk's arrival plus it
   * (-Infinity when that chunk needs no hold).
   */
  pacedStart(position) {
    const paced = this.paced;
    return paced ? paced.due - (paced.start - position) : -Infinity;
  }

  /**
   * The earliest time a run starting at `position` plays through the rest of a chunk still
   * coming in parts without running dry: the audio it has from there lasts until its next
   * part, due `partGap()` after the latest (-Infinity when no chunk is in part).
   */
  partsStart(position) {
    const last = this.items[this.items.length - 1];
    const gap = !last || last.complete ? 0 : this.partGap();
    if (!gap) return -Infinity;
    return this.partAt + gap - (this.receivedDuration - position);
  }

  startSource(run, seq, buffer, offset) {
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(run.gain);
    source.onended = () => this.sourceEnded(run, seq);
    source.start(run.nextTime, offset);
    run.sources.push(source);
  }

  sourceEnded(run, seq) {
    // Bookkeeping only: the next chunk was scheduled long ago, not from here.
    if (run === this.run && this.total !== null && seq >= this.total - 1) this.checkEnd();
  }

  /** Finish when every chunk has been scheduled and heard. */
  checkEnd() {
    const run = this.run;
    if (!this.playing || !run || this.total === null || run.nextSeq < this.total) return;
    if (run.nextTime !== null && this.ctx.currentTime < run.nextTime) return;
    this.playing = false;
    this.ended = true;
    this.pausedAt = this.receivedDuration;
    this.stopRun();
    this.onEnded();
  }

  stopRun() {
    const run = this.run;
    if (!run) return;
    this.run = null;
    const now = this.ctx.currentTime;
    run.gain.gain.setTargetAtTime(0, now, FADE / 3);
    for (const source of run.sources) {
      source.onended = null;
      try {
        source.stop(now + FADE);
      } catch {
        // already stopped
      }
    }
    setTimeout(() => run.gain.disconnect(), 200);
  }
}
