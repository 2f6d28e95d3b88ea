#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pydeploy.web contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: wsgi_probe
short_description: Ask uWSGI for a path over the uwsgi protocol on its unix socket until it answers as expected
version_added: 0.1.0
description:
  - Sends one C(GET) request for O(path) straight to the unix socket of an application
    server that speaks the binary uwsgi protocol (uWSGI's C(socket) option, what nginx's
    C(uwsgi_pass) talks to), as nginx would, and waits until it answers with one of
    O(status_code). The deploy flow (role pydeploy.web.app) uses it as a health check of
    a freshly started uWSGI instance before nginx sends it any traffic.
  - The request is a uwsgi protocol packet with the variables nginx's C(uwsgi_params)
    sets; the answer is the HTTP response uWSGI writes back.
  - For an application server that speaks HTTP on its socket (gunicorn, uWSGI's
    C(http-socket)), use M(ansible.builtin.uri) with its C(unix_socket) option instead
    (see the examples); this module does not speak HTTP on the socket.
  - The method is always C(GET) and no request body is sent.
  - A missing socket file, a refused, reset or timed out connection, an answer that is not
    HTTP and an answer with a status not in O(status_code) all mean "not yet"; the request
    is sent again after O(delay) seconds, until an expected status comes back, or O(wait)
    seconds have passed since the first attempt, or O(answer_wait) seconds since the first
    answer. Then the task fails, naming the last answer or error.
  - Uses the Python standard library only.
author:
  - pydeploy.web contributors (@pydeploy)
options:
  socket:
    description:
      - Path on the managed host of the unix socket the application server listens on, for
        example C(/run/mysite/uwsgi.sock).
    type: path
    required: true
  path:
    description:
      - Path asked for, starting with C(/), with an optional query string, for example
        C(/health/) or C(/status?full=1).
      - Printable ASCII only, without spaces; percent-encode anything else.
      - C(PATH_INFO) is the part before C(?), percent-decoded, C(QUERY_STRING) the part
        after it, and C(REQUEST_URI) the whole.
    type: str
    default: /
  host:
    description:
      - Host name sent as C(HTTP_HOST) and, without a C(:port), as C(SERVER_NAME); its
        C(:port), if any, as C(SERVER_PORT).
      - Frameworks check it, Django against C(ALLOWED_HOSTS) for example, so pass the site's
        server name.
    type: str
    default: localhost
  headers:
    description:
      - Extra request headers, name to value. They replace the module's own headers of the
        same name (C(User-Agent), C(Accept), C(X-Forwarded-Proto), ...).
      - Each one is sent as the variable C(HTTP_<NAME>), the name upper-cased with C(-)
        replaced by C(_), as nginx does.
    type: dict
    default: {}
  scheme:
    description:
      - Scheme the request claims to have come in with, as nginx would pass it on.
      - Sent as C(UWSGI_SCHEME) (which sets C(wsgi.url_scheme)), C(REQUEST_SCHEME) and the
        header C(X-Forwarded-Proto) (C(HTTP_X_FORWARDED_PROTO)); V(https) also sends
        C(HTTPS=on) and C(SERVER_PORT) 443 instead of 80.
      - Set V(https) for a site that redirects plain HTTP to HTTPS, or the probe gets the
        redirect.
    type: str
    choices: [http, https]
    default: http
  status_code:
    description: HTTP status codes that count as healthy.
    type: list
    elements: int
    default: [200]
  timeout:
    description:
      - Seconds one attempt may take, from connecting to the last byte of the answer read.
    type: float
    default: 10
  wait:
    description:
      - Seconds after the first attempt during which new attempts are made. An attempt
        started before then is allowed to finish, so the task can take up to O(wait) plus
        O(timeout) seconds.
      - V(0) makes a single attempt.
    type: float
    default: 30
  answer_wait:
    description:
      - Seconds after the first answer, whatever its status, during which new attempts are
        made. Once they have passed, an answer that is still not one of O(status_code) fails
        the task, even if O(wait) has not run out. So O(wait) is the time a server gets to
        start answering, and O(answer_wait) the time an answering server gets to become
        healthy (a health path that answers 503 while the application warms up, say).
      - A missing socket or a refused connection is not an answer. Errors after the first
        answer (the server restarting, say) do not stop its clock.
      - Unset, O(wait) alone bounds the attempts.
    type: float
  delay:
    description: Seconds between the end of one attempt and the start of the next.
    type: float
    default: 0.5
  body_limit:
    description:
      - Bytes of the response body read and returned in RV(body); the rest is not read.
    type: int
    default: 4096
