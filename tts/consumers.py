"""The listener socket: check access, join the group, replay, then forward live events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import weakref
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from tts import services, waiting
from tts.audio import chunk_frame, pcm_parts
from tts.broadcast import session_group
from tts.conf import settings
from tts.db import socket_database_sync_to_async
from tts.models import SessionStatus
from tts.owners import known_visitor, owner_from_scope
from tts.replay import BATCH, ChunkCursor, deliver_live, send_from_storage, stored_chunks
from tts.tlsrecords import BOOST_BYTES, IDLE_S

MAX_CLIENT_MESSAGE = 4096
logger = logging.getLogger(__name__)


QUIET_POLL_S = 2.0
# A chunk's first part leaves daphne in a write of its own, this long before the rest,
# while the socket is fresh (its first tlsrecords.BOOST_BYTES) or after it was idle
# (tlsrecords.IDLE_S): a proxy that terminates TLS reads it alone, so the TLS record it
# ends is not one that the rest of the chunk makes longer than the window (P92).
FIRST_PART_ALONE_S = 0.002
PENDING_FIRST_POLL_S = 0.05
# Group joins and leaves one process runs at once. channels-redis gives each process at
# most 100 Redis connections and fails a command beyond that at once (MaxConnectionsError):
# a burst of sockets (all clients reconnecting after a deploy) must queue, not fail.
REDIS_GATE = 32
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def redis_gate() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(REDIS_GATE)
    return gate


def error_frame(code: str, message: str, *, fatal: bool = False) -> dict:
    """An ``error`` frame: a non-fatal one answers the client, and the socket stays open;
    a fatal one ends a failed or cancelled session."""
    return {"type": "error", "code": code, "message": message, "fatal": fatal}


class SessionConsumer(AsyncWebsocketConsumer):
    finished = False  # done or the fatal error sent; later events are ignored
    allowed = False  # the access check passed
    pending = False  # ?pending=1 and the session does not exist yet: waiting for it
    parts = False  # ?parts=1: each chunk's PCM in growing parts (tts.audio.pcm_parts)
    group: str | None = None
    watchdog: asyncio.Task | None = None
    waiter: asyncio.Task | None = None
    woken: asyncio.Event | None = None  # set by tts.waiting while pending
    audio_sent, audio_sent_at = 0, 0.0  # bytes of audio sent, and when last (send_chunk)

    async def connect(self) -> None:
        # Nothing reaches this connection, and it may cancel nothing, until the access check
        # in _open has passed: group events that came before a refusal are ignored.
        self.allowed, self.group = False, None
        self.lock, self.last_event = asyncio.Lock(), time.monotonic()
        # Held while a chunk's frames go out (send_chunk pauses among them), so that no
        # reply to the client comes between its parts.
        self.frames = asyncio.Lock()
        # What a request's URLs begin with (Django's get_script_prefix(scope)); the `done`
        # frame's audio_url needs it, and nothing sets it for a socket.
        self.script_prefix = settings.FORCE_SCRIPT_NAME or self.scope.get("root_path", "")
        await self.accept()  # accept first, so that the close codes reach the client
        query = parse_qs(self.scope["query_string"].decode("latin-1"))
        after = self._after(query)
        pending, parts = self._flag(query, "pending"), self._flag(query, "parts")
        if after is None:
            await self.send_error("bad_after", "after must be a chunk seq (-1 or more).")
            return await self.close(code=4400)
        for name, value in (("pending", pending), ("parts", parts)):
            if value is None:
                await self.send_error(f"bad_{name}", f"{name} must be 1 or 0.")
                return await self.close(code=4400)
        self.parts = parts
        try:
            session_id = uuid.UUID(str(self.scope["url_route"]["kwargs"]["session_id"]))
        except ValueError:
            return await self.close(code=4404)
        self.session_id, self.cursor = session_id, ChunkCursor(after)
        if pending:
            if not known_visitor(self.scope.get("user"), self.scope.get("session")):
                # No session could ever be this socket's: refuse now, not in ten seconds.
                return await self.close(code=4403)
            # A commit from now on wakes it; the POST's doorbell names it (P73).
            self.woken = waiting.expect(session_id, self.channel_name)
        if not await self._join():
            return
        if not pending:
            return await self._begin(*await socket_database_sync_to_async(self._open)())
        # Its POST may still be in flight: wait for the session (its commit, the worker's
        # first event, or a poll), then go on as if it had existed at connect.
        self.pending = True
        first_wait = PENDING_FIRST_POLL_S if waiting.until_no_posts(self.woken) else 0.0
        self.waiter = asyncio.create_task(self._await_creation(first_wait))

    async def _join(self) -> bool:
        """Join the session's group. Always before reading the session, so that nothing
        stored from then on can slip between the two; the access check comes with that
        read and leaves the group if refused. False (and closed, 1011) when Redis fails."""
        self.group = session_group(self.session_id)
        try:  # a Redis that just restarted can leave this call hanging: fail fast instead
            async with redis_gate():
                await asyncio.wait_for(
                    self.channel_layer.group_add(self.group, self.channel_name), 5
                )
        except BaseException as exc:  # cancelled too (daphne gave up on the connection)
            if self.woken is not None:  # no waiter will begin to forget it
                waiting.forget(self.session_id, self.woken)
            if not isinstance(exc, Exception):
                raise
            logger.warning("joining %s failed; closing so the client reconnects", self.group)
            self.group = None
            await self.close(code=1011)  # the client reconnects with after=
            return False
        return True

    async def _refuse(self, code: int) -> None:
        await self._leave()
        await self.close(code=code)

    async def _begin(self, refused, session, frames, stored) -> None:
        """Refuse, or send the first frames and the stored chunks, then follow live."""
        if refused:
            return await self._refuse(refused)
        self.allowed = True
        for frame in frames:
            await self.send_json(frame)
        for chunk in stored:
            await self.send_chunk(chunk.meta, chunk.pcm)
            self.cursor.advance(chunk.meta["seq"])
        if len(stored) == BATCH:
            await send_from_storage(self.session_id, self.cursor, self.send_chunk)
        await self._finish_if_over(session)
        if not self.finished:
            self.watchdog = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """Catch up from storage when no event came for a while: the channel layer is
        at-most-once, and a Redis restart can leave this process deaf to its group."""
        wait = QUIET_POLL_S
        while not self.finished:
            await asyncio.sleep(wait)
            if time.monotonic() - self.last_event < QUIET_POLL_S:
                wait = QUIET_POLL_S  # events flow: the layer works
                continue
            sent = self.cursor.last_sent
            try:
                async with self.lock:
                    await send_from_storage(self.session_id, self.cursor, self.send_chunk)
                    await self._finish_from_storage()
            except Exception:  # noqa: BLE001 - try again on the next round
                logger.warning("catching up %s from storage failed", self.session_id)
            # A slow or queued session: back off, so idle listeners cost little.
            wait = QUIET_POLL_S if self.cursor.last_sent > sent else min(wait * 2, 16.0)

    async def _await_creation(self, wait: float) -> None:
        """Read the pending session after ``wait`` (0 when this process answers no POST;
        else until its session's commit or the end of those POSTs wakes it: see
        tts.waiting); then poll for it, backing off, or read at once when this process's
        POST has committed it. 4404 once TTS_PENDING_SOCKET_S passed."""
        deadline, woken = time.monotonic() + settings.TTS_PENDING_SOCKET_S, self.woken
        try:
            while self.pending and time.monotonic() < deadline:
                timeout = min(wait, max(0.0, deadline - time.monotonic()))
                if timeout:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), timeout)
                woken.clear()  # woken once: a read that fails then waits like a poll
                wait = min(max(wait * 2, PENDING_FIRST_POLL_S), 1.0)
                await self._created()
        finally:
            waiting.forget(self.session_id, woken)
        if self.pending:
            self.pending = False
            await self._refuse(4404)

    async def _created(self) -> None:
        """Open the pending session if it exists now (once, whoever asks first: the waiter's
        poll or a group event). A failed read is left to the next poll; a failure once the
        opening has begun closes with 1011, for nothing would retry it."""
        async with self.lock:
            if not self.pending:
                return
            try:
                opened = await socket_database_sync_to_async(self._open)()
            except Exception:  # noqa: BLE001
                logger.warning("waiting for session %s: the read failed", self.session_id)
                return
            if opened[0] == 4404:
                return
            self.pending = False
            try:
                await self._begin(*opened)
            except Exception:  # noqa: BLE001 - the client resumes with after=
                logger.warning("opening session %s failed; closing", self.session_id)
                await self._refuse(1011)

    @staticmethod
    def _flag(query: dict[str, list[str]], name: str) -> bool | None:
        """A yes-or-no query value (`pending`, `parts`); None when it is not 0 or 1."""
        raw = query.get(name, ["0"])[-1].lower()
        return {"1": True, "true": True, "0": False, "false": False, "": False}.get(raw)

    @staticmethod
    def _after(query: dict[str, list[str]]) -> int | None:
        """The `after` query value; None when it is not a whole number >= -1."""
        raw = query.get("after", ["-1"])[-1]
        try:
            after = int(raw)
        except ValueError:
            return None
        return after if -1 <= after < 2**32 else None

    def _open(self):
        """(refusal close code or None, session, first frames, first stored chunks): the
        session, the access check and the first stored chunks in one database trip."""
        # The owner first (its lazy user loads the browser's session): a socket opened with
        # the POST pays for that while the POST is in flight, not once its session exists.
        owner = owner_from_scope(self.scope)
        try:
            session = services.session_get(session_id=self.session_id)
        except services.NotFound:
            return 4404, None, [], []
        if not services.can_access(session, owner):
            return 4403, None, [], []
        stored = stored_chunks(self.session_id, after=self.cursor.last_sent)
        first = self.cursor.last_sent + 1
        contiguous = [c for i, c in enumerate(stored) if c.meta["seq"] == first + i]
        rate = stored[0].meta["sample_rate"] if stored else None
        frames = [services.session_frame(session, sample_rate=rate)]
        if session.status == SessionStatus.QUEUED:
            frames.append(services.status_frame(session))
        return None, session, frames, contiguous

    async def websocket_disconnect(self, message: dict) -> None:
        # Channels' own also goes to the sync thread to close stale connections (see
        # dispatch); this consumer's groups are its own (self.group), left in disconnect.
        await self.disconnect(message.get("code", 1000))
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        self.pending = False
        for task in (self.watchdog, self.waiter):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if self.woken is not None:  # a waiter cancelled before it began has not forgotten
            waiting.forget(self.session_id, self.woken)
        await self._leave()

    async def _leave(self) -> None:
        group, self.group = self.group, None
        if group is None:
            return
        try:
            async with redis_gate():
                await asyncio.wait_for(
                    self.channel_layer.group_discard(group, self.channel_name), 5
                )
        except Exception:  # noqa: BLE001 - the membership expires with the group anyway
            logger.warning("leaving %s failed", group)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        reply = self._reply_to(text_data)
        if reply is None:
            return await self.cancel()
        async with self.frames:  # not between a chunk's parts
            await self.send_json(reply)

    @staticmethod
    def _reply_to(text_data: str | None) -> dict | None:
        """The frame that answers a client's message: a pong, or a non-fatal error; None
        for a cancel."""
        if text_data is None or len(text_data) > MAX_CLIENT_MESSAGE:
            return error_frame("bad_message", "Send JSON text frames under 4 KiB.")
        try:
            message = json.loads(text_data)
            kind = message.get("type") if isinstance(message, dict) else None
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            return error_frame("bad_json", "Messages must be JSON objects.")
        if kind == "ping":
            return {"type": "pong"}
        if kind == "cancel":
            return None
        return error_frame("unknown_type", "Known messages: ping, cancel.")

    async def cancel(self) -> None:
        if not self.allowed:
            return
        await socket_database_sync_to_async(services.session_cancel)(session_id=self.session_id)

    # Group events -------------------------------------------------------------------------

    async def dispatch(self, message: dict) -> None:
        # Group events reach a connection only once its access check has passed; those
        # that came while it ran (or before a refusal) are dropped. An event for a pending
        # session means it exists now: it is opened first (its replay covers the event's
        # chunk, or the event delivers it; the cursor sends each chunk once).
        if message["type"].startswith("tts."):
            if self.pending:
                await self._created()
            if not self.allowed:
                return
        # Not Channels' own dispatch, which sends every message (each live chunk, to each
        # listener) to asgiref's one sync thread first, to close stale connections, where
        # it queued behind other sockets' database trips. This consumer reaches the
        # database only through socket_database_sync_to_async, which does that itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def tts_chunk(self, event: dict) -> None:
        self.last_event = time.monotonic()
        meta = {k: v for k, v in event.items() if k not in ("type", "pcm", "status")}
        async with self.lock:
            if not self.finished:
                if event.get("status") is not None:  # the claim's, sent with the first chunk
                    await self.send_json({**event["status"], "type": "status"})
                await deliver_live(
                    self.session_id, self.cursor, meta, event["pcm"], self.send_chunk
                )

    async def tts_stored(self, event: dict) -> None:
        """A chunk was broadcast before it was stored: one this connection joined too late
        to hear live, and read from storage too early to find, is there now."""
        self.last_event = time.monotonic()
        async with self.lock:
            if not self.finished and self.cursor.last_sent < event["seq"]:
                await send_from_storage(
                    self.session_id, self.cursor, self.send_chunk, before=event["seq"] + 1
                )

    async def tts_status(self, event: dict) -> None:
        async with self.lock:  # after the first frames of a socket being opened
            if not self.finished:
                await self.send_json({**event, "type": "status"})

    async def tts_done(self, event: dict) -> None:
        self.last_event = time.monotonic()
        total = event.get("total_chunks")
        async with self.lock:
            if self.finished:  # already ended (its opening replayed to the end): no read
                return
            if total is not None and self.cursor.last_sent == total - 1:
                self.finished = True  # caught up: no need to ask the database
                frame = services.done_frame(
                    self.session_id,
                    total_chunks=total,
                    duration_ms=event["duration_ms"],
                    script_prefix=self.script_prefix,
                )
                await self.send_json(frame)
                return await self.close(code=1000)
            await self._finish_from_storage()

    async def tts_error(self, event: dict) -> None:
        self.last_event = time.monotonic()
        async with self.lock:
            if not self.finished:
                await self._finish_from_storage(gone_error=event)

    async def _finish_from_storage(self, gone_error: dict | None = None) -> None:
        """End the socket from what is stored, if its session is over. A session deleted
        meanwhile (the admin's delete cancels an active one first, then deletes it) ends
        it with the event's fatal error when there is one (``gone_error``), else 4404: what
        a reconnect would get."""
        try:
            session = await self._session()
        except services.NotFound:
            self.finished = True
            if gone_error is None:
                return await self.close(code=4404)
            code, message = gone_error.get("code") or "cancelled", gone_error.get("message")
            return await self._end_with_error(code, message or "")
        await self._finish_if_over(session)

    async def _session(self):
        return await socket_database_sync_to_async(services.session_get)(session_id=self.session_id)

    # Frames -------------------------------------------------------------------------------

    async def _finish_if_over(self, session) -> None:
        if not session.is_final or self.finished:
            return
        self.finished = True
        if self.cursor.last_sent < session.completed_chunks - 1:  # stored, and not yet sent
            await send_from_storage(self.session_id, self.cursor, self.send_chunk)
        if session.status == SessionStatus.COMPLETED:
            await self.send_json(
                services.done_frame(
                    session.id,
                    total_chunks=session.total_chunks,
                    duration_ms=session.audio_ms,
                    script_prefix=self.script_prefix,
                )
            )
            await self.close(code=1000)
        else:
            await self._end_with_error(session.error_code or session.status, session.error_message)

    async def _end_with_error(self, code: str, message: str) -> None:
        """The fatal `error` frame that ends a failed or cancelled session, then 1000."""
        await self.send_json(error_frame(code, message, fatal=True))
        await self.close(code=1000)

    async def send_chunk(self, meta: dict, pcm: bytes) -> None:
        if not self.parts:
            await self.send_json({"type": "chunk", **meta})
            return await self.send(bytes_data=chunk_frame(meta["seq"], pcm))
        parts = pcm_parts(pcm)
        fresh = self.audio_sent < BOOST_BYTES or time.monotonic() - self.audio_sent_at >= IDLE_S
        async with self.frames:
            await self.send_json({"type": "chunk", **meta, "parts": len(parts)})
            for i, part in enumerate(parts):
                if i == 1 and fresh:  # the first part out alone first (P92)
                    await asyncio.sleep(FIRST_PART_ALONE_S)
                await self.send(bytes_data=chunk_frame(meta["seq"], part))
        self.audio_sent += len(pcm)
        self.audio_sent_at = time.monotonic()

    async def send_error(self, code: str, message: str) -> None:
        await self.send_json(error_frame(code, message))

    async def send_json(self, frame: dict) -> None:
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))
