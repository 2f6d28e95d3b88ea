"""pydeploy.web.django_manage against a real Django project, run through converge.yml
as a deploy runs it: every command twice, check mode, failing gates."""
import hashlib
import json

import pytest

APP = "/srv/demo/app"
DB = "/srv/demo/shared/db.sqlite3"
STATIC = "/srv/demo/static"
PYTHON = "/srv/demo/venv/bin/python"
EXTRA = "/srv/demo/extra/0002_welcome_note.py"
EXTRA_IN_PROJECT = APP + "/notes/migrations/0002_welcome_note.py"
PASSWORD = "correct horse battery staple"
SECRET_KEY = "pydeploy-molecule-not-a-secret-7c41e9b2d85f3a06c1d7e4b9a2f58c3e"

MIGRATE = "Apply the migrations"
COLLECT = "Collect the static files"
ADMIN = "Make sure the admin account exists"
TEST = "Run the test suite"
ENV = "Show the environment Django runs in"
CHECK = "Check the deployment settings"


def as_demo(host, command, *args):
    """Run a command as the application user (testinfra quotes the args)."""
    return host.run("sudo -u demo -- " + command, *args)


def query(host, sql):
    """Rows of a read-only query on the application's SQLite database."""
    code = ("import json, sqlite3, sys; c = sqlite3.connect('file:%s?mode=ro', uri=True); "
            "print(json.dumps(c.execute(sys.argv[1]).fetchall()))" % DB)
    cmd = as_demo(host, "%s -c %s %s", PYTHON, code, sql)
    assert cmd.rc == 0, cmd.stderr
    return [tuple(row) for row in json.loads(cmd.stdout)]


def applied_migrations(host):
    return sorted("%s.%s" % row for row in query(host, "SELECT app, name FROM django_migrations"))


def db_digest(host):
    return hashlib.sha256(host.file(DB).content).hexdigest()


def reset(host):
    """No database, no collected files, no extra migration: a host before its first deploy."""
    host.run("rm -f %s %s" % (DB, EXTRA_IN_PROJECT))
    host.run("find %s -mindepth 1 -delete" % STATIC)


@pytest.fixture
def fresh(host, play):
    """Start from a host that was never deployed to; leave it as converge.yml made it."""
    reset(host)
    yield
    reset(host)
    restored = play()
    assert not restored.failed, restored


def test_manage_py_is_not_executable_and_the_project_is_read_only_to_the_app_user(host):
    manage = host.file(APP + "/manage.py")
    assert manage.mode == 0o644 and manage.user == "root"
    assert as_demo(host, "test -w %s" % APP).rc != 0


def test_migrate_is_changed_then_unchanged(host, play, fresh):
    first = play()
    assert not first.failed, first
    migrate = first.task(MIGRATE)
    assert migrate["changed"] is True
    assert {"auth.0001_initial", "admin.0001_initial", "tags.0001_initial", "notes.0001_initial"} <= set(migrate["applied"])
    assert migrate["pending"] == [] and migrate["unapplied"] == []
    assert applied_migrations(host) == sorted(migrate["applied"])
    assert migrate["cmd"][1:] == [APP + "/manage.py", "migrate", "--noinput", "--no-color"]

    second = play()
    assert not second.failed, second
    again = second.task(MIGRATE)
    assert again["changed"] is False and again["applied"] == [] and again["pending"] == []
    assert second.stats["changed"] == 0


@pytest.fixture
def pending_migration(host, play):
    """The project of the converged host plus one new migration; restored afterwards."""
    host.run("install -m 0644 %s %s" % (EXTRA, EXTRA_IN_PROJECT))
    yield
    reset(host)
    restored = play()
    assert not restored.failed, restored


def test_check_mode_reports_the_pending_migration_and_leaves_the_database_untouched(host, play, pending_migration):
    before = db_digest(host)
    checked = play(demo_check_mode=True)
    assert not checked.failed, checked
    migrate = checked.task(MIGRATE)
    assert migrate["changed"] is True
    assert migrate["pending"] == ["notes.0002_welcome_note"] and migrate["applied"] == ["notes.0002_welcome_note"]
    assert db_digest(host) == before
    assert "notes.0002_welcome_note" not in applied_migrations(host)
    assert query(host, "SELECT count(*) FROM notes_note WHERE title = 'Welcome'") == [(0,)]
    # Commands whose effect is unknown do not run in check mode.
    assert checked.task(TEST).get("skipped") is True

    applied = play()
    assert not applied.failed, applied
    assert applied.task(MIGRATE)["applied"] == ["notes.0002_welcome_note"]
    assert query(host, "SELECT count(*) FROM notes_note WHERE title = 'Welcome'") == [(1,)]


