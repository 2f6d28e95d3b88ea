from django.contrib import admin

from .models import Entry


@admin.register(Entry)
class EntryAdmin(admin.ModelAdmin):
    list_display = ("name", "short_message", "created")
    list_filter = ("created",)
    search_fields = ("name", "message")
    date_hierarchy = "created"
    readonly_fields = ("created",)

    @admin.display(description="message")
    def short_message(self, entry):
        return entry.message if len(entry.message) <= 60 else entry.message[:59] + "\u2026"
