from django.urls import path

from tts import views

app_name = "tts"

urlpatterns = [
    path("api/tts/sessions/", views.session_create, name="sessions"),
    path("api/tts/sessions/<uuid:session_id>/", views.session_detail, name="session"),
    path("api/tts/sessions/<uuid:session_id>/chunks/<int:seq>", views.chunk_audio, name="chunk"),
    path("api/tts/sessions/<uuid:session_id>/audio.wav", views.session_audio, name="audio"),
    path("api/tts/sessions/<uuid:session_id>/cancel/", views.session_cancel, name="cancel"),
    path("api/tts/voices/", views.voices, name="voices"),
    path("healthz", views.healthz, name="healthz"),
]
