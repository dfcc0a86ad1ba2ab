// A session's chunks, in order, exactly once, over whatever connection works.
// The WebSocket resumes with ?after=<last contiguous seq> after an unexpected close,
// with exponential backoff and jitter; an application ping and a silence watchdog catch
// connections that died without a close (a laptop lid, a lost Wi-Fi). After repeated
// failures to open a socket, the same chunks come over HTTP instead (poll.js).
// A stream may start before its session exists (pending: the page chose the id and opens
// the socket while the POST is in flight, or before it); confirm() gives it the API's reply.
// A chunk's audio may come in parts (?parts=1: the server sends its PCM as several binary
// frames, the first small enough for a fresh connection's first TCP window), and each part
// is handed on as it comes: the player can start on the first while the rest is on its way.

import { HttpPoller } from "./poll.js";
import { parseChunkFrame } from "./pcm.js";

export const STREAM_DEFAULTS = {
  pingEvery: 10000, // ms between application pings
  silenceLimit: 25000, // ms without any frame before the socket is presumed dead
  probeLimit: 5000, // ms to answer the ping sent when the page comes back (a lid opened)
  maxOpenFailures: 3, // sockets that never opened, in a row, before falling back to HTTP
  backoffBase: 300,
  backoffMax: 10000,
  parts: true, // ask for each chunk's audio in growing parts (docs/protocol.md)
};

const FATAL_CLOSES = { 4403: "forbidden", 4404: "not_found" };

/** Exponential backoff with "equal jitter": half fixed, half random. */
export function backoffDelay(attempt, { base, max }, random = Math.random) {
  const ceiling = Math.min(max, base * 2 ** attempt);
  return ceiling / 2 + random() * (ceiling / 2);
}

/** The socket URL: ws: or wss: from this page's protocol, the path from the API. */
export function socketUrl(wsUrl, after, { pending = false, parts = false } = {}) {
  const path = new URL(wsUrl, window.location.href).pathname;
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const flags = `${pending ? "&pending=1" : ""}${parts ? "&parts=1" : ""}`;
  return `${scheme}//${window.location.host}${path}?after=${after}${flags}`;
}

