from django.apps import AppConfig


class TtsConfig(AppConfig):
    name = "tts"
    verbose_name = "Narration"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import sys

        from django.db.backends.signals import connection_created

        from tts import checks  # noqa: F401  (registers system checks)
        from tts.db import sqlite_checkpoint_pages

        connection_created.connect(sqlite_checkpoint_pages, dispatch_uid="tts-sqlite-wal")

        if "daphne.ws_protocol" in sys.modules:  # served by daphne (its CLI imports it first)
            from tts.asgi import (
                lazy_socket_debug_lines,
                steady_close_handshake,
                warm_up_when_served,
            )

            steady_close_handshake()
            lazy_socket_debug_lines()
            warm_up_when_served()
