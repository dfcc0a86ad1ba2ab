from django.core.management.base import BaseCommand

from scenes.demo import demo_load


class Command(BaseCommand):
    help = "Load (or refresh) the demo story."

    def handle(self, *args, **options) -> None:
        story = demo_load()
        self.stdout.write(f"Demo story loaded: {story.title} ({story.scenes.count()} scenes)")
