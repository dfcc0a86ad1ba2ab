// "Play all": the players inside a [data-tts-playlist] element, one after another.
// While one scene plays, the next one's session is created, so its audio is ready
// (synthesized, usually already received) by the time it is needed.

import { unlockAudio } from "./audio-context.js";
import { playerFor } from "./registry.js";

export function bindPlaylists(root = document) {
  for (const element of root.querySelectorAll("[data-tts-playlist]")) {
    if (!element.ttsPlaylist) element.ttsPlaylist = new Playlist(element);
  }
}

class Playlist {
  constructor(root) {
    this.root = root;
    this.button = root.querySelector("[data-tts-play-all]");
    this.label = root.querySelector("[data-tts-play-all-label]") || this.button;
    this.status = root.querySelector("[data-tts-playlist-status]");
    this.players = [...root.querySelectorAll("[data-tts-player]")].map(playerFor).filter(Boolean);
    this.index = -1;
    this.active = false;
    this.button.disabled = this.players.length === 0;
    this.button.addEventListener("click", () => {
      this.toggle(); // the first scene's POST goes out first (player.js)
      unlockAudio(); // inside the gesture, before any await
    });
    root.addEventListener("tts:play", (event) => this.played(event.detail));
    root.addEventListener("tts:ended", (event) => this.ended(event.detail.player));
    root.addEventListener("tts:state", (event) => this.stateChanged(event.detail));
  }

  get current() {
    return this.players[this.index] || null;
  }

  toggle() {
    const current = this.current;
    if (this.active && current?.busy) current.pause();
    else if (this.active && current?.state === "paused") current.play({ source: "playlist" });
    else this.start(0);
    this.render();
  }

  start(index) {
    this.active = true;
    this.index = index;
    this.current.play({ source: "playlist", restart: true });
    this.players[index + 1]?.prepare();
    this.render();
  }

  advance() {
    if (this.index + 1 < this.players.length) {
      this.start(this.index + 1);
      this.reveal(this.current.root);
    } else {
      this.active = false;
      this.index = -1;
      this.render("Finished the story.");
    }
  }

  /** A scene started by hand takes over: Play all stops following. */
  played(detail) {
    if (this.active && detail.source !== "playlist" && detail.player !== this.current) {
      this.active = false;
      this.index = -1;
      this.render();
    }
  }

  ended(player) {
    if (this.active && player === this.current) this.advance();
  }

  stateChanged(detail) {
    // A scene that cannot be narrated is skipped rather than stopping the whole story.
    if (this.active && detail.player === this.current && detail.state === "error") this.advance();
    else this.render();
  }

  reveal(element) {
    const calm = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    const card = element.closest("[data-tts-scene]") || element;
    card.scrollIntoView({ behavior: calm ? "auto" : "smooth", block: "nearest" });
  }

  render(message) {
    const current = this.current;
    let label = "Play all";
    if (this.active && current?.busy) label = "Pause";
    else if (this.active && current?.state === "paused") label = "Resume";
    if (this.label.textContent !== label) this.label.textContent = label;
    this.root.dataset.state = this.active ? (current?.busy ? "playing" : "paused") : "idle";
    for (const player of this.players) {
      const card = player.root.closest("[data-tts-scene]");
      card?.classList.toggle("is-current", this.active && player === current);
    }
    if (!this.status) return;
    let text = message ?? "";
    if (this.active && current) {
      const title = current.config.title ? `: ${current.config.title}` : "";
      text = `Scene ${this.index + 1} of ${this.players.length}${title}`;
    }
    if (message !== undefined || this.active || this.status.textContent.startsWith("Scene")) {
      if (this.status.textContent !== text) this.status.textContent = text;
    }
  }
}
