"""The site with tls: acme (converge.yml) against pebble, Let's Encrypt's test server, on a
host of its own (pebble.yml): issuance with nginx answering throughout, other names,
a forced renewal under a probe loop, a failed issuance, and what must never reach a
play's output."""
import json
import os
import re
import shlex
import time

import pytest

from hostcheck import ProbeLoop
from test_nginx import TLS

testinfra_hosts = ["ansible://debian12", "ansible://debian13"]

PEBBLE_ROOT = "/root/pebble-root.pem"
LIVE = "/etc/letsencrypt/live/acme"
# Every play's output in this file, for the secrets canary (the last test).
OUTPUTS = []


def names(host):
    name = host.backend.get_hostname()
    return "acme.%s.test" % name, "www.acme.%s.test" % name


@pytest.fixture
def pebble_root(host):
    """pebble's root certificate (it makes a new one each time it starts), on the host."""
    with open(os.path.join(TLS, "pebble-address")) as f:
        address = f.read().strip()
    host.check_output("curl -sSf -o %s https://%s:15000/roots/0" % (PEBBLE_ROOT, address))
    return PEBBLE_ROOT


def served(host, name):
    """The certificate nginx serves for `name` on 443: serial, issuer, names."""
    cmd = host.run("openssl s_client -connect 127.0.0.1:443 -servername %s < /dev/null 2>/dev/null"
                   " | openssl x509 -noout -serial -issuer -ext subjectAltName" % shlex.quote(name))
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout


def serial(host, name):
    return re.search(r"serial=(\w+)", served(host, name)).group(1)


def wait_for_serial_change(host, name, before, seconds=15):
    for _attempt in range(seconds * 2):  # a reload is asynchronous
        if serial(host, name) != before:
            return
        time.sleep(0.5)


def verified(host, name, ca, path="/"):
    """Status of a request over HTTPS to `name` at 127.0.0.1, the certificate checked against ca."""
    return host.run("curl -sS -o /dev/null -w '%%{http_code}' --max-time 30 --cacert %s --resolve %s:443:127.0.0.1 "
                    "https://%s%s" % (ca, name, name, path)).stdout


def run(play, **extra_vars):
    result = play(**extra_vars)
    OUTPUTS.append(result.output)
    return result


def test_the_certificate_is_pebbles_for_the_sites_names_and_renewal_is_unattended(host, pebble_root):
    name, _www = names(host)
    cert = served(host, name)
    assert "Pebble Intermediate CA" in cert, cert
    assert "DNS:%s" % name in cert, cert
    assert verified(host, name, pebble_root) == "200"
    assert host.run("curl -sS -o /dev/null -w '%%{http_code} %%{redirect_url}' -H 'Host: %s' http://127.0.0.1/x"
                    % name).stdout == "301 https://%s/x" % name
    # nginx reads certbot's lineage (root's, 0700) through the site's links.
    for name in ("fullchain.pem", "privkey.pem"):
        assert host.check_output("readlink /etc/nginx/tls/acme/%s" % name) == "%s/%s" % (LIVE, name)
    assert host.file("/etc/letsencrypt/live").mode == 0o700 and host.file("/etc/letsencrypt/archive").mode == 0o700
    assert host.file("/etc/letsencrypt/renewal/acme.conf").contains("^authenticator = webroot")
    timer = host.service("certbot.timer")
    assert timer.is_enabled and timer.is_running
    hook = host.file("/etc/letsencrypt/renewal-hooks/deploy/pydeploy-nginx")
    assert hook.user == "root" and hook.mode == 0o755


def test_a_site_without_a_certificate_gets_one_with_nginx_answering_throughout(host, play, pebble_root):
    """From nothing (certbot's lineage deleted): the placeholder and plain HTTP while the
    certificate is issued, then the redirect; a plain-HTTP client sees only 200 then 301."""
    name, _www = names(host)
    host.check_output("certbot delete --non-interactive --cert-name acme")
    with ProbeLoop(host, ["/"], name) as probe:
        result = run(play)
    assert not result.failed, result
    assert result.task("Issue the certificates")["changed"] is True
    assert result.task("Link each ACME site's certificate")["changed"] is True  # placeholder, then lineage
    # 301 (the redirect it had), 200 (plain HTTP while pending), 301 (the certificate served)
    statuses = [status for status, _path in probe.results]
    assert set(statuses) == {"200", "301"}, sorted(set(statuses))
    assert statuses[-1] == "301"
    print("first issuance: %d requests over plain HTTP, %d answered 200, %d 301, none other"
          % (len(statuses), statuses.count("200"), statuses.count("301")))
    assert "Pebble Intermediate CA" in served(host, name)
    assert verified(host, name, pebble_root) == "200"


