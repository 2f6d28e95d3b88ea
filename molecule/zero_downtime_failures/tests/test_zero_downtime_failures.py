"""Zero downtime, as a client sees it: requests through nginx, from inside the host, one
after another for as long as a deploy runs (hostcheck.ProbeLoop), must all answer 200,
whether the release is good, bad, or the deploy is killed halfway; over HTTPS (each
request a new TLS handshake). On host drills, which
converge left on version 1.0.0, while the end-to-end story (test_e2e_django_gunicorn.py)
runs on debian12."""
import json
import os
import signal
import socket
import tempfile
import time

import pytest

from e2e import DIST, release_id
from hostcheck import ProbeLoop, http

APP = "mysite"
HOSTNAME = "mysite.test"
# The site is served over HTTPS (app_tls: selfsigned): requests and the probe loop go to
# https://mysite.test at 127.0.0.1 and trust the certificate nginx serves.
CACERT = "/etc/nginx/tls/mysite/fullchain.pem"
ROOT = "/srv/mysite"
# A stylesheet name (hashed, as ManifestStaticFilesStorage makes them) that only the
# release being replaced has: its pages ask for it during and after the switch.
OLD_ONLY_ASSET = "guestbook/site.0123456789ab.css"
DEPLOY_LOCK = "%s/.pydeploy/deploy.lock" % ROOT

# This file's host; the end-to-end story has the other one (molecule.yml).
testinfra_hosts = ["ansible://drills"]


def archive(version):
    return os.path.join(DIST, "django-%s.tar.gz" % version)


def rid(version):
    return release_id("django-%s.tar.gz" % version)


def current(host):
    return os.path.basename(host.file("%s/current" % ROOT).linked_to)


def live_program(host):
    socket = host.file("%s/current/.pydeploy-http.sock" % ROOT).linked_to  # gunicorn speaks HTTP
    return "%s-%s" % (APP, os.path.basename(socket).rsplit(".", 1)[0])


def status_of(host, program):
    return (host.run("supervisorctl status %s" % program).stdout.split() + ["", ""])[1]


def version(host):
    status, _headers, body = http(host, "/health/", hostname=HOSTNAME, cacert=CACERT)
    assert status == 200, body
    return json.loads(body)["version"]


def releases(host):
    return sorted(n for n in host.file("%s/releases" % ROOT).listdir() if not n.startswith("."))


def failed_releases(host):
    """Releases on the host whose last event in the history is "failed" (the release
    module's rule), with the reason recorded."""
    last = {}
    for line in host.file("%s/.pydeploy/history.jsonl" % ROOT).content_string.splitlines():
        event = json.loads(line)
        if event.get("event") in ("unpacked", "activated", "rolled_back", "failed") and event.get("release"):
            last[event["release"]] = event
    present = set(releases(host))
    return {r: e.get("reason", "") for r, e in last.items() if e["event"] == "failed" and r in present}


def deploy_under_probe(host, play, version, paths=("/",), **extra):
    with ProbeLoop(host, list(paths), HOSTNAME, cacert=CACERT) as loop:
        result = play("deploy.yml", app_artifact=archive(version), **extra)
    return result, loop


def other(program):
    return program[:-4] + "green" if program.endswith("-blue") else program[:-5] + "blue"


def test_a_deploy_with_new_requirements_drops_no_request(host, play):
    assert current(host) == rid("1.0.0")
    asset = host.file("%s/releases/%s/staticfiles/%s" % (ROOT, rid("1.0.0"), OLD_ONLY_ASSET))
    host.run("printf 'body { color: black; }\\n' > %s" % asset.path)
    before = live_program(host)

    result, loop = deploy_under_probe(host, play, "2.0.0", paths=("/", "/static/" + OLD_ONLY_ASSET))
    assert not result.failed, result
    assert len(loop.results) >= 20, loop.results  # the loop ran through the deploy
    assert loop.failures() == [], loop.failures()[:20]

    assert version(host) == "2.0.0"
    # The other instance serves; the one that served was stopped after it drained.
    assert live_program(host) == other(before)
    assert status_of(host, before) == "STOPPED"
    assert status_of(host, live_program(host)) == "RUNNING"
    # The new release lacks the old page's stylesheet; nginx still finds it, in the
    # release the stopped instance ran.
    assert not host.file("%s/current/staticfiles/%s" % (ROOT, OLD_ONLY_ASSET)).exists
    status, headers, _body = http(host, "/static/" + OLD_ONLY_ASSET, hostname=HOSTNAME, cacert=CACERT)
    assert status == 200 and headers["content-type"] == "text/css"
    status, _headers, _body = http(host, "/static/guestbook/site.ffffffffffff.css", hostname=HOSTNAME, cacert=CACERT)
    assert status == 404


@pytest.mark.parametrize("bad, cause", [
    ("4.0.0", "variant importfail: mysite.wsgi refuses to import"),
    ("5.0.0", "this migration fails on purpose"),
    # gunicorn: the probe on its socket is ansible.builtin.uri's (unix_socket)
    ("3.0.0", "Status code was 500 and not [200]: HTTP Error 500"),
], ids=["import-raises", "migration-fails", "health-500"])
def test_a_bad_release_never_goes_live(host, play, bad, cause):
    serving, program = current(host), live_program(host)
    master = host.check_output("supervisorctl pid %s" % program)

    result, loop = deploy_under_probe(host, play, bad, app_health_retries=3, app_health_delay=1)
    assert result.failed, result
    assert "Release %s of %s failed on" % (rid(bad), APP) in result.output
    assert cause in result.output, result
    assert "Nothing was switched: release %s is still serving." % serving in result.output
    assert "Release %s is marked failed" % rid(bad) in result.output
    assert len(loop.results) >= 10, loop.results
    assert loop.failures() == [], loop.failures()[:20]

    assert current(host) == serving
    assert host.check_output("supervisorctl pid %s" % program) == master  # untouched
    assert status_of(host, other(program)) != "RUNNING"  # the bad release does not linger
    assert cause in failed_releases(host)[rid(bad)]


