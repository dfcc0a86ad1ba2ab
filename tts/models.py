"""Narration sessions, their chunks, and the content-addressed audio they share."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import connections, models
from django.utils import timezone

from tts import compiled


class SessionStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (SessionStatus.QUEUED, SessionStatus.RUNNING)
FINAL_STATUSES = (SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED)


class AudioBlobManager(models.Manager):
    def add(self, *, key: str, pcm: bytes, sample_rate: int, samples: int) -> bool:
        """Store the audio unless its key is stored already (False then), in one statement:
        INSERT ... ON CONFLICT DO NOTHING (SQLite 3.35+ and PostgreSQL), where a plain
        INSERT would need a savepoint around it to survive the conflict inside a
        transaction: three round trips to the database for every chunk a worker stores."""
        db = self.db
        conn = connections[db]
        quote = conn.ops.quote_name
        table, now = self.model._meta.db_table, timezone.now()
        names = ("key", "pcm", "sample_rate", "samples", "created_at")
        columns = ", ".join(quote(name) for name in names)
        sql = (
            f"INSERT INTO {quote(table)} ({columns}) VALUES (%s, %s, %s, %s, %s) "
            f"ON CONFLICT ({quote('key')}) DO NOTHING RETURNING {quote('key')}"
        )
        params = [key, pcm, sample_rate, samples, conn.ops.adapt_datetimefield_value(now)]
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone() is not None


class AudioBlob(models.Model):
    """PCM synthesized once for a (voice settings, segment text, pause) key and reused."""

    key = models.CharField(max_length=64, primary_key=True)  # sha256 hex
    pcm = models.BinaryField()  # 16-bit little-endian mono
    sample_rate = models.PositiveIntegerField()
    samples = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    objects = AudioBlobManager()

    def __str__(self) -> str:
        return f"{self.key[:12]} ({self.samples} samples)"


class TTSSessionQuerySet(models.QuerySet):
    def update_returning(self, **values) -> list[TTSSession]:
        """``update(**values)``, returning the updated rows as they now are, in one
        statement (UPDATE ... RETURNING, SQLite 3.35+ and PostgreSQL): where ``update``
        then a read would take two trips to the database. The SQL is Django's own for
        the update (expressions such as ``F()`` work), with a RETURNING clause of every
        column; the rows come back converted as the ORM converts them. On a hot path,
        ``tts.compiled.Compiled.update_returning`` also keeps the SQL."""
        return compiled.update_returning(self, values)


class TTSSession(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # What is narrated, generically (a scene here; any model in another project).
    subject_type = models.ForeignKey(
        ContentType, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    subject_id = models.CharField(max_length=64, blank=True, db_index=True)
    subject = GenericForeignKey("subject_type", "subject_id")
    text = models.TextField()
    # sha256 of everything that decides the audio (voice settings, model, text, how it is
    # cut): a completed session with the same key is replayed, not synthesized again.
    # Indexed with the status (Meta): the lookup is by both.
    narration_key = models.CharField(max_length=64, blank=True, editable=False)
    voice = models.CharField(max_length=100)
    engine = models.CharField(max_length=30)
    model = models.CharField(max_length=300, blank=True)
    language = models.CharField(max_length=20, blank=True)
    status = models.CharField(
        max_length=12, choices=SessionStatus.choices, default=SessionStatus.QUEUED, db_index=True
    )
    total_chunks = models.PositiveIntegerField(null=True, blank=True)
    completed_chunks = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField(max_length=100, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="tts_sessions",
    )
    owner_session_key = models.CharField(max_length=64, blank=True, db_index=True)
    owner_ip = models.GenericIPAddressField(null=True, blank=True)
    first_chunk_ms = models.PositiveIntegerField(null=True, blank=True)
    engine_ms = models.PositiveIntegerField(default=0)
    audio_ms = models.PositiveIntegerField(default=0)
    real_time_factor = models.FloatField(null=True, blank=True)

    objects = TTSSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["subject_type", "subject_id"]),
            # The replay's lookup (services._insert_replay). With the key alone indexed,
            # SQLite (no statistics) chose the status index: every POST scanned all the
            # completed sessions (10 ms at 50,000 of them).
            models.Index(fields=["narration_key", "status"], name="tts_session_replay_idx"),
        ]
        verbose_name = "TTS session"

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def group_name(self) -> str:
        from tts.broadcast import session_group

        return session_group(self.id)


class TTSChunk(models.Model):
    session = models.ForeignKey(TTSSession, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    char_start = models.PositiveIntegerField()
    char_end = models.PositiveIntegerField()
    samples = models.PositiveIntegerField()
    sample_rate = models.PositiveIntegerField()
    audio = models.ForeignKey(AudioBlob, on_delete=models.PROTECT, related_name="chunks")
    cached = models.BooleanField(default=False)
    engine_ms = models.PositiveIntegerField(default=0)
    # When the chunk was made and broadcast; its row is written a moment later.
    created_at = models.DateTimeField(default=timezone.now)
    # The hold it went out live with (`cushion_ms`, tts.pacing): how long after its
    # arrival a listener with nothing else to hear should start it. What is left of it is
    # sent with the chunk when it is read back while its session still runs. Null for a
    # replay's copies and rows stored before it was kept.
    cushion_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="tts_chunk_unique_seq")
        ]
        verbose_name = "TTS chunk"

    def __str__(self) -> str:
        return f"{self.session_id}#{self.seq}"

    @property
    def duration_ms(self) -> int:
        return round(self.samples * 1000 / self.sample_rate) if self.sample_rate else 0


# The narration tables: where the routers put them is where a worker's and a web process's
# narration work goes (runworker's commits, tts.warmup's connections).
NARRATION_MODELS: tuple[type[models.Model], ...] = (TTSSession, TTSChunk, AudioBlob)
