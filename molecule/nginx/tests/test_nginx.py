"""nginx in front of the demo application (gunicorn on a unix socket), over plain HTTP
(site demo) and over HTTPS with a self-signed certificate (site secure)."""
import json
import os
import re
import shlex
import time

import pytest

# The nginx hosts (pebble, the ACME server, is the third).
testinfra_hosts = ["ansible://debian12", "ansible://debian13"]

from hostcheck import http

SITE = "/etc/nginx/sites-available/demo.conf"
STATIC = "/srv/demo/current/static/site.css"
APP_LOG = "/var/log/demo/gunicorn.out.log"
# The site as converge.yml gives it, for tests that pass the whole list.
DEMO_SITE = {"name": "demo", "server_names": ["demo.test"], "socket": "/run/demo/gunicorn.sock",
             "static_dir": "/srv/demo/current/static", "media_dir": "/srv/demo/shared/media",
             "client_max_body_size": "1m"}
SECURE_SITE = {"name": "secure", "server_names": ["secure.test", "www.secure.test"], "socket": "/run/demo/gunicorn.sock",
               "static_dir": "/srv/demo/current/static", "media_dir": "/srv/demo/shared/media", "tls": "selfsigned",
               "extra_directives": ["location = /broken-upstream { proxy_pass http://unix:/run/demo/no-such.sock:; }"]}
TLS = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"), "tls")  # prepare.yml's test PKI
PROVIDED_SITE = {"name": "provided", "server_names": ["provided.test", "www.provided.test"],
                 "socket": "/run/demo/gunicorn.sock", "tls": "provided",
                 "tls_certificate": TLS + "/good-chain.pem", "tls_certificate_key": TLS + "/leaf.key"}
CERT = "/etc/nginx/tls/secure/fullchain.pem"
KEY = "/etc/nginx/tls/secure/privkey.pem"
HSTS = "max-age=31536000"


def app_answers(host):
    status, headers, body = http(host, "/")
    return status == 200 and headers.get("content-type") == "application/json" and json.loads(body)["app"] == "demo"


def nginx_master(host):
    return host.file("/run/nginx.pid").content_string.strip()


def https(host, path, *curl_args, hostname="secure.test", ca=CERT):
    """Status, headers and body of a request over HTTPS to nginx on the host, verified against
    the site's self-signed certificate (no -k): the name, the chain and the dates must hold."""
    cmd = host.run("curl -sS -i --max-time 30 --cacert %s --resolve %s:443:127.0.0.1 %s %s" % (
        ca, hostname, " ".join(shlex.quote(a) for a in curl_args), shlex.quote("https://%s%s" % (hostname, path))))
    assert cmd.rc == 0, cmd.stderr
    head, _sep, body = cmd.stdout.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def handshake(host, *options, name="secure.test"):
    """openssl s_client's handshake with nginx on 443 (SNI name), its exit status and output."""
    return host.run("openssl s_client -connect 127.0.0.1:443 -servername %s %s < /dev/null" % (
        shlex.quote(name), " ".join(shlex.quote(o) for o in options)))


def served_serial(host, name="secure.test"):
    cmd = host.run("openssl s_client -connect 127.0.0.1:443 -servername %s < /dev/null 2>/dev/null"
                   " | openssl x509 -noout -serial" % name)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


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


def test_plain_http_of_a_tls_site_is_a_redirect_to_https_but_for_acme_challenges(host):
    status, headers, _body = http(host, "/some/page?x=1", hostname="www.secure.test")
    assert status == 301 and headers["location"] == "https://www.secure.test/some/page?x=1"
    # HTTP-01 challenges come from the webroot, over plain HTTP, never redirected.
    token = "/var/www/acme/.well-known/acme-challenge/pydeploy-test-token"
    host.run_expect([0], "echo challenge-answer > %s" % token)
    try:
        status, _headers, body = http(host, "/.well-known/acme-challenge/pydeploy-test-token", hostname="secure.test")
        assert (status, body) == (200, "challenge-answer\n")
        status, _headers, _body = http(host, "/.well-known/acme-challenge/missing", hostname="secure.test")
        assert status == 404
    finally:
        host.run("rm -f %s" % token)