def test_failed_releases_are_removed_by_the_next_deploy(host, play):
    bad = {rid(v) for v in ("3.0.0", "4.0.0", "5.0.0")}
    assert bad <= set(failed_releases(host))
    assert bad <= set(releases(host))  # unpacked, kept until a deploy succeeds

    result, loop = deploy_under_probe(host, play, "1.0.0")
    assert not result.failed, result
    assert loop.failures() == [], loop.failures()[:20]
    assert version(host) == "1.0.0"
    assert not bad & set(releases(host))
    assert failed_releases(host) == {}


def wait_for(predicate, seconds=300):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("moment", ["new-instance-running", "current-switched"])
def test_an_interrupted_deploy_leaves_current_serving_and_the_next_run_converges(host, play, moment):
    """The controller killed mid-deploy (no always: section runs in a killed process): the
    deploy lock is left behind, and the next run, on the same controller, takes it over
    because the run that holds it is gone, then converges."""
    start = current(host)
    target = "2.0.0" if start == rid("1.0.0") else "1.0.0"
    idle = other(live_program(host))

    with ProbeLoop(host, ["/"], HOSTNAME, cacert=CACERT) as loop:
        proc = play.spawn("deploy.yml", app_artifact=archive(target))
        try:
            if moment == "new-instance-running":
                reached = wait_for(lambda: status_of(host, idle) == "RUNNING")
            else:
                reached = wait_for(lambda: current(host) == rid(target))
            assert reached, "the deploy never got to %s" % moment
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # ansible-playbook and its workers, at once
            proc.wait()
        time.sleep(2)  # what was running on the host when the controller died ends
    assert loop.failures() == [], loop.failures()[:20]

    # current names a complete release, and that release is what answers.
    now = current(host)
    assert host.file("%s/releases/%s/RELEASE.json" % (ROOT, now)).exists
    assert rid(version(host)) == now
    assert lock_holder(host)["pid"] == proc.pid  # left behind

    result = play("deploy.yml", app_artifact=archive(target))
    assert not result.failed, result
    warning = took_over(result)
    assert "took over the deploy lock %s of ansible-playbook pid %d on controller %s" % (
        DEPLOY_LOCK, proc.pid, socket.gethostname()) in warning, warning
    assert "whose process is gone" in warning
    assert lock_holder(host) is None
    assert current(host) == rid(target) and rid(version(host)) == rid(target)
    assert status_of(host, other(live_program(host))) == "STOPPED"
    # Converged: the same deploy again changes nothing.
    result = play("deploy.yml", app_artifact=archive(target))
    assert not result.failed, result
    assert result.stats.get("changed", 0) == 0, result


# ------------------------------------------------------------------ the deploy lock

def lock_holder(host):
    lock = host.file(DEPLOY_LOCK)
    return json.loads(lock.content_string) if lock.exists else None


def took_over(result):
    """The lock task's result and the play's output, where its warning is."""
    return json.dumps(result.task("Take the deploy lock")) + result.output


def ran(result):
    """The names of the tasks that ran on the host (not skipped), in order."""
    return [task["task"]["name"].split(" : ", 1)[-1] for play in result.data["plays"] for task in play["tasks"]
            if result.host in task["hosts"] and not task["hosts"][result.host].get("skipped")]


def test_a_second_deploy_while_one_runs_fails_at_once_naming_it(host, play):
    target = "2.0.0" if current(host) == rid("1.0.0") else "1.0.0"
    history_before = host.file("%s/.pydeploy/history.jsonl" % ROOT).content_string
    with tempfile.TemporaryFile("w+") as log:
        first = play.spawn("deploy.yml", output=log, app_artifact=archive(target))
        stopped = False
        try:
            assert wait_for(lambda: lock_holder(host) is not None), "the first deploy never took the lock"
            os.killpg(first.pid, signal.SIGSTOP)  # ansible-playbook and its workers, holding the lock
            stopped = True
            holder = lock_holder(host)
            assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()

            started = time.monotonic()
            second = play("deploy.yml", app_artifact=archive(target))
            seconds = time.monotonic() - started
            assert lock_holder(host) == holder  # the second run left it alone
        finally:
            if stopped:
                os.killpg(first.pid, signal.SIGCONT)
        assert second.failed, second
        refused = second.task("Take the deploy lock")
        assert refused.get("failed"), refused
        assert "another deploy holds the deploy lock %s" % DEPLOY_LOCK in refused["msg"]
        assert "ansible-playbook pid %d on controller %s, started %s, run by user %s" % (
            first.pid, holder["host"], holder["started"], holder["user"]) in refused["msg"], refused["msg"]
        # At once: nothing after the variable check but the lock, nothing changed.
        names = ran(second)
        assert names[-1].startswith("Take the deploy lock"), names
        assert not any(n.startswith(("Gather facts", "Put the release")) for n in names), names
        assert second.stats.get("changed", 0) == 0, second
        assert seconds < 120, seconds

        # The first one, continued, finishes as if nothing happened, and releases the lock.
        assert first.wait(timeout=900) == 0, (log.seek(0), log.read()[-3000:])[1]
    assert current(host) == rid(target) and version(host) == target
    assert lock_holder(host) is None
    events = host.file("%s/.pydeploy/history.jsonl" % ROOT).content_string[len(history_before):]
    assert [json.loads(line)["release"] for line in events.splitlines()
            if json.loads(line)["event"] == "activated"] == [rid(target)]