extends_documentation_fragment:
  - pydeploy.web.attributes
  - pydeploy.web.attributes.platform
attributes:
  check_mode:
    support: full
    details: It only sends a C(GET) request, so it runs in check mode too and reports what the server answers.
  diff_mode:
    support: none
notes:
  - The request goes to the application server directly; nginx and its configuration are
    not involved. Check the site through nginx as well, with M(ansible.builtin.uri).
  - Connecting to a unix socket needs write permission on it. The uwsgi role makes its
    socket C(0660), owned by the application user and nginx's group, so run this task with
    C(become) (root, the application user or nginx's user); otherwise every attempt
    fails with C(Permission denied).
  - The task is never reported as changed.
seealso:
  - module: ansible.builtin.uri
    description: Ask an HTTP application server, such as gunicorn, on its unix socket (option C(unix_socket)).
  - module: ansible.builtin.wait_for
"""

EXAMPLES = r"""
- name: Wait until uWSGI answers 200 for /health/ on its socket
  pydeploy.web.wsgi_probe:
    socket: /run/mysite/uwsgi.sock
    path: /health/
    host: mysite.example.com
  become: true

- name: Ask as nginx's uwsgi_pass would for an HTTPS site; 60 s to start, 20 s to become healthy
  pydeploy.web.wsgi_probe:
    socket: /run/mysite/uwsgi.sock
    path: /health/?db=1
    host: mysite.example.com
    scheme: https
    headers:
      Accept: application/json
    wait: 60
    answer_wait: 20
    delay: 1
  become: true

- name: Accept 503 (maintenance) as an answer too and look at what came back
  pydeploy.web.wsgi_probe:
    socket: /run/mysite/uwsgi.sock
    path: /health/
    host: mysite.example.com
    status_code: [200, 503]
    wait: 10
  become: true
  register: mysite_probe

- name: Say whether the site is in maintenance
  ansible.builtin.debug:
    msg: >-
      {{ 'in maintenance: ' ~ mysite_probe.body if mysite_probe.status == 503 else 'serving' }}
      after {{ mysite_probe.attempts }} attempt(s), {{ mysite_probe.elapsed }} s

# gunicorn (or uWSGI's http-socket) speaks HTTP on its socket: ansible.builtin.uri asks it.
# The host of the URL is sent as the Host header; retries x delay bounds the wait.
- name: Wait until gunicorn answers 200 for /health/ on its socket
  ansible.builtin.uri:
    unix_socket: /run/mysite/gunicorn.sock
    url: http://mysite.example.com/health/
    follow_redirects: none
    use_proxy: false
    status_code: [200]
    timeout: 10
  become: true
  register: mysite_gunicorn_probe
  until: mysite_gunicorn_probe.status == 200
  retries: 30
  delay: 1
"""

RETURN = r"""
status:
  description: HTTP status of the last answer; V(0) when the server never answered.
  returned: always
  type: int
  sample: 200
reason:
  description: Reason phrase of the last answer; empty when the server never answered.
  returned: always
  type: str
  sample: OK
body:
  description:
    - Start of the body of the last answer, at most O(body_limit) bytes, decoded as UTF-8
      (undecodable bytes replaced by U+FFFD); empty when the server never answered.
  returned: always
  type: str
  sample: '{"status": "ok", "database": "ok"}'
headers:
  description:
    - Headers of the last answer, names lower-cased; repeated headers joined with C(, ).
      Empty when the server never answered.
  returned: always
  type: dict
  sample: {"content-type": "application/json", "content-length": "35"}
attempts:
  description: Number of requests sent (connection attempts included).
  returned: always
  type: int
  sample: 3
elapsed:
  description: Seconds from the start of the first attempt to the end of the last one, rounded to milliseconds.
  returned: always
  type: float
  sample: 1.042
socket:
  description: The socket probed, as given.
  returned: always
  type: str
  sample: /run/mysite/uwsgi.sock
path:
  description: The path asked for.
  returned: always
  type: str
  sample: /health/
"""

import errno
import http.client
import os
import re
import socket
import stat
import struct
import time
from urllib.parse import unquote_to_bytes

from ansible.module_utils.basic import AnsibleModule

USER_AGENT = "pydeploy-wsgi-probe"
UWSGI_MAX_DATASIZE = 0xFFFF
# Linux's sockaddr_un holds 108 bytes, the terminating NUL included.
UNIX_PATH_MAX = 107
BODY_IN_MESSAGE = 300

PATH_RE = re.compile(r"^/[!-~]*$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class ProbeTimeout(socket.timeout):
    """The attempt used up its time."""


class _DeadlineSocket(socket.socket):
    """A unix stream socket whose every blocking call ends by one deadline, so that a
    server that sends its answer a byte at a time cannot stretch one attempt."""

    def __init__(self, deadline, timeout):
        super().__init__(socket.AF_UNIX, socket.SOCK_STREAM)
        self._deadline = deadline
        self._timeout = timeout

    def _arm(self):
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise ProbeTimeout("no complete answer within %g s (timeout)" % self._timeout)
        self.settimeout(remaining)

    def connect(self, address):
        self._arm()
        return super().connect(address)

    def sendall(self, data, *args):
        self._arm()
        return super().sendall(data, *args)

    def recv_into(self, *args):
        self._arm()
        return super().recv_into(*args)

    def recv(self, *args):
        self._arm()
        return super().recv(*args)


# -- request building (pure) ---------------------------------------------------


def check_request(path, host, headers):
    """Return what is wrong with the request options, or None."""
    if not isinstance(path, str) or not PATH_RE.match(path):
        return ("path must start with / and hold printable ASCII characters without spaces "
                "(percent-encode the others), got %r" % (path,))
    if not host or not re.match(r"^[!-~]+$", host):
        return "host must be a host name (optionally with :port) without spaces, got %r" % (host,)
    for name, value in headers.items():
        if not HEADER_NAME_RE.match(name):
            return "headers: %r is not a valid HTTP header name" % (name,)
        text = str(value)
        if "\r" in text or "\n" in text:
            return "headers: the value of %s must not hold line breaks" % name
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            return "headers: the value of %s must be Latin-1 text (encode anything else)" % name
    return None


def split_host(host):
    """('name', 'port' or None) from a Host header value, IPv6 literals included."""
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            rest = host[end + 1:]
            return host[:end + 1], (rest[1:] if rest.startswith(":") and rest[1:].isdigit() else None)
        return host, None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, port
    return host, None


def _merge_headers(own, extra):
    """own headers, each replaced by an extra header of the same name (any case)."""
    extra = [(str(k), str(v)) for k, v in extra.items()]
    names = {k.lower() for k, _value in extra}
    return [(k, v) for k, v in own if k.lower() not in names] + extra


def request_headers(host, headers, scheme):
    """The request's headers, as a list of (name, value), before they become HTTP_* variables."""
    own = [("Host", host), ("User-Agent", USER_AGENT), ("Accept", "*/*"), ("Connection", "close"),
           ("X-Forwarded-Proto", scheme)]
    return _merge_headers(own, headers or {})


def uwsgi_vars(path, host, headers, scheme):
    """The uwsgi variables nginx's uwsgi_params would send for a GET of path, in order."""
    path_part, _sep, query = path.partition("?")
    server_name, port = split_host(host)
    https = scheme == "https"
    env = [
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", "GET"),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", "0"),
        ("REQUEST_URI", path),
        ("PATH_INFO", unquote_to_bytes(path_part)),
        ("DOCUMENT_ROOT", ""),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", scheme),
        ("UWSGI_SCHEME", scheme),
    ]
    if https:
        env.append(("HTTPS", "on"))
    env += [
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "0"),
        ("SERVER_PORT", port or ("443" if https else "80")),
        ("SERVER_NAME", server_name),
    ]
    for name, value in request_headers(host, headers, scheme):
        if name.lower() == "connection":
            continue  # a hop-by-hop header nginx does not pass on
        env.append(("HTTP_" + name.upper().replace("-", "_"), value))
    return env


