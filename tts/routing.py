"""Socket and worker routes of the tts app, for a project's asgi.py."""

from django.urls import path

from tts.broadcast import GENERATE_CHANNEL
from tts.consumers import SessionConsumer
from tts.worker import GenerateConsumer

# A session's socket is SOCKETS_PATH + "<id>/"; the API's ws_url and the player (which opens
# a socket before the POST's reply) build it from this.
SOCKETS_PATH = "/ws/tts/"

websocket_urlpatterns = [
    path(f"{SOCKETS_PATH.lstrip('/')}<str:session_id>/", SessionConsumer.as_asgi()),
]

channel_routes = {GENERATE_CHANNEL: GenerateConsumer.as_asgi()}
