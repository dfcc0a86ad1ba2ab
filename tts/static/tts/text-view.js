// The narrated text, cut into one span per chunk as chunks arrive (char_start/char_end
// from the server), so the sentence being spoken can be highlighted and clicked.

/** Text as the server stores it: newlines normalised, NFC, control characters removed. */
export function normaliseText(text) {
  return String(text)
    .replace(/\r\n?/g, "\n")
    .normalize("NFC")
    .replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, "");
}

/** Maps the server's code-point offsets to JavaScript's UTF-16 offsets. */
export function offsetMapper(text) {
  if (!/[\ud800-\udfff]/.test(text)) return (offset) => offset;
  const units = [0];
  for (const char of text) units.push(units[units.length - 1] + char.length);
  return (offset) => units[Math.min(offset, units.length - 1)];
}

export class TextView {
  /**
   * @param {HTMLElement} element holds the text
   * @param {string} text what the server narrates (the tag renders the same)
   * @param {(seq: number) => void} onPick a ready sentence was clicked
   */
  constructor(element, text, onPick) {
    this.element = element;
    this.onPick = onPick;
    this.spans = [];
    this.current = null;
    this.history = []; // seqs highlighted, in order (the browser tests read it)
    element.addEventListener("click", (event) => this.clicked(event));
    this.setText(text);
  }

  /** Show `text` without any sentence marks (a new text or a new session). */
  setText(text) {
    this.text = normaliseText(text);
    this.toUnits = offsetMapper(this.text);
    this.element.replaceChildren(document.createTextNode(this.text));
    this.tail = this.element.firstChild;
    this.tailStart = 0;
    this.spans = [];
    this.current = null;
    this.history = [];
  }

  /** Wrap chunk `meta.seq`'s characters in a clickable span. Chunks come in seq order. */
  addChunk(meta) {
    if (this.spans[meta.seq]) return;
    const start = Math.max(this.toUnits(meta.char_start), this.tailStart);
    const end = Math.min(Math.max(this.toUnits(meta.char_end), start), this.text.length);
    const span = document.createElement("span");
    span.className = "tts-chunk";
    span.dataset.seq = String(meta.seq);
    span.title = "Play from here";
    if (this.tail && end > start) {
      const middle = start > this.tailStart ? this.tail.splitText(start - this.tailStart) : this.tail;
      const rest = middle.splitText(end - start);
      span.append(middle);
      rest.before(span);
      this.tail = rest;
      this.tailStart = end;
    }
    this.spans[meta.seq] = span;
  }

  /** Mark chunk `seq` as the one being spoken (null: none). */
  highlight(seq) {
    if (seq === this.current) return;
    this.spans[this.current]?.classList.remove("is-speaking");
    this.current = seq;
    const span = this.spans[seq];
    if (!span) return;
    span.classList.add("is-speaking");
    this.history.push(seq);
  }

  clicked(event) {
    const span = event.target.closest?.(".tts-chunk");
    if (!span || !this.element.contains(span)) return;
    this.onPick(Number(span.dataset.seq));
  }
}
