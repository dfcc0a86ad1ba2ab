// The progress bar: how much is generated (lighter) and how much is played (darker).
// It is a slider: arrow keys step by sentence, Home and End jump, a click seeks.

export class ProgressBar {
  /**
   * @param {HTMLElement} element the [role=slider] track
   * @param {{step: (delta: number) => void, jump: (fraction: number) => void}} actions
   */
  constructor(element, actions) {
    this.element = element;
    this.generatedBar = element.querySelector("[data-tts-role=generated]");
    this.playedBar = element.querySelector("[data-tts-role=played]");
    this.actions = actions;
    this.generated = 0;
    this.played = 0;
    element.addEventListener("keydown", (event) => this.keydown(event));
    element.addEventListener("click", (event) => this.clicked(event));
  }

  /** Fractions in [0, 1]; `label` is what a screen reader says for the position. */
  update(generated, played, label) {
    this.generated = clamp(generated);
    this.played = clamp(played);
    this.generatedBar.style.transform = `scaleX(${this.generated})`;
    this.playedBar.style.transform = `scaleX(${this.played})`;
    const percent = Math.round(this.played * 100);
    if (this.element.getAttribute("aria-valuenow") !== String(percent)) {
      this.element.setAttribute("aria-valuenow", String(percent));
    }
    if (label && this.element.getAttribute("aria-valuetext") !== label) {
      this.element.setAttribute("aria-valuetext", label);
    }
  }

  keydown(event) {
    const moves = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1, PageUp: 3, PageDown: -3 };
    if (event.key in moves) {
      this.actions.step(moves[event.key]);
    } else if (event.key === "Home") {
      this.actions.jump(0);
    } else if (event.key === "End") {
      this.actions.jump(1);
    } else {
      return;
    }
    event.preventDefault();
  }

  clicked(event) {
    const box = this.element.getBoundingClientRect();
    if (box.width > 0) this.actions.jump((event.clientX - box.left) / box.width);
  }
}

function clamp(value) {
  return Number.isFinite(value) ? Math.min(1, Math.max(0, value)) : 0;
}
