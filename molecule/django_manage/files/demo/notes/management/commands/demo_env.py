"""Print what the process environment looks like to Django, as JSON: the values of
a few non-secret variables and only the names of all the others."""
import json
import os

from django.core.management.base import BaseCommand

SHOWN = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "PATH", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")


class Command(BaseCommand):
    help = "Print the environment the command runs in (values of non-secret variables only)."

    def handle(self, *args, **options):
        self.stdout.write(json.dumps({
            "uid": os.getuid(),
            "values": {k: os.environ.get(k) for k in SHOWN},
            "names": sorted(os.environ),
        }, sort_keys=True))
