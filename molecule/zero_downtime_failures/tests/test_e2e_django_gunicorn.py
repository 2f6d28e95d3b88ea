"""The example Django project, deployed by site.yml: gunicorn behind nginx on Debian 12, over
HTTPS (app_tls: selfsigned, DJANGO_HTTPS=1: the Django settings check --deploy wants)."""
import re
import shlex

from e2e import E2ESuite

# This file's host; the zero-downtime drills have the other one (molecule.yml).
testinfra_hosts = ["ansible://debian12"]

JAR = "/root/e2e-cookies.txt"
ADMIN_PASSWORD = "e2e-admin-Vb7nM3kQ"


def csrf_token(body):
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)


def secure_cookies(host):
    """Each cookie of the jar, and its "secure" column (TRUE or FALSE), as curl keeps them
    (Netscape format: domain, subdomains, path, secure, expiry, name, value)."""
    rows = [line.split("\t") for line in host.file(JAR).content_string.splitlines()
            if line.strip() and (not line.startswith("#") or line.startswith("#HttpOnly_"))]
    return {row[5]: row[3] for row in rows if len(row) == 7}


class TestDjangoGunicorn(E2ESuite):
    APP = "mysite"
    HOSTNAME = "mysite.test"
    EXAMPLE = "django"
    TITLE = "pydeploy demo: Django"
    HEALTH = "/health/"
    # ManifestStaticFilesStorage: the stylesheet's name carries its content hash.
    STATIC_HREF = r'href="(/static/guestbook/site\.[0-9a-f]{12}\.css)"'
    SERVER = "gunicorn"
    SECRETS = ("e2e-secret-Zq8vX2mKp4rT9wYb6nC3hJ7dF5gL1sA0eU8iO2yR4tW6qE9", ADMIN_PASSWORD)
    CACERT = "/etc/nginx/tls/mysite/fullchain.pem"

    def form(self, host, path, fields):
        """GET a form with a fresh cookie jar, POST it back with Django's CSRF token."""
        host.run("rm -f %s" % JAR)
        status, _headers, body = self.get(host, path, "-c", JAR)
        assert status == 200, body[-2000:]
        data = []
        for name, value in [("csrfmiddlewaretoken", csrf_token(body))] + list(fields.items()):
            data += ["--data-urlencode", "%s=%s" % (name, value)]
        # Over HTTPS Django wants a Referer of the site itself on a POST (its CSRF check).
        return self.get(host, path, "-b", JAR, "-c", JAR, "--referer", "https://%s%s" % (self.HOSTNAME, path), *data)

    def write_entry(self, host, text):
        status, headers, body = self.form(host, "/guestbook/", {"name": "e2e", "message": text})
        assert status in (302, 303), body[-2000:]
        assert headers["location"].endswith("/guestbook/")

    def read_entries(self, host):
        status, _headers, body = self.get(host, "/guestbook/")
        assert status == 200
        return body

    def test_the_admin_login_page_is_served(self, host):
        status, _headers, body = self.get(host, "/admin/login/")
        assert status == 200
        assert "Django administration" in body and 'name="username"' in body

    def test_the_admin_account_can_log_in(self, host):
        status, headers, _body = self.form(host, "/admin/login/?next=/admin/",
                                           {"username": "admin", "password": ADMIN_PASSWORD, "next": "/admin/"})
        assert status == 302 and headers["location"] == "/admin/"
        status, _headers, body = self.get(host, "/admin/", "-b", JAR)
        assert status == 200 and "Site administration" in body
        assert secure_cookies(host)["sessionid"] == "TRUE"

    def test_plain_http_is_sent_to_https(self, host):
        cmd = host.run("curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' -H 'Host: mysite.test' "
                       "'http://127.0.0.1/guestbook/?page=2'")
        assert cmd.stdout == "301 https://mysite.test/guestbook/?page=2", cmd.stdout + cmd.stderr

    def test_https_sends_hsts_and_secure_cookies(self, host):
        """nginx's HSTS on each answer, and Django's settings for HTTPS in force (it sees
        X-Forwarded-Proto: https): the session and CSRF cookies are Secure."""
        host.run("rm -f %s" % JAR)
        status, headers, _body = self.get(host, "/admin/login/", "-c", JAR)
        assert status == 200
        assert headers["strict-transport-security"].startswith("max-age=31536000")
        assert secure_cookies(host) == {"csrftoken": "TRUE"}
        # TLS 1.1 is refused; HTTP/2 is spoken.
        cmd = host.run("curl -sS -o /dev/null --tls-max 1.1 --ciphers DEFAULT@SECLEVEL=0 --resolve "
                       "mysite.test:443:127.0.0.1 --cacert %s https://mysite.test/health/" % self.CACERT)
        assert cmd.rc != 0
        cmd = host.run("curl -sS -o /dev/null -w '%%{http_version}' --resolve mysite.test:443:127.0.0.1 "
                       "--cacert %s https://mysite.test/health/" % self.CACERT)
        assert cmd.stdout == "2", cmd.stdout + cmd.stderr

    def test_debug_is_off_in_production(self, host):
        status, _headers, body = self.get(host, "/no-such-page/")
        assert status == 404
        assert "Traceback" not in body and "URLconf" not in body

    def check_second_deploy(self, host, result):
        # The database was migrated by converge; version 2.0.0 brings no migration, and
        # the deploy applied none (the schema is migrated once, not once per deploy).
        migrate = result.task("Apply the migrations")
        assert migrate["changed"] is False
        query = ("import sqlite3; print(sqlite3.connect('/srv/mysite/shared/data/db.sqlite3')"
                 ".execute(\"select count(*) from django_migrations where app='guestbook'\").fetchone()[0])")
        rows = host.check_output("python3 -c %s" % shlex.quote(query))
        assert rows == "1"
        # The deploy gate ran against the new release before the switch.
        assert result.task("Check the deployment settings")["changed"] is False
