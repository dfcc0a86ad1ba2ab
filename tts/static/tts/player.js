// The narration player: binds to each [data-tts-player] element that the {% tts_player %}
// template tag renders, and wires the controls to a session, its stream and the scheduler.
// Events on the player element (they bubble): tts:play, tts:pause, tts:state, tts:ended.
// Test hook: window.__narrator.players / .snapshot().

import {
  cancelSession,
  connectionIdle,
  createSession,
  fetchVoices,
  requestRoundTrip,
  warmConnection,
} from "./api.js";
import { audioContext, unlockAudio } from "./audio-context.js";
import { describeError, describeStatus, formatTime, STATE_MESSAGES } from "./messages.js";
import { toAudioBuffer } from "./pcm.js";
import { bindPlaylists } from "./playlist.js";
import { ProgressBar } from "./progress.js";
import { players, playerFor, register } from "./registry.js";
import { Scheduler } from "./scheduler.js";
import { ChunkStream, newSessionId } from "./stream.js";
import { normaliseText, TextView } from "./text-view.js";
import { fillVoicePicker } from "./voice-picker.js";

const TICK_MS = 100;
// A press on Play that did not become a click (released elsewhere, or cancelled): its
// session is dropped this long after the release, once no click can still come.
const PRESS_WITHOUT_CLICK_MS = 50;
const RESTART_SENTENCE_AFTER = 1.5; // seconds: "back" restarts the sentence, then goes back
// A socket opened before the press (warmUp): at most one this often, and none taken by a
// press this close to the server's closing it (the page's data-tts-socket-wait).
const WARM_EVERY_MS = 2000;
const WARM_MARGIN_MS = 1500;
// While the mouse rests on Play, or Play keeps the keyboard's focus, a socket opened ahead
// is opened anew as it nears the server's wait, for this long after the pointer last moved
// on Play or the focus came: a press after a minute of reading still finds one. The new
// one opens this long before the old one's use ends, and a press takes the old one until
// then: the handshake leaves no gap.
const LINGER_MS = 60000;
const RENEW_LEAD_MS = 1000;
let warmPlayer = null; // the page keeps one such socket, for the player last pointed at
const BUSY = new Set(["starting", "buffering", "playing"]);
const BUTTON_LABELS = {
  idle: "Play",
  starting: "Pause",
  buffering: "Pause",
  playing: "Pause",
  paused: "Resume",
  ended: "Play again",
  error: "Try again",
};

function readConfig(root) {
  const data = root.dataset;
  const textScript = document.getElementById(data.ttsTextId);
  return {
    sessionsUrl: data.ttsSessionsUrl,
    socketsUrl: data.ttsSocketsUrl || "",
    voicesUrl: data.ttsVoicesUrl,
    voice: data.ttsVoice || "",
    subject: data.ttsSubject || "",
    csrf: data.ttsCsrf || "",
    // The browser has a session cookie (or a user) already, and the page says where sockets are.
    early: "ttsEarly" in data && Boolean(data.ttsSocketsUrl),
    socketWait: socketWait(data.ttsSocketWait), // TTS_PENDING_SOCKET_S
    title: data.ttsTitle || "",
    problem: data.ttsProblem || "",
    text: textScript ? JSON.parse(textScript.textContent) : "",
  };
}

/** Seconds the server holds a socket opened before its session (10 where not said). */
function socketWait(text) {
  const seconds = text === undefined || text === "" ? NaN : Number(text);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : 10;
}

function findParts(root) {
  const part = (role) => root.querySelector(`[data-tts-role="${role}"]`);
  const names = ["play", "playLabel", "back", "forward", "progress", "time", "voice",
    "voiceNotes", "status", "text", "download", "editor", "editorBox", "reading", "edit"];
  const roles = { playLabel: "play-label", voiceNotes: "voice-notes", editorBox: "editor-box" };
  return Object.fromEntries(names.map((name) => [name, part(roles[name] || name)]));
}

