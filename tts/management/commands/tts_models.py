"""List Coqui's models, or download one by name through coqui-tts's own manager."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from tts.engines import EngineUnavailable, coqui


class Command(BaseCommand):
    help = "List Coqui TTS models (* = in the local cache) or download one with --download."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--download", metavar="NAME", help="e.g. tts_models/en/ljspeech/vits")
        parser.add_argument("--cached", action="store_true", help="only models in the cache")
        parser.add_argument("--language", help="only models of this language code (e.g. en)")

    def handle(
        self, *args, download: str | None, cached: bool, language: str | None, **options
    ) -> None:
        if download:
            return self._download(download)
        names = coqui.list_models()
        if not names:
            raise CommandError("coqui-tts is not installed: pip install -r requirements.txt")
        for name in names:
            in_cache = coqui.is_model_cached(name)
            if (cached and not in_cache) or (language and name.split("/")[1] != language):
                continue
            self.stdout.write(f"{'*' if in_cache else ' '} {name}")
        self.stdout.write(f"cache: {coqui.cache_dir()}")

    def _download(self, name: str) -> None:
        try:
            folder = coqui.download_model(name, progress=self.stdout.isatty())
        except EngineUnavailable as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(self.style.SUCCESS(f"{name} is ready in {folder}"))
