from django.urls import path

from scenes import views

app_name = "scenes"

urlpatterns = [
    path("", views.story_list, name="stories"),
    path("narrate/", views.narrate, name="narrate"),
    path("stories/<slug:slug>/", views.story_detail, name="story"),
    path("stories/<slug:slug>/scenes/<int:pk>/", views.scene_detail, name="scene"),
]
