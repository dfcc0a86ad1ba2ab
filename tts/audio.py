"""PCM helpers: silence, WAV headers, and streaming WAV bodies."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

SAMPLE_WIDTH = 2  # 16-bit
CHANNELS = 1
FORMAT = "pcm_s16le"
# WAV sizes are 32-bit; a body longer than this cannot be described exactly.
_WAV_MAX_DATA = 0xFFFFFFFF - 36


def silence(ms: int, sample_rate: int) -> bytes:
    return b"\x00\x00" * (ms * sample_rate // 1000)


def wav_header(data_bytes: int, sample_rate: int) -> bytes:
    """A 44-byte RIFF header for ``data_bytes`` of mono 16-bit PCM."""
    data_bytes = min(data_bytes, _WAV_MAX_DATA)
    byte_rate = sample_rate * CHANNELS * SAMPLE_WIDTH
    return b"".join(
        [
            b"RIFF",
            struct.pack("<I", 36 + data_bytes),
            b"WAVEfmt ",
            struct.pack("<IHHIIHH", 16, 1, CHANNELS, sample_rate, byte_rate, 2, 16),
            b"data",
            struct.pack("<I", data_bytes),
        ]
    )


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    return wav_header(len(pcm), sample_rate) + pcm


def wav_stream(parts: Iterable[bytes], *, data_bytes: int, sample_rate: int) -> Iterator[bytes]:
    """Yield a WAV file whose body is ``parts`` (their total length known in advance)."""
    yield wav_header(data_bytes, sample_rate)
    yield from parts


def parse_wav(data: bytes) -> tuple[bytes, int]:
    """(pcm, sample_rate) of a mono 16-bit WAV. Tolerates placeholder sizes (espeak-ng
    --stdout writes 0x7fffffff): the data chunk runs to the end of the file."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    pos, sample_rate = 12, 0
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt, channels, sample_rate = struct.unpack("<HHI", data[body : body + 8])
            bits = struct.unpack("<H", data[body + 14 : body + 16])[0]
            if fmt != 1 or channels != 1 or bits != 16:
                raise ValueError("expected mono 16-bit PCM")
        elif chunk_id == b"data":
            pcm = data[body : min(len(data), body + size)]
            return pcm[: len(pcm) - len(pcm) % 2], sample_rate
        pos = body + size + (size & 1)
    raise ValueError("WAV file has no data chunk")


def chunk_frame(seq: int, pcm: bytes | memoryview) -> bytes:
    """The binary WebSocket frame of a chunk (or a part of it): 4-byte little-endian seq,
    then PCM."""
    return struct.pack("<I", seq) + pcm


# A socket that asks for parts (?parts=1) gets a chunk's PCM in growing parts: the first
# fits, with the chunk's text frame, in the first window of a fresh TCP connection (ten
# segments of 1,448 bytes: RFC 6928), so a listener can start on it a round trip after it
# was sent, and each next part doubles as the window does. docs/protocol.md.
FIRST_PART_BYTES = 10 * 1024


def pcm_parts(pcm: bytes, first: int = FIRST_PART_BYTES) -> list[memoryview]:
    """``pcm`` in parts: at most ``first`` bytes, then each twice the one before, the last
    taking the rest. A rest shorter than half the next part's size joins the part before it
    (not the first, which stays within the window, so the second may be small): the parts
    are few."""
    parts, start, size = [], 0, first
    view = memoryview(pcm)
    while len(pcm) - start > size and (not parts or len(pcm) - start - size >= size):
        parts.append(view[start : start + size])
        start, size = start + size, size * 2
    parts.append(view[start:])
    return parts
