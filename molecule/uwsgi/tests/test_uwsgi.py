"""The demo application behind nginx -> unix socket -> uWSGI, under supervisor.

Debian 12 uses the distribution's uwsgi-core and python3 plugin; Debian 13 builds uWSGI
into the virtualenv with pip."""
import json
import re
import shlex
import time

import pytest
from hostcheck import seen

INI = "/etc/demo/uwsgi.ini"
PROGRAM = "/etc/supervisor/conf.d/demo.conf"
SOCKET = "/run/demo/uwsgi.sock"
METHOD = {"debian12": "distro", "debian13": "pip"}


def master_pid(host):
    return int(host.check_output("supervisorctl pid demo"))


def ini(host):
    return dict(line.split(" = ", 1) for line in host.file(INI).content_string.splitlines() if " = " in line)


def program(host):
    return dict(line.split(" = ", 1) for line in host.file(PROGRAM).content_string.splitlines() if " = " in line)


def release_path(host):
    return host.file("/srv/demo/current").linked_to


def wait_for(check, seconds=30):
    for _attempt in range(seconds):
        if check():
            return True
        time.sleep(1)
    return check()


@pytest.fixture
def method(host):
    return METHOD[host.backend.get_hostname()]


def test_the_application_answers_through_nginx_and_uwsgi(host):
    app = seen(host, "/hello")
    assert app["app"] == "demo" and app["path"] == "/hello"
    assert app["entry"] == {"debian12": "application", "debian13": "create_app"}[host.backend.get_hostname()]
    assert app["greeting"] == "hello from the environment"
    assert app["host"] == "demo.test"
    assert app["remote_addr"] == "127.0.0.1"  # from uwsgi_params


def test_the_application_runs_from_the_resolved_release_with_the_virtualenv(host):
    app = seen(host)
    assert app["cwd"] == release_path(host) and "/releases/" in app["cwd"]
    assert app["prefix"].startswith("/srv/demo/venvs/")
    settings = ini(host)
    assert settings["chdir"] == release_path(host)
    assert settings["virtualenv"] == app["prefix"]


def test_ini_has_the_production_settings_and_no_network_listener(host):
    settings = ini(host)
    for name, value in [("master", "true"), ("vacuum", "true"), ("need-app", "true"), ("lazy-apps", "true"),
                        ("chmod-socket", "660"), ("socket", SOCKET), ("exit-on-reload", "true"),
                        ("harakiri", "30"), ("max-requests", "1000")]:
        assert settings.get(name) == value, name
    assert not [name for name in settings if name.startswith("http")]
    f = host.file(INI)
    assert (f.user, f.group, f.mode) == ("root", "demo", 0o640)


def test_uwsgi_master_and_workers_run_as_the_app_user(host):
    master = master_pid(host)
    assert host.check_output("ps -o user= -p %d" % master) == "demo"
    workers = host.check_output("ps -o user= --ppid %d" % master).split()
    assert workers and set(workers) == {"demo"}
    assert len(workers) == int(ini(host)["processes"])
    assert seen(host)["uid"] == host.user("demo").uid


def test_socket_is_read_write_for_the_app_user_and_nginx_group_only(host):
    sock = host.file(SOCKET)
    assert sock.is_socket
    assert (sock.user, sock.group, sock.mode) == ("demo", "demo-web", 0o660)
    run_dir = host.file("/run/demo")
    assert (run_dir.user, run_dir.group, run_dir.mode) == ("demo", "demo-web", 0o2750)
    assert "d /run/demo 2750 demo demo-web -" in host.file("/etc/tmpfiles.d/demo.conf").content_string.splitlines()
    # nginx's user is the group's only member: uWSGI needs no membership (setgid directory).
    assert host.group("demo-web").members == ["www-data"]
    assert "demo-web" not in host.user("demo").groups and "www-data" not in host.user("demo").groups


def test_supervisor_and_uwsgi_have_no_tcp_listener(host):
    listeners = host.check_output("ss -Hltnp").splitlines()
    assert [line for line in listeners if '"nginx"' in line]
    assert not [line for line in listeners if re.search(r'"[^"]*(supervisord|uwsgi|python)[^"]*"', line, re.I)], listeners


