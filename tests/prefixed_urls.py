"""A project that mounts the narration API under a prefix (docs/integration.md, section 4)."""

from django.urls import include, path

urlpatterns = [path("narration/", include("tts.urls"))]
