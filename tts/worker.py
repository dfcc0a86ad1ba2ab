"""The worker side of the `tts-generate` channel: parse the message, call the service."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from channels.consumer import SyncConsumer
from channels.worker import Worker as ChannelsWorker

from tts import broadcast, services, warmup

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


# How long a worker's start lets each channel's application instance run up to its first
# wait (its own channel's receive, which opens a Redis connection) before listening.
INSTANCE_WARM_UP_S = 0.05


class Worker(ChannelsWorker):
    """channels' worker, which makes each channel's application instance (the consumer,
    its own channel and that channel's Redis receive) on the channel's first message: the
    first session after a start paid 4.3 ms more for it between the message's receive
    and the consumer (P85). With ``TTS_WARM_UP`` the instances are made before the
    listeners start; the first message then finds its instance as every later one does."""

    async def handle(self) -> None:
        if warmup.wanted():
            with warmup.attempt("worker instances"):
                for channel in self.channels:
                    scope = {"type": "channel", "channel": channel}
                    self.get_or_create_application_instance(channel, scope)
                await asyncio.sleep(INSTANCE_WARM_UP_S)
        await super().handle()