export class NarrationPlayer {
  constructor(root) {
    this.root = root;
    this.config = readConfig(root);
    this.ui = findParts(root);
    this.editable = Boolean(this.ui.editor);
    this.state = "idle";
    this.session = null;
    this.sessionKey = null; // voice + text of the session, set while it is being created
    this.broken = false; // the session ended in a fatal error: Play starts a new one
    this.stream = null;
    this.scheduler = null;
    this.chunks = [];
    this.total = null;
    this.transport = "idle";
    this.serverStatus = "";
    this.notice = "";
    this.error = "";
    this.audioUrl = null;
    this.completed = false;
    this.streamOptions = {};
    // Open each session's socket while its POST is in flight. Not before this browser has
    // a session cookie (the page gives a new visitor one, P86; where it did not, the first
    // POST's reply sets it): the socket would be refused.
    this.earlySockets = this.config.early;
    this.warm = null; // the next session's socket, opened while the pointer is on Play
    this.warmedAt = -Infinity;
    this.lingerMs = LINGER_MS;
    this.lingeredAt = -Infinity; // the pointer's last move on Play, or the keyboard's focus
    this.renewal = null; // the timer that opens the socket ahead anew (renewWarm)
    this.spare = null; // the socket ahead that a renewal replaced, takeable to its end
    this.press = null; // a press on Play that began a session, until its click plays it
    this.textLength = 1;
    this.view = new TextView(this.ui.text, this.config.text, (seq) => this.pick(seq));
    this.measureText();
    this.progress = new ProgressBar(this.ui.progress, {
      step: (delta) => this.step(delta),
      jump: (fraction) => this.jump(fraction),
    });
    this.debug = { dropSocket: () => this.stream?.dropSocket() };
    this.bind();
    this.loadVoices();
    if (this.config.problem) this.fail(this.config.problem);
    this.render();
  }

  bind() {
    const { play, back, forward, voice, edit } = this.ui;
    // The pointer on Play, or the focus: a press may come, so its socket opens now.
    for (const name of ["pointerenter", "pointermove", "focus"]) {
      play.addEventListener(name, (event) => this.warmUp(event));
    }
    // unlockAudio() runs synchronously inside each gesture (mobile Safari), before any
    // await, but after the session's POST and socket have gone out: creating the page's
    // AudioContext takes milliseconds (3 to 9 in Chromium here; 70 a browser's first).
    play.addEventListener("pointerdown", (event) => this.pressed(event));
    play.addEventListener("keydown", (event) => this.pressed(event));
    play.addEventListener("click", () => {
      this.toggle();
      unlockAudio();
    });
    back?.addEventListener("click", () => this.step(-1));
    forward?.addEventListener("click", () => this.step(1));
    voice.addEventListener("change", () => this.voiceChanged());
    edit?.addEventListener("click", () => this.edit());
  }

  get busy() {
    return BUSY.has(this.state);
  }

  // --- Commands ----------------------------------------------------------------------

  toggle() {
    if (this.busy) this.pause();
    else this.play();
  }

  /**
   * Play pressed by the mouse, or by Space: the session is created now, and the click
   * that plays it comes when the button or the key is released, a tenth of a second
   * later, when the first chunk is often in hand already. A press that does not end in a
   * click drops its session. Touch (a press may begin a scroll) and Enter (it clicks as
   * it goes down) wait for the click; so do an editable player, whose text is taken at
   * the click, and a broken session's player, which keeps what it received until a
   * click replaces it.
   */
  pressed(event) {
    const byKey = event.type === "keydown";
    if (byKey) {
      const modified = event.ctrlKey || event.altKey || event.metaKey || event.shiftKey;
      if (event.key !== " " || event.repeat || modified) return;
    } else if (event.pointerType !== "mouse" || event.button !== 0 || event.ctrlKey) {
      return; // ctrlKey: a Mac's context click, which no click follows
    }
    if (this.config.problem || this.busy || this.editable || this.broken) return;
    if (!this.needsSession()) return;
    this.prepare();
    unlockAudio();
    const press = (this.press = { key: this.sessionKey });
    const ends = byKey ? ["keyup"] : ["pointerup", "pointercancel"];
    const released = (end) => {
      if (end.type === "keyup" && end.key !== " ") return;
      for (const name of ends) window.removeEventListener(name, released, true);
      setTimeout(() => {
        if (this.press !== press) return; // clicked: play() took it
        this.press = null;
        if (this.busy || this.sessionKey !== press.key) return;
        this.discardSession();
        this.render();
      }, PRESS_WITHOUT_CLICK_MS);
    };
    for (const name of ends) window.addEventListener(name, released, true);
  }

