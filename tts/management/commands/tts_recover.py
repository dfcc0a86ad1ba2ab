from django.core.management.base import BaseCommand

from tts.services import sessions_recover


class Command(BaseCommand):
    help = "Re-dispatch lost queued sessions and requeue sessions whose worker died."

    def handle(self, *args, **options) -> None:
        report = sessions_recover()
        self.stdout.write(
            f"redispatched {report.redispatched}, requeued {report.requeued}, "
            f"failed {report.failed}"
        )
