from django.apps import AppConfig


class TtsConfig(AppConfig):
    name = "tts"
    verbose_name = "Narration"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tts import checks  # noqa: F401  (registers system checks)
