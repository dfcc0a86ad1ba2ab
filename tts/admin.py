"""The narration admin: every session, read-only, with its chunks and audio; actions to
cancel, retry and delete (audio included). Changes go through tts.services/tts.batch."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.contrib.auth import get_permission_codename
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import NoReverseMatch, path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from tts import batch, services
from tts.models import ACTIVE_STATUSES, SessionStatus, TTSChunk, TTSSession

RETRYABLE = (SessionStatus.FAILED, SessionStatus.CANCELLED)


def seconds(ms: int | None) -> str:
    return "—" if ms is None else f"{ms / 1000:.2f} s"


def duration(ms: int | None) -> str:
    if not ms:
        return "—"
    minutes, rest = divmod(ms / 1000, 60)
    return f"{int(minutes)}:{rest:04.1f}"


def admin_link(obj: Any, text: str | None = None) -> str:
    """A link to ``obj``'s admin page when its model is registered, else its name."""
    if obj is None:
        return "—"
    opts = obj._meta
    try:
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)])
    except NoReverseMatch:
        return str(text or obj)
    return format_html('<a href="{}">{}</a>', url, text or obj)


@admin.register(TTSSession)
class TTSSessionAdmin(admin.ModelAdmin):
    list_display = (
        "short_id",
        "status_badge",
        "voice",
        "subject_link",
        "progress",
        "first_chunk",
        "rtf",
        "audio_duration",
        "owner_display",
        "created_at",
    )
    list_filter = ("status", "voice", "engine", "created_at")
    search_fields = ("id", "text")
    date_hierarchy = "created_at"
    list_per_page = 50
    actions = ["cancel_sessions", "retry_sessions", "delete_selected"]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "status_badge",
                    "progress",
                    "subject_link",
                    "voice",
                    "engine",
                    "model",
                    "language",
                    "text",
                )
            },
        ),
        (
            "Timings",
            {
                "fields": (
                    "created_at",
                    "started_at",
                    "finished_at",
                    "heartbeat_at",
                    "first_chunk",
                    "engine_time",
                    "audio_duration",
                    "rtf",
                    "attempts",
                    "claimed_by",
                    "dispatched_at",
                )
            },
        ),
        ("Error", {"fields": ("error_code", "error_message")}),
        ("Owner", {"fields": ("owner_display", "owner_ip")}),
        ("Audio", {"fields": ("full_audio",)}),
    )
    readonly_fields = (
        "status_badge",
        "progress",
        "subject_link",
        "first_chunk",
        "engine_time",
        "audio_duration",
        "rtf",
        "owner_display",
        "full_audio",
    )

    # Read-only: sessions change only through the services (actions below). ------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_control_permission(self, request: HttpRequest) -> bool:
        """Cancel and retry: for staff who may change sessions."""
        codename = get_permission_codename("change", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> tuple:
        if obj is not None and not obj.error_code:
            return tuple(f for f in self.fieldsets if f[0] != "Error")
        return self.fieldsets

    def get_queryset(self, request: HttpRequest) -> QuerySet[TTSSession]:
        return (
            super()
            .get_queryset(request)
            .select_related("owner", "subject_type")
            .prefetch_related("subject")
        )

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str):
        """A full session id finds that session (pasted from a log or a URL)."""
        try:
            session_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(pk=session_id), False

    # Columns and fields ----------------------------------------------------------------

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: TTSSession) -> str:
        return str(obj.id)[:8]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: TTSSession) -> str:
        return format_html(
            '<span class="tts-status tts-status-{}" data-tts-field="status">{}</span>',
            obj.status,
            obj.get_status_display(),
        )

    @admin.display(description="progress")
    def progress(self, obj: TTSSession) -> str:
        total = obj.total_chunks
        return format_html(
            '<progress max="{}" value="{}" data-tts-field="bar"></progress> '
            '<span data-tts-field="progress">{} / {}</span>',
            total or 1,
            obj.completed_chunks if total else 0,
            obj.completed_chunks,
            "?" if total is None else total,
        )

    @admin.display(description="subject")
    def subject_link(self, obj: TTSSession) -> str:
        if obj.subject_type_id is None:
            return "—"
        subject = obj.subject
        if subject is None:
            return f"{obj.subject_type.model} {obj.subject_id} (deleted)"
        return admin_link(subject)

    @admin.display(description="first chunk", ordering="first_chunk_ms")
    def first_chunk(self, obj: TTSSession) -> str:
        return seconds(obj.first_chunk_ms)

    @admin.display(description="engine time", ordering="engine_ms")
    def engine_time(self, obj: TTSSession) -> str:
        return seconds(obj.engine_ms)

    @admin.display(description="real-time factor", ordering="real_time_factor")
    def rtf(self, obj: TTSSession) -> str:
        return "—" if obj.real_time_factor is None else f"{obj.real_time_factor:.3f}"

    @admin.display(description="audio", ordering="audio_ms")
    def audio_duration(self, obj: TTSSession) -> str:
        return duration(obj.audio_ms)

    @admin.display(description="owner", ordering="owner")
    def owner_display(self, obj: TTSSession) -> str:
        if obj.owner_id is not None:
            return admin_link(obj.owner, obj.owner.get_username())
        if obj.owner_session_key:
            return f"anonymous browser {obj.owner_session_key[:8]}…"
        return "— (command line)"

    @admin.display(description="full audio")
    def full_audio(self, obj: TTSSession) -> str:
        if obj.status != SessionStatus.COMPLETED:
            return "Available once the narration has completed."
        url = reverse("tts:audio", args=[obj.id])
        return format_html(
            '<audio controls preload="none" src="{}"></audio> '
            '<a href="{}" download>Download WAV</a>',
            url,
            url,
        )

    # The change page: chunks, live updates, cancel and retry buttons ----------------------

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        session = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if session is not None:
            chunks = list(
                TTSChunk.objects.filter(session=session)
                .order_by("seq")
                .only(
                    "seq",
                    "text",
                    "char_start",
                    "char_end",
                    "samples",
                    "sample_rate",
                    "cached",
                    "engine_ms",
                )
            )
            context.update(
                tts_chunks=chunks,
                tts_last_seq=chunks[-1].seq if chunks else -1,
                tts_chunk_base=reverse("tts:chunk", args=[session.id, 0])[:-1],
                tts_ws_path=f"/ws/tts/{session.id}/",
                tts_live=session.status in ACTIVE_STATUSES,
                tts_can_cancel=session.status in ACTIVE_STATUSES,
                tts_can_retry=session.status in RETRYABLE,
                tts_can_control=self.has_control_permission(request),
            )
        return super().change_view(request, object_id, form_url, extra_context=context)

    def get_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/cancel/", view(self.cancel_view), name="tts_ttssession_cancel"),
            path("<path:object_id>/retry/", view(self.retry_view), name="tts_ttssession_retry"),
            *super().get_urls(),
        ]

    def _control(self, request: HttpRequest, object_id: str, act, done: str, refused: str):
        if not self.has_control_permission(request):
            return HttpResponse("You may not control narrations.", status=403)
        session = get_object_or_404(TTSSession, pk=object_id)
        if act(session_id=session.id):
            self.message_user(request, done)
        else:
            self.message_user(request, refused, messages.WARNING)
        return HttpResponseRedirect(reverse("admin:tts_ttssession_change", args=[session.id]))

    @method_decorator(require_POST)
    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._control(
            request,
            object_id,
            services.session_cancel,
            "Narration cancelled.",
            "Only a queued or running narration can be cancelled.",
        )

    @method_decorator(require_POST)
    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._control(
            request,
            object_id,
            services.session_retry,
            "Narration queued again; it continues after its last stored chunk.",
            "Only a failed or cancelled narration can be retried.",
        )

    # Actions ------------------------------------------------------------------------------

    @admin.action(description="Cancel selected narrations", permissions=["control"])
    def cancel_sessions(self, request: HttpRequest, queryset: QuerySet[TTSSession]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        done = sum(services.session_cancel(session_id=session_id) for session_id in ids)
        self._report(request, done, len(ids), "cancelled", "were not queued or running")

    @admin.action(
        description="Retry selected narrations (continue after the stored chunks)",
        permissions=["control"],
    )
    def retry_sessions(self, request: HttpRequest, queryset: QuerySet[TTSSession]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        done = sum(services.session_retry(session_id=session_id) for session_id in ids)
        self._report(request, done, len(ids), "queued again", "were not failed or cancelled")

    def _report(self, request: HttpRequest, done: int, asked: int, verb: str, why: str) -> None:
        self.message_user(request, f"{done} narration{'s' if done != 1 else ''} {verb}.")
        if asked > done:
            self.message_user(
                request, f"{asked - done} left as they were: they {why}.", messages.WARNING
            )

    def delete_model(self, request: HttpRequest, obj: TTSSession) -> None:
        self._report_delete(request, batch.sessions_delete(session_ids=[obj.pk]))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TTSSession]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        self._report_delete(request, batch.sessions_delete(session_ids=ids))

    def _report_delete(self, request: HttpRequest, report: batch.DeleteReport) -> None:
        self.message_user(
            request,
            f"Deleted {report.chunks} chunks and {report.blobs_deleted} stored audio segments; "
            f"kept {report.blobs_kept} still used by other narrations.",
        )
