# -*- coding: utf-8 -*-
# Copyright: pydeploy.web contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: web_group
short_description: The name of an application's web group, C(<app>-web), within 32 characters
version_added: 0.1.0
author:
  - pydeploy.web contributors (@pydeploy)
description:
  - The group of an application's socket, runtime directory and C(shared/), whose members are the
    web server's user and (gunicorn) the application user. The gunicorn and uwsgi roles name it so
    by default and the app role passes the same name, so that all of them agree.
  - It is the application name followed by C(-web). A group name has at most 32 characters
    (Debian's C(useradd)); an application name longer than 28 characters is cut to 23, then a
    hyphen and the first 4 hex digits of the SHA-1 of the whole name are added, so that two long
    names with the same beginning still get two groups.
options:
  _input:
    description: The application's name (C(app_name), C(gunicorn_app_name), C(uwsgi_app_name)).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Create the web group of mysite (mysite-web)
  ansible.builtin.group:
    name: "{{ 'mysite' | pydeploy.web.web_group }}"
    system: true

# "mysite" | pydeploy.web.web_group                                   -> "mysite-web"
# "a-very-long-application-name-x" | pydeploy.web.web_group         -> 23 characters, "-", 4 hex digits, "-web"
"""

RETURN = r"""
_value:
  description: The group's name, at most 32 characters.
  type: str
"""

import hashlib

from ansible.errors import AnsibleFilterError

_SUFFIX = "-web"
_MAX = 32


def web_group(app_name):
    """The web group of the application app_name."""
    if not isinstance(app_name, str) or not app_name:
        raise AnsibleFilterError("web_group expects an application name (a non-empty string), got %r" % (app_name,))
    if len(app_name) + len(_SUFFIX) <= _MAX:
        return app_name + _SUFFIX
    digest = hashlib.sha1(app_name.encode("utf-8")).hexdigest()[:4]
    return "%s-%s%s" % (app_name[:_MAX - len(_SUFFIX) - 5], digest, _SUFFIX)


class FilterModule:
    """The pydeploy.web.web_group filter."""

    def filters(self):
        return {"web_group": web_group}