def test_uwsgi_is_installed_the_way_asked(host, method):
    command = program(host)["command"]
    if method == "pip":
        prefix = seen(host)["prefix"]
        assert command == "%s/bin/uwsgi --ini %s" % (prefix, INI)
        assert host.check_output("%s/bin/uwsgi --version" % prefix) == "2.0.31"
        assert "plugins" not in ini(host)
    else:
        assert command == "/usr/bin/uwsgi-core --ini %s" % INI
        assert host.package("uwsgi-core").is_installed and host.package("uwsgi-plugin-python3").is_installed
        python = seen(host)["prefix"] + "/bin/python"
        version = host.check_output("%s -c 'import sys; print(\"%%d%%d\" %% sys.version_info[:2])'" % python)
        assert ini(host)["plugins"] == "python" + version
        assert not host.package("uwsgi").is_installed  # no SysV service beside supervisor


def test_supervisor_program_stops_uwsgi_gracefully(host):
    settings = program(host)
    assert settings["user"] == "demo"
    assert settings["directory"] == release_path(host)
    assert settings["stopsignal"] == "HUP"  # graceful reload, which exit-on-reload ends
    assert int(settings["stopwaitsecs"]) >= int(ini(host)["worker-reload-mercy"]) + 5
    assert settings["stopasgroup"] == "false" and settings["killasgroup"] == "true"


def test_a_stop_lets_the_request_in_flight_finish(host):
    host.run("rm -f /tmp/pydeploy-slow.body /tmp/pydeploy-slow.code")
    request = ("curl -s -o /tmp/pydeploy-slow.body -w '%{http_code}' -H 'Host: demo.test' "
               "'http://127.0.0.1/slow?seconds=4' > /tmp/pydeploy-slow.code")
    assert host.run("setsid -f sh -c %s" % shlex.quote(request)).rc == 0
    time.sleep(1.5)
    before = master_pid(host)
    restart = host.run("supervisorctl restart demo")
    assert restart.rc == 0, restart.stdout
    assert wait_for(lambda: host.file("/tmp/pydeploy-slow.code").exists
                    and host.file("/tmp/pydeploy-slow.code").content_string != "")
    assert host.file("/tmp/pydeploy-slow.code").content_string == "200"
    assert json.loads(host.file("/tmp/pydeploy-slow.body").content_string)["path"] == "/slow"
    assert master_pid(host) != before
    log = host.file("/var/log/demo/uwsgi.log").content_string
    assert "GAME OVER" in log  # exit-on-reload: the graceful reload ended the process


def test_a_stopped_uwsgi_removes_its_socket(host):
    try:
        assert host.run("supervisorctl stop demo").rc == 0
        assert not host.file(SOCKET).exists
    finally:
        assert host.run("supervisorctl start demo").rc == 0
    assert wait_for(lambda: host.file(SOCKET).exists)
    assert seen(host)["app"] == "demo"


# No restore: the test asserts that the failed run left the host as it was, and
# the last test of this file checks that a rerun changes nothing.
def test_an_application_that_does_not_import_fails_before_uwsgi_is_touched(host, play):
    before = (master_pid(host), host.file(INI).content_string)
    result = play(uwsgi_wsgi_app="hello:nonexistent")
    assert result.failed, result
    msg = result.task("Fail when the application does not import")["msg"]
    assert "nonexistent" in msg and "AttributeError" in msg
    assert (master_pid(host), host.file(INI).content_string) == before
    assert seen(host)["app"] == "demo"


# No restore: the preflight refuses it before anything changes.
def test_a_factory_with_arguments_is_refused_before_anything_changes(host, play):
    before = (master_pid(host), host.file(INI).content_string)
    result = play(uwsgi_wsgi_app="hello:create_app('prod')")
    assert result.failed, result
    msg = result.task("Check the WSGI callable and the socket path")["msg"]
    assert "uwsgi_wsgi_app is 'hello:create_app('prod')'; give module:callable" in msg
    assert (master_pid(host), host.file(INI).content_string) == before


def test_a_changed_setting_restarts_uwsgi_and_nothing_else(host, play, restore):
    uwsgi = master_pid(host)
    nginx = host.file("/run/nginx.pid").content_string.strip()
    supervisord = host.file("/run/supervisord.pid").content_string.strip()
    result = play(uwsgi_harakiri=40)
    assert not result.failed, result
    assert ini(host)["harakiri"] == "40"
    assert master_pid(host) != uwsgi
    assert host.file("/run/nginx.pid").content_string.strip() == nginx
    assert host.file("/run/supervisord.pid").content_string.strip() == supervisord
    assert seen(host)["app"] == "demo"


def test_a_rerun_changes_nothing(play):
    result = play()
    assert not result.failed, result
    assert result.stats["changed"] == 0, result
