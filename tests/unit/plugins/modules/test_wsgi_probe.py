"""pydeploy.web.wsgi_probe against a real server on a unix socket: a small uwsgi protocol
server whose packet parser is written here, independently of the module's encoder, and
which answers as uWSGI does (a status line with the request's protocol, headers, the body,
then it closes the connection)."""
import os
import shutil
import socket
import socketserver
import struct
import tempfile
import threading
import time

import pytest

from ansible_collections.pydeploy.web.plugins.modules import wsgi_probe as wp


# -- the server ------------------------------------------------------------------


class UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # a probe that gave up must not leave the server's shutdown waiting on its handler
    block_on_close = False

    def __init__(self, path, handler):
        self.requests = []
        super().__init__(path, handler)


def read_exactly(rfile, n):
    data = rfile.read(n)
    assert len(data) == n, "short read: %d of %d bytes" % (len(data), n)
    return data


def parse_uwsgi(rfile):
    """(modifier1, modifier2, {name: value bytes}, [names in order]) of one uwsgi packet."""
    header = read_exactly(rfile, 4)
    modifier1, size_lo, size_hi, modifier2 = header
    size = size_lo + 256 * size_hi
    data = read_exactly(rfile, size)
    env = {}
    names = []
    i = 0
    while i < size:
        klen = data[i] + 256 * data[i + 1]
        key = data[i + 2:i + 2 + klen].decode("latin-1")
        i += 2 + klen
        vlen = data[i] + 256 * data[i + 1]
        env[key] = data[i + 2:i + 2 + vlen]
        names.append(key)
        i += 2 + vlen
    assert i == size, "variables overrun the datasize"
    return modifier1, modifier2, env, names


class UwsgiHandler(socketserver.StreamRequestHandler):
    def answer(self, status, body, headers=(("Content-Type", "text/plain"),)):
        data = body.encode("utf-8") if isinstance(body, str) else body
        head = "%s %s\r\n" % (self.text["SERVER_PROTOCOL"], status)
        head += "".join("%s: %s\r\n" % h for h in headers)
        self.wfile.write(head.encode("latin-1") + b"\r\n" + data)

    def handle(self):
        modifier1, modifier2, env, names = parse_uwsgi(self.rfile)
        self.server.requests.append((modifier1, modifier2, env, names))
        self.text = text = {k: v.decode("latin-1") for k, v in env.items()}
        path = text["PATH_INFO"]
        if path == "/ok":
            self.answer("200 OK", "fine")
        elif path == "/echo":
            self.answer("200 OK", "host=%s name=%s query=%s scheme=%s https=%s port=%s" % (
                text.get("HTTP_HOST"), text.get("SERVER_NAME"), text.get("QUERY_STRING"),
                text.get("UWSGI_SCHEME"), text.get("HTTPS", "-"), text.get("SERVER_PORT")))
        elif path == "/cookies":
            self.answer("200 OK", "two", headers=(("Content-Type", "text/plain"), ("Set-Cookie", "a=1"),
                                                  ("Set-Cookie", "b=2"), ("Content-Length", "3")))
        elif path == "/fail":
            self.answer("500 Internal Server Error", "boom\n" + "x" * 1000)
        elif path == "/maintenance":
            self.answer("503 Service Unavailable", "down for maintenance")
        elif path == "/big":
            self.answer("200 OK", "0123456789" * 1000)
        elif path == "/utf8":
            self.answer("200 OK", "caf\u00e9 \u2713")
        elif path == "/garbage":
            self.wfile.write(b"this is not HTTP\r\n\r\n")
        elif path == "/hangup":
            pass  # closes without a byte of answer
        elif path == "/dribble":
            # a status line, then a header byte every 50 ms, never the end of the headers
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self.wfile.flush()
            try:
                for _attempt in range(100):
                    time.sleep(0.05)
                    self.wfile.write(b"a")
                    self.wfile.flush()
            except OSError:
                pass
        else:
            self.answer("404 Not Found", "nothing at %s" % path)


