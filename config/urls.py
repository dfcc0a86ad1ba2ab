from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("tts.urls")),
    path("", include("scenes.urls")),
]

handler404 = "tts.views.not_found"