def _as_bytes(value):
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def build_uwsgi_packet(variables, modifier1=0, modifier2=0):
    """A uwsgi request packet: a 4-byte header (modifier1, little-endian datasize,
    modifier2), then each variable as <u16 len><name><u16 len><value>.

    variables is a dict or a list of (name, value), str or bytes."""
    items = variables.items() if isinstance(variables, dict) else variables
    parts = []
    for name, value in items:
        name, value = _as_bytes(name), _as_bytes(value)
        for what in (name, value):
            if len(what) > 0xFFFF:
                raise ValueError("uwsgi variable %s is longer than 65535 bytes" % name[:40].decode("latin-1"))
        parts.append(struct.pack("<H", len(name)) + name + struct.pack("<H", len(value)) + value)
    data = b"".join(parts)
    if len(data) > UWSGI_MAX_DATASIZE:
        raise ValueError("the uwsgi request variables take %d bytes; the protocol allows at most %d "
                         "(shorten path or headers)" % (len(data), UWSGI_MAX_DATASIZE))
    return struct.pack("<BHB", modifier1, len(data), modifier2) + data


# -- one attempt -----------------------------------------------------------------


def _read_limited(response, limit):
    chunks = []
    size = 0
    while size < limit:
        data = response.read(limit - size)
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks)


