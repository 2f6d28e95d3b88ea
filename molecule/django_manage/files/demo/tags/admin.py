from django.contrib import admin

from tags.models import Tag

admin.site.register(Tag)
