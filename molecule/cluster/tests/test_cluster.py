"""The cluster as a user checks it: the example Django project on two application hosts
behind HAProxy, one PostgreSQL database, set up by site.yml (converge) and rolled by
deploy.yml. The tests run in file order on one worker and build on each other: the
cluster as converge made it (1.0.0 on both hosts), then a rolling deploy of 4.0.0 (a
data migration that adds one marker row) under requests through the balancer, then
5.0.0 refused by the second host and the same deploy again, which finishes the roll; then
the database play's output and log, checked for the password."""
import hashlib
import json
import os
import re
import shlex
import subprocess

import pytest
import testinfra

from hostcheck import ProbeLoop, http

# Every test reaches the other hosts itself: one test host, one worker, file order.
testinfra_hosts = ["ansible://lb1"]

APP = "mysite"
HOSTNAME = "mysite.test"
DB_PASSWORD = "cluster-db-Kx4vQ9mZ2wPb7Rt5"
SECRET_KEY = "cluster-secret-Ws8nR3kLq6tY1vB9xC4mJ7hG2fD5sA0eP3uZ7yX1cV9bN4m"
JAR = "/root/cluster-cookies.txt"
DIST = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "dist")
SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", "")
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")


def release_id(archive):
    with open(os.path.join(DIST, archive), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def other(name):
    return testinfra.get_host("ansible://%s" % name, ansible_inventory=INVENTORY)


def current(web):
    return os.path.basename(web.file("/srv/%s/current" % APP).linked_to)


def run_play(playbook, **extra_vars):
    """ansible-playbook on the whole inventory, with the JSON callback: (rc, output,
    parsed result)."""
    argv = ["ansible-playbook", "-i", INVENTORY, os.path.join(SCENARIO, playbook)]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200, check=False)
    output = proc.stdout + proc.stderr
    try:
        data = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        data = {"plays": [], "stats": {}}
    return proc.returncode, output, data


def task_results(data, name):
    """{host: result} of every run of the task whose name starts with `name`."""
    found = {}
    for play in data["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"].split(" : ", 1)[-1].startswith(name):
                for h, result in task["hosts"].items():
                    found.setdefault(h, []).append(result)
    return found


def changed_tasks(data):
    """{host: [names of the tasks that changed something there]}."""
    found = {}
    for play in data["plays"]:
        for task in play["tasks"]:
            for h, result in task["hosts"].items():
                if result.get("changed"):
                    found.setdefault(h, []).append(task["task"]["name"])
    return found


def haproxy_servers(lb):
    """{server: status} of the application's backend, from HAProxy's admin socket."""
    script = ("import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock'); "
              "s.sendall(b'show stat\\n'); print(b''.join(iter(lambda: s.recv(65536), b'')).decode())")
    out = lb.check_output("python3 -c %s" % shlex.quote(script))
    lines = out.lstrip("# ").splitlines()
    head = lines[0].split(",")
    rows = [dict(zip(head, line.split(","))) for line in lines[1:] if line.strip()]
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == APP and r["svname"] not in ("FRONTEND", "BACKEND")}


def csrf_token(body):
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)


def marker_rows(db):
    return int(db.check_output(
        "runuser -u postgres -- psql -d mysite -tAc %s"
        % shlex.quote("SELECT count(*) FROM guestbook_entry WHERE name = 'migration 0002_marker'")))


@pytest.fixture(scope="module")
def hosts():
    return {name: other(name) for name in ("web1", "web2", "db1")}


def test_both_hosts_serve_the_release_and_the_balancer_has_both_up(host, hosts):
    first = release_id("django-1.0.0.tar.gz")
    assert current(hosts["web1"]) == first and current(hosts["web2"]) == first
    assert haproxy_servers(host) == {"web1": "UP", "web2": "UP"}
    status, _headers, body = http(host, "/health/", hostname=HOSTNAME)
    assert status == 200 and json.loads(body)["database"] == "ok", body


def test_the_guestbook_writes_through_one_host_and_reads_through_the_other(host, hosts):
    web1, web2 = hosts["web1"], hosts["web2"]
    text = "written through web1, read through web2 %s" % os.urandom(4).hex()
    web1.run("rm -f %s" % JAR)
    status, _headers, body = http(web1, "/guestbook/", "-c", JAR, hostname=HOSTNAME)
    assert status == 200, body[-2000:]
    status, headers, body = http(
        web1, "/guestbook/", "-b", JAR, "-c", JAR, "--referer", "http://%s/guestbook/" % HOSTNAME,
        "--data-urlencode", "csrfmiddlewaretoken=%s" % csrf_token(body),
        "--data-urlencode", "name=cluster", "--data-urlencode", "message=%s" % text, hostname=HOSTNAME)
    assert status in (302, 303), body[-2000:]
    status, _headers, body = http(web2, "/guestbook/", hostname=HOSTNAME)
    assert status == 200 and text in body


