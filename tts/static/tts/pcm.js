// Audio bytes to AudioBuffers: the socket's binary frames (4-byte little-endian seq, then
// 16-bit little-endian mono PCM) and the HTTP fallback's WAV files.

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** { seq, bytes } of a binary chunk frame; bytes is a view of the PCM after the seq. */
export function parseChunkFrame(data) {
  const seq = new DataView(data, 0, 4).getUint32(0, true);
  return { seq, bytes: new Uint8Array(data, 4) };
}

/** { sampleRate, bytes } of a mono 16-bit PCM WAV file. */
export function parseWav(data) {
  const view = new DataView(data);
  if (tag(view, 0) !== "RIFF" || tag(view, 8) !== "WAVE") {
    throw new Error("not a WAV file");
  }
  let pos = 12;
  let sampleRate = 0;
  while (pos + 8 <= view.byteLength) {
    const id = tag(view, pos);
    const size = view.getUint32(pos + 4, true);
    if (id === "fmt ") {
      sampleRate = view.getUint32(pos + 12, true);
    } else if (id === "data") {
      const length = Math.min(size, view.byteLength - pos - 8);
      return { sampleRate, bytes: new Uint8Array(data, pos + 8, length - (length % 2)) };
    }
    pos += 8 + size + (size % 2);
  }
  throw new Error("WAV file has no data chunk");
}

function tag(view, offset) {
  return String.fromCharCode(...new Uint8Array(view.buffer, view.byteOffset + offset, 4));
}

/** Float samples in [-1, 1) from 16-bit little-endian PCM bytes. */
export function pcmToFloat32(bytes) {
  const count = Math.floor(bytes.byteLength / 2);
  const out = new Float32Array(count);
  if (LITTLE_ENDIAN && bytes.byteOffset % 2 === 0) {
    const ints = new Int16Array(bytes.buffer, bytes.byteOffset, count);
    for (let i = 0; i < count; i += 1) out[i] = ints[i] / 32768;
  } else {
    const view = new DataView(bytes.buffer, bytes.byteOffset, count * 2);
    for (let i = 0; i < count; i += 1) out[i] = view.getInt16(i * 2, true) / 32768;
  }
  return out;
}

/** An AudioBuffer at the chunk's own sample rate (the context resamples), or null when empty. */
export function toAudioBuffer(ctx, bytes, sampleRate) {
  const samples = pcmToFloat32(bytes);
  if (samples.length === 0) return null;
  const buffer = ctx.createBuffer(1, samples.length, sampleRate);
  if (buffer.copyToChannel) {
    buffer.copyToChannel(samples, 0);
  } else {
    buffer.getChannelData(0).set(samples);
  }
  return buffer;
}
