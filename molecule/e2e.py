"""The end-to-end story both e2e scenarios tell, as a user would check it: over HTTP
through nginx, with the shipped playbooks (site, deploy, rollback). A scenario's test file
subclasses E2ESuite with its application's facts and how its database page is written to.

The tests run in file order and build on each other: the first ones look at what
converge made (version 1.0.0); then version 2.0.0 (new requirements) is deployed with the
other app server, moved back to this one and rolled back; then releases that fail before and after the switch are refused or reverted. Each
leaves version 1.0.0 current, as converge made it."""
import hashlib
import json
import os
import re
import time
import uuid

from hostcheck import ProbeLoop, http, restart_supervisord

DIST = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "dist")


def release_id(archive):
    """The id the playbooks give a release: the first 12 hex characters of its sha256."""
    with open(os.path.join(DIST, archive), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


class E2ESuite:
    APP = ""            # app_name
    HOSTNAME = ""       # first of app_server_name
    EXAMPLE = ""        # django or flask: the dist archives' prefix
    TITLE = ""          # text of the home page
    HEALTH = ""         # app_health_path
    STATIC_HREF = ""    # regex of the stylesheet's URL in the home page
    SERVER = ""         # gunicorn or uwsgi
    SECRETS = ()        # values of app_env (and passwords) that must never be logged
    ROLLBACK_VARS = {}  # extra variables of the rollback to the previous release
    CACERT = ""         # with app_tls: the certificate nginx serves, which clients trust (on the host)

    # How the scenario's database page is written to and read: subclasses implement.
    def write_entry(self, host, text):
        raise NotImplementedError

    def read_entries(self, host):
        raise NotImplementedError

    # Helpers
    def get(self, host, path, *curl_args):
        return http(host, path, *curl_args, hostname=self.HOSTNAME, cacert=self.CACERT)

    def probe_loop(self, host, paths):
        return ProbeLoop(host, paths, self.HOSTNAME, cacert=self.CACERT)

    def version(self, host):
        status, _headers, body = self.get(host, "/")
        assert status == 200, body[-2000:]
        return re.search(r"Version ([0-9A-Za-z.+-]+)", body).group(1)

    def current(self, host):
        return os.path.basename(host.file("/srv/%s/current" % self.APP).linked_to)

    def releases(self, host):
        return sorted(n for n in host.file("/srv/%s/releases" % self.APP).listdir() if not n.startswith("."))

    def socket_link(self, host):
        """current's socket link nginx connects through: uWSGI's while there is one, HTTP's otherwise."""
        for protocol in ("uwsgi", "http"):
            link = host.file("/srv/%s/current/.pydeploy-%s.sock" % (self.APP, protocol))
            if link.is_symlink:
                return protocol, link.linked_to
        raise AssertionError("current has no socket link")

    def live_program(self, host):
        """The supervisor program serving: <app>-blue or <app>-green, by current's socket link."""
        return "%s-%s" % (self.APP, os.path.basename(self.socket_link(host)[1]).rsplit(".", 1)[0])

    def pid(self, host, program=None):
        return int(host.check_output("supervisorctl pid %s" % (program or self.live_program(host))))

    def venvs(self, host):
        return sorted(n for n in host.file("/srv/%s/venvs" % self.APP).listdir() if not n.startswith("."))

    def archive(self, version):
        return os.path.join(DIST, "%s-%s.tar.gz" % (self.EXAMPLE, version))

    # What converge made
    def test_home_page_is_served_through_nginx(self, host):
        status, headers, body = self.get(host, "/")
        assert status == 200
        assert headers["server"].startswith("nginx")
        assert self.TITLE in body
        assert "Version 1.0.0" in body
        assert self.current(host) == release_id("%s-1.0.0.tar.gz" % self.EXAMPLE)

    def test_unknown_host_names_get_no_answer(self, host):
        cmd = host.run("curl -sS -o /dev/null -H 'Host: other.test' http://127.0.0.1/")
        assert cmd.rc in (52, 56), cmd.stdout  # nginx closed the connection (444)

    def test_health_reports_the_release_and_its_database(self, host):
        status, headers, body = self.get(host, self.HEALTH)
        assert status == 200
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body) == {"status": "ok", "version": "1.0.0", "database": "ok"}

    def test_a_static_asset_comes_from_disk_with_its_type(self, host):
        _status, _headers, body = self.get(host, "/")
        href = re.search(self.STATIC_HREF, body).group(1)
        status, headers, css = self.get(host, href)
        assert status == 200
        assert headers["content-type"] == "text/css"
        assert "max-age=" in headers["cache-control"]  # nginx's expires, not the app
        assert "{" in css
        # nginx read it from the current release; nothing reached the app server.
        log = host.file("/var/log/nginx/%s.access.log" % self.APP).content_string
        assert href in log
        server_log = host.run("cat /var/log/%s/*.log" % self.APP).stdout
        assert href not in server_log

    def test_the_database_page_writes_and_reads(self, host):
        text = "e2e entry %s" % uuid.uuid4().hex[:8]
        self.write_entry(host, text)
        assert text in self.read_entries(host)
        # The database lives in shared/, outside every release, owned by the app user.
        data = host.file("/srv/%s/shared/data" % self.APP)
        assert data.user == self.APP
        assert any(n.endswith(".sqlite3") for n in data.listdir())

    def test_the_app_server_runs_as_the_application_user(self, host):
        master = self.pid(host)
        assert master > 0
        assert host.check_output("ps -o user= -p %d" % master) == self.APP
        assert self.SERVER in host.check_output("ps -o args= -p %d" % master).lower()
        workers = host.check_output("ps -o user= --ppid %d" % master).split()
        assert workers and set(workers) == {self.APP}
        assert host.user(self.APP).shell == "/usr/sbin/nologin"

    def test_the_environment_file_is_private_to_the_application(self, host):
        env = host.file("/srv/%s/shared/.env" % self.APP)
        assert (env.user, env.group, env.mode) == ("root", self.APP, 0o640)
        assert all(secret in env.content_string for secret in self.SECRETS[:1])

    def test_another_applications_user_reaches_neither_the_socket_nor_shared(self, host):
        """Least privilege between applications on one host: the socket's directory and
        shared/ belong to <app>-web, whose members are nginx's user and (gunicorn) the
        application user; another application's user, even in nginx's own group, gets
        nowhere. nginx still serves the media files from shared/."""
        web = "%s-web" % self.APP
        assert set(host.group(web).members) <= {"www-data", self.APP} and "www-data" in host.group(web).members
        assert self.APP not in host.group("www-data").members
        for path in ("/run/%s" % self.APP, "/srv/%s/shared" % self.APP):
            f = host.file(path)
            assert (f.user, f.group, f.mode & 0o777) == (self.APP, web, 0o750), path
        host.run("id otherapp || useradd --system --no-create-home --shell /usr/sbin/nologin --groups www-data otherapp")
        _protocol, socket = self.socket_link(host)
        for command in ("ls /srv/%s/shared" % self.APP, "cat /srv/%s/shared/.env" % self.APP,
                        "ls /run/%s" % self.APP, "test -r %s" % socket, "test -w %s" % socket):
            assert host.run("sudo -u otherapp %s" % command).rc != 0, command
        # (what the application stores in media/, nginx serves: it is in the group)
        host.check_output("sudo -u %s sh -c 'echo pydeploy > /srv/%s/shared/media/pydeploy-check.txt'"
                          % (self.APP, self.APP))
        status, _headers, body = self.get(host, "/media/pydeploy-check.txt")
        assert (status, body.strip()) == (200, "pydeploy")
        host.run("rm -f /srv/%s/shared/media/pydeploy-check.txt" % self.APP)

    def test_bad_input_fails_before_any_change(self, host, play):
        before = self.current(host)
        cases = [
            # A wrong choice, and a misspelt variable that is reported, not ignored.
            (dict(app_server="apache", app_sever="uwsgi"),
             ["value of app_server must be one of: gunicorn, uwsgi, got: apache", "app_sever. Supported parameters"]),
            (dict(app_wsgi="mysite/wsgi.py", app_health_path="health"),
             ["app_wsgi must be module:callable or module:factory() (got mysite/wsgi.py)",
              "app_health_path must start with /"]),
            (dict(app_artifact="/nonexistent/release.tar.gz"), ["is not a file on the controller"]),
            (dict(app_artifact_checksum="0" * 64), ["as app_artifact_checksum says"]),
            # Checked like every other variable, though app_release_* names are the app_release role's.
            (dict(app_release_id="../escape"),
             ["app_release_id must be empty or the name of a release directory: up to 128 letters, digits, "
              "'.', '_' or '-', the first a letter or digit (got ../escape)"]),
        ]
        for extra, messages in cases:
            result = play("converge.yml", **extra)
            assert result.failed, (extra, result)
            for message in messages:
                assert message in result.output, (extra, message, result)
            assert result.stats.get("changed", 0) == 0, (extra, result)
        assert self.current(host) == before

    # Later releases
    def test_a_second_version_on_the_other_app_server_and_back_and_a_rollback_to_the_first(self, host, play):
        """Version 2.0.0 deployed with app_server changed, as a user changes it (current
        switched to a new release, linked to the other server's socket), then app_server
        changed back with the same release (only its socket link switched), under requests
        through nginx all along; then a rollback brings back version 1.0.0 on the first
        server. The other e2e scenario starts from the other server: both directions of
        both paths. (A new release on the same server: test_zero_downtime_failures.py for
        gunicorn, the app_role scenario for uWSGI.)"""
        first = release_id("%s-1.0.0.tar.gz" % self.EXAMPLE)
        second = release_id("%s-2.0.0.tar.gz" % self.EXAMPLE)
        other = "gunicorn" if self.SERVER == "uwsgi" else "uwsgi"
        protocol = {"gunicorn": "http", "uwsgi": "uwsgi"}
        text = "kept across releases %s" % uuid.uuid4().hex[:8]
        self.write_entry(host, text)

        for server in (other, self.SERVER):
            before = self.live_program(host)
            with self.probe_loop(host, ["/", self.HEALTH]) as loop:
                result = play("deploy.yml", app_artifact=self.archive("2.0.0"), app_server=server)
            assert not result.failed, result
            assert len(loop.results) >= 10, loop.results  # the loop ran through the deploy
            assert loop.failures() == [], (server, loop.failures()[:20])
            # The app server's program file (which holds app_env) was rewritten, .env checked:
            # no secret reached the output. (Idempotence is Molecule's own step.)
            for secret in self.SECRETS:
                assert secret not in result.output
            assert self.socket_link(host)[0] == protocol[server]
            assert self.current(host) == second and self.version(host) == "2.0.0"
            # The other instance serves, run by the server asked for; the one before stopped.
            program = self.live_program(host)
            assert program != before
            args = host.run("cat /proc/%d/cmdline" % self.pid(host, program)).stdout.replace("\0", " ")
            assert server in args.lower(), args  # "gunicorn: master [...]", "hello uWSGI master"
            assert "STOPPED" in host.run("supervisorctl status %s" % before).stdout
            assert self.releases(host) == sorted([first, second])  # the previous release is kept
            assert len(self.venvs(host)) == 2  # new requirements, new virtualenv; the old one kept
            assert text in self.read_entries(host)
            if server == other:  # the deploy of the new release
                self.check_second_deploy(host, result)

        result = play("rollback.yml", **self.ROLLBACK_VARS)
        assert not result.failed, result
        assert self.current(host) == first and self.version(host) == "1.0.0"
        assert self.socket_link(host)[0] == protocol[self.SERVER]
        assert text in self.read_entries(host)
        assert result.task("Find the virtualenv of release")["changed"] is False  # reused

    def check_second_deploy(self, host, result):
        """Scenario-specific checks of the deploy of version 2.0.0."""

    def test_a_failure_before_the_switch_leaves_the_running_release_serving(self, host, play):
        first = release_id("%s-1.0.0.tar.gz" % self.EXAMPLE)
        master = self.pid(host)
        env_before = host.file("/srv/%s/shared/.env" % self.APP).content_string
        # New values of app_env reach shared/.env only with a release that goes live.
        result = play("deploy.yml", app_artifact=self.archive("2.0.0"), app_requirements="no-such-requirements.txt",
                      app_env={"E2E_NOT_LIVE": "never-written-%s" % uuid.uuid4().hex[:8]})
        assert result.failed, result
        assert "virtualenv_requirements /srv/%s/releases/%s/no-such-requirements.txt does not exist" % (
            self.APP, release_id("%s-2.0.0.tar.gz" % self.EXAMPLE)) in result.output
        assert self.current(host) == first
        assert self.pid(host) == master  # not restarted
        assert self.version(host) == "1.0.0"
        assert "Nothing was switched: release %s is still serving." % first in result.output
        assert host.file("/srv/%s/shared/.env" % self.APP).content_string == env_before

    def test_an_unhealthy_release_never_goes_live(self, host, play):
        first = release_id("%s-1.0.0.tar.gz" % self.EXAMPLE)
        bad = release_id("%s-3.0.0.tar.gz" % self.EXAMPLE)
        program, master = self.live_program(host), self.pid(host)
        result = play("deploy.yml", app_artifact=self.archive("3.0.0"), app_health_retries=3, app_health_delay=1)
        assert result.failed, result
        # It started on the idle instance, and its probe on its own socket refused it:
        # ansible.builtin.uri (unix_socket) for gunicorn, which speaks HTTP there;
        # pydeploy.web.wsgi_probe for uWSGI, which speaks the uwsgi protocol. Both name
        # the status and quote the start of the body the health path answered.
        if self.SERVER == "gunicorn":
            cause = "Status code was 500 and not [200]: HTTP Error 500: Internal Server Error: "
        else:
            cause = "GET %s on unix socket /run/%s/" % (self.HEALTH, self.APP)
        assert ("Release %s of %s failed on %s at Probe the new instance on its socket before any traffic "
                "reaches it: %s" % (bad, self.APP, host.backend.get_hostname(), cause)
                in result.output), result
        if self.SERVER == "uwsgi":
            assert ".sock (uwsgi) did not answer 200 within 3 s of its first answer" in result.output
            assert "last answer HTTP 500 " in result.output  # the reason phrase is the framework's
        # (the output escapes the quotes of the message's JSON)
        assert re.search(r'\\?"status\\?": ?\\?"unhealthy', result.output), result
        assert "Nothing was switched: release %s is still serving." % first in result.output
        assert self.current(host) == first
        assert (self.live_program(host), self.pid(host)) == (program, master)
        assert self.version(host) == "1.0.0"
        status, _headers, _body = self.get(host, self.HEALTH)
        assert status == 200

    def test_a_failure_after_the_switch_goes_back_to_the_instance_still_running(self, host, play):
        first = release_id("%s-1.0.0.tar.gz" % self.EXAMPLE)
        second = release_id("%s-2.0.0.tar.gz" % self.EXAMPLE)
        program, master = self.live_program(host), self.pid(host)
        # nginx -t refuses this, after current was switched to the new release.
        result = play("deploy.yml", app_artifact=self.archive("2.0.0"), nginx_client_max_body_size="1 0m")
        assert result.failed, result
        assert "Release %s of %s failed" % (second, self.APP) in result.output
        assert "at Fail with the message of nginx -t: nginx rejected the new configuration" in result.output
        assert ("Reverted: release %s is current and serving again (its instance was still running) and "
                "passed its health check." % first) in result.output
        assert "Release %s is marked failed" % second in result.output
        assert self.current(host) == first
        # The old instance served on, never restarted; the new one was stopped.
        assert (self.live_program(host), self.pid(host)) == (program, master)
        other = program[:-4] + "green" if program.endswith("blue") else program[:-5] + "blue"
        assert "STOPPED" in host.run("supervisorctl status %s" % other).stdout
        assert self.version(host) == "1.0.0"

    def test_after_a_reboot_only_the_instance_serving_runs(self, host):
        """supervisord's start at boot, after the deploys, rollbacks and failed deploys above
        (each of which started one instance and stopped the other, or the new one): it starts
        the instance current's socket link points at, and not the other one, which last ran
        another release (a failed one, after the test before)."""
        program = self.live_program(host)
        color = program.rsplit("-", 1)[1]
        other_color = "green" if color == "blue" else "blue"
        other = "%s-%s" % (self.APP, other_color)

        def autostart(name):
            return re.findall(r"^autostart = (\S+)$",
                              host.file("/etc/supervisor/conf.d/%s.conf" % name).content_string, re.MULTILINE)

        assert (autostart(program), autostart(other)) == (["true"], ["false"])
        restart_supervisord(host)
        assert self.live_program(host) == program  # (the links are under /srv, untouched)
        assert host.run("supervisorctl status %s" % program).stdout.split()[1] == "RUNNING"
        assert host.run("supervisorctl status %s" % other).stdout.split()[1] == "STOPPED"
        assert host.socket("unix:///run/%s/%s.sock" % (self.APP, color)).is_listening
        assert not host.socket("unix:///run/%s/%s.sock" % (self.APP, other_color)).is_listening
        # Through nginx, once the instance has loaded the application.
        for _attempt in range(30):
            status, _headers, body = self.get(host, self.HEALTH)
            if status == 200:
                break
            time.sleep(1)
        assert status == 200, body[-2000:]
        assert json.loads(body)["version"] == "1.0.0"
        assert self.version(host) == "1.0.0"