/** A random session id for the POST's `id` (null where the browser has no crypto). */
export function newSessionId(crypto = globalThis.crypto) {
  if (typeof crypto?.randomUUID === "function") return crypto.randomUUID();
  if (typeof crypto?.getRandomValues !== "function") return null;
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; // version 4
  b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export class ChunkStream {
  /**
   * @param {{id: string, ws_url: string, status_url: string}} session the API's reply
   *   (with options.pending: the chosen id and the URLs it will have)
   * @param {{session, chunk, status, done, error, transport}} handlers callbacks;
   *   chunk(meta, bytes, sampleRate, {first, last}): the next bytes of chunk meta.seq, in
   *   order, each byte once; `first` for its first bytes, `last` for the bytes that end it;
   *   optional parked(code): see park()
   */
  constructor(session, handlers, options = {}) {
    this.session = session;
    this.handlers = handlers;
    this.options = { ...STREAM_DEFAULTS, ...options };
    this.confirmed = !this.options.pending; // the session exists (its POST succeeded)
    this.earlyRefused = false; // a socket opened before the reply was refused
    this.sessionSeen = false; // a `session` frame came: the session exists and is ours
    this.admitted = false; // the current socket's `session` frame came: it is let in
    this.waitingForConfirm = false; // refused before the POST's reply: retry after it
    this.lastSeq = -1; // last contiguous seq delivered whole
    this.partial = null; // { seq, bytes }: the chunk after lastSeq, delivered in part
    this.sampleRate = null;
    this.pendingMeta = new Map(); // seq -> chunk frame, waiting for its binary frame
    this.ahead = new Map(); // seq -> [meta, bytes, rate] that arrived out of order
    this.finished = false; // done or a fatal error: nothing more will come
    this.stopped = false; // closed by the page
    this.ws = null;
    this.poller = null;
    this.openFailures = 0;
    this.attempt = 0;
    this.timers = {};
    this.transport = "idle";
    this.stats = { sockets: 0, reconnects: 0, duplicates: 0 };
    // Seconds: about how long each next part of a chunk takes after the one before, the
    // quickest round trip seen: half a socket's handshake (TCP's and the upgrade's round
    // trips; TLS's too, over wss:), or a request's (noteRoundTrip). Null: none yet.
    this.roundTrip = null;
    this.onOnline = () => this.reconnectNow();
    this.onVisible = () => {
      if (document.visibilityState === "visible") this.probe();
    };
  }

  start() {
    window.addEventListener("online", this.onOnline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.connect();
  }

  /**
   * Opened before its POST (pending) and still waiting for it: a socket open or opening,
   * none refused. The server closes a socket whose session has not come within
   * TTS_PENDING_SOCKET_S; a stream whose socket was refused waits for confirm().
   */
  get waiting() {
    const ws = this.ws;
    return (
      !this.confirmed && !this.stopped && !this.finished && !this.waitingForConfirm &&
      ws !== null && ws.readyState <= WebSocket.OPEN
    );
  }

  /** Before the POST's reply: nothing more until confirm(). `code`: the refusal's close
   * code (4403: the browser has no session cookie; 4404: no session came in time), or
   * null when no socket would open. */
  park(code) {
    this.waitingForConfirm = true;
    this.handlers.parked?.(code);
  }

  /** The POST succeeded: its reply. A socket refused before it (the session cookie the
   * page counted on had expired: this reply sets a new one) is opened again now. */
  confirm(session) {
    this.session = session;
    this.confirmed = true;
    if (!this.waitingForConfirm || this.stopped || this.finished) return;
    this.waitingForConfirm = false;
    this.connect();
  }

  /** A round trip measured (seconds; null or 0: none): the quickest is kept. */
  noteRoundTrip(seconds) {
    if (seconds > 0) this.roundTrip = Math.min(this.roundTrip ?? seconds, seconds);
  }

  /** Stop listening (the page is done with this session). */
  close() {
    this.stopped = true;
    this.unlisten();
    this.clearTimers();
    this.poller?.stop();
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  }

  /**
   * Ask the server to stop synthesizing; false when no socket can carry it: none is open,
   * or the open one has not been let in yet (no `session` frame on it: a socket opened
   * with the POST waits for its session, and the server ignores a cancel meanwhile).
   */
  cancel() {
    if (this.ws?.readyState !== WebSocket.OPEN || !this.admitted) return false;
    this.ws.send(JSON.stringify({ type: "cancel" }));
    return true;
  }

  // --- WebSocket ---------------------------------------------------------------------

  connect() {
    if (this.stopped || this.finished) return;
    this.setTransport(this.stats.sockets ? "reconnecting" : "connecting");
    // Opened before the session surely exists: a refusal may mean "not yet this
    // browser's", so it is not final until a socket opened after the reply agrees.
    const early = this.options.pending && !this.earlyRefused && !this.sessionSeen;
    let ws;
    try {
      const flags = { pending: early, parts: this.options.parts };
      ws = new WebSocket(socketUrl(this.session.ws_url, this.lastSeq, flags));
    } catch {
      this.socketClosed({ code: 1006 }, false, early);
      return;
    }
    this.stats.sockets += 1;
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.admitted = false;
    let opened = false;
    const began = performance.now();
    ws.onopen = () => {
      if (ws !== this.ws) return;
      opened = true;
      this.noteRoundTrip((performance.now() - began) / 2000);
      this.openFailures = 0;
      this.setTransport("websocket");
      this.startHeartbeat(ws);
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastFrameAt = Date.now();
      this.receive(event.data);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.socketClosed(event, opened, early);
    };
  }

  socketClosed(event, opened, early = false) {
    this.ws = null;
    this.clearTimers();
    if (this.stopped || this.finished) return;
    const fatal = FATAL_CLOSES[event.code];
    if (fatal && early) {
      this.earlyRefused = true; // ask again once the POST's reply is in
      if (this.confirmed) this.connect();
      else this.park(event.code);
      return;
    }
    if (fatal) {
      this.finish();
      this.handlers.error({ code: fatal, fatal: true, message: "" });
      return;
    }
    if (!opened) this.openFailures += 1;
    if (this.openFailures >= this.options.maxOpenFailures) {
      this.fallBack();
      return;
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    const delay = backoffDelay(this.attempt, {
      base: this.options.backoffBase,
      max: this.options.backoffMax,
    });
    this.attempt += 1;
    this.stats.reconnects += 1;
    this.setTransport("reconnecting");
    this.timers.reconnect = setTimeout(() => this.connect(), delay);
  }

  /** The browser says the network is back: skip the rest of the backoff. */
  reconnectNow() {
    if (this.timers.reconnect === undefined || this.stopped || this.finished) return;
    clearTimeout(this.timers.reconnect);
    delete this.timers.reconnect;
    this.connect();
  }

  startHeartbeat(ws) {
    this.lastFrameAt = Date.now();
    this.probeAt = null;
    this.timers.ping = setInterval(() => this.ping(ws), this.options.pingEvery);
    this.timers.watchdog = setInterval(() => this.watch(), 1000);
  }

  ping(ws) {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ping" }));
  }

  /** The page is visible again (after sleep, say): ask at once whether the socket lives. */
  probe() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    this.probeAt = Date.now();
    this.ping(this.ws);
  }

  watch() {
    const now = Date.now();
    const probeUnanswered = this.probeAt !== null && this.lastFrameAt < this.probeAt;
    if (probeUnanswered && now - this.probeAt > this.options.probeLimit) this.dropSocket();
    else if (now - this.lastFrameAt > this.options.silenceLimit) this.dropSocket();
  }

  /** Abandon the current socket as dead (or for a test) and resume on a new one. */
  dropSocket() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null; // its late events are ignored from now on
    try {
      ws.close(4000, "silent");
    } catch {
      // closing a dead socket can throw in some browsers
    }
    this.socketClosed({ code: 4000 }, true);
  }

  clearTimers() {
    clearInterval(this.timers.ping);
    clearInterval(this.timers.watchdog);
    clearTimeout(this.timers.reconnect);
    this.timers = {};
  }

  receive(data) {
    if (typeof data !== "string") {
      const { seq, bytes } = parseChunkFrame(data);
      const meta = this.pendingMeta.get(seq);
      if (!meta) return;
      // This socket's parts of the chunk come in order: where this one begins, and whether
      // it is the last (a chunk frame without `parts` has one binary frame).
      const offset = meta.received || 0;
      meta.received = offset + bytes.byteLength;
      meta.partsSeen = (meta.partsSeen || 0) + 1;
      const last = !(meta.parts > meta.partsSeen);
      if (last) this.pendingMeta.delete(seq);
      this.accept(meta, bytes, meta.sample_rate || this.sampleRate, offset, last);
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    this.receiveFrame(frame);
  }

  receiveFrame(frame) {
    switch (frame.type) {
      case "session":
        this.sessionSeen = true;
        this.admitted = true;
        this.sampleRate = frame.sample_rate || this.sampleRate;
        this.handlers.session(frame);
        break;
      case "chunk":
        this.pendingMeta.set(frame.seq, frame);
        break;
      case "status":
        this.handlers.status(frame);
        break;
      case "done":
        this.attempt = 0;
        this.finish();
        this.handlers.done(frame);
        break;
      case "error":
        if (frame.fatal) this.finish();
        this.handlers.error(frame);
        break;
      default: // pong, and frames a newer server may add
    }
  }

  // --- HTTP fallback -----------------------------------------------------------------

  fallBack() {
    if (!this.confirmed) {
      this.park(null); // nothing to poll before the session exists
      return;
    }
    this.setTransport("http");
    this.poller = new HttpPoller(this.session.status_url, {
      after: this.lastSeq, // a chunk delivered in part comes again whole: its rest is taken
      status: (frame) => this.handlers.status(frame),
      chunk: (meta, bytes, rate) => this.accept(meta, bytes, rate),
      done: (frame) => {
        this.finish();
        this.handlers.done(frame);
      },
      error: (frame) => {
        if (frame.fatal) this.finish();
        this.handlers.error(frame);
      },
    });
    this.poller.start();
  }

  // --- Delivery ----------------------------------------------------------------------

  /**
   * Deliver chunks in seq order, each byte exactly once, whatever path they came by.
   * `bytes` are the chunk's from `offset` on; `last` when they reach its end. Only the
   * next chunk is taken in part; one further ahead (the HTTP fallback fetches several at
   * once) waits, whole, for its turn.
   */
  accept(meta, bytes, sampleRate, offset = 0, last = true) {
    const seq = meta.seq;
    const rate = sampleRate || 22050;
    if (seq <= this.lastSeq || (seq > this.lastSeq + 1 && this.ahead.has(seq))) {
      this.stats.duplicates += 1;
      return;
    }
    if (seq > this.lastSeq + 1) {
      if (offset === 0 && last) this.ahead.set(seq, [meta, bytes, rate]);
      return;
    }
    this.take(meta, bytes, rate, offset, last);
    while (this.ahead.has(this.lastSeq + 1)) {
      const next = this.lastSeq + 1;
      const [m, b, r] = this.ahead.get(next);
      this.ahead.delete(next);
      this.take(m, b, r, 0, true);
    }
  }

  /** Hand on what the page does not have yet of the next chunk: the bytes past those it
   * was given before (a resumed socket sends a chunk cut off mid-way again, whole). */
  take(meta, bytes, rate, offset, last) {
    const given = this.partial?.seq === meta.seq ? this.partial.bytes : 0;
    const end = offset + bytes.byteLength;
    if (offset > given) return; // bytes before these never came: not on one socket
    if (end <= given && !last) return; // a part it has: a resumed socket's start of the chunk
    const fresh = bytes.subarray(Math.min(bytes.byteLength, given - offset));
    this.handlers.chunk(meta, fresh, rate, { first: given === 0, last });
    this.attempt = 0; // progress: the connection is healthy again
    if (last) {
      this.lastSeq = meta.seq;
      this.partial = null;
    } else {
      this.partial = { seq: meta.seq, bytes: end }; // more than given: see above
    }
  }

  finish() {
    this.finished = true;
    this.clearTimers();
    this.unlisten();
  }

  unlisten() {
    window.removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisible);
  }

  setTransport(transport) {
    if (transport === this.transport) return;
    this.transport = transport;
    this.handlers.transport(transport);
  }
}