def test_collectstatic_is_changed_then_unchanged(host, play, fresh):
    first = play()
    assert not first.failed, first
    collect = first.task(COLLECT)
    assert collect["changed"] is True and collect["unmodified"] == 0
    assert collect["copied"] > 100  # the admin's files and the project's own
    css = host.file(STATIC + "/notes/notes.css")
    assert css.is_file and css.user == "demo"
    assert "body.notes" in css.content_string

    second = play()
    again = second.task(COLLECT)
    assert again["changed"] is False and again["copied"] == 0 and again["unmodified"] == collect["copied"]


def test_collectstatic_check_mode_is_a_dry_run(host, play):
    host.run("rm -f %s/notes/notes.css" % STATIC)
    try:
        checked = play(demo_check_mode=True)
        collect = checked.task(COLLECT)
        assert collect["changed"] is True and collect["copied"] == 1 and "--dry-run" in collect["cmd"]
        assert not host.file(STATIC + "/notes/notes.css").exists
    finally:
        assert not play().failed


def test_createsuperuser_is_created_then_unchanged(host, play, fresh):
    first = play()
    assert not first.failed, first
    admin = first.task(ADMIN)
    assert admin["changed"] is True and admin["created"] is True and admin["username"] == "admin"

    second = play()
    again = second.task(ADMIN)
    assert again["changed"] is False and again["created"] is False

    code = ("from django.contrib.auth import authenticate; u = authenticate(username='admin', password=%r); "
            "print(u.is_superuser if u else None)" % PASSWORD)
    login = as_demo(host, "sh -c %s", "set -a; . /srv/demo/shared/.env; cd %s && %s manage.py shell -v 0 -c \"%s\""
                    % (APP, PYTHON, code))
    assert login.rc == 0, login.stderr
    assert login.stdout.strip() == "True"
    for result in (first, second):
        assert PASSWORD not in result.output and SECRET_KEY not in result.output


def test_check_deploy_fails_with_debug_settings_and_passes_with_production_settings(host, play):
    debug = play(demo_check_settings="demo.settings", demo_check_env={"DJANGO_DEBUG": "True"})
    assert debug.failed, debug
    check = debug.task(CHECK)
    assert check["failed"]
    ids = {issue["id"] for issue in check["issues"]}
    assert {"security.W018", "security.W004", "security.W008"} <= ids
    assert "security.W018" in check["msg"]

    production = play()
    assert not production.failed, production
    passed = production.task(CHECK)
    assert passed["changed"] is False and passed["issues"] == []


def test_a_failing_test_suite_fails_with_its_verdict(host, play):
    result = play(demo_test_env={"DEMO_FAIL_A_TEST": "yes"})
    assert result.failed, result
    test = result.task(TEST)
    assert test["msg"] == "manage.py test failed (rc 1): FAILED (failures=1)"
    assert "failing on purpose" in test["stderr"] and test["tests_run"] == 2
    assert play().task(TEST)["tests_run"] == 2


def test_commands_run_as_the_app_user_in_the_environment_the_module_builds(host, play):
    result = play()
    assert not result.failed, result
    seen = json.loads(result.task(ENV)["stdout"])
    demo = host.user("demo")
    assert seen["uid"] == demo.uid
    assert seen["values"]["HOME"] == "/srv/demo" and seen["values"]["USER"] == "demo"
    assert seen["values"]["LC_ALL"] == "C" and seen["values"]["LANG"] == "C"
    assert seen["values"]["VIRTUAL_ENV"] == "/srv/demo/venv"
    assert seen["values"]["PATH"].startswith("/srv/demo/venv/bin:")
    assert seen["values"]["DJANGO_SETTINGS_MODULE"] == "demo.settings_production"
    assert "DJANGO_SECRET_KEY" in seen["names"]
    # Nothing of the task's environment keyword, of sudo or of Ansible.
    assert "PYDEPLOY_FROM_THE_TASK" not in seen["names"]
    assert not [n for n in seen["names"] if n.startswith(("SUDO_", "ANSIBLE_"))]
    for path in (DB, STATIC + "/admin/css/base.css"):
        assert host.file(path).user == "demo", path