def _answer(response, body_limit):
    headers = {}
    for name, value in response.getheaders():
        name = name.lower()
        headers[name] = "%s, %s" % (headers[name], value) if name in headers else value
    body = _read_limited(response, body_limit)
    return response.status, response.reason, headers, body.decode("utf-8", errors="replace")


def probe_once(socket_path, path="/", host="localhost", headers=None, scheme="http",
               timeout=10.0, body_limit=4096):
    """Send one GET for path, over the uwsgi protocol, to the unix socket and read the answer.

    Returns (status, reason, headers, body). Raises OSError (socket.timeout included)
    when the server cannot be reached or does not answer in time, and
    http.client.HTTPException when the answer is not HTTP."""
    deadline = time.monotonic() + timeout
    packet = build_uwsgi_packet(uwsgi_vars(path, host, headers or {}, scheme))
    sock = _DeadlineSocket(deadline, timeout)
    try:
        sock.connect(socket_path)
        sock.sendall(packet)
        # uWSGI answers with a plain HTTP response and closes the connection.
        response = http.client.HTTPResponse(sock, method="GET")
        try:
            response.begin()
            return _answer(response, body_limit)
        finally:
            response.close()
    finally:
        sock.close()


def describe_error(exc, socket_path, timeout):
    """A short text for why an attempt got no answer."""
    if isinstance(exc, FileNotFoundError):
        return "socket does not exist"
    if isinstance(exc, socket.timeout):
        return "no complete answer within %g s (timeout)" % timeout
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without an answer"
    if isinstance(exc, http.client.HTTPException):
        return "the answer is not HTTP (%s: %s)" % (type(exc).__name__, exc)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
        try:
            if not stat.S_ISSOCK(os.stat(socket_path).st_mode):
                text += " (%s is not a socket)" % socket_path
        except OSError:
            pass
    return text


# -- waiting ---------------------------------------------------------------------


def _codes(codes):
    codes = [str(c) for c in codes]
    return codes[0] if len(codes) == 1 else "%s or %s" % (", ".join(codes[:-1]), codes[-1])


def _seconds(value):
    return "%g" % value


