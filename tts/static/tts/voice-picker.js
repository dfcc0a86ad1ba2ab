// The voice <select>: every voice of the catalog, unavailable ones disabled with the reason
// (and the command that fixes it) listed underneath.

/** Fill `select` from the API's {voices, default}; keep `preferred` selected when listed. */
export function fillVoicePicker(select, notes, catalog, preferred) {
  const wanted = preferred || catalog.default;
  const options = catalog.voices.map((voice) => voiceOption(voice, wanted));
  if (wanted && !catalog.voices.some((voice) => voice.id === wanted)) {
    options.unshift(new Option(`${wanted} (not on this server)`, wanted, true, true));
  }
  select.replaceChildren(...options);
  select.value = wanted;
  fillNotes(notes, catalog.voices.filter((voice) => !voice.available));
  return catalog.voices.find((voice) => voice.id === wanted) || null;
}

function voiceOption(voice, wanted) {
  const label = voice.available ? voice.label : `${voice.label} (unavailable)`;
  const option = new Option(label, voice.id, voice.id === wanted, voice.id === wanted);
  option.disabled = !voice.available && voice.id !== wanted;
  if (voice.reason) option.title = voice.reason;
  option.lang = voice.language || "";
  return option;
}

function fillNotes(notes, unavailable) {
  if (!notes) return;
  notes.hidden = unavailable.length === 0;
  const summary = notes.querySelector("summary");
  const list = notes.querySelector("ul");
  const count = unavailable.length;
  summary.textContent = `${count} ${count === 1 ? "voice" : "voices"} unavailable`;
  list.replaceChildren(
    ...unavailable.map((voice) => {
      const item = document.createElement("li");
      const name = document.createElement("strong");
      name.textContent = voice.label;
      const reason = document.createElement("span");
      reason.textContent = ` ${voice.reason || "Not installed on this server."}`;
      item.append(name, reason);
      return item;
    }),
  );
}
