"""What the server stored about the sessions a scenario ran: timestamps and engine times.
Read after the scenario's event loop has finished (the ORM is synchronous)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclass
class ChunkRow:
    seq: int
    created_at: float
    engine_ms: int
    cached: bool
    samples: int
    sample_rate: int
    digest: int


@dataclass
class SessionRow:
    id: str
    status: str
    created_at: float
    dispatched_at: float | None
    started_at: float | None
    finished_at: float | None
    first_chunk_ms: int | None
    engine_ms: int
    audio_ms: int
    total_chunks: int | None
    claimed_by: str
    chunks: list[ChunkRow] = field(default_factory=list)

    @property
    def first(self) -> ChunkRow | None:
        return self.chunks[0] if self.chunks and self.chunks[0].seq == 0 else None


def fetch_sessions(ids: list[str], *, digests: bool = False) -> dict[str, SessionRow]:
    from tts.models import TTSChunk, TTSSession

    rows: dict[str, SessionRow] = {}
    for s in TTSSession.objects.filter(pk__in=ids):
        rows[str(s.id)] = SessionRow(
            id=str(s.id),
            status=s.status,
            created_at=s.created_at.timestamp(),
            dispatched_at=_ts(s.dispatched_at),
            started_at=_ts(s.started_at),
            finished_at=_ts(s.finished_at),
            first_chunk_ms=s.first_chunk_ms,
            engine_ms=s.engine_ms,
            audio_ms=s.audio_ms,
            total_chunks=s.total_chunks,
            claimed_by=s.claimed_by,
        )
    chunks = TTSChunk.objects.filter(session_id__in=ids).order_by("session_id", "seq")
    chunks = chunks.select_related("audio") if digests else chunks.defer("text")
    for c in chunks:
        rows[str(c.session_id)].chunks.append(
            ChunkRow(
                seq=c.seq,
                created_at=c.created_at.timestamp(),
                engine_ms=c.engine_ms,
                cached=c.cached,
                samples=c.samples,
                sample_rate=c.sample_rate,
                digest=hash(bytes(c.audio.pcm)) if digests else 0,
            )
        )
    return rows
