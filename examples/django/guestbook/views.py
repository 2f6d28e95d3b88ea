import logging

from django.conf import settings
from django.contrib import messages
from django.db import DatabaseError, connection
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_safe

from .forms import EntryForm
from .models import Entry

logger = logging.getLogger(__name__)

# The guestbook page shows this many entries, newest first.
ENTRIES_SHOWN = 100


class HttpResponseSeeOther(HttpResponseRedirect):
    """303: after a POST, the browser follows the redirect with a GET."""

    status_code = 303


@require_safe
def home(request):
    # No database access here: the home page stays up when the database is not.
    return render(request, "guestbook/home.html", {"version": settings.APP_VERSION})


@require_http_methods(["GET", "HEAD", "POST"])
def entries(request):
    """The page that writes to and reads from the database."""
    if request.method == "POST":
        form = EntryForm(request.POST)
        if form.is_valid():
            entry = form.save()
            logger.info("guestbook entry %s saved", entry.pk)
            messages.success(request, "Thank you, %s: your message is in the guestbook." % entry.name)
            return HttpResponseSeeOther(reverse("guestbook:entries"))
        status = 400
    else:
        form = EntryForm()
        status = 200
    context = {
        "form": form,
        "entries": Entry.objects.all()[:ENTRIES_SHOWN],
        "version": settings.APP_VERSION,
    }
    return render(request, "guestbook/entries.html", context, status=status)


@never_cache
@require_safe
def health(request):
    """200 when the database answers, 503 when it does not (500 in a release built with
    --variant unhealthy); for load balancers and the deployer's health-gated switch."""
    database, status = "ok", 200
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        logger.exception("health check: the database does not answer")
        database, status = "error", 503
    body = {"status": "ok" if status == 200 else "error", "version": settings.APP_VERSION, "database": database}
    if settings.APP_UNHEALTHY:
        # A release built with `scripts/build-dist --variant unhealthy`: a drill for the
        # deployer's automatic revert. 500 Internal Server Error, what an application
        # broken by a release typically answers.
        body["status"], status = "unhealthy", 500
    return JsonResponse(body, status=status)
