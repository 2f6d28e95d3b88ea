import json

from hostcheck import as_demo

BASE = "/srv/demo/venvs"
BUILD_TASK = "Build or reuse the virtualenv for these requirements"


def venv_path(host):
    return host.file("/srv/demo/venv-path").content_string.strip()


def venvs(host):
    return sorted(host.check_output("ls -A %s" % BASE).split())


def test_venv_runs_the_host_interpreter_version(host):
    system = host.check_output("/usr/bin/python3 -c 'import platform; print(platform.python_version())'")
    inside = host.check_output("%s/bin/python -c 'import platform; print(platform.python_version())'" % venv_path(host))
    assert inside == system


def test_app_user_imports_the_installed_packages_from_the_venv(host):
    path = venv_path(host)
    cmd = as_demo(host, "%s/bin/python -c 'import six; print(six.__version__, six.__file__)'" % path)
    assert cmd.rc == 0, cmd.stderr
    version, location = cmd.stdout.split()
    assert version == "1.16.0"
    assert location.startswith(path + "/lib/")


def test_venv_is_owned_by_the_app_user_and_keyed(host):
    path = venv_path(host)
    assert path.startswith(BASE + "/") and len(path.rsplit("/", 1)[1]) == 16
    for p in (BASE, path, path + "/bin/pip", path + "/.pydeploy-venv.json"):
        assert host.file(p).user == "demo", p
    assert not host.run("find %s ! -user demo -print -quit" % path).stdout.strip()


def test_installer_is_the_one_asked_for(host):
    marker = json.loads(host.file(venv_path(host) + "/.pydeploy-venv.json").content_string)
    wanted = "uv" if host.backend.get_hostname() == "debian13" else "pip"
    assert marker["installer"] == wanted
    assert marker["packages"] == {"six": "1.16.0"}


def test_unchanged_requirements_reuse_the_venv_without_running_the_installer(host, play):
    path = venv_path(host)
    inode = host.file(path).inode
    marker = host.file(path + "/.pydeploy-venv.json").content_string
    result = play()
    assert not result.failed, result
    build = result.task(BUILD_TASK)
    assert build["changed"] is False and build["reused"] is True and build["duration"] == 0
    assert build["path"] == path
    assert host.file(path).inode == inode
    assert host.file(path + "/.pydeploy-venv.json").content_string == marker
    assert result.stats["changed"] == 0


def test_changed_requirements_build_a_new_venv_and_keep_the_old(host, play, restore):
    old = venv_path(host)
    result = play(demo_requirements="six==1.17.0\n")
    assert not result.failed, result
    new = result.task(BUILD_TASK)["path"]
    assert new != old
    assert set(venvs(host)) >= {old.rsplit("/", 1)[1], new.rsplit("/", 1)[1]}
    assert as_demo(host, "%s/bin/python -c 'import six; print(six.__version__)'" % new).stdout.strip() == "1.17.0"
    assert as_demo(host, "%s/bin/python -c 'import six; print(six.__version__)'" % old).stdout.strip() == "1.16.0"


def test_unresolvable_requirement_fails_naming_it_and_leaves_no_venv(host, play, restore):
    before = venvs(host)
    result = play(demo_requirements="six==1.16.0\npydeploy-no-such-package==1.0\n")
    assert result.failed, result
    failure = result.task(BUILD_TASK)
    assert failure["failed"]
    assert "pydeploy-no-such-package" in failure["msg"]
    assert venvs(host) == before
    assert not [n for n in venvs(host) if n.endswith(".partial")]


def test_a_missing_application_user_fails_naming_the_variable_and_builds_nothing(host, play):
    before = venvs(host)
    result = play(virtualenv_user="pydeploy-nobody")
    assert result.failed, result
    msg = result.task("Check that the application user exists")["msg"]
    assert msg == ("virtualenv_user 'pydeploy-nobody' does not exist on %s; create it first "
                   "(the pydeploy.web.app_release role does)." % host.backend.get_hostname())
    assert venvs(host) == before
