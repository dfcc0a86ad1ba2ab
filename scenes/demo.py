"""The demo story that `manage.py load_demo` (and the run command) loads."""

from __future__ import annotations

import json
from pathlib import Path

from django.db import transaction

from scenes.models import Scene, Story

DEMO_DIR = Path(__file__).resolve().parent / "demo"


@transaction.atomic
def demo_load(path: Path | None = None) -> Story:
    """Create or update the demo story; running it twice changes nothing."""
    data = json.loads((path or DEMO_DIR / "lighthouse.json").read_text())
    story, _ = Story.objects.update_or_create(
        slug=data["slug"], defaults={"title": data["title"], "description": data["description"]}
    )
    for position, scene in enumerate(data["scenes"]):
        Scene.objects.update_or_create(
            story=story,
            position=position,
            defaults={
                "title": scene["title"],
                "text": scene["text"],
                "voice": scene.get("voice", ""),
            },
        )
    story.scenes.filter(position__gte=len(data["scenes"])).delete()
    return story