  /** Play from where it stands (the start, or where it was paused). */
  play({ source = "user", restart = false } = {}) {
    this.press = null;
    if (this.editable && !this.takeEditorText()) return;
    this.error = "";
    this.emit("play", { source });
    if (this.needsSession()) this.startSession();
    unlockAudio();
    const scheduler = this.ensureScheduler();
    if (restart || scheduler.ended) scheduler.pausedAt = 0;
    scheduler.play();
    this.setState(this.session ? "buffering" : "starting");
    this.startTicking();
  }

  pause() {
    this.scheduler?.pause();
    this.setState(this.scheduler?.received ? "paused" : "idle");
    this.emit("pause");
  }

  /** Create the session and start receiving audio without playing (Play all's next scene). */
  prepare() {
    if (this.needsSession()) this.startSession();
  }

  /** A sentence was clicked: play from it. */
  pick(seq) {
    unlockAudio();
    this.seekTo(seq, { play: true });
  }

  seekTo(seq, { play = false } = {}) {
    const scheduler = this.scheduler;
    if (!scheduler || !scheduler.seek(seq)) return;
    if (play && !scheduler.playing) this.play();
    else if (this.state === "ended") this.setState("paused");
    this.render();
  }

  /** Previous (-1) or next (+1) sentence; "back" first restarts the current one. */
  step(delta) {
    const scheduler = this.scheduler;
    if (!scheduler || !scheduler.received) return;
    const position = scheduler.position();
    const current = Math.min(scheduler.seqAt(position), scheduler.received - 1);
    let target = current + delta;
    const into = position - scheduler.items[current].start;
    if (delta === -1 && into > RESTART_SENTENCE_AFTER) target = current;
    this.seekTo(Math.max(0, Math.min(scheduler.received - 1, target)));
  }

  /** Seek to a fraction of the text, within what has arrived. */
  jump(fraction) {
    if (!this.chunks.length) return;
    const chars = fraction * this.textLength;
    let seq = this.chunks.findIndex((meta) => meta.char_end > chars);
    if (seq < 0) seq = this.chunks.length - 1;
    this.seekTo(seq);
  }

  voiceChanged() {
    const wasPlaying = this.busy;
    this.discardSession();
    this.setState("idle");
    if (wasPlaying) this.play();
    this.render();
  }

  edit() {
    if (this.busy) this.pause();
    this.showEditor(true);
    this.ui.editor.focus();
  }

  showEditor(editing) {
    this.ui.editorBox.hidden = !editing;
    this.ui.reading.hidden = editing;
  }

  /** Editable players narrate what is typed. False (with a message) when it is empty. */
  takeEditorText() {
    const text = normaliseText(this.ui.editor.value);
    if (!text.trim()) {
      this.fail(describeError({ code: "empty_text" }));
      return false;
    }
    this.config.text = text;
    this.showEditor(false);
    return true;
  }

  // --- Session -----------------------------------------------------------------------

  /** The voice and text a session is for (the text: the player's, or one given). */
  currentKey(text = this.config.text) {
    return `${this.ui.voice.value}\u0000${text}`;
  }

  needsSession() {
    return this.broken || this.sessionKey !== this.currentKey();
  }

  payload() {
    const payload = {};
    if (this.ui.voice.value) payload.voice = this.ui.voice.value;
    if (this.config.subject && !this.editable) payload.scene = this.config.subject;
    else payload.text = this.config.text;
    return payload;
  }

