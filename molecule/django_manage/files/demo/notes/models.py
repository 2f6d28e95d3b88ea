from django.db import models


class Note(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    tags = models.ManyToManyField("tags.Tag", blank=True, related_name="notes")
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.title
