"""HTTP API: parse the request, call a service, render JSON (or audio)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from functools import wraps

from asgiref.sync import sync_to_async
from django.apps import apps
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from tts import health, services
from tts.audio import wav_bytes, wav_header
from tts.conf import settings
from tts.errors import (
    Conflict,
    Gone,
    InvalidInput,
    NotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
)
from tts.models import SessionStatus, TTSChunk, TTSSession
from tts.owners import owner_from_request
from tts.routing import SOCKETS_PATH
from tts.voices import all_voices, default_voice_id, voice_as_json

STREAM_BATCH = 32


def error_response(exc: ServiceError) -> JsonResponse:
    response = JsonResponse(exc.as_json(), status=exc.status)
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    return response


def api(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Turn service errors into JSON 4xx replies."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except ServiceError as exc:
            return error_response(exc)

    return wrapper


def parse_body(request: HttpRequest) -> dict:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise PayloadTooLarge("The request body is too large.", code="body_too_large") from None
    if request.content_type == "application/json":
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput("The body is not valid UTF-8.", code="invalid_utf8") from None
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise InvalidInput(f"The body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise InvalidInput("The body must be a JSON object.", code="invalid_json")
        return data
    try:
        return request.POST.dict()
    except (RequestDataTooBig, TooManyFieldsSent):
        raise PayloadTooLarge("The request body is too large.", code="body_too_large") from None


# A longer key could not be stored as the session's subject.
MAX_SCENE_ID = TTSSession._meta.get_field("subject_id").max_length


def resolve_subject(data: dict) -> tuple[object | None, str | None, str | None]:
    """(subject, its text, its voice) for ``scene``, through settings.TTS_SCENE_MODEL."""
    scene_id = data.get("scene")
    if scene_id in (None, ""):
        return None, None, None

    try:
        model = apps.get_model(settings.TTS_SCENE_MODEL)
    except (LookupError, ValueError):
        raise InvalidInput(
            "This site does not narrate scenes (TTS_SCENE_MODEL is not set).",
            code="scenes_disabled",
            fields={"scene": "not supported"},
        ) from None
    if (
        isinstance(scene_id, bool)
        or not isinstance(scene_id, int | str)
        or (isinstance(scene_id, str) and (len(scene_id) > MAX_SCENE_ID or "\x00" in scene_id))
    ):
        raise InvalidInput("scene must be an id.", code="invalid_scene", fields={"scene": "bad id"})
    try:  # the model's own key type: an integer, a UUID, a slug ...
        subject = model.objects.get(pk=model._meta.pk.to_python(scene_id))
    except (ValidationError, ValueError, TypeError, model.DoesNotExist):
        raise InvalidInput(
            f"No scene {scene_id!r}.", code="unknown_scene", fields={"scene": "unknown scene"}
        ) from None
    return subject, subject.get_narration_text(), getattr(subject, "voice", "") or None


def parse_session_id(value: object) -> uuid.UUID | None:
    """The id a client chose for its new session (optional): a UUID, not the nil one."""
    if value in (None, ""):
        return None
    try:
        session_id = uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        session_id = None
    if session_id is None or session_id.int == 0:
        raise InvalidInput(
            "id must be a UUID (a random one: crypto.randomUUID() in a browser).",
            code="invalid_id",
            fields={"id": "must be a UUID"},
        )
    return session_id


def session_urls(request: HttpRequest, session: TTSSession) -> dict:
    scheme = "wss" if request.is_secure() else "ws"
    return {
        "ws_url": f"{scheme}://{request.get_host()}{SOCKETS_PATH}{session.id}/",
        "status_url": reverse("tts:session", args=[session.id]),
        "audio_url": reverse("tts:audio", args=[session.id]),
    }


@require_POST
@api
def session_create(request: HttpRequest) -> JsonResponse:
    data = parse_body(request)
    session_id = parse_session_id(data.get("id"))
    subject, subject_text, subject_voice = resolve_subject(data)
    text = data.get("text") if data.get("text") not in (None, "") or subject is None else None
    voice = data.get("voice") or subject_voice
    if voice is not None and not isinstance(voice, str):
        raise InvalidInput(
            "voice must be a string.", code="invalid_voice", fields={"voice": "must be a string"}
        )
    session = services.session_create(
        text=text if text is not None else subject_text,
        voice_id=voice,
        # Made once the text and voice are valid: a refused POST creates no browser session.
        owner=lambda: owner_from_request(request, create_session=True),
        subject=subject,
        session_id=session_id,
    )
    body = {
        "id": str(session.id),
        "status": session.status,
        "voice": session.voice,
        **session_urls(request, session),
    }
    return JsonResponse(body, status=201)


def _session_for(request: HttpRequest, session_id: uuid.UUID) -> TTSSession:
    session = services.session_get(session_id=session_id)
    if not services.can_access(session, owner_from_request(request)):
        raise NotAllowed("This narration belongs to someone else.")
    return session


@require_GET
@api
def session_detail(request: HttpRequest, session_id: uuid.UUID) -> JsonResponse:
    session = _session_for(request, session_id)
    chunks = TTSChunk.objects.filter(session=session).order_by("seq")
    total, running = session.total_chunks, session.status == SessionStatus.RUNNING
    return JsonResponse(
        {
            "id": str(session.id),
            "status": session.status,
            "voice": session.voice,
            "engine": session.engine,
            "model": session.model,
            "total_chunks": session.total_chunks,
            "completed_chunks": session.completed_chunks,
            "queue_position": services.queue_position(session),
            "error": {"code": session.error_code, "message": session.error_message}
            if session.error_code
            else None,
            "created_at": session.created_at.isoformat(),
            "started_at": session.started_at and session.started_at.isoformat(),
            "finished_at": session.finished_at and session.finished_at.isoformat(),
            "first_chunk_ms": session.first_chunk_ms,
            "real_time_factor": session.real_time_factor,
            "duration_ms": session.audio_ms,
            "chunks": [
                services.chunk_meta(chunk, total_chunks=total, session_running=running)
                for chunk in chunks
            ],
            **session_urls(request, session),
        }
    )


@require_GET
@api
def chunk_audio(request: HttpRequest, session_id: uuid.UUID, seq: int) -> HttpResponse:
    session = _session_for(request, session_id)
    chunk = TTSChunk.objects.filter(session=session, seq=seq).select_related("audio").first()
    if chunk is not None:
        response = HttpResponse(
            wav_bytes(bytes(chunk.audio.pcm), chunk.sample_rate), content_type="audio/wav"
        )
        response["Cache-Control"] = "private, max-age=31536000, immutable"
        return response
    never = session.status in (SessionStatus.FAILED, SessionStatus.CANCELLED) or (
        session.total_chunks is not None and seq >= session.total_chunks
    )
    if never:
        raise Gone(f"Chunk {seq} will never exist.", code="chunk_gone")
    raise NotFound(f"Chunk {seq} is not generated yet.", code="chunk_pending", retry_after=1)


async def _stream_pcm(session_id: uuid.UUID) -> AsyncIterator[bytes]:
    def batch(after: int) -> list[tuple[int, bytes]]:
        rows = (
            TTSChunk.objects.filter(session_id=session_id, seq__gt=after)
            .order_by("seq")
            .values_list("seq", "audio__pcm")[:STREAM_BATCH]
        )
        return [(seq, bytes(pcm)) for seq, pcm in rows]

    after = -1
    while rows := await sync_to_async(batch)(after):
        for seq, pcm in rows:
            yield pcm
            after = seq


@require_GET
@api
def session_audio(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = _session_for(request, session_id)
    if session.status != SessionStatus.COMPLETED:
        raise Conflict("The narration is not complete yet.", code="not_complete")
    totals = TTSChunk.objects.filter(session=session).values_list("samples", "sample_rate")
    rows = list(totals)
    data_bytes, rate = sum(s for s, _ in rows) * 2, (rows[0][1] if rows else 22050)

    async def body() -> AsyncIterator[bytes]:
        yield wav_header(data_bytes, rate)
        async for part in _stream_pcm(session.id):
            yield part

    response = StreamingHttpResponse(body(), content_type="audio/wav")
    response["Content-Length"] = str(44 + data_bytes)
    response["Content-Disposition"] = f'inline; filename="narration-{session.id}.wav"'
    return response


@require_POST
@api
def session_cancel(request: HttpRequest, session_id: uuid.UUID) -> JsonResponse:
    session = _session_for(request, session_id)
    cancelled = services.session_cancel(session_id=session.id)
    session.refresh_from_db()
    return JsonResponse(
        {"id": str(session.id), "status": session.status, "cancelled": cancelled},
        status=200 if cancelled else 409,
    )


@require_GET
@ensure_csrf_cookie
def voices(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {"voices": [voice_as_json(v) for v in all_voices()], "default": default_voice_id()}
    )


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """503 unless the database, Redis and a worker are up. ``?scope=web`` leaves the
    workers out, for load balancers deciding whether this web process can serve."""
    report = health.check()
    healthy = report["ok"] or (
        request.GET.get("scope") == "web" and report["database"] and report["channel_layer"]
    )
    return JsonResponse(report, status=200 if healthy else 503)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """JSON 404s under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return error_response(NotFound("No such resource."))
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)
