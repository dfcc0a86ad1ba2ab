"""uvloop's event loop for the web and worker processes (docs/benchmarks.md, P51).

Every step on a session's way to first audio passes through an event loop at least once:
daphne's (the POST, the socket's handshake, each chunk's relay), a worker's (its
doorbell), and the worker's sender loop (each chunk's group send). uvloop runs the same
asyncio API in C, with less CPU per step.

The choice has to be made before a loop is made, which for daphne is before its server
module is imported (it makes the loop Twisted runs on at import): hence ``tts.serve``
(daphne's command line, with this first) for the web, and ``runworker``'s first step for
the workers. ``TTS_UVLOOP=0`` in the environment keeps asyncio's own loop, and so does a
platform that uvloop does not support (Windows: it is not installed there).

``TTS_UVLOOP`` is an environment variable, not a Django setting: daphne's loop is made
before Django's settings are read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from tts.environ import read_bool


def uvloop_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """``TTS_UVLOOP`` (default on). A value that is not a boolean is refused by name."""
    return read_bool("TTS_UVLOOP", True, environ)


def uvloop_policy(
    environ: Mapping[str, str] | None = None,
) -> asyncio.AbstractEventLoopPolicy | None:
    """uvloop's event loop policy when it is wanted and available, else None.

    A policy is the one hook that daphne's loop (made with ``asyncio.new_event_loop()``
    at import) goes through. Python 3.14 deprecates policies; where uvloop no longer
    offers one, asyncio's loop it is."""
    if not uvloop_wanted(environ):
        return None
    try:
        import uvloop

        return uvloop.EventLoopPolicy()
    except (ImportError, AttributeError):
        return None


def install_uvloop(environ: Mapping[str, str] | None = None) -> str:
    """Make every event loop this process creates from now on a uvloop one, when wanted and
    available. Returns the name of the loops it will make: ``uvloop`` or ``asyncio``."""
    policy = uvloop_policy(environ)
    if policy is None:
        return "asyncio"
    asyncio.set_event_loop_policy(policy)
    return "uvloop"
