"""A writer's stories, each an ordered list of scenes to narrate."""

from __future__ import annotations

from django.db import models
from django.urls import reverse


class Story(models.Model):
    title = models.CharField(max_length=200)
    slug = models.SlugField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["title"]
        verbose_name_plural = "stories"

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("scenes:story", args=[self.slug])


class Scene(models.Model):
    story = models.ForeignKey(Story, on_delete=models.CASCADE, related_name="scenes")
    title = models.CharField(max_length=200)
    text = models.TextField()
    position = models.PositiveIntegerField(default=0)
    voice = models.CharField(
        max_length=100, blank=True, help_text="Voice id; blank for the default."
    )

    class Meta:
        ordering = ["story", "position", "id"]

    def __str__(self) -> str:
        return f"{self.story}: {self.title}"

    def get_absolute_url(self) -> str:
        return reverse("scenes:scene", args=[self.story.slug, self.pk])

    def get_narration_text(self) -> str:
        return self.text
