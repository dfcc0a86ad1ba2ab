from django.shortcuts import get_object_or_404, render
from django.views.decorators.csrf import ensure_csrf_cookie

from scenes.models import Scene, Story


@ensure_csrf_cookie
def story_list(request):
    stories = Story.objects.prefetch_related("scenes")
    return render(request, "scenes/story_list.html", {"stories": stories})


@ensure_csrf_cookie
def story_detail(request, slug: str):
    story = get_object_or_404(Story, slug=slug)
    return render(request, "scenes/story_detail.html",
                  {"story": story, "scenes": story.scenes.all()})


@ensure_csrf_cookie
def scene_detail(request, slug: str, pk: int):
    scene = get_object_or_404(Scene, pk=pk, story__slug=slug)
    return render(request, "scenes/scene_detail.html", {"story": scene.story, "scene": scene})


@ensure_csrf_cookie
def narrate(request):
    """A plain page: type a paragraph, press Play."""
    return render(request, "scenes/narrate.html")