  async startSession() {
    this.discardSession();
    this.sessionKey = this.currentKey();
    const attempt = {}; // this call's: a later startSession or discardSession supersedes it
    this.creating = attempt;
    // The page chooses the id and opens the socket while the POST is in flight (or
    // before it, warmUp), so the first chunk can come the moment it is made, not a round
    // trip and a handshake later.
    const warm = this.takeWarm();
    const id = warm ? warm.session.id : this.earlySockets ? newSessionId() : null;
    if (warm) {
      this.stream = warm;
      this.onTransport(warm.transport);
    } else if (id) {
      this.openStream(this.expectedSession(id), { pending: true });
    }
    let session;
    try {
      const payload = id ? { ...this.payload(), id } : this.payload();
      session = await createSession(this.config.sessionsUrl, payload, this.config.csrf);
    } catch (error) {
      if (this.creating !== attempt) return;
      this.creating = null;
      this.stream?.cancel(); // a reply lost after the session was made (a proxy's 504)
      this.stream?.close();
      this.stream = null;
      this.sessionKey = null;
      this.scheduler?.pause();
      this.fail(describeError(error));
      return;
    }
    this.earlySockets = true; // the reply set the session cookie
    if (this.creating !== attempt) {
      cancelSession(session.status_url, this.config.csrf); // superseded while it was created
      return;
    }
    this.creating = null;
    this.session = session;
    this.audioUrl = session.audio_url;
    if (this.state === "starting") this.setState("buffering");
    if (this.stream?.session.id === session.id) {
      this.stream.confirm(session);
    } else {
      this.stream?.close(); // a server that did not take the chosen id (an older one)
      this.openStream(session);
    }
  }

  /** The URLs a session with this id will have (the API's reply confirms them). */
  expectedSession(id) {
    const base = this.config.sessionsUrl.replace(/\/?$/, "/");
    return { id, ws_url: `${this.config.socketsUrl}${id}/`, status_url: `${base}${id}/` };
  }

  openStream(session, options = {}) {
    this.stream = this.newStream(session, options);
    this.stream.start();
  }

  /** A stream whose events reach the player while it is the player's stream. */
  newStream(session, options = {}) {
    const mine = (handler) => (...args) => {
      if (this.stream === stream) handler(...args);
    };
    const stream = new ChunkStream(
      session,
      {
        session: mine((frame) => this.onStatus(frame)),
        chunk: mine((meta, bytes, rate, part) => this.onChunk(meta, bytes, rate, part)),
        status: mine((frame) => this.onStatus(frame)),
        done: mine((frame) => this.onDone(frame)),
        error: mine((frame) => this.onStreamError(frame)),
        transport: mine((transport) => this.onTransport(transport)),
        parked: (code) => this.warmParked(stream, code),
      },
      { ...this.streamOptions, ...options },
    );
    return stream;
  }