# No restore: the next test starts from these names, and restores.
def test_other_names_are_issued_with_nginx_serving_throughout(host, play, pebble_root):
    name, www = names(host)
    before = serial(host, name)
    with ProbeLoop(host, ["/"], name, cacert=pebble_root) as probe:
        result = run(play, demo_acme_names=[name, www])
        assert not result.failed, result
        wait_for_serial_change(host, name, before)
    assert result.task("Issue the certificates")["changed"] is True
    assert "DNS:%s, DNS:%s" % (name, www) in served(host, www)
    assert serial(host, www) != before
    assert len(probe.results) > 20 and probe.failures() == [], (len(probe.results), probe.failures()[:5])
    assert verified(host, www, pebble_root) == "200"
    print("issuance for other names: %d requests over HTTPS, %d failed" % (len(probe.results), len(probe.failures())))


def test_a_forced_renewal_is_served_without_a_failed_request(host, pebble_root):
    """certbot renew, as its timer runs it (forced: the certificate is not due), then
    its deploy hook reloads nginx: the new serial is served, no request failed."""
    name, _www = names(host)
    before = serial(host, name)
    with ProbeLoop(host, ["/"], name, cacert=pebble_root) as probe:
        renew = host.run("certbot renew --force-renewal --no-random-sleep-on-renew")
        assert renew.rc == 0, renew.stderr
        wait_for_serial_change(host, name, before)
    assert serial(host, name) != before
    # (the hook's reload is what serves it: nothing else reloads nginx here)
    assert host.file("/var/log/letsencrypt/letsencrypt.log").contains(
        "Running deploy-hook command: /etc/letsencrypt/renewal-hooks/deploy/pydeploy-nginx")
    assert len(probe.results) > 20 and probe.failures() == [], (len(probe.results), probe.failures()[:5])
    print("forced renewal: %d requests, %d failed" % (len(probe.results), len(probe.failures())))


def test_a_failed_issuance_says_why_and_the_site_serves_as_before(host, play, pebble_root, restore):
    """One name more, which pebble cannot reach (its DNS says 127.0.0.1): the play fails
    with certbot's reason, and the certificate of the test before is still served."""
    name, www = names(host)
    unreachable = "unreachable.%s.test" % host.backend.get_hostname()
    before = serial(host, name)
    result = run(play, demo_acme_names=[name, www, unreachable])
    assert result.failed, result
    msg = " ".join(item.get("msg", "") for item in result.task("Fail on a certificate")["results"])
    assert "Site 'acme' (tls acme): https://" in msg, msg
    assert "issued no certificate for %s, %s, %s" % (name, www, unreachable) in msg, msg
    assert unreachable in msg.split("certbot said:", 1)[1], msg
    assert serial(host, name) == before
    assert verified(host, name, pebble_root) == "200" and verified(host, www, pebble_root) == "200"


def test_a_wildcard_or_an_address_is_refused_before_anything_changes(host, play):
    result = run(play, demo_acme_names=["*.acme.test", "192.0.2.1"])
    assert result.failed, result
    msg = " ".join(item.get("msg", "") for item in result.task("Check each site with ACME certificates")["results"])
    assert "no server_names entry may be a wildcard or an IP address (*.acme.test, 192.0.2.1)" in msg, msg
    assert result.stats.get("changed", 0) == 0


def test_no_key_reaches_a_plays_output(host):
    """Secrets canary over every play of this file (the JSON callback shows each task's
    whole result): neither the ACME account's private key nor the certificate's."""
    account = json.loads(host.check_output("find /etc/letsencrypt/accounts -name private_key.json -exec cat {} +"))
    secrets = [account[k] for k in ("d", "p", "q", "dp", "dq", "qi") if k in account]
    pem = host.check_output("cat %s/privkey.pem" % LIVE)
    secrets.append([line for line in pem.splitlines() if line and not line.startswith("-----")][0])
    assert len(OUTPUTS) >= 4 and all(OUTPUTS)
    assert not [s for s in secrets for output in OUTPUTS if s in output]
