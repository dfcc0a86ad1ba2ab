"""The one place that talks to the channel layer: group names and typed events.

The channel layer is at-most-once and drops silently when a listener is full, so
events are notifications only; listeners rebuild anything missing from storage.
A broadcast that fails (Redis down) is logged and ignored: the database has it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Coroutine
from typing import Any

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

GENERATE_CHANNEL = "tts-generate"


SEND_TIMEOUT_S = 5.0


class _SenderLoop:
    """A process-wide event loop on its own thread for every send from sync code.

    async_to_sync from a worker's consumer thread would run the send on the worker's
    message loop, and that loop is replaced when Redis goes away: a send scheduled on the
    old one never finishes. This loop outlives such restarts, sends in submission order,
    and every send has a deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(coro, SEND_TIMEOUT_S), self._get_loop()
        )
        return future.result(SEND_TIMEOUT_S + 1)

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._loop.run_forever, name="tts-broadcast", daemon=True
                )
                thread.start()
            return self._loop


_sender = _SenderLoop()


def session_group(session_id: uuid.UUID | str) -> str:
    return f"tts.session.{uuid.UUID(str(session_id)).hex}"


def _group_send(session_id: uuid.UUID | str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        _sender.run(layer.group_send(session_group(session_id), event))
    except Exception:  # noqa: BLE001 - listeners recover from storage
        logger.warning("broadcast of %s for %s failed", event["type"], session_id, exc_info=True)


def chunk_event(chunk_meta: dict[str, Any], pcm: bytes) -> dict[str, Any]:
    # The event carries the audio so that no listener has to read the database for it.
    return {"type": "tts.chunk", **chunk_meta, "pcm": pcm}


def broadcast_chunk(session_id: uuid.UUID, chunk_meta: dict[str, Any], pcm: bytes) -> None:
    _group_send(session_id, chunk_event(chunk_meta, pcm))


def broadcast_status(session_id: uuid.UUID, status_frame: dict[str, Any]) -> None:
    _group_send(session_id, {**status_frame, "type": "tts.status"})


def broadcast_done(session_id: uuid.UUID, *, total_chunks: int, duration_ms: int) -> None:
    # The totals ride along so that a listener that is caught up needs no database read.
    _group_send(
        session_id, {"type": "tts.done", "total_chunks": total_chunks, "duration_ms": duration_ms}
    )


def broadcast_error(session_id: uuid.UUID, *, code: str, message: str) -> None:
    _group_send(session_id, {"type": "tts.error", "code": code, "message": message})


def dispatch_generate(session_id: uuid.UUID) -> bool:
    """Ring the workers' doorbell. False when the layer is unreachable (the recovery
    sweep re-dispatches queued sessions later)."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        _sender.run(
            layer.send(GENERATE_CHANNEL, {"type": "tts.generate", "session_id": str(session_id)})
        )
    except Exception:  # noqa: BLE001
        logger.warning("dispatch of %s failed; the recovery sweep will retry", session_id)
        return False
    return True
