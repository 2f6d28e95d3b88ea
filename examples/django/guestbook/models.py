from django.db import models


class Entry(models.Model):
    """A message left in the guestbook."""

    name = models.CharField(max_length=80)
    # The form caps messages at MESSAGE_MAX_LENGTH characters; the column is a plain
    # TEXT so that raising the cap needs no migration.
    message = models.TextField()
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    MESSAGE_MAX_LENGTH = 1000

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name_plural = "entries"

    def __str__(self):
        when = self.created.strftime("%Y-%m-%d %H:%M") if self.created else "unsaved"
        return "%s (%s)" % (self.name, when)
