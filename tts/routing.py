"""Socket and worker routes of the tts app, for a project's asgi.py."""

from django.urls import path

from tts.broadcast import GENERATE_CHANNEL
from tts.consumers import SessionConsumer
from tts.worker import GenerateConsumer

websocket_urlpatterns = [
    path("ws/tts/<str:session_id>/", SessionConsumer.as_asgi()),
]

channel_routes = {GENERATE_CHANNEL: GenerateConsumer.as_asgi()}
