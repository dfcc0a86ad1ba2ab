"""Exactly-once, in-order delivery to one connection, built from two unreliable inputs:
stored chunks (complete, but read at one moment) and live events (prompt, but
at-most-once). A cursor remembers the last seq sent; anything at or below it is a
duplicate, anything beyond the next seq is a gap filled from storage first."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from django.db.models import QuerySet

from tts.compiled import Compiled
from tts.db import socket_database_sync_to_async
from tts.models import SessionStatus, TTSChunk

BATCH = 16
# The frame's fields, and what a chunk of a session still running needs for its hold.
_FRAME_FIELDS = (
    *("seq", "text", "char_start", "char_end", "samples", "sample_rate"),
    *("cushion_ms", "created_at"),
)


@dataclass
class StoredChunk:
    meta: dict
    pcm: bytes


def stored_chunks(
    session_id: uuid.UUID, *, after: int, before: int | None = None
) -> list[StoredChunk]:
    """Up to BATCH stored chunks with after < seq < before, in seq order."""
    before = _NO_SEQ if before is None else before
    rows = _STORED.run(session_id=session_id, after=after, before=before)
    from tts.services import chunk_meta

    out = []
    for *fields, total, status, pcm in rows:
        chunk = TTSChunk(**dict(zip(_FRAME_FIELDS, fields, strict=True)))
        running = status == SessionStatus.RUNNING
        meta = chunk_meta(chunk, total_chunks=total, session_running=running)
        out.append(StoredChunk(meta=meta, pcm=bytes(pcm)))
    return out


def _stored(session_id, after, before) -> QuerySet:
    # Plain values, not model instances of the chunk, its audio and its whole session: on
    # the path of every socket that opens (a third of its database trip's time).
    return (
        TTSChunk.objects.filter(session_id=session_id, seq__gt=after, seq__lt=before)
        .order_by("seq")
        .values_list(*_FRAME_FIELDS, "session__total_chunks", "session__status", "audio__pcm")[
            :BATCH
        ]
    )


# Every socket's opening and catching up (P45). Without a `before`, one that no chunk
# reaches (the largest seq the column holds), so that one query serves both.
_SEQ = TTSChunk._meta.get_field("seq")
_NO_SEQ = 2**31 - 1
_STORED = Compiled.values_list(
    _stored, session_id=TTSChunk._meta.get_field("session"), after=_SEQ, before=_SEQ
)


class ChunkCursor:
    def __init__(self, after: int = -1) -> None:
        self.last_sent = after

    def classify(self, seq: int) -> Literal["duplicate", "next", "gap"]:
        if seq <= self.last_sent:
            return "duplicate"
        return "next" if seq == self.last_sent + 1 else "gap"

    def advance(self, seq: int) -> None:
        if seq != self.last_sent + 1:
            raise ValueError(f"chunk {seq} sent out of order after {self.last_sent}")
        self.last_sent = seq


SendChunk = Callable[[dict, bytes], Awaitable[None]]


async def send_from_storage(
    session_id: uuid.UUID, cursor: ChunkCursor, send: SendChunk, *, before: int | None = None
) -> None:
    """Send every stored chunk after the cursor (and before ``before``), batch by batch,
    so a long session never sits in memory whole. Stops at the first missing seq."""
    fetch = socket_database_sync_to_async(stored_chunks)
    while True:
        batch = await fetch(session_id, after=cursor.last_sent, before=before)
        for chunk in batch:
            if chunk.meta["seq"] != cursor.last_sent + 1:
                return
            await send(chunk.meta, chunk.pcm)
            cursor.advance(chunk.meta["seq"])
        if len(batch) < BATCH:
            return


async def deliver_live(
    session_id: uuid.UUID, cursor: ChunkCursor, meta: dict, pcm: bytes, send: SendChunk
) -> None:
    """Deliver a live chunk event: drop duplicates, fill a gap from storage first."""
    seq = meta["seq"]
    kind = cursor.classify(seq)
    if kind == "duplicate":
        return
    if kind == "gap":
        await send_from_storage(session_id, cursor, send, before=seq)
    if cursor.classify(seq) == "next":
        await send(meta, pcm)
        cursor.advance(seq)