  /**
   * The pointer is on Play (a finger too, as it comes down), or Play has the focus: open
   * the socket of the session a press would start, now, so that the press has only its
   * POST left to make and the first chunk comes a round trip sooner (docs/protocol.md,
   * "Open the socket before the press"). The socket waits for its session up to the
   * server's TTS_PENDING_SOCKET_S, which closes one that no press used by then; the
   * pointer's next move on Play opens another. Not before this browser has a session
   * cookie (it would be refused), nor where a press would start no session (it pauses or
   * resumes one), nor where the server's wait leaves a press no time to take it. One
   * such socket per page; each player opens at most one every WARM_EVERY_MS.
   */
  warmUp(event = null) {
    if (event && this.lingers(event)) this.lingeredAt = performance.now();
    const pressWouldStart = () => !this.config.problem && !this.busy && this.pressWouldStart();
    // The POST's connection first, whatever becomes of the socket (P88); the cheap test
    // first, for most pointer moves end there. Not for a finger: its press comes with its
    // arrival, and over HTTP/1.1 the GET would take the very connection the POST needs.
    if (event?.pointerType !== "touch" && this.config.voicesUrl && connectionIdle()
      && pressWouldStart()) {
      warmConnection(this.config.voicesUrl);
    }
    const warm = this.warm;
    const age = performance.now() - this.warmedAt;
    // Waiting, or opening its socket again after a drop (with its own backoff and limit);
    // one refused or given up on is gone already (warmParked).
    if (warm && age < this.warmLimit() && !warm.finished && !warm.stopped) {
      // Back on Play (or the focus back) while it waits: renewed as if it had just opened.
      if (event && this.lingers(event) && !this.renewal) this.renewWarm(age);
      return;
    }
    if (age < WARM_EVERY_MS || !this.earlySockets || this.warmLimit() <= 0) return;
    if (!pressWouldStart()) return;
    const id = newSessionId();
    if (!id) return;
    this.dropWarm();
    if (warmPlayer !== this) warmPlayer?.dropWarm();
    warmPlayer = this;
    this.warmedAt = performance.now();
    this.warm = this.newStream(this.expectedSession(id), { pending: true });
    this.warm.start();
    this.renewWarm();
  }

  /** The event says a press may come later, not only now: the mouse (or a pen) on Play,
   * or the keyboard's focus. A finger's arrival is its press; a click's focus comes with
   * the press. */
  lingers(event) {
    if (event.type === "focus") return this.ui.play.matches(":focus-visible");
    return event.pointerType === "mouse" || event.pointerType === "pen";
  }

  /** Shortly before the socket ahead comes to the end of its use (warmLimit), open
   * another in its place if the mouse still rests on Play or Play still has the keyboard's
   * focus, they came or moved there less than lingerMs ago, and the page is seen. ``age``:
   * the socket's, in ms. */
  renewWarm(age = 0) {
    this.cancelRenewal();
    const limit = this.warmLimit();
    const at = Math.max(limit - RENEW_LEAD_MS, limit / 2);
    this.renewal = setTimeout(() => this.renew(), Math.max(0, at - age));
  }

  renew() {
    this.renewal = null;
    const { play } = this.ui;
    const still = play.matches(":hover") || play.matches(":focus-visible");
    const recent = performance.now() - this.lingeredAt < this.lingerMs;
    const old = this.warm;
    if (!still || !recent || document.hidden || !old) return;
    // The old one stays takeable to the end of its use, while the new one opens.
    const spare = { stream: old, at: this.warmedAt };
    this.warm = null;
    this.warmedAt = -Infinity; // a renewal, not the pointer's next move: no WARM_EVERY_MS
    this.warmUp();
    if (!this.warm) { // none opened (a press would start nothing now): the old one stays
      [this.warm, this.warmedAt] = [old, spare.at];
      return;
    }
    this.dropSpare();
    this.spare = spare;
    const left = this.warmLimit() - (performance.now() - spare.at);
    setTimeout(() => this.spare === spare && this.dropSpare(), Math.max(0, left));
  }

  dropSpare() {
    this.spare?.stream.close();
    this.spare = null;
  }

  stopLingering() {
    this.lingeredAt = -Infinity;
    this.cancelRenewal();
  }

  cancelRenewal() {
    clearTimeout(this.renewal);
    this.renewal = null;
  }

  /** A press on Play would start a session: none yet for this text and voice, or a
   * broken one, or, in an editable player's open editor, a text not narrated yet (and
   * not empty: takeEditorText refuses that). */
  pressWouldStart() {
    if (!this.editable || this.ui.editorBox.hidden) return this.needsSession();
    const text = normaliseText(this.ui.editor.value);
    return Boolean(text.trim()) && (this.broken || this.currentKey(text) !== this.sessionKey);
  }

  /** ms a socket opened ahead may be taken by a press: the server's wait, less a margin
   * for the POST to arrive. */
  warmLimit() {
    return this.config.socketWait * 1000 - WARM_MARGIN_MS;
  }

