"""The demo application behind nginx -> unix socket -> gunicorn, under supervisor."""
import json
import re
import shlex
import time

import pytest

from hostcheck import seen

CONF = "/etc/demo/gunicorn.conf.py"
PROGRAM = "/etc/supervisor/conf.d/demo.conf"
SOCKET = "/run/demo/gunicorn.sock"
# What each host serves (molecule.yml): module:callable, and a factory given literal arguments.
ENTRY = {"debian12": "application", "debian13": "with arguments"}


def master_pid(host):
    return int(host.check_output("supervisorctl pid demo"))


def config_value(host, name):
    match = re.search(r"^%s = (.*)$" % name, host.file(CONF).content_string, re.M)
    return match.group(1)


def release_path(host):
    return host.file("/srv/demo/current").linked_to


def test_the_application_answers_through_nginx_and_gunicorn(host):
    app = seen(host, "/hello")
    assert app["app"] == "demo" and app["path"] == "/hello"
    assert app["entry"] == ENTRY[host.backend.get_hostname()]
    assert app["greeting"] == "hello from the environment"
    assert app["host"] == "demo.test"


def test_the_application_runs_from_the_resolved_release_with_the_virtualenv(host):
    app = seen(host)
    assert app["cwd"] == release_path(host) and "/releases/" in app["cwd"]
    assert app["prefix"].startswith("/srv/demo/venvs/")
    command = re.search(r"^command = (.*)$", host.file(PROGRAM).content_string, re.M).group(1)
    assert command == "%s/bin/gunicorn --config %s" % (app["prefix"], CONF)
    assert config_value(host, "chdir") == json.dumps(release_path(host))


def test_nginx_passes_the_client_address_and_scheme_and_ignores_forged_ones(host):
    app = seen(host, "/", "-H", "X-Forwarded-For: 203.0.113.9", "-H", "X-Real-IP: 203.0.113.9")
    assert app["x_real_ip"] == "127.0.0.1"
    assert app["x_forwarded_for"] == "127.0.0.1"
    assert app["x_forwarded_proto"] == "http" and app["scheme"] == "http"


def test_gunicorn_master_and_workers_run_as_the_app_user(host):
    master = master_pid(host)
    assert host.check_output("ps -o user= -p %d" % master) == "demo"
    workers = host.check_output("ps -o user= --ppid %d" % master).split()
    assert workers and set(workers) == {"demo"}
    assert len(workers) == int(config_value(host, "workers"))
    assert seen(host)["uid"] == host.user("demo").uid


def test_default_workers_are_twice_the_vcpus_plus_one(host):
    workers = int(config_value(host, "workers"))
    assert workers >= 3 and workers % 2 == 1


def test_socket_belongs_to_the_app_user_and_its_web_group_only(host):
    sock = host.file(SOCKET)
    assert sock.is_socket
    assert (sock.user, sock.group) == ("demo", "demo-web")
    assert sock.mode & 0o007 == 0, oct(sock.mode)
    run_dir = host.file("/run/demo")
    assert (run_dir.user, run_dir.group, run_dir.mode) == ("demo", "demo-web", 0o2750)
    # nginx's user and the application's are the group's only members; prepare.yml put
    # demo in www-data, as earlier versions did: taken out.
    assert sorted(host.group("demo-web").members) == ["demo", "www-data"]
    assert "demo" not in host.group("www-data").members
    for other in host.check_output("ls /run/demo").split():
        assert host.file("/run/demo/" + other).mode & 0o002 == 0, other


def test_nginx_can_connect_to_the_socket_and_other_users_cannot(host):
    curl = "curl -sS -o /dev/null -w '%%{http_code}' --unix-socket %s http://demo.test/" % SOCKET
    assert host.check_output("sudo -u www-data " + curl) == "200"
    denied = host.run("sudo -u nobody " + curl)
    assert denied.rc == 7 and denied.stdout != "200", denied  # curl: could not connect
    # Another application's user, even in nginx's own group (where earlier versions put
    # every application user), reaches neither the socket nor the directory.
    host.run("useradd --system --no-create-home --shell /usr/sbin/nologin --groups www-data otherapp")
    denied = host.run("sudo -u otherapp " + curl)
    assert denied.rc == 7 and denied.stdout != "200", denied
    assert host.run("sudo -u otherapp ls /run/demo").rc != 0


def test_runtime_directory_comes_back_after_a_reboot(host):
    tmpfiles = host.file("/etc/tmpfiles.d/demo.conf")
    assert "d /run/demo 2750 demo demo-web -" in tmpfiles.content_string.splitlines()
    assert (tmpfiles.user, tmpfiles.mode) == ("root", 0o644)


def test_configuration_is_root_owned_and_readable_by_the_app_group_only(host):
    for path, mode in ((CONF, 0o640), ("/etc/demo", 0o750)):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "demo", mode), path
    assert not host.run("ls /etc/demo/*~").stdout.strip()  # no backups left behind


