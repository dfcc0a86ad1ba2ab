"""The worker side of the `tts-generate` channel: parse the message, call the service."""

from __future__ import annotations

import logging
import os
import socket

from channels.consumer import SyncConsumer

from tts import broadcast, services

logger = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class GenerateConsumer(SyncConsumer):
    def tts_generate(self, message: dict) -> None:
        session_id = message.get("session_id")
        try:  # only a hint, for the session's first send: never a reason not to run it
            broadcast.expect_listeners(session_id, message.get("listeners"))
        except Exception:  # noqa: BLE001
            logger.warning("ignoring the listeners named for %s", session_id, exc_info=True)
        try:
            services.session_run(session_id=str(session_id), worker=worker_name())
        except Exception:  # noqa: BLE001 - one bad session must not kill the worker
            logger.exception("generation of %s crashed", session_id)
