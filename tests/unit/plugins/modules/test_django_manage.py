"""pydeploy.web.django_manage.

Most tests are case tables: module input -> the exact argv and environment of every
command the module runs -> scripted rc/stdout/stderr -> the expected result. Commands
never run; AnsibleModule.run_command is replaced. The tests at the end run a real
Django project (the one the Molecule scenario deploys) when an interpreter with Django
is at hand: PYDEPLOY_TEST_DJANGO_PYTHON=/path/to/venv/bin/python, or Django importable
by the interpreter running the tests.
"""
import hashlib
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
from types import SimpleNamespace

import pytest

from ansible_collections.pydeploy.web.plugins.modules import django_manage as dm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
DEMO = os.path.join(ROOT, "molecule", "django_manage", "files")
ME = pwd.getpwuid(os.geteuid())
PASSWORD = "S3cret-Pa55phrase"

# Placeholders in the case tables for the paths of the project fixture.
PY = "{py}"
MANAGE = "{manage}"
VENV = "{venv}"
APP = "{app}"


@pytest.fixture(autouse=True)
def private_environ(monkeypatch):
    """The module empties os.environ before each command (its process ends with the
    task); the test process keeps its own."""
    monkeypatch.setattr(os, "environ", dict(os.environ))


@pytest.fixture
def project(tmp_path):
    """A project directory with manage.py and a virtualenv with bin/python; neither
    ever runs here."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "manage.py").write_text("raise SystemExit('never run by the unit tests')\n")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    python = tmp_path / "venv" / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 99\n")
    python.chmod(0o755)
    return SimpleNamespace(app=str(app), venv=str(tmp_path / "venv"), python=str(python),
                           manage=str(app / "manage.py"), tmp=tmp_path)


def fill(value, project):
    """Replace the {py} {manage} {venv} {app} placeholders of a case."""
    if isinstance(value, str):
        return (value.replace(PY, project.python).replace(MANAGE, project.manage)
                .replace(VENV, project.venv).replace(APP, project.app))
    if isinstance(value, list):
        return [fill(v, project) for v in value]
    if isinstance(value, tuple):
        return tuple(fill(v, project) for v in value)
    if isinstance(value, dict):
        return {k: fill(v, project) for k, v in value.items()}
    return value


class Commands:
    """Stands in for run_command: records each call, answers from a script."""

    def __init__(self):
        self.script = []
        self.calls = []

    def __call__(self, module, argv, **kw):
        env = dict(os.environ)
        env.update(kw.get("environ_update") or {})
        self.calls.append(SimpleNamespace(argv=list(argv), env=env, kw=kw))
        if not self.script:
            raise AssertionError("unexpected command: %r" % (argv,))
        return self.script.pop(0)


@pytest.fixture
def commands(monkeypatch):
    fake = Commands()

    def run_command(module, argv, **kw):
        return fake(module, argv, **kw)

    monkeypatch.setattr(dm.AnsibleModule, "run_command", run_command)
    return fake


@pytest.fixture
def warnings(monkeypatch):
    seen = []
    monkeypatch.setattr(dm.AnsibleModule, "warn", lambda self, w: seen.append(w))
    return seen


def answer(stdout="", rc=0, stderr=""):
    return (rc, stdout, stderr)


def probed(data=None, **more):
    """What a probe prints: maybe some noise, then the marker line with `data` updated
    by `more` (probed(USER_THERE, exists=False) rather than ** of a dict and a keyword
    it also holds)."""
    return (0, "noise the project printed\n\n" + dm.MARKER + json.dumps(dict(data or {}, **more)) + "\n", "")


def probe_call(name, args):
    """Expected call of a probe: snippet name and the JSON arguments it gets."""
    return ("probe", name, args)


SNIPPETS = {"migrate": dm.MIGRATE_PROBE, "check": dm.CHECK_PROBE, "superuser": dm.SUPERUSER_PROBE}


def assert_calls(calls, expected, project):
    assert len(calls) == len(expected), [c.argv[:4] for c in calls]
    for call, want in zip(calls, fill(expected, project)):
        assert call.kw["cwd"] == project.app
        assert call.kw["expand_user_and_vars"] is False
        if isinstance(want, tuple):
            _kind, name, args = want
            assert call.argv == [project.python, project.manage, "shell", "--no-color", "--verbosity", "0",
                                 "--command", SNIPPETS[name]]
            assert json.loads(call.env[dm.ARGS_VARIABLE]) == args
        else:
            assert call.argv == want


def base_args(project, **more):
    args = dict(project_path=project.app, virtualenv=project.venv)
    args.update(fill(more, project))
    return args


PLAN_2 = [["notes", "0001_initial", False], ["tags", "0001_initial", False]]
NO_MIGRATE_ARGS = dict(database=None, app_label=None, migration=None)
MIGRATE_ARGV = [PY, MANAGE, "migrate", "--noinput", "--no-color"]
PROBE_ARGV = [PY, MANAGE, "shell", "--no-color", "--verbosity", "0", "--command"]
COLLECT_ARGV = [PY, MANAGE, "collectstatic", "--noinput", "--no-color"]
SUPERUSER_ARGV = [PY, MANAGE, "createsuperuser", "--noinput", "--no-color"]
CHECK_ARGS = dict(database=None, deploy=False, tags=[], app_labels=[])
W018 = dict(id="security.W018", level=30, message="You should not have DEBUG set to True in deployment.",
            hint=None, obj=None)
USER_NEW = dict(username_field="username", exists=False, password_updated=False, table_missing=False)
USER_THERE = dict(USER_NEW, exists=True, is_superuser=True, is_active=True)
TRACEBACK_SETTINGS = """Traceback (most recent call last):
  File "/srv/app/manage.py", line 19, in <module>
    main()
  File "/srv/venv/lib/python3.11/site-packages/django/conf/__init__.py", line 81, in __getattr__
    self._setup(name)
  File "/srv/venv/lib/python3.11/site-packages/django/conf/__init__.py", line 68, in _setup
    self._wrapped = Settings(settings_module)
  File "/srv/venv/lib/python3.11/site-packages/django/conf/__init__.py", line 166, in __init__
    mod = importlib.import_module(self.SETTINGS_MODULE)
  File "<frozen importlib._bootstrap>", line 1140, in _find_and_load_unlocked