def test_gunicorn_is_the_pinned_version_in_the_virtualenv(host):
    prefix = seen(host)["prefix"]
    assert "27.0.1" in host.check_output("%s/bin/gunicorn --version" % prefix)


def test_supervisor_program_stops_gunicorn_gracefully(host):
    program = host.file(PROGRAM).content_string
    settings = dict(line.split(" = ", 1) for line in program.splitlines() if " = " in line)
    assert settings["user"] == "demo"
    assert settings["directory"] == release_path(host)
    assert settings["stopsignal"] == "TERM"
    assert int(settings["stopwaitsecs"]) >= int(config_value(host, "graceful_timeout")) + 5
    assert settings["stopasgroup"] == "false" and settings["killasgroup"] == "true"
    assert settings["stdout_logfile"] == "/var/log/demo/gunicorn.out.log"


def test_logs_are_written_under_var_log_with_the_client_address(host):
    seen(host, "/pydeploy-log-check")
    access = host.file("/var/log/demo/gunicorn.out.log").content_string
    assert [line for line in access.splitlines() if "GET /pydeploy-log-check" in line and line.startswith("127.0.0.1 ")]
    errors = host.file("/var/log/demo/gunicorn.err.log").content_string
    assert "Listening at: unix:%s" % SOCKET in errors
    assert "handed to group demo-web" in errors


def test_supervisor_and_gunicorn_have_no_tcp_listener(host):
    listeners = host.check_output("ss -Hltnp").splitlines()
    assert [line for line in listeners if '"nginx"' in line]
    assert not [line for line in listeners if re.search(r'"(supervisord|gunicorn|python[0-9.]*)"', line)], listeners


def test_a_stop_lets_the_request_in_flight_finish(host):
    host.run("rm -f /tmp/pydeploy-slow.body /tmp/pydeploy-slow.code")
    request = ("curl -s -o /tmp/pydeploy-slow.body -w '%{http_code}' -H 'Host: demo.test' "
               "'http://127.0.0.1/slow?seconds=4' > /tmp/pydeploy-slow.code")
    assert host.run("setsid -f sh -c %s" % shlex.quote(request)).rc == 0
    time.sleep(1.5)
    before = master_pid(host)
    restart = host.run("supervisorctl restart demo")
    assert restart.rc == 0, restart.stdout
    for _attempt in range(30):
        if host.file("/tmp/pydeploy-slow.code").exists and host.file("/tmp/pydeploy-slow.code").content_string:
            break
        time.sleep(1)
    assert host.file("/tmp/pydeploy-slow.code").content_string == "200"
    assert json.loads(host.file("/tmp/pydeploy-slow.body").content_string)["path"] == "/slow"
    assert master_pid(host) != before


# No restore: the test asserts that the failed run left the host as it was, and
# the last test of this file checks that a rerun changes nothing.
def test_a_wsgi_target_that_does_not_import_fails_the_check_and_changes_nothing(host, play):
    before = (master_pid(host), host.file(CONF).content_string)
    result = play(demo_wsgi_app="hello:nonexistent")
    assert result.failed, result
    msg = result.task("Fail with gunicorn's message")["msg"]
    assert "Failed to find attribute 'nonexistent' in 'hello'" in msg
    assert (master_pid(host), host.file(CONF).content_string) == before
    assert not host.run("ls /etc/demo/*~").stdout.strip()
    assert seen(host)["app"] == "demo"


# No restore: the preflight refuses it before anything changes.
@pytest.mark.parametrize("wsgi_app", ["hello:create_app(os.environ)", "hello..wsgi:application"])
def test_a_wsgi_target_gunicorn_cannot_load_is_refused_before_anything_changes(host, play, wsgi_app):
    before = (master_pid(host), host.file(CONF).content_string)
    result = play(demo_wsgi_app=wsgi_app)
    assert result.failed, result
    msg = result.task("Check the WSGI application, the umask and the timeouts")["msg"]
    assert "gunicorn_wsgi_app is '%s'" % wsgi_app in msg
    assert (master_pid(host), host.file(CONF).content_string) == before


def test_a_changed_setting_restarts_gunicorn_and_nothing_else(host, play, restore):
    gunicorn = master_pid(host)
    nginx = host.file("/run/nginx.pid").content_string.strip()
    supervisord = host.file("/run/supervisord.pid").content_string.strip()
    result = play(gunicorn_timeout=45)
    assert not result.failed, result
    assert config_value(host, "timeout") == "45"
    assert master_pid(host) != gunicorn
    assert host.file("/run/nginx.pid").content_string.strip() == nginx
    assert host.file("/run/supervisord.pid").content_string.strip() == supervisord
    assert seen(host)["app"] == "demo"


def test_a_rerun_changes_nothing(play):
    result = play()
    assert not result.failed, result
    assert result.stats["changed"] == 0, result
