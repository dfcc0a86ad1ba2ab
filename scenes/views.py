"""Pages: the story list, a story with its scene cards, a scene, and free text."""

from __future__ import annotations

import math

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.csrf import ensure_csrf_cookie

from scenes.models import Scene, Story

WORDS_PER_MINUTE = 160  # a calm narration pace, pauses included
NARRATE_SAMPLE = (
    "It was a bright cold day in April, and the clocks were striking thirteen. "
    "Somewhere below, a dog barked twice. Then the street was quiet again, "
    "as if the whole town were holding its breath."
)


def listening_minutes(texts: list[str]) -> int:
    """Whole minutes of narration, at least one."""
    words = sum(len(text.split()) for text in texts)
    return max(1, math.ceil(words / WORDS_PER_MINUTE))


@ensure_csrf_cookie
def story_list(request: HttpRequest) -> HttpResponse:
    stories = list(Story.objects.prefetch_related("scenes"))
    for story in stories:
        scenes = list(story.scenes.all())
        story.scene_count = len(scenes)
        story.listening_minutes = listening_minutes([scene.text for scene in scenes])
    return render(
        request,
        "scenes/story_list.html",
        {"stories": stories, "max_chars": f"{settings.TTS_MAX_CHARS:,}"},
    )


@ensure_csrf_cookie
def story_detail(request: HttpRequest, slug: str) -> HttpResponse:
    story = get_object_or_404(Story, slug=slug)
    scenes = list(story.scenes.all())
    return render(
        request,
        "scenes/story_detail.html",
        {
            "story": story,
            "scenes": scenes,
            "listening_minutes": listening_minutes([scene.text for scene in scenes]),
        },
    )


@ensure_csrf_cookie
def scene_detail(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    scene = get_object_or_404(Scene.objects.select_related("story"), pk=pk, story__slug=slug)
    siblings = list(scene.story.scenes.only("pk", "title", "position", "story_id"))
    index = next(i for i, sibling in enumerate(siblings) if sibling.pk == scene.pk)
    for sibling in siblings:
        sibling.story = scene.story  # get_absolute_url needs the slug; no query per link
    return render(
        request,
        "scenes/scene_detail.html",
        {
            "story": scene.story,
            "scene": scene,
            "position": index + 1,
            "scene_count": len(siblings),
            "previous": siblings[index - 1] if index > 0 else None,
            "next": siblings[index + 1] if index + 1 < len(siblings) else None,
        },
    )


@ensure_csrf_cookie
def narrate(request: HttpRequest) -> HttpResponse:
    """Type a paragraph, press Play."""
    return render(request, "scenes/narrate.html", {"sample": NARRATE_SAMPLE})
