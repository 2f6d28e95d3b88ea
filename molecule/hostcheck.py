"""Helpers the testinfra suites share (pytest.ini puts molecule/ on sys.path)."""
import json
import shlex


def http(host, path, *curl_args, hostname="demo.test"):
    """Status, headers (lower-case names) and body of a request to nginx on the host."""
    cmd = host.run("curl -sS -i --max-time 30 -H %s %s %s" % (
        shlex.quote("Host: " + hostname), " ".join(shlex.quote(a) for a in curl_args),
        shlex.quote("http://127.0.0.1" + path)))
    assert cmd.rc == 0, cmd.stderr
    head, _, body = cmd.stdout.partition("\r\n\r\n")
    while head.split(" ")[1:2] == ["100"]:  # an interim "100 Continue" comes first
        head, _, body = body.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def seen(host, path="/", *curl_args):
    """What the demo application reports about a request that reached it (JSON)."""
    status, headers, body = http(host, path, *curl_args)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def as_demo(host, command):
    """Run a shell command as the application user demo."""
    return host.run("sudo -u demo -- sh -c %s" % shlex.quote(command))