  /** The socket warmUp opened, if it still waits for its session and will long enough
   * for the POST; the caller owns it. */
  takeWarm() {
    const { warm, spare } = this;
    this.warm = this.spare = null;
    this.stopLingering();
    const usable = (stream, at) => stream?.waiting && performance.now() - at < this.warmLimit();
    let taken = null;
    if (usable(warm, this.warmedAt)) taken = warm;
    else if (usable(spare?.stream, spare?.at)) taken = spare.stream; // the new one not yet open
    for (const stream of [warm, spare?.stream]) if (stream !== taken) stream?.close();
    return taken;
  }

  /** A stream opened before its POST stopped until one comes (ChunkStream.park): a socket
   * opened ahead is done with. Refused for want of a session cookie (4403, which expired
   * since the page was made), or no socket would open (null: sockets blocked on this
   * network): no more opened ahead until a POST's reply. */
  warmParked(stream, code) {
    if (stream !== this.warm) return; // a press's: its reply opens it again
    this.dropWarm();
    if (code === 4403 || code === null) this.earlySockets = false;
  }

  dropWarm() {
    this.warm?.close();
    this.warm = null;
    this.dropSpare();
    this.cancelRenewal();
  }

  /** Stop listening to the current session (cancelling its synthesis if unfinished). */
  discardSession() {
    const { stream, session } = this;
    if (stream) {
      // Before the POST's reply there is no session to cancel by HTTP: the superseded
      // reply is cancelled when it comes (startSession).
      if (!stream.finished && !stream.cancel() && session) {
        cancelSession(session.status_url, this.config.csrf);
      }
      stream.close();
    }
    Object.assign(this, {
      stream: null, session: null, sessionKey: null, creating: null, broken: false, chunks: [],
      total: null, audioUrl: null, completed: false, serverStatus: "", notice: "",
      transport: "idle",
    });
    this.scheduler?.reset();
    this.view.setText(this.config.text);
    this.measureText();
  }

  // --- Stream events -----------------------------------------------------------------

  /** The next bytes of chunk meta.seq: all of it, or a part (the stream's parts). */
  onChunk(meta, bytes, sampleRate, { first = true, last = true } = {}) {
    const scheduler = this.ensureScheduler();
    const buffer = toAudioBuffer(scheduler.ctx, bytes, sampleRate);
    if (!first) {
      scheduler.extend(meta.seq, buffer, last);
      this.render();
      return;
    }
    if (meta.seq !== scheduler.received) return; // the stream gives each once, in order
    // Known before it is scheduled: scheduling can call back into the display (an
    // underrun re-renders it), which reads the chunk's text for every scheduled chunk.
    this.chunks[meta.seq] = meta;
    this.view.addChunk(meta);
    this.setTotal(meta.total_chunks);
    scheduler.add(meta.seq, buffer, meta.cushion_ms, last);
    this.render();
  }

  onStatus(frame) {
    this.serverStatus = describeStatus(frame);
    this.setTotal(frame.total_chunks);
    this.render();
  }

  onDone(frame) {
    this.completed = true;
    this.audioUrl = frame.audio_url || this.audioUrl;
    this.serverStatus = "";
    this.setTotal(frame.total_chunks);
    this.render();
  }

  onStreamError(frame) {
    if (!frame.fatal) {
      console.warn("narration:", frame.code, frame.message);
      return;
    }
    this.broken = true;
    const message = describeError(frame);
    if (!this.chunks.length) {
      this.scheduler?.pause();
      this.fail(message);
      return;
    }
    // Keep what arrived playable; say why the rest is missing.
    this.notice = message;
    this.setTotal(this.chunks.length);
    this.render();
  }

  onTransport(transport) {
    this.transport = transport;
    this.render();
  }

  setTotal(total) {
    if (total === null || total === undefined) return;
    this.total = total;
    this.scheduler?.setTotal(total);
  }

  // --- Playback ----------------------------------------------------------------------