@pytest.fixture
def workdir():
    # short, so that socket paths fit in sockaddr_un whatever pytest's tmp_path is
    path = tempfile.mkdtemp(prefix="wp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(workdir):
    """serve(handler, name, after=0) -> (server or None, socket path); after > 0 starts
    the server that many seconds later."""
    servers = []
    timers = []

    def start(path, handler):
        server = UnixServer(path, handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
        return server

    def run(handler=UwsgiHandler, name="uwsgi.sock", after=0):
        path = os.path.join(workdir, name)
        if after:
            timer = threading.Timer(after, start, args=(path, handler))
            timers.append(timer)
            timer.start()
            return None, path
        return start(path, handler), path

    yield run
    for timer in timers:
        timer.cancel()
        timer.join()
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def uwsgi_app(serve):
    return serve()


def quick(**kw):
    args = dict(timeout=1.0, wait=0.6, delay=0.1)
    args.update(kw)
    return args


# -- uwsgi packets -----------------------------------------------------------------


def test_packet_header_and_variable_lengths():
    packet = wp.build_uwsgi_packet([("PATH_INFO", "/ok"), ("HTTP_HOST", b"a.example")])
    body = b"\x09\x00PATH_INFO\x03\x00/ok" + b"\x09\x00HTTP_HOST\x09\x00a.example"
    assert packet == b"\x00" + struct.pack("<H", len(body)) + b"\x00" + body
    assert packet[:4] == bytes([0, len(body), 0, 0])


def test_packet_datasize_is_little_endian_above_255_bytes():
    packet = wp.build_uwsgi_packet({"K": "v" * 300})
    assert packet[1:3] == struct.pack("<H", 2 + 1 + 2 + 300) == b"\x31\x01"
    assert packet[4:7] == b"\x01\x00K" and packet[7:9] == struct.pack("<H", 300)


def test_packet_over_64k_is_refused():
    with pytest.raises(ValueError, match="at most 65535"):
        wp.build_uwsgi_packet({"HTTP_X_BIG": "x" * 65000, "HTTP_Y_BIG": "y" * 1000})


def test_uwsgi_vars_are_what_nginx_sends():
    env = dict(wp.uwsgi_vars("/caf%C3%A9/?a=b&c=%20", "site.example:8080", {"X-Token": "t"}, "https"))
    assert env["REQUEST_METHOD"] == "GET"
    assert env["REQUEST_URI"] == "/caf%C3%A9/?a=b&c=%20"
    assert env["PATH_INFO"] == "/caf\u00e9/".encode("utf-8")
    assert env["QUERY_STRING"] == "a=b&c=%20"
    assert (env["SERVER_NAME"], env["SERVER_PORT"], env["HTTP_HOST"]) == ("site.example", "8080", "site.example:8080")
    assert (env["UWSGI_SCHEME"], env["REQUEST_SCHEME"], env["HTTPS"]) == ("https", "https", "on")
    assert env["HTTP_X_FORWARDED_PROTO"] == "https"
    assert env["HTTP_X_TOKEN"] == "t" and env["HTTP_USER_AGENT"] == "pydeploy-wsgi-probe"
    assert "HTTP_CONNECTION" not in env
    plain = dict(wp.uwsgi_vars("/", "site.example", {}, "http"))
    assert (plain["SERVER_PORT"], plain["UWSGI_SCHEME"], plain["QUERY_STRING"]) == ("80", "http", "")
    assert "HTTPS" not in plain


def test_extra_headers_replace_the_probes_own_whatever_their_case():
    env = wp.uwsgi_vars("/", "site.example", {"user-agent": "mine", "x-forwarded-proto": "wss"}, "http")
    names = [name for name, _value in env]
    assert names.count("HTTP_USER_AGENT") == 1 and names.count("HTTP_X_FORWARDED_PROTO") == 1
    assert (dict(env)["HTTP_USER_AGENT"], dict(env)["HTTP_X_FORWARDED_PROTO"]) == ("mine", "wss")


@pytest.mark.parametrize("host, expected", [
    ("site.example", ("site.example", None)),
    ("site.example:8443", ("site.example", "8443")),
    ("[::1]:8000", ("[::1]", "8000")),
    ("[::1]", ("[::1]", None)),
])
def test_split_host(host, expected):
    assert wp.split_host(host) == expected


# -- one attempt -------------------------------------------------------------------


def test_round_trip_with_host_and_query_string(uwsgi_app):
    server, path = uwsgi_app
    status, reason, headers, body = wp.probe_once(path, path="/echo?a=1&b=two", host="mysite.example.com")
    assert (status, reason) == (200, "OK")
    assert headers == {"content-type": "text/plain"}
    assert body == "host=mysite.example.com name=mysite.example.com query=a=1&b=two scheme=http https=- port=80"
    modifier1, modifier2, env, names = server.requests[-1]
    assert (modifier1, modifier2) == (0, 0)
    assert env["REQUEST_URI"] == b"/echo?a=1&b=two" and env["REQUEST_METHOD"] == b"GET"
    assert env["CONTENT_LENGTH"] == b"0" and env["SERVER_PROTOCOL"] == b"HTTP/1.1"
    assert env["HTTP_USER_AGENT"] == b"pydeploy-wsgi-probe" and env["HTTP_X_FORWARDED_PROTO"] == b"http"
    assert len(names) == len(set(names))  # each variable once


def test_https_scheme(uwsgi_app):
    _server, path = uwsgi_app
    body = wp.probe_once(path, path="/echo", host="s.example:8443", scheme="https")[3]
    assert body == "host=s.example:8443 name=s.example query= scheme=https https=on port=8443"
    body = wp.probe_once(path, path="/echo", host="s.example", scheme="https")[3]
    assert body.endswith("scheme=https https=on port=443")


def test_extra_headers_reach_the_app_as_variables(uwsgi_app):
    server, path = uwsgi_app
    wp.probe_once(path, path="/ok", headers={"X-Token": "s3", "Accept": "application/json"})
    env = server.requests[-1][2]
    assert env["HTTP_X_TOKEN"] == b"s3" and env["HTTP_ACCEPT"] == b"application/json"


def test_answer_headers_are_lower_cased_and_repeated_ones_joined(uwsgi_app):
    _server, path = uwsgi_app
    status, _reason, headers, body = wp.probe_once(path, path="/cookies")
    assert (status, body) == (200, "two")
    assert headers == {"content-type": "text/plain", "set-cookie": "a=1, b=2", "content-length": "3"}


def test_body_is_cut_at_body_limit_and_decoded(uwsgi_app):
    _server, path = uwsgi_app
    assert wp.probe_once(path, path="/big", body_limit=25)[3] == "0123456789" * 2 + "01234"
    assert wp.probe_once(path, path="/big", body_limit=0)[3] == ""
    assert wp.probe_once(path, path="/echo", body_limit=9)[3] == "host=loca"
    assert wp.probe_once(path, path="/utf8")[3] == "caf\u00e9 \u2713"
    # cut inside the two bytes of the e-acute: replaced, not an error
    assert wp.probe_once(path, path="/utf8", body_limit=4)[3] == "caf\ufffd"


def test_an_error_status_is_an_answer(uwsgi_app):
    _server, path = uwsgi_app
    status, reason, _headers, body = wp.probe_once(path, path="/fail")
    assert (status, reason) == (500, "Internal Server Error") and body.startswith("boom\n")


def test_an_answer_that_is_not_http_is_an_http_exception(uwsgi_app):
    _server, path = uwsgi_app
    with pytest.raises(wp.http.client.HTTPException):
        wp.probe_once(path, path="/garbage")


def test_timeout_bounds_the_whole_attempt_not_each_read(uwsgi_app):
    _server, path = uwsgi_app
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        wp.probe_once(path, path="/dribble", timeout=0.3)
    assert time.monotonic() - started < 0.6


def test_the_module_has_no_http_client_of_its_own():
    # HTTP on a socket is ansible.builtin.uri's (unix_socket): only the uwsgi protocol here.
    assert not hasattr(wp, "_UnixHTTPConnection")
    assert "protocol" not in wp.probe_once.__code__.co_varnames
    assert "protocol" not in wp.probe.__code__.co_varnames


# -- waiting -----------------------------------------------------------------------


def test_status_mismatch_is_retried_then_fails_with_the_answer(uwsgi_app):
    _server, path = uwsgi_app
    result, msg = wp.probe(path, path="/fail", **quick(wait=0.3, delay=0.1))
    assert result["status"] == 500 and result["reason"] == "Internal Server Error"
    assert result["attempts"] >= 2
    assert result["body"].startswith("boom\nxxx")
    assert msg.startswith("GET /fail on unix socket %s (uwsgi) did not answer 200 within 0.3 s (%d attempts): "
                          "last answer HTTP 500 Internal Server Error: boom\nxxx" % (path, result["attempts"]))
    # the body is quoted, but no more than 300 characters of it
    assert msg.endswith("boom\n" + "x" * 295)
    assert "protocol" not in result


def test_status_code_list_accepts_503(uwsgi_app):
    _server, path = uwsgi_app
    result, msg = wp.probe(path, path="/maintenance", status_code=[200, 503], **quick())
    assert msg is None
    assert (result["status"], result["body"], result["attempts"]) == (503, "down for maintenance", 1)
    result, msg = wp.probe(path, path="/maintenance", status_code=[200, 204], **quick(wait=0))
    assert "did not answer 200 or 204 within 0 s (1 attempt): last answer HTTP 503" in msg


def test_a_socket_that_appears_later_is_waited_for(serve):
    _server, path = serve(after=0.5)
    started = time.monotonic()
    result, msg = wp.probe(path, path="/ok", **quick(wait=1.5, delay=0.1))
    assert msg is None, msg
    assert result["status"] == 200 and result["body"] == "fine"
    assert result["attempts"] > 1
    assert 0.45 <= result["elapsed"] <= time.monotonic() - started + 0.001


def test_answer_wait_fails_an_answering_server_before_wait_runs_out(uwsgi_app):
    _server, path = uwsgi_app
    started = time.monotonic()
    result, msg = wp.probe(path, path="/fail", answer_wait=0.3, **quick(wait=30, delay=0.1))
    assert time.monotonic() - started < 2  # not the 30 s of wait
    assert result["status"] == 500 and result["attempts"] >= 2
    assert 0.2 <= result["elapsed"] < 2
    assert msg.startswith("GET /fail on unix socket %s (uwsgi) did not answer 200 within 0.3 s of its first answer "
                          "(%d attempts): last answer HTTP 500 Internal Server Error: boom" % (path, result["attempts"]))


def test_answer_wait_leaves_a_server_that_is_not_up_yet_the_whole_of_wait(serve):
    # No answer for 0.5 s (the socket appears late), then healthy: answer_wait does not
    # count the time before the first answer.
    _server, path = serve(after=0.5)
    result, msg = wp.probe(path, path="/ok", answer_wait=0.1, **quick(wait=2, delay=0.1))
    assert msg is None, msg
    assert result["status"] == 200 and result["attempts"] > 1


def test_answer_wait_lets_a_warming_server_become_healthy(serve):
    # 503 for the first answers, then 200: within answer_wait, the probe waits for it.
    answers = iter([503, 503, 503])

    class Warming(UwsgiHandler):
        def handle(self):
            _m1, _m2, env, _names = parse_uwsgi(self.rfile)
            self.text = {k: v.decode("latin-1") for k, v in env.items()}
            if next(answers, 200) == 503:
                self.answer("503 Service Unavailable", "warming")
            else:
                self.answer("200 OK", "fine")

    _server, path = serve(Warming)
    result, msg = wp.probe(path, path="/ok", answer_wait=2, **quick(wait=2, delay=0.05))
    assert msg is None, msg
    assert (result["status"], result["body"], result["attempts"]) == (200, "fine", 4)


def test_a_missing_socket_fails_saying_it_does_not_exist(workdir):
    path = os.path.join(workdir, "nothing.sock")
    result, msg = wp.probe(path, path="/health/", **quick(wait=0.2, delay=0.05))
    assert msg == ("GET /health/ on unix socket %s (uwsgi) did not answer 200 within 0.2 s (%d attempts): "
                   "last error: socket does not exist" % (path, result["attempts"]))
    assert result["attempts"] >= 2
    assert (result["status"], result["reason"], result["body"], result["headers"]) == (0, "", "", {})


def test_a_refused_connection_names_the_error(workdir):
    path = os.path.join(workdir, "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: what a dead server leaves behind
    try:
        result, msg = wp.probe(path, **quick(wait=0))
    finally:
        stale.close()
    assert result["attempts"] == 1
    assert msg.endswith("(1 attempt): last error: [Errno 111] Connection refused")


def test_a_file_that_is_not_a_socket_is_named(workdir):
    path = os.path.join(workdir, "plain")
    open(path, "w").close()
    _result, msg = wp.probe(path, **quick(wait=0))
    assert msg.endswith("Connection refused (%s is not a socket)" % path)


def test_a_server_that_hangs_up_without_an_answer_is_named(uwsgi_app):
    _server, path = uwsgi_app
    result, msg = wp.probe(path, path="/hangup", **quick(wait=0))
    assert result["status"] == 0
    assert msg.endswith("(1 attempt): last error: the server closed the connection without an answer")


def test_an_error_after_an_answer_reports_both(serve):
    server, path = serve()
    calls = []

    def sleep(seconds):
        calls.append(seconds)
        server.shutdown()
        server.server_close()
        os.unlink(path)
        time.sleep(seconds)

    result, msg = wp.probe(path, path="/fail", sleep=sleep, **quick(wait=0.15, delay=0.1))
    assert calls == [0.1]
    assert result["status"] == 500 and result["attempts"] == 2
    assert msg.endswith("(2 attempts): last error: socket does not exist; "
                        "the last answer before that was HTTP 500 Internal Server Error: boom\n" + "x" * 295)


# -- the module ----------------------------------------------------------------------


def test_module_success(run_module, uwsgi_app):
    server, path = uwsgi_app
    result, failed = run_module(wp.main, dict(socket=path, path="/echo", host="mysite.example.com"))
    assert not failed, result.get("msg")
    assert result["changed"] is False
    assert (result["status"], result["reason"]) == (200, "OK")
    assert result["body"] == "host=mysite.example.com name=mysite.example.com query= scheme=http https=- port=80"
    assert result["headers"] == {"content-type": "text/plain"}
    assert (result["socket"], result["path"], result["attempts"]) == (path, "/echo", 1)
    assert "protocol" not in result
    assert isinstance(result["elapsed"], float) and result["elapsed"] == round(result["elapsed"], 3)
    assert len(server.requests) == 1


def test_module_probes_in_check_mode_too(run_module, uwsgi_app):
    server, path = uwsgi_app
    result, failed = run_module(wp.main, dict(socket=path, path="/ok"), check_mode=True)
    assert not failed and result["changed"] is False
    assert (result["status"], result["body"]) == (200, "fine")
    assert len(server.requests) == 1


def test_module_failure_carries_the_result(run_module, uwsgi_app):
    _server, path = uwsgi_app
    result, failed = run_module(wp.main, dict(socket=path, path="/fail", wait=0.2, delay=0.1))
    assert failed and result["changed"] is False
    assert result["msg"].startswith("GET /fail on unix socket %s (uwsgi) did not answer 200 within 0.2 s" % path)
    assert "last answer HTTP 500 Internal Server Error: boom\nxxx" in result["msg"]
    assert (result["status"], result["reason"]) == (500, "Internal Server Error")
    assert result["body"].startswith("boom\nxxx")
    assert result["attempts"] >= 2


def test_module_garbage_answer_is_not_yet(run_module, uwsgi_app):
    _server, path = uwsgi_app
    result, failed = run_module(wp.main, dict(socket=path, path="/garbage", wait=0))
    assert failed and result["status"] == 0
    assert "last error: the answer is not HTTP (BadStatusLine" in result["msg"]


def test_module_refuses_the_protocol_option_it_no_longer_has(run_module, uwsgi_app):
    server, path = uwsgi_app
    for protocol in ("http", "uwsgi"):
        result, failed = run_module(wp.main, dict(socket=path, protocol=protocol))
        assert failed
        assert "Unsupported parameters" in result["msg"] and "protocol" in result["msg"]
    assert server.requests == []


@pytest.mark.parametrize("args, words", [
    (dict(path="health"), "path must start with /"),
    (dict(path="/a b"), "path must start with /"),
    (dict(path="/caf\u00e9"), "percent-encode"),
    (dict(host="my site"), "host must be"),
    (dict(headers={"Bad Name": "x"}), "'Bad Name' is not a valid HTTP header name"),
    (dict(headers={"X-A": "1\r\nX-B: 2"}), "the value of X-A must not hold line breaks"),
    (dict(headers={"X-A": "caf\u00e9 \u2713"}), "the value of X-A must be Latin-1 text"),
    (dict(status_code=[]), "status_code must list at least one status"),
    (dict(status_code=[200, 42]), "status_code: 42 is not an HTTP status"),
    (dict(timeout=0), "timeout must be more than 0"),
    (dict(wait=-1), "wait must not be negative"),
    (dict(answer_wait=-1), "answer_wait must not be negative"),
    (dict(delay=-1), "delay must not be negative"),
    (dict(body_limit=-1), "body_limit must not be negative"),
    (dict(headers={"X-Big": "x" * 70000}), "longer than 65535 bytes"),
    (dict(headers={"X-Big": "x" * 40000, "X-Bigger": "y" * 40000}), "at most 65535"),
    (dict(socket="/run/" + "s" * 120 + ".sock"), "longer than the 107 bytes"),
])
def test_module_refuses_bad_options_before_any_attempt(run_module, uwsgi_app, args, words):
    server, path = uwsgi_app
    result, failed = run_module(wp.main, dict(dict(socket=path), **args))
    assert failed
    assert words in result["msg"]
    assert result["attempts"] == 0 and result["changed"] is False
    assert server.requests == []
