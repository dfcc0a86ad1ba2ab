from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.generic import TemplateView

urlpatterns = [
    path("admin/", admin.site.urls),
    # The player posts here and follows /ws/tts/<id>/; also /healthz.
    path("", include("tts.urls")),
    # The player sends the csrftoken cookie back with its POST.
    path("", ensure_csrf_cookie(TemplateView.as_view(template_name="home.html")), name="home"),
]
urlpatterns += staticfiles_urlpatterns()  # DEBUG only; production: WhiteNoise or a CDN