  ensureScheduler() {
    if (!this.scheduler) {
      this.scheduler = new Scheduler(audioContext(), {
        onEnded: () => this.finished(),
        onUnderrun: () => this.render(),
        partGap: () => this.partGap(),
      });
      if (this.total !== null) this.scheduler.setTotal(this.total);
    }
    return this.scheduler;
  }

  /**
   * Seconds a chunk's next part may take after the one before (asked only as a run starts
   * on a chunk still coming in parts): the quickest round trip seen, half the socket's
   * handshake or the POST's, once the browser's timeline has it (without the TLS
   * handshake that a wss: socket's includes).
   */
  partGap() {
    const stream = this.stream;
    if (!stream) return 0;
    stream.noteRoundTrip(requestRoundTrip(this.config.sessionsUrl));
    return stream.roundTrip || 0;
  }

  finished() {
    this.stopTicking();
    this.setState("ended");
    this.emit("ended");
    this.render();
  }

  startTicking() {
    if (this.ticker) return;
    this.ticker = setInterval(() => this.tick(), TICK_MS);
  }

  stopTicking() {
    clearInterval(this.ticker);
    this.ticker = null;
  }

  tick() {
    const scheduler = this.scheduler;
    if (!scheduler) return;
    scheduler.checkEnd();
    if (scheduler.playing) {
      const waiting = scheduler.starved();
      this.setState(waiting ? (this.session ? "buffering" : "starting") : "playing");
    } else if (!this.busy) {
      this.stopTicking();
    }
    this.render();
  }

  fail(message) {
    this.error = message;
    this.stopTicking();
    this.setState("error");
    this.render();
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.root.dataset.state = state;
    this.emit("state", { state });
  }

  emit(name, detail = {}) {
    this.root.dispatchEvent(
      new CustomEvent(`tts:${name}`, { bubbles: true, detail: { player: this, ...detail } }),
    );
  }

  // --- Display -----------------------------------------------------------------------

  measureText() {
    this.textLength = Math.max(1, Array.from(this.config.text.trimEnd()).length);
  }

  /** {generated, played} as fractions of the text, for the progress bar. */
  fractions() {
    const scheduler = this.scheduler;
    const last = this.chunks[this.chunks.length - 1];
    const complete = scheduler?.complete && this.completed;
    const generated = complete ? 1 : last ? last.char_end / this.textLength : 0;
    if (!scheduler || !last) return { generated, played: 0 };
    if (scheduler.ended) return { generated, played: 1 };
    const position = scheduler.position();
    const item = scheduler.items[scheduler.seqAt(position)];
    if (!item) return { generated, played: last.char_end / this.textLength };
    const meta = this.chunks[item.seq];
    // All of it, parts still coming too (the frame's own figures, where it has them).
    const duration = meta.sample_rate ? meta.samples / meta.sample_rate : item.duration;
    const within = duration ? Math.min(1, (position - item.start) / duration) : 0;
    const chars = meta.char_start + (meta.char_end - meta.char_start) * within;
    return { generated, played: Math.min(generated, chars / this.textLength) };
  }

  currentSeq() {
    const scheduler = this.scheduler;
    if (!scheduler || !scheduler.received || this.state === "idle") return null;
    if (scheduler.ended) return null;
    return Math.min(scheduler.seqAt(scheduler.position()), scheduler.received - 1);
  }

  statusMessage() {
    if (this.state === "error") return this.error;
    if (this.notice) return this.notice;
    if (this.transport === "reconnecting" && !this.completed) return STATE_MESSAGES.reconnecting;
    if (this.state === "starting") return this.serverStatus || STATE_MESSAGES.starting;
    if (this.state === "buffering") {
      if (this.transport === "http") return STATE_MESSAGES.fallback;
      if (this.scheduler?.pacing) return STATE_MESSAGES.pacing;
      if (this.scheduler?.underruns) return "Waiting for the narrator to catch up…";
      return this.serverStatus || STATE_MESSAGES.buffering;
    }
    if (this.state === "playing" && this.transport === "http") {
      return "Playing. (The live connection is blocked, so audio comes over HTTP.)";
    }
    if (this.state === "ended" && this.completed) return "Finished. The audio is ready to download.";
    return STATE_MESSAGES[this.state] || "";
  }

