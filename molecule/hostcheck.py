"""Helpers the testinfra suites share (pytest.ini puts molecule/ on sys.path)."""
import json
import shlex


def http(host, path, *curl_args, hostname="demo.test", cacert=None):
    """Status, headers (lower-case names) and body of a request to nginx on the host: over
    plain HTTP to 127.0.0.1 with the Host header, or, given the certificate to trust
    (cacert, a file on the host), over HTTPS to the site's name sent to 127.0.0.1, as a
    client that resolved it would connect (SNI and the certificate's check by that name)."""
    if cacert:
        target = ["--resolve", "%s:443:127.0.0.1" % hostname, "--cacert", cacert, "https://%s%s" % (hostname, path)]
    else:
        target = ["-H", "Host: " + hostname, "http://127.0.0.1" + path]
    cmd = host.run("curl -sS -i --max-time 30 %s" % " ".join(shlex.quote(a) for a in list(curl_args) + target))
    assert cmd.rc == 0, cmd.stderr
    head, _sep, body = cmd.stdout.partition("\r\n\r\n")
    while head.split(" ")[1:2] == ["100"]:  # an interim "100 Continue" comes first
        head, _sep, body = body.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def seen(host, path="/", *curl_args):
    """What the demo application reports about a request that reached it (JSON)."""
    status, headers, body = http(host, path, *curl_args)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def restart_supervisord(host, timeout=90):
    """What a reboot does to supervisor: supervisord starts again and reads the program
    files (the containers run systemd). Returns once supervisord answers and nothing it
    started is still STARTING."""
    host.run_expect([0], "systemctl restart supervisor")
    # supervisorctl status exits 0 or 3 once supervisord answers (4: no answer yet).
    wait = host.run(
        "for i in $(seq %d); do out=$(supervisorctl status); rc=$?; "
        "if [ $rc -le 3 ] && ! printf '%%s' \"$out\" | grep -q STARTING; then exit 0; fi; sleep 1; done; exit 1"
        % timeout)
    assert wait.rc == 0, host.run("supervisorctl status; journalctl -u supervisor -n 50 --no-pager").stdout


def as_demo(host, command):
    """Run a shell command as the application user demo."""
    return host.run("sudo -u demo -- sh -c %s" % shlex.quote(command))


class ProbeLoop:
    """Requests through nginx, each on a new connection as separate clients make them, from
    inside the host, for as long as the `with` block runs (a playbook, say), then the
    status of each: 000 for no answer. One request every `interval` seconds at most (a
    request that takes longer delays the next; none overlap), the paths in turn. The loop
    stops by itself after `limit` seconds.

    It is one Python process on the host (http.client), not a curl per request: a curl
    process costs more CPU to start than nginx and the application spend on the request,
    and a loop of them took a whole core from the deploy it watched."""

    LOG = "/tmp/probe-loop.log"
    STOP = "/tmp/probe-loop.stop"
    DONE = "/tmp/probe-loop.done"
    SCRIPT = """
import http.client, itertools, os, sys, time
import socket, ssl
paths, hostname, limit, interval = sys.argv[1].split(), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
cacert = sys.argv[5]
context = ssl.create_default_context(cafile=cacert) if cacert else None
if context:  # the served certificate itself is what is trusted (as curl does)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
start = time.monotonic()
with open(%(log)r, "w", buffering=1) as log:
    for path in itertools.cycle(paths):
        began = time.monotonic()
        if os.path.exists(%(stop)r) or began - start > limit:
            break
        try:
            if context:  # HTTPS to 127.0.0.1, naming the site (SNI, the certificate's check)
                conn = http.client.HTTPConnection(hostname, 443, timeout=10)
                raw = socket.create_connection(("127.0.0.1", 443), timeout=10)
                # As HTTPConnection.connect (skipped here) and curl do: without it, the
                # request waits on the ACK of the handshake's last record (Nagle), 40 ms.
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.sock = context.wrap_socket(raw, server_hostname=hostname)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", 80, timeout=10)
            conn.request("GET", path, headers={"Host": hostname})
            answer = conn.getresponse()
            answer.read()
            status = "%%03d" %% answer.status
            conn.close()
        except (OSError, http.client.HTTPException):
            status = "000"
        log.write("%%s %%s\\n" %% (status, path))
        time.sleep(max(0.0, began + interval - time.monotonic()))
open(%(done)r, "w").close()
"""

    def __init__(self, host, paths, hostname, limit=900, interval=0.01, cacert=""):
        """cacert: a file on the host with the certificate to trust, for requests over HTTPS
        (a new TLS handshake each) to the site's name at 127.0.0.1:443; plain HTTP without."""
        self.host, self.paths, self.hostname, self.limit, self.interval = host, paths, hostname, limit, interval
        self.cacert = cacert or ""
        self.results = []

    def __enter__(self):
        script = self.SCRIPT % {"log": self.LOG, "stop": self.STOP, "done": self.DONE}
        argv = ["python3", "-c", script, " ".join(self.paths), self.hostname, str(self.limit), str(self.interval),
                self.cacert]
        self.host.run("rm -f %s %s %s" % (self.LOG, self.STOP, self.DONE))
        self.host.run("setsid nohup %s >/dev/null 2>&1 </dev/null &" % " ".join(shlex.quote(a) for a in argv))
        return self

    def __exit__(self, *exc):
        self.host.run("touch %s; for i in $(seq 150); do [ -e %s ] && break; sleep 0.2; done" % (self.STOP, self.DONE))
        log = self.host.run("cat %s" % self.LOG).stdout
        self.results = [tuple(line.split(" ", 1)) for line in log.splitlines() if line.strip()]
        return False

    def failures(self):
        return [r for r in self.results if r[0] != "200"]
