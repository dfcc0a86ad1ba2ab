from django.contrib import admin

from scenes.models import Scene, Story


class SceneInline(admin.TabularInline):
    model = Scene
    fields = ("position", "title", "voice", "text")
    extra = 0


@admin.register(Story)
class StoryAdmin(admin.ModelAdmin):
    list_display = ("title", "slug", "created_at")
    prepopulated_fields = {"slug": ("title",)}
    search_fields = ("title", "description")
    inlines = [SceneInline]


@admin.register(Scene)
class SceneAdmin(admin.ModelAdmin):
    list_display = ("title", "story", "position", "voice")
    list_filter = ("story",)
    search_fields = ("title", "text")