def probe(socket_path, path="/", host="localhost", headers=None, scheme="http",
          status_code=(200,), timeout=10.0, wait=30.0, delay=0.5, body_limit=4096,
          answer_wait=None, clock=time.monotonic, sleep=time.sleep):
    """Probe until an expected status comes back or wait runs out; with answer_wait
    (seconds), also stop once the server has answered with another status for that long
    since its first answer (it is up, but unhealthy).

    Returns (result, msg): msg is None on success, else why it failed."""
    result = dict(status=0, reason="", body="", headers={}, attempts=0, elapsed=0.0,
                  socket=socket_path, path=path)
    started = clock()
    answered = None  # when the first answer came
    last_error = None
    while True:
        result["attempts"] += 1
        try:
            status, reason, answer_headers, body = probe_once(
                socket_path, path=path, host=host, headers=headers, scheme=scheme,
                timeout=timeout, body_limit=body_limit)
        except (OSError, http.client.HTTPException) as e:
            last_error = describe_error(e, socket_path, timeout)
        else:
            last_error = None
            if answered is None:
                answered = clock()
            result.update(status=status, reason=reason, headers=answer_headers, body=body)
            if status in status_code:
                result["elapsed"] = round(clock() - started, 3)
                return result, None
        now = clock()
        if now + delay - started >= wait:
            stopped_by = "within %s s" % _seconds(wait)
            break
        if answer_wait is not None and answered is not None and now + delay - answered >= answer_wait:
            stopped_by = "within %s s of its first answer" % _seconds(answer_wait)
            break
        sleep(delay)
    result["elapsed"] = round(now - started, 3)

    answer = None
    if result["status"]:
        answer = "HTTP %d %s" % (result["status"], result["reason"])
        excerpt = result["body"].strip()[:BODY_IN_MESSAGE]
        if excerpt:
            answer += ": " + excerpt
    if last_error is None:
        outcome = "last answer " + answer
    else:
        outcome = "last error: " + last_error
        if answer:
            outcome += "; the last answer before that was " + answer
    attempts = result["attempts"]
    msg = "GET %s on unix socket %s (uwsgi) did not answer %s %s (%d attempt%s): %s" % (
        path, socket_path, _codes(status_code), stopped_by, attempts,
        "" if attempts == 1 else "s", outcome)
    return result, msg


def main():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="path", required=True),
            path=dict(type="str", default="/"),
            host=dict(type="str", default="localhost"),
            headers=dict(type="dict", default={}),
            scheme=dict(type="str", default="http", choices=["http", "https"]),
            status_code=dict(type="list", elements="int", default=[200]),
            timeout=dict(type="float", default=10.0),
            wait=dict(type="float", default=30.0),
            answer_wait=dict(type="float"),
            delay=dict(type="float", default=0.5),
            body_limit=dict(type="int", default=4096),
        ),
        supports_check_mode=True,
    )
    p = module.params
    base = dict(changed=False, status=0, reason="", body="", headers={}, attempts=0, elapsed=0.0,
                socket=p["socket"], path=p["path"])

    def bad(msg):
        module.fail_json(msg=msg, **base)

    problem = check_request(p["path"], p["host"], p["headers"])
    if problem:
        bad(problem)
    if len(os.fsencode(p["socket"])) > UNIX_PATH_MAX:
        bad("socket path %s is longer than the %d bytes a unix socket address can hold"
            % (p["socket"], UNIX_PATH_MAX))
    if not p["status_code"]:
        bad("status_code must list at least one status")
    for code in p["status_code"]:
        if not 100 <= code <= 599:
            bad("status_code: %d is not an HTTP status (100-599)" % code)
    if not p["timeout"] > 0:
        bad("timeout must be more than 0 seconds, got %g" % p["timeout"])
    for name in ("wait", "answer_wait", "delay", "body_limit"):
        if p[name] is not None and p[name] < 0:
            bad("%s must not be negative, got %s" % (name, p[name]))
    try:
        build_uwsgi_packet(uwsgi_vars(p["path"], p["host"], p["headers"], p["scheme"]))
    except ValueError as e:
        bad(str(e))

    result, msg = probe(p["socket"], path=p["path"], host=p["host"],
                        headers=p["headers"], scheme=p["scheme"], status_code=p["status_code"],
                        timeout=p["timeout"], wait=p["wait"], answer_wait=p["answer_wait"], delay=p["delay"],
                        body_limit=p["body_limit"])
    result["changed"] = False
    if msg:
        module.fail_json(msg=msg, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