def test_a_tls_site_serves_the_application_over_https_with_hsts_on_every_answer(host):
    status, headers, body = https(host, "/hello")
    assert status == 200 and headers["strict-transport-security"] == HSTS
    app = json.loads(body)
    assert app["path"] == "/hello" and app["host"] == "secure.test"
    assert app["x_forwarded_proto"] == "https"  # what Django's SECURE_PROXY_SSL_HEADER reads
    status, headers, _body = https(host, "/static/site.css")
    assert status == 200 and headers["content-type"] == "text/css" and headers["strict-transport-security"] == HSTS
    # Also on errors (add_header ... always), and in a location with add_header of its own.
    for path, code in (("/static/no-such-file.css", 404), ("/broken-upstream", 502), ("/media/no-such-file", 404)):
        status, headers, _body = https(host, path)
        assert (status, headers.get("strict-transport-security")) == (code, HSTS), path
    # The plain HTTP site has no HSTS.
    assert "strict-transport-security" not in http(host, "/")[1]


def test_tls_is_mozilla_intermediate_with_http2(host):
    cmd = host.run("curl -sS -o /dev/null -w '%%{http_version}' --http2 --cacert %s --resolve secure.test:443:127.0.0.1 "
                   "https://secure.test/" % CERT)
    assert cmd.stdout == "2", cmd.stderr
    for version in ("-tls1_2", "-tls1_3"):
        result = handshake(host, version)
        assert result.rc == 0, (version, result.stderr)
    # TLS 1.1 and 1.0, which this client would still speak (security level 0), are refused
    # by the server: its alert, no cipher agreed.
    for version in ("-tls1_1", "-tls1"):
        result = handshake(host, version, "-cipher", "DEFAULT:@SECLEVEL=0")
        assert result.rc != 0 and "alert protocol version" in result.stderr, (version, result.stderr)
        assert "Cipher is (NONE)" in result.stdout, (version, result.stdout)
    # No session tickets; the curves of the profile.
    assert "TLS session ticket" not in handshake(host, "-tls1_2").stdout
    site = host.file("/etc/nginx/sites-available/secure.conf").content_string
    assert "ssl_ecdh_curve X25519:prime256v1:secp384r1;" in site and "ssl_protocols TLSv1.2 TLSv1.3;" in site


def test_a_name_no_site_has_gets_no_certificate(host):
    result = handshake(host, name="other.test")
    assert result.rc != 0 and "BEGIN CERTIFICATE" not in result.stdout


def test_the_self_signed_certificate_names_every_server_name_and_its_key_is_root_only(host):
    sans = host.check_output("openssl x509 -in %s -noout -ext subjectAltName" % CERT)
    assert re.findall(r"DNS:([^,\s]+)", sans) == ["secure.test", "www.secure.test"]
    key, directory = host.file(KEY), host.file("/etc/nginx/tls/secure")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    assert (directory.user, directory.mode) == ("root", 0o700)
    assert host.run("sudo -u www-data cat %s" % KEY).rc != 0


def test_a_provided_certificate_is_served_with_its_chain_and_its_key_is_root_only(host):
    status, headers, body = https(host, "/", hostname="www.provided.test", ca="/root/pydeploy-test-ca.pem")
    assert status == 200 and json.loads(body)["host"] == "www.provided.test"
    assert headers["strict-transport-security"] == HSTS
    # Both certificates of the chain are sent, the site's first.
    shown = host.run("openssl s_client -connect 127.0.0.1:443 -servername provided.test -showcerts < /dev/null").stdout
    subjects = [s.replace(" = ", "=") for s in re.findall(r"^ ?\d s:\s*(.*)$", shown, re.M)]
    assert subjects[:2] == ["CN=provided.test", "CN=pydeploy test intermediate"], shown
    key = host.file("/etc/nginx/tls/provided/privkey.pem")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    with open(TLS + "/leaf.key") as f:
        assert key.content_string.strip() == f.read().strip()