  render() {
    const { play, playLabel, back, forward, time, status, download } = this.ui;
    const label = BUTTON_LABELS[this.state] || "Play";
    setText(playLabel, label);
    const name = this.config.title ? `${label}: ${this.config.title}` : `${label} narration`;
    if (play.getAttribute("aria-label") !== name) play.setAttribute("aria-label", name);
    play.disabled = Boolean(this.config.problem);
    const scheduler = this.scheduler;
    const received = scheduler?.received || 0;
    if (back) back.disabled = received === 0;
    if (forward) forward.disabled = received === 0;
    const seq = this.currentSeq();
    this.view.highlight(seq);
    const { generated, played } = this.fractions();
    this.progress.update(generated, played, this.positionLabel(seq));
    setText(time, this.timeLabel());
    setText(status, this.statusMessage());
    const ready = this.completed && this.audioUrl;
    download.hidden = !ready;
    if (ready && download.getAttribute("href") !== this.audioUrl) download.href = this.audioUrl;
  }

  positionLabel(seq) {
    if (seq === null) return this.state === "ended" ? "Finished" : "Not started";
    const of = this.total ? ` of ${this.total}` : "";
    return `Sentence ${seq + 1}${of}, ${formatTime(this.scheduler.position())}`;
  }

  timeLabel() {
    const scheduler = this.scheduler;
    if (!scheduler || !scheduler.received) return "0:00";
    const now = formatTime(scheduler.position());
    return scheduler.complete ? `${now} / ${formatTime(scheduler.receivedDuration)}` : now;
  }

  snapshot() {
    const scheduler = this.scheduler;
    const { generated, played } = this.fractions();
    return {
      id: this.root.id,
      state: this.state,
      sessionId: this.session?.id || null,
      transport: this.transport,
      voice: this.ui.voice.value,
      position: scheduler ? scheduler.position() : 0,
      duration: scheduler?.complete ? scheduler.receivedDuration : null,
      received: scheduler?.received || 0,
      total: this.total,
      completed: this.completed,
      currentSeq: this.currentSeq(),
      highlights: [...this.view.history],
      generated,
      played,
      underruns: scheduler?.underruns || 0,
      cushion: scheduler?.cushion || null,
      pacing: scheduler?.pacing || false,
      stream: this.stream ? { ...this.stream.stats, lastSeq: this.stream.lastSeq } : null,
      warm: this.warm ? { sessionId: this.warm.session.id, waiting: this.warm.waiting } : null,
      message: this.ui.status.textContent,
      audioUrl: this.completed ? this.audioUrl : null,
    };
  }

  async loadVoices() {
    const { voice: select, voiceNotes } = this.ui;
    try {
      const catalog = await fetchVoices(this.config.voicesUrl);
      const voice = fillVoicePicker(select, voiceNotes, catalog, this.config.voice);
      if (voice && !voice.available && !this.config.problem) {
        this.notice = describeError({ code: "voice_unavailable", message: voice.reason || "" });
      }
    } catch {
      select.title = "The list of voices could not be loaded; the default voice is used.";
    }
    this.render();
  }
}

function setText(element, text) {
  if (element && element.textContent !== text) element.textContent = text;
}

/** Bind every player (and Play all list) under `root` that is not bound yet. */
export function initPlayers(root = document) {
  for (const element of root.querySelectorAll("[data-tts-player]")) {
    if (!playerFor(element)) register(new NarrationPlayer(element));
  }
  bindPlaylists(root);
}

/** One narration at a time: a player that starts pauses the others. */
function pauseOthers(event) {
  for (const player of players) {
    if (player !== event.detail.player && player.busy) player.pause();
  }
}

document.addEventListener("tts:play", pauseOthers);
initPlayers();
window.__narrator = {
  players,
  scan: initPlayers,
  snapshot: () => players.map((player) => player.snapshot()),
};
