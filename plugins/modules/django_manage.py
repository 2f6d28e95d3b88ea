#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pydeploy.web contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: django_manage
short_description: Run Django management commands with a truthful changed status and check mode
version_added: 0.1.0
description:
  - Runs C(<python> <project_path>/manage.py <command>) as an argument list, never through
    a shell and never through the shebang of C(manage.py), which therefore need not be
    executable. C(--no-color) is always passed.
  - The command gets an environment the module builds, not the one it inherits (see
    O(env) and the notes), so it behaves the same with or without C(become_user).
    Secrets reach Django through that environment, never through the command line.
  - V(migrate), V(collectstatic), V(check), V(createsuperuser) and V(test) are
    first-class. Their C(changed) status comes from what Django did, not from matching
    its messages - the migration plan before and after, the files collectstatic
    copied, whether the user existed.
  - The decisions for V(migrate), V(check) and V(createsuperuser) are made by a few
    lines of Python that run inside the project with C(manage.py shell --command), so
    they see the same settings, C(sys.path) and database as the command itself.
  - Any other command runs with O(args) and is reported as changed; use C(changed_when)
    in the play to say otherwise.
author:
  - pydeploy.web contributors (@pydeploy)
options:
  command:
    description:
      - The management command, for example V(migrate) or V(clearsessions). A single
        name; its arguments go in O(args).
    type: str
    required: true
  project_path:
    description:
      - Directory that holds C(manage.py), for example C(/srv/mysite/current). The
        command runs with this directory as its working directory.
    type: path
    required: true
  virtualenv:
    description:
      - Virtualenv of the project. The interpreter is C(<virtualenv>/bin/python) and
        C(<virtualenv>/bin) comes first on C(PATH).
      - Exactly one of O(virtualenv) and O(python) is required.
    type: path
  python:
    description:
      - Interpreter to run C(manage.py) with, for example C(/usr/bin/python3) for a
        Django installed from Debian packages.
      - Exactly one of O(virtualenv) and O(python) is required.
    type: path
  settings:
    description:
      - Python path of the settings module, set as C(DJANGO_SETTINGS_MODULE). It wins
        over a value in O(env) or O(env_file).
      - When no value is given anywhere, the default that C(manage.py) sets applies.
    type: str
  pythonpath:
    description:
      - Directories set as C(PYTHONPATH), in this order. O(project_path) is always on
        C(sys.path) already (it holds C(manage.py)).
    type: list
    elements: path
  env:
    description:
      - Environment variables for the command, for example the database password.
        Values are converted to strings.
      - They win over O(env_file). C(LC_ALL), C(LANG) and C(PYTHONUTF8) are always set
        by the module.
      - Values of 4 characters or more are treated as secrets and replaced with
        C(********) wherever they appear in the messages, the output and the command
        line the module returns, as for O(env_file); shorter ones, such as V(1), are not
        secrets and are left alone.
    type: dict
    default: {}
  env_file:
    description:
      - A file of C(KEY=VALUE) lines on the managed host, such as the release's
        C(shared/.env), read by the user the module runs as. O(env) wins on conflicts.
      - Blank lines and lines starting with C(#) are skipped; C(export ) before a name
        is allowed; values may be in single quotes (taken literally) or double quotes
        (with C(\n), C(\t), C(\") and C(\\) escapes); in an unquoted value, a C(#)
        after a blank starts a comment. Variables are not expanded. A line that is not of this form
        fails the task, naming the file and the line number but not its content.
      - Values of 4 characters or more are treated as secrets and replaced with
        C(********) wherever they appear in the messages, the output and the command
        line the module returns (not in migration labels or counts).
    type: path
  args:
    description:
      - Extra arguments, appended to the command line after those the module adds.
      - For O(command=check), they are app labels to limit the checks to, as for
        C(manage.py check app_label).
      - Do not put secrets here; they would be visible in the process list. Use O(env).
    type: list
    elements: str
    default: []
  database:
    description:
      - Database alias for V(migrate), V(createsuperuser), V(check) (enables the
        database checks for it) and other commands (passed as C(--database)).
      - Not accepted for V(collectstatic) and V(test), which have no such option.
    type: str
  app_label:
    description:
      - For O(command=migrate), migrate only this app.
    type: str
  migration:
    description:
      - For O(command=migrate), the migration of O(app_label) to migrate to, by name or
        unique prefix (V(0002) or V(0002_note_pinned)). V(zero) unapplies all of the
        app's migrations. Earlier migrations than the current state are unapplied.
      - Requires O(app_label).
    type: str
  clear:
    description:
      - For O(command=collectstatic), delete the existing files in C(STATIC_ROOT)
        first (C(--clear)). Every run then copies all files again and reports changed.
    type: bool
    default: false
  link:
    description:
      - For O(command=collectstatic), create symbolic links instead of copies (C(--link)).
    type: bool
    default: false
  deploy:
    description:
      - For O(command=check), include the deployment checks (C(check --deploy)).
    type: bool
    default: false
  fail_level:
    description:
      - For O(command=check), the task fails when an issue at this level or above is
        found. Issues below it are returned (and shown as warnings from V(WARNING) up).
      - Django's own default is V(ERROR); the module's is stricter, as for a deploy gate.
    type: str
    choices: [CRITICAL, ERROR, WARNING, INFO, DEBUG]
    default: WARNING
  tags:
    description:
      - For O(command=check), run only the checks with these tags, for example
        V(security) or V(models).
    type: list
    elements: str
    default: []
  username:
    description:
      - For O(command=createsuperuser), the value of the user model's C(USERNAME_FIELD)
        (the user name for Django's default user model). Required for that command.
    type: str
  email:
    description:
      - For O(command=createsuperuser), the email address of a user that is created.
        Django's default user model requires it. An existing user's address is not changed.
    type: str
  password:
    description:
      - For O(command=createsuperuser), the password. It reaches Django only as
        C(DJANGO_SUPERUSER_PASSWORD) in the environment and never appears in the result.
      - Without it, a new user gets an unusable password (for example for single sign-on).
      - Django does not apply C(AUTH_PASSWORD_VALIDATORS) to non-interactive creation.
    type: str
  update_password:
    description:
      - For O(command=createsuperuser). V(on_create) sets O(password) only when the user
        is created. V(always) also sets it on an existing user whose password differs,
        and reports changed then; it requires O(password).
    type: str
    choices: [on_create, always]
    default: on_create
extends_documentation_fragment:
  - pydeploy.web.attributes
  - pydeploy.web.attributes.platform
attributes:
  check_mode:
    support: partial
    details:
      - V(migrate) computes the migration plan and reports the migrations that would
        be applied; nothing is written, and a missing SQLite database file is not created.
      - V(collectstatic) runs with C(--dry-run) and reports the counts it would reach.
      - V(check) runs as usual; it changes nothing.
      - V(createsuperuser) looks the user up (and compares the password for
        O(update_password=always)) without writing.
      - V(test) and other commands do not run; the task is reported as skipped.
      - When C(manage.py) or the interpreter does not exist yet (an earlier task that
        did not run in check mode would create it), the task is skipped with a warning.
  diff_mode:
    support: none
notes:
  - "The environment of the command is exactly this, in increasing precedence -
    C(PATH) (the virtualenv's C(bin) first, then the system directories), C(HOME), C(USER)
    and C(LOGNAME) of the user the module runs as, C(VIRTUAL_ENV); then the variables of
    O(env_file); then O(env); then C(DJANGO_SETTINGS_MODULE) from O(settings),
    C(PYTHONPATH) from O(pythonpath), C(LC_ALL=C), C(LANG=C) and C(PYTHONUTF8=1).
    Nothing else is inherited, neither from the remote login, nor from C(become), nor
    from the task's C(environment) keyword."
  - V(migrate) always runs, whether the plan holds anything or not (Django then still
    emits its C(post_migrate) signal), but is reported changed only when migrations were
    applied or unapplied. Apps without migrations are not part of the plan.
  - V(createsuperuser) does not change an existing user other than its password with
    O(update_password=always); the task warns when that user is not a superuser or is inactive.
  - V(check) calls C(django.core.checks.run_checks), the function behind C(manage.py check),
    and applies O(fail_level) itself, so that every issue comes back with its level, which
    Django's text output only gives per section.
  - Run the task with C(become_user) set to the application user, so that the database
    files, static files and caches it writes belong to that user.
seealso:
  - module: community.general.django_manage
  - module: pydeploy.web.venv
  - name: django-admin and manage.py
    description: Django's documentation of the management commands.
    link: https://docs.djangoproject.com/en/stable/ref/django-admin/
"""

EXAMPLES = r"""
- name: Apply the migrations of the new release
  pydeploy.web.django_manage:
    command: migrate
    project_path: /srv/mysite/releases/3f2a9c1b7d4e
    virtualenv: /srv/mysite/venvs/5d41402abc4b2a76
    settings: mysite.settings.production
    env_file: /srv/mysite/shared/.env
  become: true
  become_user: mysite
  register: mysite_migrate

- name: Say what was applied
  ansible.builtin.debug:
    msg: "{{ mysite_migrate.applied }}"
  when: mysite_migrate is changed

- name: Collect static files
  pydeploy.web.django_manage:
    command: collectstatic
    project_path: /srv/mysite/releases/3f2a9c1b7d4e
    virtualenv: /srv/mysite/venvs/5d41402abc4b2a76
    settings: mysite.settings.production
    env_file: /srv/mysite/shared/.env
  become: true
  become_user: mysite

- name: Refuse to go live with settings Django warns about
  pydeploy.web.django_manage:
    command: check
    deploy: true
    fail_level: WARNING
    project_path: /srv/mysite/releases/3f2a9c1b7d4e
    virtualenv: /srv/mysite/venvs/5d41402abc4b2a76
    settings: mysite.settings.production
    env_file: /srv/mysite/shared/.env
  become: true
  become_user: mysite

- name: Make sure the admin account exists
  pydeploy.web.django_manage:
    command: createsuperuser
    username: admin
    email: admin@example.com
    password: "{{ vault_mysite_admin_password }}"
    project_path: /srv/mysite/releases/3f2a9c1b7d4e
    virtualenv: /srv/mysite/venvs/5d41402abc4b2a76
    settings: mysite.settings.production
    env_file: /srv/mysite/shared/.env
  become: true
  become_user: mysite

- name: Migrate one app back to an earlier migration
  pydeploy.web.django_manage:
    command: migrate
    app_label: notes
    migration: "0001"
    project_path: /srv/mysite/current
    virtualenv: /srv/mysite/venvs/5d41402abc4b2a76
    env:
      DATABASE_PASSWORD: "{{ vault_mysite_db_password }}"
  become: true
  become_user: mysite

- name: Run the test suite of the release before it goes live
  pydeploy.web.django_manage:
    command: test
    args: [--parallel, "2", notes]
    project_path: /srv/mysite/releases/3f2a9c1b7d4e
    virtualenv: /srv/mysite/venvs/5d41402abc4b2a76
    settings: mysite.settings.test
  become: true
  become_user: mysite

- name: Remove expired sessions (changes nothing a play cares about)
  pydeploy.web.django_manage:
    command: clearsessions
    project_path: /srv/mysite/current
    virtualenv: /srv/mysite/venvs/5d41402abc4b2a76
    env_file: /srv/mysite/shared/.env
  become: true
  become_user: mysite
  changed_when: false
"""

RETURN = r"""
cmd:
  description:
    - The command line (argument list) of the management command that did the work.
    - When no such command ran (V(migrate) and V(createsuperuser) in check mode, an
      existing superuser, V(check)), the C(manage.py shell) call that decided.
    - It never holds a password or a value of O(env) or O(env_file).
  returned: when a command ran or would run
  type: list
  elements: str
  sample: ["/srv/mysite/venvs/5d41402abc4b2a76/bin/python", "/srv/mysite/current/manage.py", "migrate", "--noinput", "--no-color"]
rc:
  description: Exit status of RV(cmd).
  returned: when RV(cmd) ran
  type: int
  sample: 0
stdout:
  description: Standard output of RV(cmd) (the last lines when the task failed).
  returned: when RV(cmd) ran
  type: str
  sample: "Operations to perform:\n  Apply all migrations: admin, auth, contenttypes, notes, sessions, tags\n"
stderr:
  description: Standard error of RV(cmd) (the last lines when the task failed).
  returned: when RV(cmd) ran
  type: str
  sample: ""
applied:
  description:
    - For V(migrate), the migrations applied by this run, as C(app_label.name), in order.
    - In check mode, the migrations that would be applied.
  returned: when O(command=migrate)
  type: list
  elements: str
  sample: ["notes.0002_note_pinned", "tags.0002_tag_colour"]
unapplied:
  description:
    - For V(migrate) with a O(migration) target behind the current state, the
      migrations unapplied (in check mode, that would be), in order.
  returned: when O(command=migrate)
  type: list
  elements: str
  sample: []
pending:
  description:
    - For V(migrate), the migrations of the plan not applied when the task ends - in
      check mode, all of them; otherwise normally none.
  returned: when O(command=migrate)
  type: list
  elements: str
  sample: []
copied:
  description:
    - For V(collectstatic), the number of files copied (or linked with O(link)).
    - In check mode, the number that would be.
  returned: when O(command=collectstatic) and its summary line was found
  type: int
  sample: 3
unmodified:
  description: For V(collectstatic), the number of files already up to date.
  returned: when O(command=collectstatic) and its summary line was found
  type: int
  sample: 127
deleted:
  description: For V(collectstatic) with O(clear), the number of files deleted first (or that would be).
  returned: when O(command=collectstatic)
  type: int
  sample: 0
post_processed:
  description: For V(collectstatic), the number of files the storage post-processed (hashed names, for example).
  returned: when O(command=collectstatic) and its summary line was found
  type: int
  sample: 0
issues:
  description:
    - For V(check), every issue Django's system checks found (silenced ones left out).
  returned: when O(command=check)
  type: list
  elements: dict
  contains:
    id:
      description: Identifier of the check, for example C(security.W004). V(null) for checks without one.
      type: str
    level:
      description: One of V(DEBUG), V(INFO), V(WARNING), V(ERROR), V(CRITICAL).
      type: str
    message:
      description: What Django says.
      type: str
    hint:
      description: Django's hint, V(null) when there is none.
      type: str
    obj:
      description: The object the issue is about (a model label, a field) or V(null).
      type: str
  sample:
    - id: security.W018
      level: WARNING
      message: You should not have DEBUG set to True in deployment.
      hint: null
      obj: null
created:
  description: For V(createsuperuser), whether the user was created (in check mode, would be).
  returned: when O(command=createsuperuser)
  type: bool
  sample: true
password_updated:
  description:
    - For V(createsuperuser) with O(update_password=always), whether the existing
      user's password was set (in check mode, would be).
  returned: when O(command=createsuperuser)
  type: bool
  sample: false
username:
  description: For V(createsuperuser), the user name looked up or created.
  returned: when O(command=createsuperuser)
  type: str
  sample: admin
tests_run:
  description: For V(test), the number of tests the runner reports it ran.
  returned: when O(command=test) and the runner printed its count
  type: int
  sample: 42
"""

import json
import os
import pwd
import re

from ansible.module_utils.basic import AnsibleModule

TAIL_LINES = 25
MASK = "********"
# Values from env and env_file shorter than this are not masked: they cannot be
# meaningful secrets, and masking "1" or "True" would garble every number and flag in
# the output. The password is always masked.
MIN_MASKED_LENGTH = 4
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}

# Options that belong to one command; a non-default value with another command is a
# mistake worth stopping for (a typo in `command`, an option in the wrong task).
COMMAND_OPTIONS = {
    "app_label": "migrate", "migration": "migrate",
    "clear": "collectstatic", "link": "collectstatic",
    "deploy": "check", "fail_level": "check", "tags": "check",
    "username": "createsuperuser", "email": "createsuperuser", "password": "createsuperuser",
    "update_password": "createsuperuser",
}
NO_DATABASE_OPTION = ("collectstatic", "test")

# The probes run inside the project through `manage.py shell --command`, after
# manage.py and django.setup() did what they do for any command (settings, sys.path,
# app registry). They read their arguments as JSON from PYDEPLOY_DJANGO_ARGS (never a
# secret; the password is in DJANGO_SUPERUSER_PASSWORD) and print one line,
# MARKER + JSON, which the module finds among whatever else the project prints.
# They must stay free of "$" and "~" and run on every Python that Django 3.2+ runs on.
MARKER = "@@pydeploy.django_manage@@"
ARGS_VARIABLE = "PYDEPLOY_DJANGO_ARGS"

_PROLOGUE = """\
import json, os
from django.db import DEFAULT_DB_ALIAS, connections
A = json.loads(os.environ['PYDEPLOY_DJANGO_ARGS'])
def missing_sqlite_file(connection):
    # Connecting to a SQLite file that is not there creates it: such a database
    # holds nothing, and a probe must not write.
    return (connection.vendor == 'sqlite' and not connection.is_in_memory_db()
            and not os.path.exists(str(connection.settings_dict['NAME'])))
"""

_EPILOGUE = "print('\\n' + '%s' + json.dumps(probe(A), sort_keys=True))\n" % MARKER

# The migration plan exactly as `manage.py migrate` computes it, for the same targets.
MIGRATE_PROBE = _PROLOGUE + """\
def probe(a):
    from django.apps import apps
    from django.db.migrations.exceptions import AmbiguityError
    from django.db.migrations.executor import MigrationExecutor
    connection = connections[a['database'] or DEFAULT_DB_ALIAS]
    executor = MigrationExecutor(None if missing_sqlite_file(connection) else connection)
    loader = executor.loader
    conflicts = loader.detect_conflicts()
    if conflicts:
        return {'error': 'conflicting migrations (more than one leaf) in ' + '; '.join(
            '%s: %s' % (app, ', '.join(sorted(names))) for app, names in sorted(conflicts.items()))
            + '; merge them with makemigrations --merge'}
    app = a['app_label']
    if app:
        try:
            apps.get_app_config(app)
        except LookupError:
            return {'error': "no installed app with label '%s'" % app}
        if app not in loader.migrated_apps:
            return {'error': "app '%s' does not have migrations" % app}
        if a['migration'] == 'zero':
            targets = [(app, None)]
        elif a['migration']:
            try:
                targets = [(app, loader.get_migration_by_prefix(app, a['migration']).name)]
            except AmbiguityError:
                return {'error': "more than one migration of app '%s' starts with '%s'" % (app, a['migration'])}
            except KeyError:
                return {'error': "app '%s' has no migration named '%s'" % (app, a['migration'])}
        else:
            targets = [key for key in loader.graph.leaf_nodes() if key[0] == app]
    else:
        targets = loader.graph.leaf_nodes()
    return {'plan': [[m.app_label, m.name, bool(backwards)] for m, backwards in executor.migration_plan(targets)]}
""" + _EPILOGUE

# Django's system checks as `manage.py check` runs them, with each issue's level.
CHECK_PROBE = _PROLOGUE + """\
def probe(a):
    from django.apps import apps
    from django.core import checks
    for tag in a['tags']:
        if not checks.tag_exists(tag, include_deployment_checks=a['deploy']):
            return {'error': "there is no system check with the '%s' tag" % tag}
    try:
        app_configs = [apps.get_app_config(label) for label in a['app_labels']] or None
    except LookupError as e:
        return {'error': str(e)}
    kwargs = dict(app_configs=app_configs, tags=a['tags'] or None, include_deployment_checks=a['deploy'])
    if a['database']:
        kwargs['databases'] = [a['database']]
    issues = []
    for issue in checks.run_checks(**kwargs):
        if issue.is_silenced():
            continue
        obj = issue.obj
        if isinstance(obj, type) and hasattr(obj, '_meta'):
            obj = obj._meta.label
        issues.append({'id': issue.id, 'level': issue.level, 'message': str(issue.msg),
                       'hint': str(issue.hint) if issue.hint else None,
                       'obj': None if obj is None else str(obj)})
    return {'issues': issues}
""" + _EPILOGUE

# Looks the user up the way createsuperuser does; with update_password, compares the
# password without rewriting the stored hash and, when a['apply'], sets it.
SUPERUSER_PROBE = _PROLOGUE + """\
def probe(a):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import check_password
    User = get_user_model()
    alias = a['database'] or DEFAULT_DB_ALIAS
    connection = connections[alias]
    result = {'username_field': User.USERNAME_FIELD, 'exists': False, 'password_updated': False,
              'table_missing': False}
    if missing_sqlite_file(connection) or User._meta.db_table not in connection.introspection.table_names():
        result['table_missing'] = True
        return result
    try:
        user = User._default_manager.db_manager(alias).get_by_natural_key(a['username'])
    except User.DoesNotExist:
        return result
    result.update(exists=True, is_superuser=bool(getattr(user, 'is_superuser', True)),
                  is_active=bool(getattr(user, 'is_active', True)))
    if a['update_password']:
        password = os.environ['DJANGO_SUPERUSER_PASSWORD']
        if not check_password(password, user.password):
            result['password_updated'] = True
            if a['apply']:
                user.set_password(password)
                user.save(update_fields=['password'])
    return result
""" + _EPILOGUE

# collectstatic's last line at verbosity 1 and above, unchanged since Django 1.4:
# "N static file(s) copied|symlinked[ to '<STATIC_ROOT>'][, M unmodified][, K post-processed]."
_COLLECTED = re.compile(r"^(\d+) static files? (copied|symlinked)\b(.*)\.$", re.M)
_UNMODIFIED = re.compile(r", (\d+) unmodified(?:, \d+ post-processed)?$")
_POST_PROCESSED = re.compile(r", (\d+) post-processed$")
# One line per file that --clear deletes (or would, with --dry-run), at verbosity 1.
_DELETED = re.compile(r"^(?:Deleting|Pretending to delete) '", re.M)
_TESTS_RAN = re.compile(r"^Ran (\d+) tests? in ", re.M)
# unittest's verdict; Django's runner may print more after it (destroying test databases).
_TEST_VERDICT = re.compile(r"^(?:FAILED|OK)(?: \(.*\))?$", re.M)

_ENV_NAME = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$", "'": "'"}


class DjangoError(Exception):
    def __init__(self, msg, **result):
        super().__init__(msg)
        self.msg = msg
        self.result = result


def tail(text, lines=TAIL_LINES):
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def _unquote(raw, where):
    """The value of one env-file line after `KEY=` (leading blanks already stripped)."""
    if raw[:1] in ("'", '"'):
        quote, value, i = raw[0], [], 1
        while i < len(raw):
            c = raw[i]
            if c == quote:
                rest = raw[i + 1:].strip()
                if rest and not rest.startswith("#"):
                    raise DjangoError("%s: unexpected text after the closing quote" % where)
                return "".join(value)
            if c == "\\" and quote == '"' and i + 1 < len(raw):
                nxt = raw[i + 1]
                value.append(_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
                continue
            value.append(c)
            i += 1
        raise DjangoError("%s: the quoted value has no closing %s (values spanning lines are not supported)"
                          % (where, quote))
    # Unquoted: " #" starts a comment, as for python-dotenv and django-environ.
    return re.split(r"\s#", raw, maxsplit=1)[0].strip()


def parse_env_file(text, path):
    """KEY=VALUE lines to a dict. Errors name the file and line, never the content,
    which may be a secret."""
    env = {}
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = "env_file %s, line %d" % (path, number)
        m = _ENV_NAME.match(stripped)
        if not m:
            raise DjangoError("%s is not of the form KEY=VALUE (KEY made of letters, digits and "
                              "underscores, not starting with a digit)" % where)
        env[m.group(1)] = _unquote(m.group(2).strip(), where)
    return env


def read_env_file(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DjangoError("cannot read env_file %s: %s (it is read by uid %d, the user the module runs as)"
                          % (path, e.strerror, os.geteuid()))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DjangoError("env_file %s is not UTF-8 text (byte %d)" % (path, e.start))
    return parse_env_file(text, path)


def last_exception_line(text):
    """The `Type: message` line that ends a Python traceback, or the last line."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith((" ", "\t")) and not line.startswith("Traceback ("):
            return line.strip()
    return lines[-1].strip() if lines else ""


def diagnose(stderr, stdout, settings_module):
    """A sentence naming the cause of a failed run, from what Python and Django print."""
    text = stderr or stdout
    if re.search(r"No module named '?django'?$", text, re.M) or "Couldn't import Django" in text:
        return "Django cannot be imported by this interpreter (is it installed in the virtualenv?)"
    if re.search(r'django/conf/__init__\.py", line \d+, in (__init__|_setup)', text):
        # Settings() imports the settings module; whatever the import raised ends the traceback.
        which = ("the settings module '%s'" % settings_module if settings_module
                 else "the settings module that manage.py sets (no DJANGO_SETTINGS_MODULE given)")
        return "%s could not be loaded: %s" % (which, last_exception_line(text))
    unknown = re.search(r"^Unknown command: .*$", text, re.M)
    if unknown:
        return "%s (is the app that provides it in INSTALLED_APPS?)" % unknown.group(0)
    if "ImproperlyConfigured" in text:
        return "the settings are not usable: %s" % last_exception_line(text)
    return last_exception_line(text) or "no output"


def level_name(number):
    for name in ("CRITICAL", "ERROR", "WARNING", "INFO"):
        if number >= LEVELS[name]:
            return name
    return "DEBUG"


def label(entry):
    return "%s.%s" % (entry[0], entry[1])


def parse_collectstatic(stdout):
    counts = {"deleted": len(_DELETED.findall(stdout))}
    found = _COLLECTED.findall(stdout)
    if found:
        copied, _sep, rest = found[-1]
        counts["copied"] = int(copied)
        m = _UNMODIFIED.search(rest)
        counts["unmodified"] = int(m.group(1)) if m else 0
        m = _POST_PROCESSED.search(rest)
        counts["post_processed"] = int(m.group(1)) if m else 0
    return counts


class Run:
    def __init__(self, argv, rc, stdout, stderr):
        self.argv, self.rc, self.stdout, self.stderr = argv, rc, stdout, stderr


class DjangoManage:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.p = p
        self.command = p["command"]
        self.project_path = os.path.abspath(p["project_path"])
        self.manage = os.path.join(self.project_path, "manage.py")
        self.virtualenv = os.path.abspath(p["virtualenv"]) if p["virtualenv"] else None
        self.python = os.path.join(self.virtualenv, "bin", "python") if self.virtualenv else p["python"]
        self.database = p["database"]
        self.password = p["password"]
        self.work = None     # the management command that did the work
        self.probed = None   # the last probe

    # -- inputs --------------------------------------------------------------------

    def validate(self):
        if not re.match(r"^[\w.-]+$", self.command):
            raise DjangoError("command must be a single management command name such as 'migrate'; "
                              "put its arguments in args (got %r)" % self.command)
        for option, owner in COMMAND_OPTIONS.items():
            default = self.module.argument_spec[option].get("default")
            if self.command != owner and self.p[option] not in (None, default):
                raise DjangoError("option %s applies to command=%s only (command is %s)"
                                  % (option, owner, self.command))
        if self.database and self.command in NO_DATABASE_OPTION:
            raise DjangoError("manage.py %s has no --database option; remove database from this task"
                              % self.command)

    def missing(self):
        """Why the project cannot run yet, or None."""
        if not os.path.isdir(self.project_path):
            return "project_path %s is not a directory" % self.project_path
        if not os.path.isfile(self.manage):
            return ("manage.py not found under project_path %s; project_path must be the directory "
                    "that holds manage.py" % self.project_path)
        if not (os.path.isfile(self.python) and os.access(self.python, os.X_OK)):
            if self.virtualenv:
                return ("interpreter %s is missing: virtualenv %s has no bin/python; build it first "
                        "(role pydeploy.web.virtualenv)" % (self.python, self.virtualenv))
            return "interpreter %s is missing or not executable" % self.python
        return None

    def build_env(self):
        """The whole environment of every command (see the notes in DOCUMENTATION)."""
        env = {}
        bindir = os.path.dirname(self.python)
        env["PATH"] = SYSTEM_PATH if bindir in SYSTEM_PATH.split(":") else bindir + ":" + SYSTEM_PATH
        try:
            user = pwd.getpwuid(os.geteuid())
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        except KeyError:
            pass  # a uid without a passwd entry: no HOME to give
        if self.virtualenv:
            env["VIRTUAL_ENV"] = self.virtualenv
        from_file = read_env_file(self.p["env_file"]) if self.p["env_file"] else {}
        given = {str(k): "" if v is None else str(v) for k, v in self.p["env"].items()}
        env.update(from_file)
        env.update(given)
        if self.p["settings"]:
            env["DJANGO_SETTINGS_MODULE"] = self.p["settings"]
        if self.p["pythonpath"]:
            env["PYTHONPATH"] = ":".join(self.p["pythonpath"])
        # The C locale keeps Django's and Python's messages in English; UTF-8 mode keeps
        # file names and messages outside ASCII printable.
        env.update(LC_ALL="C", LANG="C", PYTHONUTF8="1")
        self.env = env
        secrets = [v for v in list(from_file.values()) + list(given.values()) if len(v) >= MIN_MASKED_LENGTH]
        if self.password:
            secrets.append(self.password)
        # Longest first, so that a secret containing another is masked whole.
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    # -- running -------------------------------------------------------------------

    def mask_result(self, result):
        """Mask secrets in the free text of a result: messages, output, the command line
        and the texts of check issues. Structured values (migration labels, counts, the
        user name) are Django's data, not the environment's, and are left intact so that
        a secret that happens to equal an app label cannot garble them."""
        result = dict(result)
        for key in ("msg", "stdout", "stderr", "cmd"):
            if key in result:
                result[key] = self.mask(result[key])
        if "issues" in result:
            result["issues"] = [dict(i, message=self.mask(i["message"]), hint=self.mask(i["hint"]))
                                for i in result["issues"]]
        return result

    def mask(self, value):
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, MASK)
            return value
        if isinstance(value, list):
            return [self.mask(v) for v in value]
        if isinstance(value, dict):
            return {k: self.mask(v) for k, v in value.items()}
        return value

    def run(self, argv, extra_env=None):
        env = dict(self.env)
        env.update(extra_env or {})
        # run_command starts from a copy of os.environ and updates it with environ_update.
        # Emptying os.environ (this process is the module's own and ends with the task)
        # makes `env` the command's whole environment.
        os.environ.clear()
        rc, out, err = self.module.run_command(argv, cwd=self.project_path, environ_update=env,
                                               expand_user_and_vars=False, errors="replace")
        return Run(argv, rc, out, err)

    def manage_argv(self, *args):
        return [self.python, self.manage, self.command] + list(args)

    def settings_module(self):
        return self.env.get("DJANGO_SETTINGS_MODULE")

    def failure(self, what, run):
        cause = diagnose(run.stderr, run.stdout, self.settings_module())
        return DjangoError("%s failed (rc %d): %s" % (what, run.rc, cause),
                           cmd=run.argv, rc=run.rc, stdout=tail(run.stdout), stderr=tail(run.stderr))

    def execute(self, argv, extra_env=None):
        """Run the management command that does the work; fail on a non-zero exit."""
        self.work = self.run(argv, extra_env)
        if self.work.rc != 0:
            raise self.failure("manage.py %s" % self.command, self.work)
        return self.work

    def probe(self, snippet, args, extra_env=None):
        argv = [self.python, self.manage, "shell", "--no-color", "--verbosity", "0", "--command", snippet]
        env = {ARGS_VARIABLE: json.dumps(args)}
        env.update(extra_env or {})
        run = self.run(argv, env)
        lines = run.stdout.splitlines()
        found = [line[len(MARKER):] for line in lines if line.startswith(MARKER)]
        run.stdout = "\n".join(line for line in lines if not line.startswith(MARKER)).strip("\n")
        self.probed = run
        if run.rc != 0:
            raise self.failure("the module's probe for %s (manage.py shell)" % self.command, run)
        try:
            data = json.loads(found[-1])
        except (IndexError, ValueError):
            raise DjangoError("the module's probe for %s (manage.py shell) printed no result; does the "
                              "project override the shell command?" % self.command,
                              cmd=argv, rc=run.rc, stdout=tail(run.stdout), stderr=tail(run.stderr))
        if "error" in data:
            raise DjangoError("%s: %s" % (self.command, data["error"]), cmd=argv)
        return data

    def outcome(self, **result):
        run = self.work or self.probed
        result["cmd"] = run.argv
        result.update(rc=run.rc, stdout=run.stdout, stderr=run.stderr)
        return result

    # -- commands ------------------------------------------------------------------

    def migrate(self):
        args = dict(database=self.database, app_label=self.p["app_label"], migration=self.p["migration"])
        before = self.probe(MIGRATE_PROBE, args)["plan"]
        argv = self.manage_argv("--noinput", "--no-color")
        if self.database:
            argv += ["--database", self.database]
        if self.p["app_label"]:
            argv.append(self.p["app_label"])
            if self.p["migration"]:
                argv.append(self.p["migration"])
        argv += self.p["args"]
        if self.module.check_mode:
            return self.migrate_result(before, before, check_mode=True)
        self.work = self.run(argv)
        if self.work.rc != 0:
            error = self.failure("manage.py migrate", self.work)
            try:
                after = self.probe(MIGRATE_PROBE, args)["plan"]
                done = self.migrate_result(before, after)
                error.result.update(applied=done["applied"], unapplied=done["unapplied"], pending=done["pending"])
                if done["applied"] or done["unapplied"]:
                    error.msg += " (after it had run %s)" % ", ".join(done["applied"] + done["unapplied"])
            except DjangoError:
                pass  # the first failure is the one to report
            error.result.update(cmd=argv, rc=self.work.rc)
            raise error
        # An empty plan stays empty: no second probe needed to know nothing was applied.
        after = self.probe(MIGRATE_PROBE, args)["plan"] if before else []
        return self.migrate_result(before, after)

    def migrate_result(self, before, after, check_mode=False):
        remaining = set(tuple(e) for e in after)
        done = [e for e in before if tuple(e) not in remaining]
        result = dict(
            applied=[label(e) for e in done if not e[2]],
            unapplied=[label(e) for e in done if e[2]],
            pending=[label(e) for e in after],
        )
        if check_mode:
            result["applied"] = [label(e) for e in before if not e[2]]
            result["unapplied"] = [label(e) for e in before if e[2]]
        result["changed"] = bool(result["applied"] or result["unapplied"])
        return self.outcome(**result)

    def collectstatic(self):
        argv = self.manage_argv("--noinput", "--no-color")
        if self.p["clear"]:
            argv.append("--clear")
        if self.p["link"]:
            argv.append("--link")
        if self.module.check_mode:
            argv.append("--dry-run")
        argv += self.p["args"]
        run = self.execute(argv)
        counts = parse_collectstatic(run.stdout)
        if "copied" in counts:
            changed = counts["copied"] > 0 or counts["deleted"] > 0
        else:
            self.module.warn("collectstatic printed no summary line ('N static files copied ...'), so what "
                             "it did is unknown and the task reports changed; do not pass --verbosity 0")
            changed = True
        return self.outcome(changed=changed, **counts)

    def check(self):
        args = dict(database=self.database, deploy=self.p["deploy"], tags=self.p["tags"],
                    app_labels=self.p["args"])
        issues = self.probe(CHECK_PROBE, args)["issues"]
        for issue in issues:
            issue["level"] = level_name(issue["level"])
        threshold = LEVELS[self.p["fail_level"]]
        serious = [i for i in issues if LEVELS[i["level"]] >= threshold]
        result = self.outcome(changed=False, issues=issues)
        if serious:
            raise DjangoError("Django's system check%s found %d issue%s at level %s or above:\n%s"
                              % (" --deploy" if self.p["deploy"] else "", len(serious),
                                 "" if len(serious) == 1 else "s", self.p["fail_level"],
                                 "\n".join(self.describe(i) for i in serious)),
                              **result)
        for issue in issues:
            if LEVELS[issue["level"]] >= LEVELS["WARNING"]:
                self.module.warn("Django system check: %s" % self.mask(self.describe(issue)))
        return result

    @staticmethod
    def describe(issue):
        text = "%s: (%s) %s" % (issue["obj"] or "?", issue["id"] or issue["level"], issue["message"])
        if issue.get("hint"):
            text += " HINT: %s" % issue["hint"]
        return text

    def createsuperuser(self):
        extra_env = {"DJANGO_SUPERUSER_PASSWORD": self.password} if self.password is not None else {}
        always = self.p["update_password"] == "always"
        args = dict(database=self.database, username=self.p["username"], update_password=always,
                    apply=not self.module.check_mode)
        found = self.probe(SUPERUSER_PROBE, args, extra_env)
        result = dict(username=self.p["username"], created=False, password_updated=False)
        if found["exists"]:
            if not (found.get("is_superuser") and found.get("is_active")):
                self.module.warn("user %s exists but is %s; this module does not change that"
                                 % (self.p["username"], "not a superuser" if not found.get("is_superuser")
                                    else "inactive"))
            result["password_updated"] = found["password_updated"]
            return self.outcome(changed=found["password_updated"], **result)
        if found["table_missing"] and not self.module.check_mode:
            raise DjangoError("createsuperuser: the user model's table does not exist in database '%s' yet; "
                              "run migrate first" % (self.database or "default"), **self.outcome())
        field = found["username_field"]
        argv = self.manage_argv("--noinput", "--no-color", "--%s" % field, self.p["username"])
        if self.p["email"] and field != "email":
            argv += ["--email", self.p["email"]]
        if self.database:
            argv += ["--database", self.database]
        argv += self.p["args"]
        if self.module.check_mode:
            if found["table_missing"]:
                self.module.warn("the user table does not exist yet (migrate has not run on this database); "
                                 "the user would be created once it does")
            result["created"] = True
            return self.outcome(changed=True, **result)
        self.execute(argv, extra_env)
        result["created"] = True
        return self.outcome(changed=True, **result)

    def test(self):
        argv = self.manage_argv("--noinput", "--no-color") + self.p["args"]
        if self.module.check_mode:
            return dict(changed=False, skipped=True, cmd=argv,
                        msg="manage.py test does not run in check mode")
        run = self.run(argv)
        self.work = run
        ran = _TESTS_RAN.findall(run.stderr + "\n" + run.stdout)
        counts = {"tests_run": int(ran[-1])} if ran else {}
        if run.rc != 0:
            error = self.failure("manage.py test", run)
            verdict = _TEST_VERDICT.findall(run.stderr)
            if verdict:  # the suite ran: its verdict says more than the last line
                error.msg = "manage.py test failed (rc %d): %s" % (run.rc, verdict[-1])
            error.result.update(counts)
            raise error
        return self.outcome(changed=False, **counts)

    def other(self):
        argv = self.manage_argv("--no-color")
        if self.database:
            argv += ["--database", self.database]
        argv += self.p["args"]
        if self.module.check_mode:
            return dict(changed=False, skipped=True, cmd=argv,
                        msg="manage.py %s does not run in check mode: what it would change is unknown"
                        % self.command)
        self.execute(argv)
        return self.outcome(changed=True)

    def ensure(self):
        self.secrets = [self.password] if self.password else []
        self.validate()
        why = self.missing()
        if why and self.module.check_mode:
            self.module.warn("%s; in check mode this may be the work of an earlier task that did not run" % why)
            return dict(changed=False, skipped=True, msg=why)
        if why:
            raise DjangoError(why)
        self.build_env()
        handler = getattr(self, self.command, None) if self.command in (
            "migrate", "collectstatic", "check", "createsuperuser", "test") else None
        return (handler or self.other)()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(type="str", required=True),
            project_path=dict(type="path", required=True),
            virtualenv=dict(type="path"),
            python=dict(type="path"),
            settings=dict(type="str"),
            pythonpath=dict(type="list", elements="path"),
            env=dict(type="dict", default={}, no_log=True),
            env_file=dict(type="path"),
            args=dict(type="list", elements="str", default=[]),
            database=dict(type="str"),
            app_label=dict(type="str"),
            migration=dict(type="str"),
            clear=dict(type="bool", default=False),
            link=dict(type="bool", default=False),
            deploy=dict(type="bool", default=False),
            fail_level=dict(type="str", choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"], default="WARNING"),
            tags=dict(type="list", elements="str", default=[]),
            username=dict(type="str"),
            email=dict(type="str"),
            password=dict(type="str", no_log=True),
            update_password=dict(type="str", choices=["on_create", "always"], default="on_create", no_log=False),
        ),
        mutually_exclusive=[("virtualenv", "python")],
        required_one_of=[("virtualenv", "python")],
        required_if=[
            ("command", "createsuperuser", ["username"]),
            ("update_password", "always", ["password"]),
        ],
        required_by={"migration": "app_label"},
        supports_check_mode=True,
    )
    # Ansible masks every value of a no_log option (env) wherever it appears in the
    # result, "1" and "True" too, which garbles every number and flag in it: the values
    # too short to be secrets are left to the module's own masking, which skips them, but
    # for one that is also the password.
    for value in module.params["env"].values():
        if len(str(value)) < MIN_MASKED_LENGTH and str(value) != module.params["password"]:
            module.no_log_values.discard(str(value))
    manager = DjangoManage(module)
    try:
        result = manager.ensure()
    except DjangoError as e:
        module.fail_json(**manager.mask_result(dict(e.result, msg=e.msg)))
    module.exit_json(**manager.mask_result(result))


if __name__ == "__main__":
    main()
