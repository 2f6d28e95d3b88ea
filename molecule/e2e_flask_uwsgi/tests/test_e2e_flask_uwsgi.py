"""The example Flask app, deployed by site.yml: uWSGI behind nginx on Debian 13."""
from e2e import E2ESuite


class TestFlaskUwsgi(E2ESuite):
    APP = "hello"
    HOSTNAME = "hello.test"
    EXAMPLE = "flask"
    TITLE = "pydeploy demo: Flask"
    HEALTH = "/health"
    STATIC_HREF = r'href="(/static/style\.css)"'
    SERVER = "uwsgi"
    SECRETS = ("e2e-flask-secret-Hk3mP9qW2xZ7vB5nC8tY4rL6",)
    # The rollback job template's survey left blank (examples/awx/survey-rollback.json): AWX
    # passes release_id as "", which means the previous release, as no release_id does (zd).
    ROLLBACK_VARS = {"release_id": ""}

    def write_entry(self, host, text):
        status, headers, body = self.get(host, "/notes", "--data-urlencode", "text=%s" % text)
        assert status == 303, body[-2000:]
        assert headers["location"].endswith("/notes")

    def read_entries(self, host):
        status, _headers, body = self.get(host, "/notes")
        assert status == 200
        return body

    def test_an_empty_note_is_refused(self, host):
        status, _headers, _body = self.get(host, "/notes", "--data-urlencode", "text=")
        assert status == 400

    def test_the_app_server_speaks_the_uwsgi_protocol_to_nginx(self, host):
        site = host.file("/etc/nginx/sites-available/hello.conf").content_string
        # The site speaks uwsgi through current's uwsgi link while it exists (HTTP through
        # the other one otherwise, for a change of app_server).
        assert "if (-e /srv/hello/current/.pydeploy-uwsgi.sock)" in site
        assert "server unix:/srv/hello/current/.pydeploy-uwsgi.sock" in site
        # The instance serving listens on its own socket, which nginx reaches through
        # current's uwsgi link; the other instance is stopped, its socket gone.
        program = self.live_program(host)
        color = program.rsplit("-", 1)[1]
        assert self.socket_link(host) == ("uwsgi", "/run/hello/%s.sock" % color)
        assert not host.file("/srv/hello/current/.pydeploy-http.sock").is_symlink
        assert host.socket("unix:///run/hello/%s.sock" % color).is_listening
