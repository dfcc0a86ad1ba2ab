// Live progress on a running narration's admin page. Staff may listen on any session's
// socket; this updates the status, the progress and the chunk table as chunks are stored.
// Audio frames are ignored: each row plays its chunk from the HTTP endpoint.

const ACTIVE = new Set(["queued", "running"]);
const RETRY_MS = [1000, 2000, 5000, 10000];

function socketUrl(path, after) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}?after=${after}`;
}

function fields(name) {
  return document.querySelectorAll(`[data-tts-field="${name}"]`);
}

function showStatus(status) {
  for (const el of fields("status")) {
    el.textContent = status.charAt(0).toUpperCase() + status.slice(1);
    el.className = `tts-status tts-status-${status}`;
  }
}

function showProgress(state) {
  for (const el of fields("progress")) el.textContent = `${state.completed} / ${state.total ?? "?"}`;
  for (const bar of fields("bar")) {
    bar.max = state.total || 1;
    bar.value = state.total ? state.completed : 0;
  }
}

function showNote(text, withReload) {
  for (const el of fields("note")) {
    el.hidden = false;
    el.textContent = `${text} `;
    if (withReload) {
      const link = document.createElement("a");
      link.href = location.href;
      link.textContent = "Reload the page";
      el.append(link);
    }
  }
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function chunkRow(table, frame) {
  const row = document.createElement("tr");
  row.dataset.seq = String(frame.seq);
  row.append(cell(String(frame.seq)), cell(frame.text), cell(`${frame.char_start}–${frame.char_end}`),
    cell(`${frame.duration_ms} ms`), cell(""), cell(""));
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "none";
  audio.src = `${table.dataset.chunkBase}${frame.seq}`;
  const player = document.createElement("td");
  player.append(audio);
  row.append(player);
  return row;
}

function addChunk(table, frame) {
  const body = table.tBodies[0];
  if (body.querySelector(`tr[data-seq="${frame.seq}"]`)) return;
  body.querySelector(".tts-no-chunks")?.remove();
  body.append(chunkRow(table, frame));
}

function handleFrame(table, state, frame) {
  if (frame.type === "session" || frame.type === "status") {
    state.completed = Math.max(state.completed, frame.completed_chunks ?? 0);
    state.total = frame.total_chunks ?? state.total;
    showStatus(frame.status);
    showProgress(state);
  } else if (frame.type === "chunk") {
    state.after = Math.max(state.after, frame.seq);
    state.completed = Math.max(state.completed, frame.seq + 1);
    state.total = frame.total_chunks ?? state.total;
    addChunk(table, frame);
    showProgress(state);
  } else if (frame.type === "done") {
    state.over = true;
    showStatus("completed");
    showNote("Completed.", true);
  } else if (frame.type === "error" && frame.fatal) {
    state.over = true;
    showNote(`Stopped: ${frame.message}`, true);
  }
}

function connect(table, state) {
  const socket = new WebSocket(socketUrl(table.dataset.wsPath, state.after));
  socket.binaryType = "arraybuffer";
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") return;
    state.attempt = 0;
    handleFrame(table, state, JSON.parse(event.data));
  });
  socket.addEventListener("close", (event) => {
    if (state.over || event.code === 4403 || event.code === 4404) return;
    const delay = RETRY_MS[Math.min(state.attempt, RETRY_MS.length - 1)];
    state.attempt += 1;
    setTimeout(() => connect(table, state), delay);
  });
}

function start() {
  const table = document.getElementById("tts-chunks");
  if (!table || !ACTIVE.has(table.dataset.status)) return;
  const after = Number(table.dataset.after);
  connect(table, { after, completed: after + 1, total: null, over: false, attempt: 0 });
}

start();
