from django.urls import path

from . import views

app_name = "guestbook"

urlpatterns = [
    path("", views.home, name="home"),
    path("guestbook/", views.entries, name="entries"),
    path("health/", views.health, name="health"),
]
