#!/usr/bin/env python
"""Django's command-line utility for the pydeploy.web test project.

Installed without the executable bit on purpose: pydeploy.web.django_manage runs it
with the virtualenv's interpreter and never through this shebang.
"""
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
