"""What a web or worker process builds as it starts, kept out of the garbage collector's
passes (docs/benchmarks.md, P56).

A full pass of CPython's cyclic collector visits every container object the process
holds, and every thread of the process waits for it. A worker with a full-size VITS
loaded holds about 350,000 (torch, coqui-tts, Django, the model's modules): a full pass
took 182–204 ms on the benchmark's host, during which the worker's syntheses, its
broadcasts and its doorbell all stood still. daphne's took 62 ms: every socket and every
request it serves held up (the slowest of 300 sessions in the benchmark). Such passes
come rarely (when the objects that survived younger passes number a quarter of the long-
lived ones), so they land on a session now and then, unannounced.

What a process loads as it starts (modules, settings, models) lives as long as it does.
``gc.freeze()`` moves it to the permanent generation, which passes skip: a full pass then
took 1–3 ms. The garbage among it is collected first. A cycle among frozen objects that
becomes garbage later (a model dropped after a failure and loaded again) is not
collected, and stays until the process ends; plain reference counting still frees
everything else.

``TTS_GC_FREEZE`` (default on) is an environment variable, like ``TTS_UVLOOP``: daphne
reads it before Django's settings exist. ``python -m tts.serve`` freezes once daphne has
imported the application (and the URL configuration, which Django leaves to the first
request), as its server starts; ``runworker`` once its voices are loaded
and warm.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Mapping

from tts.environ import read_bool

__all__ = ["freeze_startup_heap", "freeze_wanted", "load_urlconf"]


def freeze_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """``TTS_GC_FREEZE`` (default on). A value that is not a boolean is refused by name."""
    return read_bool("TTS_GC_FREEZE", True, environ)


def freeze_startup_heap() -> tuple[int, float]:
    """Collect, then freeze what is left: (objects now frozen, milliseconds it took)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count(), (time.perf_counter() - started) * 1000


def load_urlconf() -> None:
    """Import the URL configuration and the views it names, which Django leaves to the
    first request, so that they are part of what a web process freezes. A configuration
    that fails to import is left for that first request to report, as Django does."""
    from django.urls import get_resolver

    with contextlib.suppress(Exception):
        get_resolver().url_patterns  # noqa: B018 - imports the modules it names
