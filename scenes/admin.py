from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.contenttypes.models import ContentType
from django.db.models import CharField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Cast
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from scenes.models import Scene, Story
from tts import batch
from tts.models import TTSSession
from tts.services import Owner


class SceneInline(admin.TabularInline):
    model = Scene
    fields = ("position", "title", "voice", "text")
    extra = 0
    ordering = ("position", "id")


def narrate(request: HttpRequest, modeladmin: admin.ModelAdmin, scenes: list[Scene]) -> None:
    """Queue a narration of each scene for the workers, owned by the staff member."""
    owner = Owner(user_id=request.user.pk, ip=request.META.get("REMOTE_ADDR"), is_staff=True)
    narrations = batch.scenes_narrate(subjects=scenes, owner=owner)
    counts = {
        plan: sum(n.plan == plan for n in narrations)
        for plan in ("new", "resume", "complete", "invalid")
    }
    modeladmin.message_user(
        request,
        format_html(
            "{} narration(s) queued, {} resumed, {} already narrated. "
            '<a href="{}">See the sessions</a>.',
            counts["new"],
            counts["resume"],
            counts["complete"],
            reverse("admin:tts_ttssession_changelist"),
        ),
    )
    for narration in narrations:
        if narration.plan == "invalid":
            modeladmin.message_user(
                request, f"{narration.subject}: {narration.error_message}", messages.ERROR
            )


def with_narration_status(queryset: QuerySet[Scene]) -> QuerySet[Scene]:
    """Annotate each scene with the status of its latest narration, in one query."""
    latest = TTSSession.objects.filter(
        subject_type=ContentType.objects.get_for_model(Scene),
        subject_id=Cast(OuterRef("pk"), CharField()),
    ).order_by("-created_at")
    return queryset.annotate(narration_status=Subquery(latest.values("status")[:1]))


@admin.register(Story)
class StoryAdmin(admin.ModelAdmin):
    list_display = ("title", "slug", "scene_count", "created_at")
    prepopulated_fields = {"slug": ("title",)}
    search_fields = ("title", "slug", "description")
    inlines = [SceneInline]
    actions = ["narrate_stories"]

    @admin.display(description="scenes")
    def scene_count(self, obj: Story) -> int:
        return obj.scenes.count()

    def has_narrate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("tts.add_ttssession")

    @admin.action(
        description="Narrate every scene of the selected stories", permissions=["narrate"]
    )
    def narrate_stories(self, request: HttpRequest, queryset: QuerySet[Story]) -> None:
        narrate(request, self, list(Scene.objects.filter(story__in=queryset)))


@admin.register(Scene)
class SceneAdmin(admin.ModelAdmin):
    list_display = ("title", "story", "position", "voice", "narration")
    list_filter = ("story",)
    list_select_related = ("story",)
    search_fields = ("title", "text")
    actions = ["narrate_scenes"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Scene]:
        return with_narration_status(super().get_queryset(request))

    @admin.display(description="latest narration")
    def narration(self, obj: Scene) -> str:
        status = getattr(obj, "narration_status", None)
        if status is None:
            return "—"
        subject_type = ContentType.objects.get_for_model(Scene)
        url = (
            f"{reverse('admin:tts_ttssession_changelist')}"
            f"?subject_type={subject_type.pk}&subject_id={obj.pk}"
        )
        return format_html('<a href="{}">{}</a>', url, status)

    def has_narrate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("tts.add_ttssession")

    @admin.action(description="Narrate selected scenes", permissions=["narrate"])
    def narrate_scenes(self, request: HttpRequest, queryset: QuerySet[Scene]) -> None:
        narrate(request, self, list(queryset))