# No restore: each is refused on the controller before anything changes on the host.
@pytest.mark.parametrize("change, problem", [
    (dict(tls_certificate_key=TLS + "/other.key"),
     "the key in %s/other.key does not belong to the certificate in %s/good-chain.pem" % (TLS, TLS)),
    (dict(tls_certificate=TLS + "/expired-chain.pem"), "the certificate in %s/expired-chain.pem expired" % TLS),
    (dict(tls_certificate=TLS + "/othernames-chain.pem"),
     "the certificate in %s/othernames-chain.pem does not name provided.test, www.provided.test "
     "(its names: other.test)" % TLS),
    (dict(tls_certificate=TLS + "/reversed-chain.pem"),
     "the chain in %s/reversed-chain.pem is not the certificate followed by each issuer in turn" % TLS),
    (dict(tls_certificate=TLS + "/incomplete-chain.pem"),
     "the chain in %s/incomplete-chain.pem does not lead to a root of nginx_tls_trusted_ca" % TLS),
], ids=["wrong-key", "expired", "other-names", "reversed-chain", "incomplete-chain"])
def test_a_provided_certificate_that_does_not_fit_is_refused_before_anything_changes(host, play, change, problem):
    before = (host.file("/etc/nginx/tls/provided/fullchain.pem").content_string, served_serial(host, "provided.test"))
    result = play(nginx_sites=[DEMO_SITE, SECURE_SITE, dict(PROVIDED_SITE, **change)])
    assert result.failed, result
    msg = " ".join(item.get("msg", "") for item in result.task("Fail on a provided certificate")["results"])
    assert "Site 'provided' (tls provided): " in msg and problem in msg, msg
    assert result.stats.get("changed", 0) == 0, result
    assert (host.file("/etc/nginx/tls/provided/fullchain.pem").content_string,
            served_serial(host, "provided.test")) == before
    assert "BEGIN PRIVATE KEY" not in result.output and "BEGIN EC PRIVATE KEY" not in result.output


def key_secrets(path):
    """What of a PEM private key must never reach a play's output: its first base64 line
    (which holds the private scalar; the last lines hold the public key, which the
    certificate's info shows, rightly) and the private value in hex."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    with open(path, "rb") as f:
        pem = f.read()
    first = [line for line in pem.decode().splitlines() if line and not line.startswith("-----")][0]
    return [first, "%x" % load_pem_private_key(pem, None).private_numbers().private_value]


def test_a_provided_key_never_reaches_the_output(host, play):
    """Secrets canary: the JSON callback shows every task's whole result and loop items;
    no line of the key may be in it, whether the key fits or not (the chain given as
    content this time)."""
    with open(TLS + "/good-chain.pem") as chain:
        site = dict({k: v for k, v in PROVIDED_SITE.items() if k != "tls_certificate"}, tls_certificate_content=chain.read())
    result = play(nginx_sites=[DEMO_SITE, SECURE_SITE, site])
    assert not result.failed, result
    assert result.stats["changed"] == 0, result  # the same chain as the file converge gave
    refused = play(nginx_sites=[DEMO_SITE, SECURE_SITE, dict(site, tls_certificate_key=TLS + "/other.key")])
    assert refused.failed, refused
    assert ("the key in %s/other.key does not belong to the certificate in tls_certificate_content" % TLS
            in refused.output), refused
    for output, path in ((result.output, TLS + "/leaf.key"), (refused.output, TLS + "/other.key")):
        assert not [secret for secret in key_secrets(path) if secret in output]


# No restore: the preflight refuses it before anything changes.
def test_a_tls_site_whose_name_no_certificate_can_hold_is_refused_before_anything_changes(host, play):
    before = host.file("/etc/nginx/sites-available/secure.conf").content_string
    result = play(nginx_sites=[DEMO_SITE, dict(SECURE_SITE, server_names=["secure.test", "~^secure[0-9]+$"]),
                               PROVIDED_SITE])
    assert result.failed, result
    msg = " ".join(item.get("msg", "") for item in result.task("Check each site with TLS")["results"])
    assert "Site 'secure' (tls selfsigned): every server_names entry must be a DNS name" in msg
    assert "not ~^secure[0-9]+$;" in msg
    assert host.file("/etc/nginx/sites-available/secure.conf").content_string == before


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
    result = play(nginx_sites=[DEMO_SITE, SECURE_SITE, PROVIDED_SITE, broken])
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


def test_a_certificate_near_its_expiry_is_made_anew_and_served(host, play, restore_if_failed):
    """Renewal before expiry: with a window longer than the certificate's validity, the next
    run makes it anew, and nginx, reloaded, serves the new one. (It ends as converge left
    the host: a certificate valid for a year.)"""
    before = served_serial(host)
    result = play(nginx_tls_renew_days=400)
    assert not result.failed, result
    assert result.task("Make the self-signed certificate")["changed"] is True
    on_disk = "serial=" + host.check_output("openssl x509 -in %s -noout -serial" % CERT).split("=", 1)[1]
    assert on_disk != before
    for _attempt in range(10):  # the reload is asynchronous
        if served_serial(host) == on_disk:
            break
        time.sleep(0.5)
    assert served_serial(host) == on_disk
    assert https(host, "/")[0] == 200


def test_a_rerun_tests_nothing_and_changes_nothing(play):
    result = play()
    assert not result.failed, result
    assert result.stats["changed"] == 0, result
    assert result.task("Test the whole configuration with nginx -t").get("skipped") is True
