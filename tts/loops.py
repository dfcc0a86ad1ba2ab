"""uvloop's event loop for the web and worker processes (docs/benchmarks.md, P51).

Every step on a session's way to first audio passes through an event loop at least once:
daphne's (the POST, the socket's handshake, each chunk's relay), a worker's (its
doorbell), and the worker's sender loop (each chunk's group send). uvloop runs the same
asyncio API in C: daphne used about a tenth less CPU per session, and the pipeline's
share of the first audio dropped by 0.5 to 0.9 ms at the median.

The choice has to be made before a loop is made, which for daphne is before its server
module is imported (it makes the loop Twisted runs on at import): hence ``tts.serve``
(daphne's command line, with this first) for the web, and ``runworker``'s first step for
the workers. ``TTS_UVLOOP=0`` in the environment keeps asyncio's own loop, and so does a
platform that uvloop does not support (Windows: it is not installed there).
"""

from __future__ import annotations

import asyncio
import os

ENV = "TTS_UVLOOP"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}  # config/env.py's words


def wanted(environ: dict[str, str] | None = None) -> bool:
    """``TTS_UVLOOP`` (default on). A value that is not a boolean is refused by name."""
    raw = (os.environ if environ is None else environ).get(ENV, "1")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{ENV} must be a boolean (1/0, true/false), got {raw!r}")


def install(environ: dict[str, str] | None = None) -> str:
    """Make every event loop this process creates from now on a uvloop one, when wanted and
    installed. Returns the loop's name for the process's start-up log: ``uvloop`` or
    ``asyncio``."""
    if not wanted(environ):
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