%s
"""

# id, module input, check mode, scripted answers, expected calls, expected result (subset)
CASES = [
    # migrate: changed comes from the plan before and after
    ("migrate-applies-pending", dict(command="migrate"), False,
     [probed(plan=PLAN_2), answer("Operations to perform:\n  Applying notes.0001_initial... OK\n"), probed(plan=[])],
     [probe_call("migrate", NO_MIGRATE_ARGS), MIGRATE_ARGV, probe_call("migrate", NO_MIGRATE_ARGS)],
     dict(changed=True, applied=["notes.0001_initial", "tags.0001_initial"], unapplied=[], pending=[],
          cmd=MIGRATE_ARGV, rc=0, stdout="Operations to perform:\n  Applying notes.0001_initial... OK\n")),
    ("migrate-nothing-pending-still-runs-once", dict(command="migrate"), False,
     [probed(plan=[]), answer("Operations to perform:\n  No migrations to apply.\n")],
     [probe_call("migrate", NO_MIGRATE_ARGS), MIGRATE_ARGV],
     dict(changed=False, applied=[], unapplied=[], pending=[], cmd=MIGRATE_ARGV)),
    ("migrate-check-mode-reports-and-applies-nothing", dict(command="migrate"), True,
     [probed(plan=[["notes", "0002_welcome_note", False]])],
     [probe_call("migrate", NO_MIGRATE_ARGS)],
     dict(changed=True, applied=["notes.0002_welcome_note"], pending=["notes.0002_welcome_note"], unapplied=[],
          cmd=PROBE_ARGV + [dm.MIGRATE_PROBE], stdout="noise the project printed")),
    ("migrate-check-mode-nothing-pending", dict(command="migrate"), True,
     [probed(plan=[])],
     [probe_call("migrate", NO_MIGRATE_ARGS)],
     dict(changed=False, applied=[], pending=[])),
    ("migrate-back-to-a-target-on-another-database",
     dict(command="migrate", app_label="notes", migration="0001", database="replica", args=["--fake"]), False,
     [probed(plan=[["notes", "0002_welcome_note", True]]), answer("  Unapplying notes.0002_welcome_note... OK\n"),
      probed(plan=[])],
     [probe_call("migrate", dict(database="replica", app_label="notes", migration="0001")),
      MIGRATE_ARGV + ["--database", "replica", "notes", "0001", "--fake"],
      probe_call("migrate", dict(database="replica", app_label="notes", migration="0001"))],
     dict(changed=True, applied=[], unapplied=["notes.0002_welcome_note"], pending=[])),
    ("migrate-one-app", dict(command="migrate", app_label="tags"), False,
     [probed(plan=[["tags", "0001_initial", False]]), answer(), probed(plan=[])],
     [probe_call("migrate", dict(database=None, app_label="tags", migration=None)), MIGRATE_ARGV + ["tags"],
      probe_call("migrate", dict(database=None, app_label="tags", migration=None))],
     dict(changed=True, applied=["tags.0001_initial"])),

    # collectstatic: changed only when files were copied, linked or deleted
    ("collectstatic-copies", dict(command="collectstatic"), False,
     [answer("\n3 static files copied to '/srv/demo/static', 127 unmodified.\n")],
     [COLLECT_ARGV],
     dict(changed=True, copied=3, unmodified=127, deleted=0, post_processed=0, cmd=COLLECT_ARGV)),
    ("collectstatic-up-to-date", dict(command="collectstatic"), False,
     [answer("\n0 static files copied to '/srv/demo/static', 130 unmodified.\n")],
     [COLLECT_ARGV],
     dict(changed=False, copied=0, unmodified=130, deleted=0)),
    ("collectstatic-one-file", dict(command="collectstatic"), False,
     [answer("\n1 static file copied to '/srv/demo/static'.\n")],
     [COLLECT_ARGV],
     dict(changed=True, copied=1, unmodified=0)),
    ("collectstatic-check-mode-is-a-dry-run", dict(command="collectstatic"), True,
     [answer("Pretending to copy '/srv/app/notes/static/notes/notes.css'\n\n"
             "1 static file copied to '/srv/demo/static', 129 unmodified.\n")],
     [COLLECT_ARGV + ["--dry-run"]],
     dict(changed=True, copied=1, unmodified=129)),
    ("collectstatic-clear-and-link", dict(command="collectstatic", clear=True, link=True), False,
     [answer("Deleting 'notes/notes.css'\nDeleting 'admin/css/base.css'\n\n"
             "2 static files symlinked to '/srv/demo/static'.\n")],
     [COLLECT_ARGV + ["--clear", "--link"]],
     dict(changed=True, copied=2, deleted=2, unmodified=0)),
    ("collectstatic-post-processed-is-no-change", dict(command="collectstatic", args=["--ignore", "*.map"]), False,
     [answer("\n0 static files copied to '/srv/demo/static', 130 unmodified, 130 post-processed.\n")],
     [COLLECT_ARGV + ["--ignore", "*.map"]],
     dict(changed=False, copied=0, unmodified=130, post_processed=130)),

    # check: issues come back structured; the task fails at fail_level
    ("check-clean", dict(command="check", deploy=True), False,
     [probed(issues=[])],
     [probe_call("check", dict(CHECK_ARGS, deploy=True))],
     dict(changed=False, issues=[], cmd=PROBE_ARGV + [dm.CHECK_PROBE])),
    ("check-below-fail-level-passes", dict(command="check", deploy=True, fail_level="ERROR"), False,
     [probed(issues=[W018])],
     [probe_call("check", dict(CHECK_ARGS, deploy=True))],
     dict(changed=False, issues=[dict(W018, level="WARNING")])),
    ("check-runs-in-check-mode-too",
     dict(command="check", tags=["models"], database="default", args=["notes"]), True,
     [probed(issues=[dict(id="models.W042", level=30, message="Auto-created primary key used", hint="Set it",
                          obj="notes.Note")])],
     [probe_call("check", dict(database="default", deploy=False, tags=["models"], app_labels=["notes"]))],
     dict(failed=True, issues=[dict(id="models.W042", level="WARNING", message="Auto-created primary key used",
                                    hint="Set it", obj="notes.Note")])),
    ("check-levels-are-named", dict(command="check", fail_level="CRITICAL"), False,
     [probed(issues=[dict(W018, id="x.D001", level=10), dict(W018, id="x.I001", level=20),
                     dict(W018, id="x.E001", level=40), dict(W018, id=None, level=45)])],
     [probe_call("check", CHECK_ARGS)],
     dict(changed=False, issues=[dict(W018, id="x.D001", level="DEBUG"), dict(W018, id="x.I001", level="INFO"),
                                 dict(W018, id="x.E001", level="ERROR"), dict(W018, id=None, level="ERROR")])),

    # createsuperuser: get-or-create
    ("createsuperuser-creates", dict(command="createsuperuser", username="admin", email="admin@example.com",
                                     password=PASSWORD), False,
     [probed(USER_NEW), answer("Superuser created successfully.\n")],
     [probe_call("superuser", dict(database=None, username="admin", update_password=False, apply=True)),
      SUPERUSER_ARGV + ["--username", "admin", "--email", "admin@example.com"]],
     dict(changed=True, created=True, password_updated=False, username="admin",
          cmd=SUPERUSER_ARGV + ["--username", "admin", "--email", "admin@example.com"])),
    ("createsuperuser-exists", dict(command="createsuperuser", username="admin", password=PASSWORD), False,
     [probed(USER_THERE)],
     [probe_call("superuser", dict(database=None, username="admin", update_password=False, apply=True))],
     dict(changed=False, created=False, password_updated=False, cmd=PROBE_ARGV + [dm.SUPERUSER_PROBE])),
    ("createsuperuser-always-sets-a-differing-password",
     dict(command="createsuperuser", username="admin", password=PASSWORD, update_password="always"), False,
     [probed(USER_THERE, password_updated=True)],
     [probe_call("superuser", dict(database=None, username="admin", update_password=True, apply=True))],
     dict(changed=True, created=False, password_updated=True)),
    ("createsuperuser-always-same-password",
     dict(command="createsuperuser", username="admin", password=PASSWORD, update_password="always"), False,
     [probed(USER_THERE)],
     [probe_call("superuser", dict(database=None, username="admin", update_password=True, apply=True))],
     dict(changed=False, password_updated=False)),
    ("createsuperuser-check-mode-would-create",
     dict(command="createsuperuser", username="admin", email="a@example.com", password=PASSWORD), True,
     [probed(USER_NEW)],
     [probe_call("superuser", dict(database=None, username="admin", update_password=False, apply=False))],
     dict(changed=True, created=True)),
    ("createsuperuser-check-mode-password-would-change",
     dict(command="createsuperuser", username="admin", password=PASSWORD, update_password="always"), True,
     [probed(USER_THERE, password_updated=True)],
     [probe_call("superuser", dict(database=None, username="admin", update_password=True, apply=False))],
     dict(changed=True, created=False, password_updated=True)),
    ("createsuperuser-email-as-username-field-on-a-database",
     dict(command="createsuperuser", username="ops@example.com", email="ignored@example.com", database="users",
          args=["--first_name", "Ops"]), False,
     [probed(USER_NEW, username_field="email"), answer()],
     [probe_call("superuser", dict(database="users", username="ops@example.com", update_password=False, apply=True)),
      SUPERUSER_ARGV + ["--email", "ops@example.com", "--database", "users", "--first_name", "Ops"]],
     dict(changed=True, created=True)),

    # test: never changed; skipped in check mode
    ("test-passes", dict(command="test", args=["notes"]), False,
     [answer("", stderr="Found 2 test(s).\nCreating test database for alias 'default'...\n..\n"
             "----------------------------------------------------------------------\n"
             "Ran 2 tests in 0.012s\n\nOK\nDestroying test database for alias 'default'...\n")],
     [[PY, MANAGE, "test", "--noinput", "--no-color", "notes"]],
     dict(changed=False, tests_run=2, rc=0)),
    ("test-check-mode-skips", dict(command="test"), True, [], [],
     dict(changed=False, skipped=True, cmd=[PY, MANAGE, "test", "--noinput", "--no-color"])),

    # any other command: changed, skipped in check mode
    ("other-command", dict(command="clearsessions"), False,
     [answer()], [[PY, MANAGE, "clearsessions", "--no-color"]],
     dict(changed=True, rc=0, cmd=[PY, MANAGE, "clearsessions", "--no-color"])),
    ("other-command-database-and-args", dict(command="loaddata", database="replica", args=["initial.json"]), False,
     [answer("Installed 3 object(s) from 1 fixture(s)\n")],
     [[PY, MANAGE, "loaddata", "--no-color", "--database", "replica", "initial.json"]],
     dict(changed=True, stdout="Installed 3 object(s) from 1 fixture(s)\n")),
    ("other-command-check-mode-skips", dict(command="clearsessions"), True, [], [],
     dict(changed=False, skipped=True)),
]


@pytest.mark.parametrize("name, params, check_mode, script, calls, expected", CASES, ids=[c[0] for c in CASES])
def test_commands(run_module, project, commands, warnings, name, params, check_mode, script, calls, expected):
    commands.script = list(script)
    result, failed = run_module(dm.main, base_args(project, **params), check_mode=check_mode)
    expected = fill(expected, project)
    assert failed == expected.pop("failed", False), result.get("msg")
    assert_calls(commands.calls, calls, project)
    for key, value in expected.items():
        assert result[key] == value, key
    assert commands.script == [], "not every scripted answer was used"


# id, module input, scripted answers, words the failure message holds, expected result (subset)
FAILURES = [
    ("migrate-fails-midway", dict(command="migrate"),
     [probed(plan=PLAN_2), answer("  Applying notes.0001_initial... OK\n  Applying tags.0001_initial...",
                                  rc=1, stderr="Traceback (most recent call last):\n  File \"x\"\n"
                                  "django.db.utils.OperationalError: table \"tags_tag\" already exists\n"),
      probed(plan=[["tags", "0001_initial", False]])],
     ["manage.py migrate failed (rc 1): django.db.utils.OperationalError: table \"tags_tag\" already exists "
      "(after it had run notes.0001_initial)"],
     dict(rc=1, applied=["notes.0001_initial"], pending=["tags.0001_initial"], cmd=MIGRATE_ARGV)),
    ("migrate-probe-reports-an-error", dict(command="migrate", app_label="nope"),
     [probed(error="app 'nope' does not have migrations")],
     ["migrate: app 'nope' does not have migrations"], {}),
    ("check-fails-at-warning", dict(command="check", deploy=True),
     [probed(issues=[W018, dict(W018, id="security.W004", message="You have not set SECURE_HSTS_SECONDS.",
                                hint="Read the docs.")])],
     ["Django's system check --deploy found 2 issues at level WARNING or above:\n"
      "?: (security.W018) You should not have DEBUG set to True in deployment.\n"
      "?: (security.W004) You have not set SECURE_HSTS_SECONDS. HINT: Read the docs."],
     dict(changed=False, issues=[dict(W018, level="WARNING"),
                                 dict(W018, id="security.W004", level="WARNING",
                                      message="You have not set SECURE_HSTS_SECONDS.", hint="Read the docs.")])),
    ("check-unknown-tag", dict(command="check", tags=["nope"]),
     [probed(error="there is no system check with the 'nope' tag")],
     ["check: there is no system check with the 'nope' tag"], {}),
    ("createsuperuser-fails", dict(command="createsuperuser", username="admin"),
     [probed(USER_NEW), answer(rc=1, stderr="CommandError: You must use --email with --noinput.\n")],
     ["manage.py createsuperuser failed (rc 1): CommandError: You must use --email with --noinput."],
     dict(rc=1, cmd=SUPERUSER_ARGV + ["--username", "admin"])),
    ("createsuperuser-before-migrate", dict(command="createsuperuser", username="admin"),
     [probed(USER_NEW, table_missing=True)],
     ["the user model's table does not exist in database 'default' yet; run migrate first"], {}),
    ("test-fails-with-its-verdict", dict(command="test"),
     [answer(rc=1, stderr="Found 2 test(s).\n.F\n=====\nFAIL: test_the_suite_can_be_made_to_fail "
             "(notes.tests.NoteTests)\nAssertionError: 'yes' == 'yes' : failing on purpose\n-----\n"
             "Ran 2 tests in 0.011s\n\nFAILED (failures=1)\nDestroying test database for alias 'default'...\n")],
     ["manage.py test failed (rc 1): FAILED (failures=1)"],
     dict(rc=1, tests_run=2)),
    ("other-command-unknown", dict(command="frobnicate"),
     [answer(rc=1, stderr="Unknown command: 'frobnicate'\nType 'manage.py help' for usage.\n")],
     ["manage.py frobnicate failed (rc 1): Unknown command: 'frobnicate' (is the app that provides it in "
      "INSTALLED_APPS?)"], dict(rc=1)),
    ("settings-module-not-importable", dict(command="migrate", settings="demo.nope"),
     [answer(rc=1, stderr=TRACEBACK_SETTINGS % "ModuleNotFoundError: No module named 'demo.nope'")],
     ["the module's probe for migrate (manage.py shell) failed (rc 1): the settings module 'demo.nope' could not "
      "be loaded: ModuleNotFoundError: No module named 'demo.nope'"],
     dict(rc=1, cmd=PROBE_ARGV + [dm.MIGRATE_PROBE])),
    ("settings-need-a-variable", dict(command="collectstatic"),
     [answer(rc=1, stderr=TRACEBACK_SETTINGS % "KeyError: 'DJANGO_SECRET_KEY'")],
     ["manage.py collectstatic failed (rc 1): the settings module that manage.py sets (no DJANGO_SETTINGS_MODULE "
      "given) could not be loaded: KeyError: 'DJANGO_SECRET_KEY'"],
     dict(stderr=(TRACEBACK_SETTINGS % "KeyError: 'DJANGO_SECRET_KEY'").strip())),
    ("settings-not-usable", dict(command="collectstatic"),
     [answer(rc=1, stderr="Traceback (most recent call last):\n  File \"x\"\n"
             "django.core.exceptions.ImproperlyConfigured: You're using the staticfiles app without having set "
             "the STATIC_ROOT setting to a filesystem path.\n")],
     ["the settings are not usable: django.core.exceptions.ImproperlyConfigured: You're using the staticfiles "
      "app without having set the STATIC_ROOT setting"], {}),
    ("django-not-installed", dict(command="check"),
     [answer(rc=1, stderr="Traceback (most recent call last):\n  File \"/srv/app/manage.py\", line 13, in main\n"
             "ModuleNotFoundError: No module named 'django'\n\nThe above exception was the direct cause\n"
             "ImportError: Couldn't import Django. Are you sure it's installed?\n")],
     ["Django cannot be imported by this interpreter (is it installed in the virtualenv?)"], {}),
    ("probe-prints-nothing", dict(command="check"), [answer("")],
     ["the module's probe for check (manage.py shell) printed no result"], {}),
]


@pytest.mark.parametrize("name, params, script, words, expected", FAILURES, ids=[f[0] for f in FAILURES])
def test_failures_name_the_cause(run_module, project, commands, name, params, script, words, expected):
    commands.script = list(script)
    result, failed = run_module(dm.main, base_args(project, **params))
    assert failed
    for w in words:
        assert w in result["msg"]
    for key, value in fill(expected, project).items():
        assert result[key] == value, key
    assert commands.script == []


def test_failure_output_is_the_tail(run_module, project, commands):
    commands.script = [answer("\n".join("out %d" % i for i in range(100)), rc=2,
                              stderr="\n".join("err %d" % i for i in range(100)))]
    result, failed = run_module(dm.main, base_args(project, command="clearsessions"))
    assert failed and result["rc"] == 2
    assert result["stdout"].splitlines() == ["out %d" % i for i in range(75, 100)]
    assert result["stderr"].splitlines() == ["err %d" % i for i in range(75, 100)]
    assert result["msg"] == "manage.py clearsessions failed (rc 2): err 99"


# id, module input (relative to the project fixture), words the message holds
INPUT_ERRORS = [
    ("project-path-missing", dict(command="migrate", project_path="{app}/nope"), "project_path {app}/nope is not a directory"),
    ("manage-py-missing", dict(command="migrate", project_path="{venv}"),
     "manage.py not found under project_path {venv}; project_path must be the directory that holds manage.py"),
    ("virtualenv-without-python", dict(command="migrate", virtualenv="{app}"),
     "interpreter {app}/bin/python is missing: virtualenv {app} has no bin/python"),
    ("python-missing", dict(command="migrate", virtualenv=None, python="/nonexistent/python3"),
     "interpreter /nonexistent/python3 is missing or not executable"),
    ("option-of-another-command", dict(command="migrate", clear=True),
     "option clear applies to command=collectstatic only (command is migrate)"),
    ("fail-level-without-check", dict(command="migrate", fail_level="ERROR"), "option fail_level applies to command=check"),
    ("password-without-createsuperuser", dict(command="migrate", password=PASSWORD),
     "option password applies to command=createsuperuser"),
    ("arguments-in-command", dict(command="migrate --fake"), "command must be a single management command name"),
    ("database-for-collectstatic", dict(command="collectstatic", database="other"),
     "manage.py collectstatic has no --database option"),
    ("createsuperuser-needs-username", dict(command="createsuperuser"), "username"),
    ("always-needs-a-password", dict(command="createsuperuser", username="admin", update_password="always"), "password"),
    ("migration-needs-app-label", dict(command="migrate", migration="0001"), "app_label"),
    ("virtualenv-or-python", dict(command="migrate", virtualenv=None), "virtualenv, python"),
    ("not-both", dict(command="migrate", python="/usr/bin/python3"), "mutually exclusive"),
    ("env-file-missing", dict(command="migrate", env_file="{app}/.env"), "cannot read env_file {app}/.env: No such file"),
]


@pytest.mark.parametrize("name, params, words", INPUT_ERRORS, ids=[e[0] for e in INPUT_ERRORS])
def test_bad_input_fails_before_anything_runs(run_module, project, commands, name, params, words):
    args = base_args(project)
    args.update(fill(params, project))
    args = {k: v for k, v in args.items() if v is not None}
    result, failed = run_module(dm.main, args)
    assert failed
    assert fill(words, project) in result["msg"]
    assert commands.calls == []


def test_check_mode_skips_when_the_project_is_not_there_yet(run_module, project, commands, warnings):
    result, failed = run_module(dm.main, base_args(project, command="migrate", project_path="{app}/next"),
                                check_mode=True)
    assert not failed and result["skipped"] and result["changed"] is False
    assert "is not a directory" in result["msg"] and "earlier task" in warnings[0]
    assert commands.calls == []


# -- environment -----------------------------------------------------------------

BASE_ENV = {"PATH": "{venv}/bin:" + dm.SYSTEM_PATH, "HOME": ME.pw_dir, "USER": ME.pw_name,
            "LOGNAME": ME.pw_name, "VIRTUAL_ENV": "{venv}", "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "1"}

# id, module input, env_file content, the command's whole environment
ENVIRONMENTS = [
    ("minimal", {}, None, BASE_ENV),
    ("settings-and-pythonpath", dict(settings="demo.settings_production", pythonpath=["/srv/lib", "/srv/more"]), None,
     dict(BASE_ENV, DJANGO_SETTINGS_MODULE="demo.settings_production", PYTHONPATH="/srv/lib:/srv/more")),
    ("env-file-then-env", dict(env={"B": "from env", "C": 3, "D": True}), "A=1\nB=from file\n",
     dict(BASE_ENV, A="1", B="from env", C="3", D="True")),
    ("settings-wins-over-env-and-file", dict(settings="demo.settings", env={"DJANGO_SETTINGS_MODULE": "x.y"}),
     "DJANGO_SETTINGS_MODULE=z.w\n", dict(BASE_ENV, DJANGO_SETTINGS_MODULE="demo.settings")),
    ("settings-from-the-env-file", {}, "DJANGO_SETTINGS_MODULE=demo.settings_production\n",
     dict(BASE_ENV, DJANGO_SETTINGS_MODULE="demo.settings_production")),
    ("locale-is-always-c", dict(env={"LC_ALL": "de_DE.UTF-8", "LANG": "de_DE.UTF-8"}), "PYTHONUTF8=0\n", BASE_ENV),
    ("env-may-replace-home-and-path", dict(env={"HOME": "/srv/demo", "PATH": "/opt/bin"}), None,
     dict(BASE_ENV, HOME="/srv/demo", PATH="/opt/bin")),
]


@pytest.mark.parametrize("name, params, env_file, expected", ENVIRONMENTS, ids=[e[0] for e in ENVIRONMENTS])
def test_the_environment_is_built_not_inherited(run_module, project, commands, name, params, env_file, expected):
    os.environ.update(PYTHONPATH="/inherited", DJANGO_SETTINGS_MODULE="inherited.settings", VIRTUAL_ENV="/other",
                      SUDO_USER="someone", http_proxy="http://proxy:3128", PYTHONSTARTUP="/tmp/x.py")
    if env_file is not None:
        (project.tmp / "shared.env").write_text(env_file)
        params = dict(params, env_file=str(project.tmp / "shared.env"))
    commands.script = [answer("\n0 static files copied.\n")]
    result, failed = run_module(dm.main, base_args(project, command="collectstatic", **params))
    assert not failed, result["msg"]
    assert commands.calls[0].env == fill(expected, project)


def test_a_python_in_a_system_directory_keeps_the_system_path(run_module, project, commands, monkeypatch):
    real_isfile, real_access = os.path.isfile, os.access
    monkeypatch.setattr(dm.os.path, "isfile", lambda p: p == "/usr/bin/python3" or real_isfile(p))
    monkeypatch.setattr(dm.os, "access", lambda p, m: p == "/usr/bin/python3" or real_access(p, m))
    commands.script = [answer()]
    result, failed = run_module(dm.main, dict(project_path=project.app, python="/usr/bin/python3", command="clearsessions"))
    assert not failed
    assert commands.calls[0].argv[0] == "/usr/bin/python3"
    assert commands.calls[0].env["PATH"] == dm.SYSTEM_PATH and "VIRTUAL_ENV" not in commands.calls[0].env


# text of an env file -> parsed dict
ENV_FILES = [
    ("# a comment\n\n   \nA=1\n  # indented comment\n", {"A": "1"}),
    ("export DATABASE_URL=postgres://u:p@db/x\n", {"DATABASE_URL": "postgres://u:p@db/x"}),
    ("A = spaced \n", {"A": "spaced"}),
    ("A=\nB=''\nC=\"\"\n", {"A": "", "B": "", "C": ""}),
    ("A=x=y=z\n", {"A": "x=y=z"}),
    ("A=value # comment\nB=val#ue\n", {"A": "value", "B": "val#ue"}),
    ("A='single $HOME \\n # kept'\n", {"A": "single $HOME \\n # kept"}),
    ('A="two\\nlines\\t\\"q\\" \\\\ \\x"  # comment\n', {"A": 'two\nlines\t"q" \\ \\x'}),
    ("\ufeffA=bom\r\nB=crlf\r\n", {"A": "bom", "B": "crlf"}),
    ("A=1\nA=2\n", {"A": "2"}),
    ("SECRET_KEY='p#ss w0rd'\n", {"SECRET_KEY": "p#ss w0rd"}),
]


@pytest.mark.parametrize("text, expected", ENV_FILES)
def test_env_file_lines(text, expected):
    assert dm.parse_env_file(text, "/srv/demo/shared/.env") == expected


# text -> line number named in the error; the content must not be echoed
BAD_ENV_FILES = [
    ("A=1\nhunter2-secret\n", 2),
    ("1BAD=hunter2-secret\n", 1),
    ("A=1\n\nexport\n", 3),
    ("A=\"hunter2-secret\n", 1),
    ("A='hunter2-secret' trailing\n", 1),
    ("KEY hunter2-secret\n", 1),
]


@pytest.mark.parametrize("text, line", BAD_ENV_FILES)
def test_a_malformed_env_file_line_is_named_without_its_content(text, line):
    with pytest.raises(dm.DjangoError) as info:
        dm.parse_env_file(text, "/srv/demo/shared/.env")
    assert "env_file /srv/demo/shared/.env, line %d" % line in info.value.msg
    assert "hunter2" not in info.value.msg


def test_a_malformed_env_file_fails_the_task(run_module, project, commands):
    (project.tmp / "bad.env").write_text("GOOD=1\nBAD LINE hunter2-secret\n")
    result, failed = run_module(dm.main, base_args(project, command="migrate", env_file=str(project.tmp / "bad.env")))
    assert failed and "bad.env, line 2 is not of the form KEY=VALUE" in result["msg"]
    assert "hunter2" not in json.dumps(result) and commands.calls == []


# -- secrets ---------------------------------------------------------------------

def test_the_password_travels_only_in_the_environment(run_module, project, commands):
    commands.script = [probed(USER_NEW), answer("Superuser created successfully.\n")]
    result, failed = run_module(dm.main, base_args(project, command="createsuperuser", username="admin",
                                                   email="admin@example.com", password=PASSWORD))
    assert not failed
    for call in commands.calls:
        assert call.env["DJANGO_SUPERUSER_PASSWORD"] == PASSWORD
        assert PASSWORD not in json.dumps(call.argv)
        assert PASSWORD not in call.env.get(dm.ARGS_VARIABLE, "")
    assert PASSWORD not in json.dumps(result)


def test_without_a_password_none_is_passed(run_module, project, commands):
    os.environ["DJANGO_SUPERUSER_PASSWORD"] = "inherited-password"
    commands.script = [probed(USER_NEW), answer()]
    result, failed = run_module(dm.main, base_args(project, command="createsuperuser", username="sso",
                                                   email="sso@example.com"))
    assert not failed and result["created"]
    assert all("DJANGO_SUPERUSER_PASSWORD" not in call.env for call in commands.calls)


def test_only_the_superuser_command_gets_the_password_variable(run_module, project, commands):
    commands.script = [probed(plan=[]), answer()]
    run_module(dm.main, base_args(project, command="migrate"))
    assert all("DJANGO_SUPERUSER_PASSWORD" not in call.env for call in commands.calls)


@pytest.mark.parametrize("script", [
    # Django echoing the password back, in the command's output and in a traceback
    [probed(USER_NEW), answer("created with %s\n" % PASSWORD, rc=1,
                              stderr="Traceback\nValueError: bad password %r\n" % PASSWORD)],
    [(1, "", "Traceback (most recent call last):\nKeyError: '%s'\n" % PASSWORD)],
], ids=["command", "probe"])
def test_the_password_never_reaches_a_failure(run_module, project, commands, script):
    commands.script = list(script)
    result, failed = run_module(dm.main, base_args(project, command="createsuperuser", username="admin",
                                                   email="a@example.com", password=PASSWORD))
    assert failed
    dumped = json.dumps(result)
    assert PASSWORD not in dumped and dm.MASK in result["msg"] and dm.MASK in result["stderr"]
    assert PASSWORD not in json.dumps(result["cmd"])


def test_env_and_env_file_values_are_masked_in_the_result(run_module, project, commands):
    (project.tmp / ".env").write_text("DJANGO_SECRET_KEY=file-secret-value-1234567890\nDJANGO_DEBUG=1\n")
    commands.script = [answer("key file-secret-value-1234567890 db env-secret-pw debug 1\n", rc=1,
                              stderr="OperationalError: password env-secret-pw rejected\n")]
    result, failed = run_module(dm.main, base_args(project, command="clearsessions", env_file=str(project.tmp / ".env"),
                                                   env={"DATABASE_PASSWORD": "env-secret-pw"}))
    assert failed
    dumped = json.dumps(result)
    assert "file-secret-value" not in dumped and "env-secret-pw" not in dumped
    assert result["stdout"] == "key ******** db ******** debug 1"
    assert result["msg"] == "manage.py clearsessions failed (rc 1): OperationalError: password ******** rejected"


def test_short_env_values_are_no_secrets_to_ansible_either(run_module, project, commands, monkeypatch):
    # Ansible masks every value of a no_log option in the result: "1" would garble every
    # number in it. Only the values long enough to be secrets stay masked.
    seen = {}

    def exit_json(self, **kwargs):
        seen.update(no_log_values=set(self.no_log_values))
        raise SystemExit(0)

    monkeypatch.setattr(dm.AnsibleModule, "exit_json", exit_json)
    commands.script = [answer("1 row\n")]
    with pytest.raises(SystemExit):
        run_module(dm.main, base_args(project, command="clearsessions",
                                      env={"DJANGO_DEBUG": "1", "DATABASE_PASSWORD": "env-secret-pw"}))
    assert "env-secret-pw" in seen["no_log_values"]
    assert "1" not in seen["no_log_values"]


def test_masking_leaves_django_data_intact(run_module, project, commands):
    # A value that equals an app label is masked in the output, not in the labels.
    (project.tmp / ".env").write_text("DB_NAME=notes\n")
    commands.script = [probed(plan=[["notes", "0002_welcome_note", False]]),
                       answer("  Applying notes.0002_welcome_note... OK\n"), probed(plan=[])]
    result, failed = run_module(dm.main, base_args(project, command="migrate", env_file=str(project.tmp / ".env")))
    assert not failed
    assert result["applied"] == ["notes.0002_welcome_note"]
    assert result["stdout"] == "  Applying ********.0002_welcome_note... OK\n"


def test_a_secret_in_args_is_masked_too(run_module, project, commands):
    commands.script = [answer()]
    result, failed = run_module(dm.main, base_args(project, command="sendtestemail", args=["--admins", PASSWORD[:10]],
                                                   env={"SMTP_PASSWORD": PASSWORD[:10]}))
    assert not failed and result["cmd"][-1] == dm.MASK


# -- warnings --------------------------------------------------------------------

def test_an_existing_user_that_is_not_a_superuser_is_reported(run_module, project, commands, warnings):
    commands.script = [probed(USER_THERE, is_superuser=False)]
    result, failed = run_module(dm.main, base_args(project, command="createsuperuser", username="bob"))
    assert not failed and result["changed"] is False
    assert warnings == ["user bob exists but is not a superuser; this module does not change that"]


def test_check_issues_below_the_fail_level_are_warned(run_module, project, commands, warnings):
    commands.script = [probed(issues=[W018, dict(W018, id="x.I001", level=20)])]
    result, failed = run_module(dm.main, base_args(project, command="check", fail_level="ERROR"))
    assert not failed
    assert warnings == ["Django system check: ?: (security.W018) You should not have DEBUG set to True in deployment."]


def test_collectstatic_without_a_summary_reports_changed_and_says_why(run_module, project, commands, warnings):
    commands.script = [answer("")]
    result, failed = run_module(dm.main, base_args(project, command="collectstatic", args=["--verbosity", "0"]))
    assert not failed and result["changed"] is True and "copied" not in result
    assert "printed no summary line" in warnings[0]


# -- helpers ---------------------------------------------------------------------

@pytest.mark.parametrize("stdout, counts", [
    ("\n12 static files copied to '/srv/a, 3 unmodified/static', 4 unmodified.\n",
     dict(copied=12, unmodified=4, post_processed=0, deleted=0)),
    ("\n0 static files copied, 5 unmodified.\n", dict(copied=0, unmodified=5, post_processed=0, deleted=0)),
    ("Pretending to delete 'a.css'\n\n0 static files copied to '/s'.\n",
     dict(copied=0, unmodified=0, post_processed=0, deleted=1)),
    ("something else\n", dict(deleted=0)),
])
def test_collectstatic_summary(stdout, counts):
    assert dm.parse_collectstatic(stdout) == counts


def test_probes_use_neither_dollar_nor_tilde():
    # run_command gets expand_user_and_vars=False; this keeps them safe even without it.
    for snippet in SNIPPETS.values():
        assert "$" not in snippet and "~" not in snippet
        compile(snippet, "<probe>", "exec")


# -- a real Django project -----------------------------------------------------------

def django_python():
    explicit = os.environ.get("PYDEPLOY_TEST_DJANGO_PYTHON")
    if explicit:
        return explicit
    try:
        # Imported only to learn whether this interpreter has Django (hence unused: F401).
        import django  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def pins(path):
    with open(path) as f:
        return sorted(line.split("#")[0].strip().lower() for line in f if "==" in line.split("#")[0])


def test_the_unit_tests_django_is_the_example_apps():
    """tests/unit/requirements.txt (what ansible-test units installs, so that the tests
    below run) pins Django as the example app and the scenario's demo project do."""
    # Django and what it requires; the example's database driver (psycopg) is not needed here.
    core = {"django", "asgiref", "sqlparse"}
    example = [pin for pin in pins(os.path.join(ROOT, "examples", "django", "requirements.txt"))
               if pin.split("==")[0] in core]
    assert example == pins(os.path.join(DEMO, "demo", "requirements.txt"))
    names = {pin.split("==")[0] for pin in example}
    assert names == core
    unit = pins(os.path.join(ROOT, "tests", "unit", "requirements.txt"))
    assert [pin for pin in unit if pin.split("==")[0] in names] == example


