"""nginx in front of the demo application (gunicorn on a unix socket)."""
import json
import shlex
import time

from hostcheck import http

SITE = "/etc/nginx/sites-available/demo.conf"
STATIC = "/srv/demo/current/static/site.css"
APP_LOG = "/var/log/demo/gunicorn.out.log"
# The site as converge.yml gives it, for tests that pass the whole list.
DEMO_SITE = {"name": "demo", "server_names": ["demo.test"], "socket": "/run/demo/gunicorn.sock",
             "static_dir": "/srv/demo/current/static", "media_dir": "/srv/demo/shared/media",
             "client_max_body_size": "1m"}


def app_answers(host):
    status, headers, body = http(host, "/")
    return status == 200 and headers.get("content-type") == "application/json" and json.loads(body)["app"] == "demo"


def nginx_master(host):
    return host.file("/run/nginx.pid").content_string.strip()


def post(host, size, path="/upload"):
    host.run("head -c %d /dev/zero > /tmp/pydeploy-body" % size)
    # Expect: 100-continue lets nginx refuse a body that is too large before it is sent.
    return http(host, path, "--data-binary", "@/tmp/pydeploy-body", "-H", "Content-Type: application/octet-stream",
                "-H", "Expect: 100-continue")


def test_the_application_answers_through_nginx(host):
    assert app_answers(host)


def test_static_files_are_served_by_nginx_with_long_cache_headers(host):
    status, headers, body = http(host, "/static/site.css")
    assert status == 200
    assert headers["content-type"] == "text/css"
    assert body == host.file(STATIC).content_string
    assert headers["cache-control"] == "max-age=2592000"  # expires 30d
    assert "expires" in headers
    # The application answers every path with JSON; a missing static file is nginx's 404.
    status, headers, body = http(host, "/static/missing.css")
    assert status == 404 and "application/json" not in headers.get("content-type", "")


def test_the_application_never_sees_static_requests(host):
    http(host, "/static/site.css")
    http(host, "/pydeploy-app-check")
    log = host.file(APP_LOG).content_string
    assert "GET /pydeploy-app-check" in log
    assert "/static/" not in log


def test_media_files_are_served_by_nginx(host):
    status, headers, body = http(host, "/media/placeholder.txt")
    assert status == 200 and headers["content-type"] == "text/plain"
    assert body == "shipped with the demo release\n"
    assert headers["x-content-type-options"] == "nosniff"


def test_text_is_compressed(host):
    head = host.check_output("curl -sS -o /dev/null -D - -H 'Host: demo.test' -H 'Accept-Encoding: gzip' "
                             "http://127.0.0.1/static/site.css")
    headers = dict((k.strip().lower(), v.strip()) for k, v in
                   (line.split(":", 1) for line in head.splitlines()[1:] if ":" in line))
    assert headers["content-encoding"] == "gzip"
    assert headers["vary"] == "Accept-Encoding"


def test_unknown_host_names_get_no_answer(host):
    for hostname in ("unknown.test", "127.0.0.1"):
        cmd = host.run("curl -sS --max-time 10 -H %s http://127.0.0.1/" % shlex.quote("Host: " + hostname))
        # 444: nginx closes the connection without a response; curl sees an empty
        # reply (52) or, when the close arrives as a reset, a receive failure (56).
        assert cmd.rc in (52, 56) and cmd.stdout == "", (hostname, cmd.rc, cmd.stdout, cmd.stderr)


def test_nginx_does_not_tell_its_version(host):
    status, headers, body = http(host, "/static/missing.css")
    assert headers["server"] == "nginx"
    assert "nginx/" not in body


def test_default_site_is_disabled_and_the_site_enabled(host):
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    link = host.file("/etc/nginx/sites-enabled/demo.conf")
    assert link.is_symlink and link.linked_to == SITE
    site = host.file(SITE)
    assert (site.user, site.group, site.mode) == ("root", "root", 0o644)
    assert "server_tokens off;" in host.file("/etc/nginx/nginx.conf").content_string


def test_workers_run_as_www_data_and_the_service_is_enabled(host):
    master = nginx_master(host)
    workers = host.check_output("ps -o user= --ppid %s" % master).split()
    assert workers and set(workers) == {"www-data"}
    assert host.service("nginx").is_enabled


def test_request_bodies_are_limited(host):
    status, _headers, body = post(host, 512 * 1024)
    assert status == 200 and json.loads(body)["body_bytes"] == 512 * 1024
    status, _headers, _body = post(host, 2 * 1024 * 1024)
    assert status == 413


# No restore: the test asserts that the failed run left the host as it was, and
# the last test of this file checks that a rerun changes nothing.
def test_a_broken_directive_fails_with_nginx_message_and_the_previous_config_keeps_serving(host, play):
    before = (host.file(SITE).content_string, nginx_master(host))
    result = play(demo_site_extra=["bogus_directive on;"])
    assert result.failed, result
    msg = result.task("Fail with the message of nginx -t")["msg"]
    assert 'unknown directive "bogus_directive"' in msg
    assert (host.file(SITE).content_string, nginx_master(host)) == before
    assert host.run("nginx -t").rc == 0  # what is on disk is what nginx accepted
    assert not host.run("ls /etc/nginx/sites-available/*~ /etc/nginx/*~ /etc/nginx/conf.d/*~").stdout.strip()
    assert app_answers(host)


# No restore: the test asserts that the failed run left the host as it was, and
# the last test of this file checks that a rerun changes nothing.
def test_a_broken_new_site_is_removed_and_the_others_keep_serving(host, play):
    broken = {"name": "broken", "server_names": ["broken.test"], "socket": "/run/broken/app.sock",
              "extra_directives": ["bogus_directive on;"]}
    result = play(nginx_sites=[DEMO_SITE, broken])
    assert result.failed, result
    assert 'unknown directive "bogus_directive"' in result.task("Fail with the message of nginx -t")["msg"]
    assert not host.file("/etc/nginx/sites-available/broken.conf").exists
    assert not host.file("/etc/nginx/sites-enabled/broken.conf").exists
    assert host.run("nginx -t").rc == 0
    assert app_answers(host)


def test_a_change_reloads_nginx_without_restarting_it(host, play, restore):
    master = nginx_master(host)
    result = play(demo_max_body="3m")
    assert not result.failed, result
    assert result.task("Test the whole configuration with nginx -t")["changed"] is True
    assert nginx_master(host) == master
    assert "client_max_body_size 3m;" in host.file(SITE).content_string
    # The reload is asynchronous: give the new workers a moment.
    for _attempt in range(10):
        status, _headers, _body = post(host, 2 * 1024 * 1024)
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200


def test_a_rerun_tests_nothing_and_changes_nothing(play):
    result = play()
    assert not result.failed, result
    assert result.stats["changed"] == 0, result
    assert result.task("Test the whole configuration with nginx -t").get("skipped") is True
