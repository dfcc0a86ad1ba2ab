// The narration HTTP API: create a session, list voices, cancel, read status and chunks.
// Errors become ApiError with the server's code, so messages.js can explain them.

export class ApiError extends Error {
  constructor({ status = 0, code = "network", message = "", fields = {}, retryAfter = null }) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.fields = fields;
    this.retryAfter = retryAfter;
  }
}

/** Django's CSRF token: the cookie when present (it rotates at login), else the page's copy. */
export function csrfToken(fallback = "") {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : fallback;
}

async function errorFrom(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy page, an HTML 500
  }
  const error = body.error || {};
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError({
    status: response.status,
    code: error.code || `http_${response.status}`,
    message: error.message || "",
    fields: error.fields || {},
    retryAfter: Number.isFinite(retry) ? retry : null,
  });
}

// When this page last had an HTTP reply (performance.now(); 0: the page's own).
let lastReply = 0;
// Idle longer than this, the page's kept-alive connection may be gone, or about to go:
// Apache and uvicorn close one after 5 s, nginx after 75, load balancers after about 60.
// A POST would then open a new one first (TCP's round trip, and TLS's over https).
export const CONNECTION_IDLE_MS = 3000;

/** No HTTP reply for CONNECTION_IDLE_MS: warmConnection would send its GET. */
export function connectionIdle(now = performance.now()) {
  return now - lastReply >= CONNECTION_IDLE_MS;
}

/**
 * The connection a POST is about to need, made ready while the pointer rests on Play
 * (P88): when no HTTP reply has come for CONNECTION_IDLE_MS, a small GET
 * (`url?warm=1`: the voice list) opens one again, or finds the one kept still open, so
 * that the press's POST goes out at once. True when it sent one.
 */
export function warmConnection(url, now = performance.now()) {
  if (!connectionIdle(now)) return false;
  lastReply = now; // one at a time
  const warmUrl = new URL(url, window.location.href);
  warmUrl.searchParams.set("warm", "1");
  fetch(warmUrl, { credentials: "same-origin", cache: "no-store" })
    .then((response) => response.arrayBuffer()) // read: the connection goes back to the pool
    .then(() => { lastReply = performance.now(); }, () => {});
  return true;
}

/** fetch() that throws ApiError for network failures and non-2xx replies. */
export async function request(url, { method = "GET", json, csrf, accept = "application/json" } = {}) {
  const headers = { Accept: accept };
  if (json !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken(csrf);
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: json === undefined ? undefined : JSON.stringify(json),
    });
  } catch (error) {
    throw new ApiError({ code: "network", message: String(error) });
  }
  lastReply = performance.now();
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/**
 * Seconds from the latest request to `url` going out to its reply's first byte (Resource
 * Timing): a round trip and the server's work, without the connection's set-up (TCP's,
 * TLS's); null where the browser does not say.
 */
export function requestRoundTrip(url, perf = globalThis.performance) {
  const entries = perf?.getEntriesByName?.(new URL(url, window.location.href).href) || [];
  const entry = entries[entries.length - 1];
  if (!entry?.requestStart || !(entry.responseStart > entry.requestStart)) return null;
  return (entry.responseStart - entry.requestStart) / 1000;
}

export async function requestJson(url, options) {
  return (await request(url, options)).json();
}

let creating = null; // the last POST of a session, until it has settled

/**
 * POST a new session: {text} or {scene}, plus voice. Resolves to {id, ws_url, ...}.
 * One at a time: a first visitor may have no session cookie yet (where the page gave none:
 * TTS_SESSION_ON_PAGE off), and two POSTs in flight together
 * would each start a different anonymous owner, leaving one narration "someone else's".
 * With none in flight it is sent at once, inside the caller's event handler, not a
 * microtask later, after the rest of the handler (the player's AudioContext, for one).
 */
export function createSession(url, payload, csrf) {
  const post = () => requestJson(url, { method: "POST", json: payload, csrf });
  const created = creating ? creating.then(post) : post();
  const settled = created
    .catch(() => {})
    .then(() => {
      if (creating === settled) creating = null;
    });
  creating = settled;
  return created;
}

export function cancelSession(statusUrl, csrf) {
  return request(`${statusUrl}cancel/`, { method: "POST", json: {}, csrf }).catch(() => null);
}

const voiceLists = new Map();

/** The voice catalog, fetched once per page however many players ask. */
export function fetchVoices(url) {
  if (!voiceLists.has(url)) {
    const pending = requestJson(url);
    pending.catch(() => voiceLists.delete(url));
    voiceLists.set(url, pending);
  }
  return voiceLists.get(url);
}

/** A chunk's WAV over HTTP: {ready: true, data} | {ready: false, gone, retryAfter}. */
export async function fetchChunk(statusUrl, seq) {
  try {
    const response = await request(`${statusUrl}chunks/${seq}`, { accept: "audio/wav" });
    return { ready: true, data: await response.arrayBuffer() };
  } catch (error) {
    if (error.code === "chunk_pending") {
      return { ready: false, gone: false, retryAfter: error.retryAfter || 1 };
    }
    if (error.code === "chunk_gone") return { ready: false, gone: true };
    throw error;
  }
}