SECRET_KEY = "pydeploy-unit-test-key-0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def real(tmp_path):
    python = django_python()
    if not python:
        pytest.skip("no interpreter with Django (set PYDEPLOY_TEST_DJANGO_PYTHON=<venv>/bin/python)")
    app = tmp_path / "app"
    shutil.copytree(os.path.join(DEMO, "demo"), str(app), ignore=shutil.ignore_patterns("__pycache__"))
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / ".env").write_text(
        "# test project environment\nexport DJANGO_SECRET_KEY='%s'\nDJANGO_ALLOWED_HOSTS=demo.test\n"
        "DEMO_DATABASE=%s\nDEMO_STATIC_ROOT=%s\n" % (SECRET_KEY, shared / "db.sqlite3", tmp_path / "static"))
    args = dict(project_path=str(app), python=python, env_file=str(shared / ".env"))
    return SimpleNamespace(app=app, db=shared / "db.sqlite3", static=tmp_path / "static", args=args, python=python)


def applied_in(db):
    with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as c:
        return sorted("%s.%s" % row for row in c.execute("SELECT app, name FROM django_migrations"))


def digest(path):
    with open(str(path), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_real_migrate_check_mode_then_changed_then_unchanged(run_module, real):
    args = dict(real.args, command="migrate")
    planned, failed = run_module(dm.main, args, check_mode=True)
    assert not failed, planned["msg"]
    assert planned["changed"] and "notes.0001_initial" in planned["pending"] and "tags.0001_initial" in planned["applied"]
    assert not real.db.exists(), "check mode created the SQLite file"
    first, failed = run_module(dm.main, args)
    assert not failed, first["msg"]
    assert first["changed"] and first["applied"] == planned["applied"] and first["pending"] == []
    assert applied_in(real.db) == sorted(first["applied"])
    second, _failed = run_module(dm.main, args)
    assert second["changed"] is False and second["applied"] == []

    shutil.copy(os.path.join(DEMO, "extra", "0002_welcome_note.py"), str(real.app / "notes" / "migrations"))
    before = digest(real.db)
    planned, _failed = run_module(dm.main, args, check_mode=True)
    assert planned["changed"] and planned["pending"] == ["notes.0002_welcome_note"]
    assert digest(real.db) == before
    applied, _failed = run_module(dm.main, args)
    assert applied["applied"] == ["notes.0002_welcome_note"]
    back, failed = run_module(dm.main, dict(args, app_label="notes", migration="0001"))
    assert not failed and back["changed"] and back["unapplied"] == ["notes.0002_welcome_note"]
    assert "notes.0002_welcome_note" not in applied_in(real.db)
    missing, failed = run_module(dm.main, dict(args, app_label="notes", migration="0009"))
    assert failed and missing["msg"] == "migrate: app 'notes' has no migration named '0009'"


def test_real_collectstatic_changed_then_unchanged(run_module, real):
    args = dict(real.args, command="collectstatic")
    dry, _failed = run_module(dm.main, args, check_mode=True)
    assert dry["changed"] and dry["copied"] > 100 and not real.static.exists()
    first, failed = run_module(dm.main, args)
    assert not failed, first["msg"]
    assert first["changed"] and first["copied"] == dry["copied"] and first["unmodified"] == 0
    assert (real.static / "notes" / "notes.css").is_file()
    second, _failed = run_module(dm.main, args)
    assert second["changed"] is False and second["copied"] == 0 and second["unmodified"] == first["copied"]
    cleared, _failed = run_module(dm.main, dict(args, clear=True))
    assert cleared["changed"] and cleared["deleted"] == first["copied"]


def test_real_createsuperuser_get_or_create(run_module, real):
    run_module(dm.main, dict(real.args, command="migrate"))
    args = dict(real.args, command="createsuperuser", username="admin", email="admin@example.com", password=PASSWORD)
    would, _failed = run_module(dm.main, args, check_mode=True)
    assert would["changed"] and would["created"]
    created, failed = run_module(dm.main, args)
    assert not failed, created["msg"]
    assert created["changed"] and created["created"] and PASSWORD not in json.dumps(created)
    again, _failed = run_module(dm.main, args)
    assert again["changed"] is False and again["created"] is False
    new = dict(args, password="another-Pa55phrase", update_password="always")
    would, _failed = run_module(dm.main, new, check_mode=True)
    assert would["changed"] and would["password_updated"]
    updated, _failed = run_module(dm.main, new)
    assert updated["changed"] and updated["password_updated"]
    same, _failed = run_module(dm.main, new)
    assert same["changed"] is False
    login = subprocess.run(
        [real.python, "manage.py", "shell", "-v", "0", "-c",
         "from django.contrib.auth import authenticate; print(authenticate(username='admin', password='another-Pa55phrase'))"],
        cwd=str(real.app), capture_output=True, text=True, check=False,
        env=dict(PATH=dm.SYSTEM_PATH, DJANGO_SECRET_KEY=SECRET_KEY, DEMO_DATABASE=str(real.db)))
    assert login.stdout.strip() == "admin", login.stderr


def test_real_check_deploy_fails_with_debug_and_passes_in_production(run_module, real):
    args = dict(real.args, command="check", deploy=True)
    debug, failed = run_module(dm.main, dict(args, settings="demo.settings", env={"DJANGO_DEBUG": "True"}))
    assert failed
    ids = {i["id"] for i in debug["issues"]}
    assert {"security.W018", "security.W004"} <= ids
    assert all(i["level"] == "WARNING" for i in debug["issues"])
    production, failed = run_module(dm.main, dict(args, settings="demo.settings_production"))
    assert not failed, production["msg"]
    assert production["issues"] == []


def test_real_test_command_and_environment(run_module, real):
    passed, failed = run_module(dm.main, dict(real.args, command="test", args=["notes"]))
    assert not failed, passed["msg"]
    assert passed["tests_run"] == 2 and passed["changed"] is False
    broken, failed = run_module(dm.main, dict(real.args, command="test", env={"DEMO_FAIL_A_TEST": "yes"}))
    assert failed and broken["msg"] == "manage.py test failed (rc 1): FAILED (failures=1)"
    assert "failing on purpose" in broken["stderr"]
    os.environ["PYDEPLOY_INHERITED"] = "1"
    shown, failed = run_module(dm.main, dict(real.args, command="demo_env"))
    assert not failed and shown["changed"] is True
    seen = json.loads(shown["stdout"])
    assert seen["values"]["LC_ALL"] == "C" and seen["values"]["HOME"] == ME.pw_dir
    assert "PYDEPLOY_INHERITED" not in seen["names"] and "DJANGO_SECRET_KEY" in seen["names"]


def test_real_settings_errors_name_the_cause(run_module, real):
    nope, failed = run_module(dm.main, dict(real.args, command="migrate", settings="demo.nope"))
    assert failed and "the settings module 'demo.nope' could not be loaded: ModuleNotFoundError: " \
                      "No module named 'demo.nope'" in nope["msg"]
    del real.args["env_file"]
    nokey, failed = run_module(dm.main, dict(real.args, command="collectstatic"))
    assert failed and "could not be loaded: KeyError: 'DJANGO_SECRET_KEY'" in nokey["msg"]
