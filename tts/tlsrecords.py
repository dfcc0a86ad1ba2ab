"""Small TLS records where a connection starts, when daphne terminates TLS itself
(``python -m tts.serve -e ssl:443:privateKey=key.pem:certKey=cert.pem ...``).

A browser decrypts a TLS record only once the whole of it has arrived. Twisted gathers
what daphne writes in one turn of its loop and hands it to OpenSSL in 16 KB pieces, so a
chunk's first part (10 KiB, sized to fit a new connection's first window of ten TCP
segments: docs/protocol.md, audio in parts) went out inside a 16 KB record with the start
of the next part, more than that window: the browser could play nothing until a second
round trip brought the record's end. On a modelled 80 ms path that was 80 ms more to
first sound (docs/benchmarks.md, P90).

The first ``BOOST_BYTES`` of a connection (Go's TLS, and so Caddy, grows its records from
one segment over a connection's first 128 KB), and of a connection idle for ``IDLE_S``
(whose window Linux may have shrunk back; Cloudflare's dynamic record sizing for nginx
starts small again after an idle second), go in records of at most
``TTS_TLS_RECORD_BYTES`` (default 4,096; 0 keeps OpenSSL's 16 KB); later bytes in full
records, which cost less to send. Behind a proxy that terminates TLS (the usual
deployment) this changes nothing: daphne serves no TLS there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

VARIABLE = "TTS_TLS_RECORD_BYTES"
DEFAULT_RECORD_BYTES = 4096
BOOST_BYTES = 128 * 1024  # Go's crypto/tls: small records for a connection's first 128 KB
# Linux starts an idle connection's window small again after a retransmission timeout
# (net.ipv4.tcp_slow_start_after_idle), which is at least 200 ms.
IDLE_S = 0.2


def record_bytes(environ: Mapping[str, str] | None = None) -> int:
    """``TTS_TLS_RECORD_BYTES``: 0 (OpenSSL's records) or 512 to 16,384; ValueError else."""
    raw = (os.environ if environ is None else environ).get(VARIABLE, "").strip()
    if not raw:
        return DEFAULT_RECORD_BYTES
    if not raw.isdigit() or not (int(raw) == 0 or 512 <= int(raw) <= 16384):
        raise ValueError(f"{VARIABLE} must be 0 or a whole number from 512 to 16384, got {raw!r}")
    return int(raw)


def small_first(
    write: Callable[[Any, bytes], None],
    size: int,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Any, bytes], None]:
    """``write`` (Twisted's ``TLSMemoryBIOProtocol._write``: one record per 16 KB it is
    given), called with pieces of at most ``size`` bytes while the connection is among
    its first ``BOOST_BYTES`` since it opened or last idled ``IDLE_S``. A piece that
    Twisted had to hold back (OpenSSL wanting to read first) holds the rest back behind
    it, in order; nothing more goes out on a connection that TLS has lost."""

    def _write(protocol: Any, data: bytes) -> None:
        now = clock()
        sent = getattr(protocol, "_tts_tls_sent", 0)
        if now - getattr(protocol, "_tts_tls_last", now) >= IDLE_S:
            sent = 0  # idle: its window starts small again
        protocol._tts_tls_last = now
        view, start = memoryview(data), 0
        while start < len(data):
            end = len(data)
            if sent < BOOST_BYTES:
                end = min(end, start + size, start + BOOST_BYTES - sent)
            write(protocol, bytes(view[start:end]))
            if getattr(protocol, "_lostTLSConnection", False):
                return
            if getattr(protocol, "_appSendBuffer", None):  # held back: the rest after it
                if end < len(data):
                    protocol._bufferedWrite(bytes(view[end:]))
                break  # what was held back counts when it is written again
            sent += end - start
            start = end
        protocol._tts_tls_sent = sent

    return _write


def install(environ: Mapping[str, str] | None = None) -> int:
    """Make this process's TLS connections (Twisted's) start with small records; the
    record size, or 0 when turned off. Call before the server starts."""
    size = record_bytes(environ)
    if size:
        from twisted.protocols import tls

        protocol = tls.TLSMemoryBIOProtocol
        if not getattr(protocol._write, "_tts_small_first", False):
            patched = small_first(protocol._write, size)
            patched._tts_small_first = True  # type: ignore[attr-defined]
            protocol._write = patched  # type: ignore[method-assign]
    return size
