"""Tests of the guestbook: python manage.py test (with DJANGO_SECRET_KEY or DJANGO_DEBUG=1
in the environment). The test database is an in-memory SQLite one."""
import tempfile
from pathlib import Path
from unittest import mock

from django.db import OperationalError
from django.test import Client, TestCase, override_settings

from mysite.settings import read_version

from .models import Entry

# Tests run before (or without) collectstatic: the plain storage needs no manifest. And
# the test client speaks plain HTTP, so no redirect to HTTPS even with DJANGO_HTTPS=1.
TEST_SETTINGS = {
    "STORAGES": {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    },
    "SECURE_SSL_REDIRECT": False,
    "APP_VERSION": "9.8.7-test",
}


@override_settings(**TEST_SETTINGS)
class HomeTests(TestCase):
    def test_home_shows_the_version_and_links(self):
        response = self.client.get("/")
        self.assertEqual(response.status_code, 200)
        self.assertContains(response, "pydeploy demo: Django")
        self.assertContains(response, "Version 9.8.7-test")
        self.assertContains(response, 'href="/guestbook/"')
        self.assertContains(response, 'href="/admin/"')
        self.assertContains(response, "/static/guestbook/site.css")

    def test_security_headers(self):
        response = self.client.get("/")
        self.assertEqual(response["X-Frame-Options"], "DENY")
        self.assertEqual(response["X-Content-Type-Options"], "nosniff")


class ReadVersionTests(TestCase):
    def test_version_file_is_stripped(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "VERSION"
            path.write_text("2.3.4\n")
            self.assertEqual(read_version(path), "2.3.4")

    def test_missing_version_file_gives_dev(self):
        with tempfile.TemporaryDirectory() as tmp:
            self.assertEqual(read_version(Path(tmp) / "VERSION"), "dev")


@override_settings(**TEST_SETTINGS)
class GuestbookTests(TestCase):
    def test_post_then_get_shows_the_entry(self):
        # A browser's round trip with CSRF enforced: the form's GET sets the cookie, the
        # POST sends the token back.
        client = Client(enforce_csrf_checks=True)
        response = client.get("/guestbook/")
        self.assertEqual(response.status_code, 200)
        self.assertContains(response, "No entries yet")
        token = response.cookies["csrftoken"].value

        response = client.post(
            "/guestbook/",
            {"name": "Ada", "message": "Hello from the tests", "csrfmiddlewaretoken": token},
        )
        self.assertEqual(response.status_code, 303)
        self.assertEqual(response["Location"], "/guestbook/")
        self.assertEqual(Entry.objects.count(), 1)

        response = client.get("/guestbook/")
        self.assertContains(response, "Ada")
        self.assertContains(response, "Hello from the tests")

    def test_entries_are_listed_newest_first(self):
        Entry.objects.create(name="first", message="older")
        Entry.objects.create(name="second", message="newer")
        body = self.client.get("/guestbook/").content.decode()
        self.assertLess(body.index("newer"), body.index("older"))

    def test_post_without_csrf_token_is_refused(self):
        client = Client(enforce_csrf_checks=True)
        response = client.post("/guestbook/", {"name": "Eve", "message": "forged"})
        self.assertEqual(response.status_code, 403)
        self.assertFalse(Entry.objects.exists())

    def test_invalid_entry_is_rejected(self):
        response = self.client.post("/guestbook/", {"name": "Bob", "message": "x" * 1001})
        self.assertEqual(response.status_code, 400)
        self.assertContains(response, "at most 1000 characters", status_code=400)
        response = self.client.post("/guestbook/", {"name": "", "message": "no name"})
        self.assertEqual(response.status_code, 400)
        self.assertFalse(Entry.objects.exists())


@override_settings(**TEST_SETTINGS)
class HealthTests(TestCase):
    def test_health_is_ok(self):
        response = self.client.get("/health/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"status": "ok", "version": "9.8.7-test", "database": "ok"})
        self.assertIn("no-cache", response["Cache-Control"])

    def test_health_reports_a_database_error(self):
        with mock.patch("guestbook.views.connection") as connection:
            connection.cursor.side_effect = OperationalError("unable to open database file")
            with self.assertLogs("guestbook.views", "ERROR"):
                response = self.client.get("/health/")
        self.assertEqual(response.status_code, 503)
        self.assertEqual(response.json()["database"], "error")

    @override_settings(APP_UNHEALTHY=True)
    def test_health_fails_in_an_unhealthy_release(self):
        # A release built with scripts/build-dist --variant unhealthy.
        response = self.client.get("/health/")
        self.assertEqual(response.status_code, 500)
        self.assertEqual(response.json(), {"status": "unhealthy", "version": "9.8.7-test", "database": "ok"})

    def test_health_refuses_post(self):
        self.assertEqual(self.client.post("/health/").status_code, 405)
