"""HTTP through Django; narration sockets and the narration worker through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "minimal_site.settings")
django_asgi_app = get_asgi_application()  # before anything that imports models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

import tts.routing  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(tts.routing.websocket_urlpatterns))
        ),
        # `python manage.py runworker tts-generate` consumes this channel.
        "channel": ChannelNameRouter(tts.routing.channel_routes),
    }
)