def test_the_database_listens_on_its_address_and_refuses_other_addresses_and_wrong_passwords(host, hosts):
    db, web1 = hosts["db1"], hosts["web1"]
    address = db.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]
    listening = db.check_output("ss -Htln sport = :5432")
    local = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}
    assert address in local and local <= {"127.0.0.1", "[::1]", address}, listening
    # From an address pg_hba.conf does not list (the database host's own, over TCP), with
    # the right password.
    refused = db.run("PGPASSWORD=%s psql -h %s -U mysite -d mysite -tAc 'SELECT 1'" % (DB_PASSWORD, address))
    assert refused.rc != 0 and "no pg_hba.conf entry for host" in refused.stderr, refused.stderr
    # From an application host, with a wrong password: psycopg in the release's virtualenv.
    python = web1.check_output("ls -d /srv/mysite/venvs/*/bin/python | head -1")
    script = ("import psycopg, sys\n"
              "try:\n"
              "    psycopg.connect(host=sys.argv[1], dbname='mysite', user='mysite', password='wrong', connect_timeout=10)\n"
              "except psycopg.OperationalError as e:\n"
              "    print(e)\n")
    wrong = web1.run("%s -c %s %s" % (python, shlex.quote(script), address))
    assert 'password authentication failed for user "mysite"' in wrong.stdout, wrong.stdout + wrong.stderr
    # scram-sha-256 only.
    hba = db.check_output("cat /etc/postgresql/*/main/pg_hba.conf | grep -v '^#' | grep -v '^$'")
    assert "trust" not in hba and "md5" not in hba and "password" not in hba.replace("scram-sha-256", ""), hba


def test_a_rolling_deploy_keeps_every_request_and_migrates_once(host, hosts):
    new = release_id("django-4.0.0.tar.gz")
    assert marker_rows(hosts["db1"]) == 0
    with ProbeLoop(host, ["/", "/health/", "/guestbook/"], HOSTNAME) as loop:
        rc, output, data = run_play("deploy.yml", app_artifact=os.path.join(DIST, "django-4.0.0.tar.gz"))
    assert rc == 0, output[-4000:]
    assert len(loop.results) > 100, loop.results[:5]
    assert loop.failures() == [], (len(loop.failures()), len(loop.results), loop.failures()[:10])
    # Applied by one host, the first; the other found nothing left to apply.
    migrated = {h: r for h, results in task_results(data, "Apply the migrations").items() for r in results
                if not r.get("skipped")}
    assert list(migrated) == ["web1"] and migrated["web1"]["applied"] == ["guestbook.0002_marker"], migrated
    assert marker_rows(hosts["db1"]) == 1
    assert current(hosts["web1"]) == new and current(hosts["web2"]) == new
    # Each host was drained and put back, one at a time.
    drains = task_results(data, "Drain this host in each load balancer")
    assert sorted(drains) == ["web1", "web2"], drains
    assert haproxy_servers(host) == {"web1": "UP", "web2": "UP"}
    assert DB_PASSWORD not in output and SECRET_KEY not in output


def test_a_release_the_second_host_refuses_stops_the_roll_and_the_balancer_keeps_answering(host, hosts):
    before, new = release_id("django-4.0.0.tar.gz"), release_id("django-5.0.0.tar.gz")
    # web2 gets settings that make the new instance refuse the site's name (400): its probe fails.
    drill = {"web2": {"DJANGO_ALLOWED_HOSTS": "elsewhere.test"}}
    with ProbeLoop(host, ["/", "/health/"], HOSTNAME) as loop:
        rc, output, data = run_play("deploy.yml", app_artifact=os.path.join(DIST, "django-5.0.0.tar.gz"),
                                    cluster_drill_env=drill)
    assert rc != 0
    assert len(loop.results) > 100
    assert loop.failures() == [], (len(loop.failures()), len(loop.results), loop.failures()[:10])
    assert current(hosts["web1"]) == new and current(hosts["web2"]) == before
    failed = [r for results in task_results(data, "Fail with the cause").values() for r in results if r.get("failed")]
    assert len(failed) == 1, output[-4000:]
    message = failed[0]["msg"]
    assert "failed on web2 at Probe the new instance on its socket" in message, message
    assert "web1 on release %s (switched)" % new in message and "web2 on release %s (failed here)" % before in message
    assert haproxy_servers(host) == {"web1": "UP", "web2": "UP"}
    assert DB_PASSWORD not in output


def test_the_same_deploy_again_finishes_the_stopped_roll(host, hosts):
    # The host already on the release changes nothing, the other switches.
    new = release_id("django-5.0.0.tar.gz")
    with ProbeLoop(host, ["/", "/health/"], HOSTNAME) as loop:
        rc, output, data = run_play("deploy.yml", app_artifact=os.path.join(DIST, "django-5.0.0.tar.gz"))
    assert rc == 0, output[-4000:]
    assert list(changed_tasks(data)) == ["web2"], changed_tasks(data)
    assert current(hosts["web1"]) == new and current(hosts["web2"]) == new
    assert loop.failures() == [] and len(loop.results) > 50, loop.failures()[:10]
    assert haproxy_servers(host) == {"web1": "UP", "web2": "UP"}
    assert DB_PASSWORD not in output and SECRET_KEY not in output


def test_the_database_play_shows_the_password_nowhere(hosts):
    # site.yml's database play (its own playbook here, the addresses gathered first): the
    # tasks that carry the password ran, and it reached neither their output (the JSON
    # callback prints every result whole) nor the database server's log.
    rc, output, data = run_play("database.yml")
    assert rc == 0, output[-4000:]
    assert task_results(data, "Make each database's login role with its password")
    assert DB_PASSWORD not in output
    assert DB_PASSWORD not in hosts["db1"].check_output("cat /var/log/postgresql/*.log")
