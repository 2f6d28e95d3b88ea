"""bench/zero_downtime/run: the figures (percentiles, steady state and deploy windows,
failures by outcome, the table) and the load generator, against HTTP servers on
127.0.0.1. The script has no .py suffix, so it is loaded from its path; nothing here
starts a container."""
import http.server
import ssl
import os
import socket
import threading
import time

import pytest
from scriptload import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(ROOT, "bench", "zero_downtime", "run")


zd = load_script("bench/zero_downtime/run", "zero_downtime")


# -- percentile -------------------------------------------------------------------------

def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert zd.percentile(values, 50) == 50
    assert zd.percentile(values, 99) == 99
    assert zd.percentile(values, 100) == 100
    assert zd.percentile(values, 1) == 1
    # Nearest rank: ceil(p/100 * n), never an interpolation.
    assert zd.percentile([10, 20, 30, 40], 50) == 20
    assert zd.percentile([10, 20, 30, 40], 51) == 30
    assert zd.percentile([10, 20, 30, 40], 99) == 40
    assert zd.percentile([0.5, 1.5, 7.0], 99) == 7.0


def test_percentile_of_one_value_and_of_none():
    assert zd.percentile([3.0], 50) == 3.0
    assert zd.percentile([3.0], 99) == 3.0
    assert zd.percentile([], 50) is None


@pytest.mark.parametrize("p", [0, -1, 100.5])
def test_percentile_rejects_p_out_of_range(p):
    with pytest.raises(ValueError):
        zd.percentile([1, 2, 3], p)


# -- outcomes and windows ---------------------------------------------------------------

def test_only_a_2xx_status_is_a_success():
    assert not zd.is_failure(200)
    assert not zd.is_failure(204)
    for outcome in (301, 404, 499, 502, 503, "ConnectionResetError", "RemoteDisconnected", "TimeoutError"):
        assert zd.is_failure(outcome)


def test_deploys_alternate_from_the_new_release():
    assert zd.deploy_versions(4) == ["2.0.0", "1.0.0", "2.0.0", "1.0.0"]
    assert zd.deploy_versions(1) == ["2.0.0"]
    assert zd.deploy_versions(0) == []


def test_requests_are_sorted_into_windows_by_their_start():
    records = [(t, 0.01, 200) for t in (0.0, 1.0, 2.0, 2.5, 3.0, 3.5, 5.0, 6.0, 7.0, 9.0)]
    steady, per_window = zd.split_windows(records, [(2.0, 3.0), (6.0, 7.5)])
    # The ends of a window belong to it.
    assert [r[0] for r in per_window[0]] == [2.0, 2.5, 3.0]
    assert [r[0] for r in per_window[1]] == [6.0, 7.0]
    assert [r[0] for r in steady] == [0.0, 1.0, 3.5, 5.0, 9.0]


def test_windows_given_out_of_order_keep_their_order():
    records = [(1.5, 0.1, 200), (5.5, 0.1, 502)]
    steady, per_window = zd.split_windows(records, [(5.0, 6.0), (1.0, 2.0)])
    assert steady == []
    assert per_window == [[(5.5, 0.1, 502)], [(1.5, 0.1, 200)]]


def test_without_windows_every_request_is_steady_state():
    records = [(1.0, 0.1, 200), (2.0, 0.1, 200)]
    assert zd.split_windows(records, []) == (records, [])


def test_failures_are_broken_down_by_outcome_most_frequent_first():
    records = ([(0, 0.001, 502)] * 5 + [(0, 0.001, "ConnectionResetError")] * 2 + [(0, 0.1, 200)] * 9
               + [(0, 0.001, "RemoteDisconnected")] * 2 + [(0, 0.1, 503)])
    assert list(zd.failure_breakdown(records).items()) == [
        ("502", 5), ("ConnectionResetError", 2), ("RemoteDisconnected", 2), ("503", 1)]
    assert zd.failure_breakdown([(0, 0.1, 200)]) == {}


def test_summary_times_the_successful_requests():
    records = [(i, 0.010, 200) for i in range(98)] + [(98, 0.050, 200), (99, 0.001, 502)]
    s = zd.summarize(records)
    assert s["requests"] == 100 and s["failed"] == 1 and s["failures"] == {"502": 1}
    assert s["p50_ms"] == 10.0
    assert s["p99_ms"] == 50.0        # 99 successful requests: rank 99 is the slow one
    assert s["p99_ms_all"] == 10.0    # with the fast 502: rank 99 of 100
    assert zd.summarize([])["p99_ms"] is None


def test_timeline_counts_requests_and_failures_per_second():
    records = [(100.1, 0.1, 200), (100.9, 0.1, 502), (101.2, 0.1, 200), (102.5, 0.1, "TimeoutError")]
    assert zd.timeline(records, 100.0, 103.0) == [[0, 2, 1], [1, 1, 0], [2, 1, 1]]


def make_row(method="blue-green", deploys=10, fail_in=None, slow_during=False, rc=0):
    """Steady state every 0.1 s from 0 to 100 s at 10 ms; deploy i runs from 10i to 10i+5."""
    records, windows = [], []
    for i in range(1, deploys + 1):
        windows.append(dict(n=i, version=zd.deploy_versions(deploys)[i - 1], start=10.0 * i, end=10.0 * i + 5,
                            exit_status=rc if i == 1 else 0, log="/tmp/x.log"))
    for k in range(1000):
        t = k / 10.0
        during = any(w["start"] <= t <= w["end"] for w in windows)
        latency = 0.05 if (during and slow_during) else 0.01
        outcome = 502 if (fail_in is not None and windows[fail_in - 1]["start"] <= t <= windows[fail_in - 1]["end"]
                          and k % 10 == 0) else 200
        records.append((t, latency, outcome))
    return zd.summarize_row("gunicorn", method, records, windows, 0.0, 100.0)


def test_a_row_has_the_figures_of_its_windows():
    row = make_row(fail_in=3)
    assert row["deploy_count"] == 10 and row["deploys_failed"] == 0
    assert row["requests"] == 1000 and row["failed"] == 6 and row["failures"] == {"502": 6}
    assert row["steady"]["failed"] == 0
    assert row["during_deploys"]["failed"] == 6
    assert [d["failed"] for d in row["deploys"]] == [0, 0, 6, 0, 0, 0, 0, 0, 0, 0]
    assert row["deploys"][2]["failures"] == {"502": 6}
    assert row["deploys"][2]["start_s"] == 30.0 and row["deploys"][2]["seconds"] == 5.0
    assert row["deploy_seconds"] == {"min": 5.0, "median": 5.0, "max": 5.0}
    assert row["steady"]["p99_ms"] == 10.0 and row["p99_ratio"] == 1.0
    assert row["requests_per_s"] == 10.0


def test_targets_hold_with_no_failure_and_a_flat_p99():
    holds, details = zd.verdict(make_row())
    assert holds, details
    assert details[0] == "0 failed requests over 10 deploys"


def test_targets_fail_on_failed_requests_slow_deploys_too_few_or_failed_deploys():
    holds, why = zd.verdict(make_row(fail_in=2))
    assert not holds and any("6 failed requests (502: 6)" in w for w in why)
    holds, why = zd.verdict(make_row(slow_during=True))
    assert not holds and any("5.00x" in w for w in why)
    holds, why = zd.verdict(make_row(deploys=5))
    assert not holds and any("5 successful deploys" in w for w in why)
    holds, why = zd.verdict(make_row(rc=2))
    assert not holds and "1 deploys failed" in why


def test_the_table_has_one_row_per_server_and_method():
    rows = [make_row(), make_row(method="restart", fail_in=1, rc=2)]
    table = zd.format_table(rows).splitlines()
    assert table[0] == ("| server | method | deploys | requests | failed | p50 steady | p99 steady | p50 deploy "
                        "| p99 deploy | p99 ratio (deploy/steady) | deploy s (min/median/max) |")
    assert len(table) == 4
    assert table[2] == ("| gunicorn | blue-green | 10 | 1000 | 0 | 10.0 ms | 10.0 ms | 10.0 ms | 10.0 ms "
                        "| 1.00 | 5.0 / 5.0 / 5.0 |")
    assert table[3].startswith("| gunicorn | restart | 10 (1 failed) | 1000 | 6 |")
    assert all(line.count("|") == 12 for line in table)


def test_the_deploy_lines_name_each_deploy_and_its_failures():
    lines = zd.format_deploys(make_row(fail_in=3, rc=2))
    assert lines[0].startswith(
        "gunicorn / blue-green: 10 requests/s over 100 s; failed requests outside deploy windows: 0")
    assert len(lines) == 11
    assert "FAILED (rc 2)" in lines[1]
    assert lines[3].split() == ["deploy", "3", "2.0.0", "5.0", "s", "ok", "failed", "requests:", "6", "(502:", "6)"]


def test_a_row_without_requests_or_deploys_formats():
    row = zd.summarize_row("uwsgi", "restart", [], [], 0.0, 0.0)
    assert row["p99_ratio"] is None and row["deploy_seconds"] is None
    assert "| uwsgi | restart | 0 | 0 | 0 | - | - | - | - | - | - |" in zd.format_table([row])
    assert zd.verdict(row)[0] is False


# -- the load generator -----------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    status = 200

    def do_GET(self):
        body = b"hello\n"
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.hosts.append(self.headers.get("Host"))

    def log_message(self, *args):
        pass


class BadGateway(Handler):
    status = 502


class Hangup(Handler):
    def do_GET(self):
        self.close_connection = True  # read the request, answer nothing


@pytest.fixture
def serve():
    servers = []

    def start(handler):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.hosts = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run_load(port, seconds=1.0, **kw):
    load = zd.Load("127.0.0.1", port, kw.pop("connections", 4), **kw).start()
    time.sleep(seconds)
    return load, load.stop()


def test_the_load_counts_every_request(serve):
    server = serve(Handler)
    load, records = run_load(server.server_address[1])
    assert len(records) > 20
    assert load.requests() == len(records) and load.failed() == 0
    assert all(r[2] == 200 for r in records)
    assert all(r[1] >= 0 for r in records)
    assert [r[0] for r in records] == sorted(r[0] for r in records)
    assert load.started <= records[0][0] and records[-1][0] <= load.stopped
    assert not load.truncated
    assert load.closed_by_server() == 0
    assert set(server.hosts) == {"localhost"}
    summary = zd.summarize(records)
    assert summary["failed"] == 0 and summary["p99_ms"] is not None


def test_a_paced_load_sends_its_rate_on_each_connection(serve):
    server = serve(Handler)
    load, records = run_load(server.server_address[1], seconds=1.0, connections=2, rate=20)
    # 2 connections x 20/s for 1 s: about 40, never a burst to catch up.
    assert 30 <= len(records) <= 44, len(records)
    assert load.failed() == 0


def test_a_502_is_a_failed_request(serve):
    server = serve(BadGateway)
    load, records = run_load(server.server_address[1], seconds=0.5)
    assert records and load.failed() == len(records)
    assert zd.failure_breakdown(records) == {"502": len(records)}


def test_a_server_that_hangs_up_gives_failed_requests_and_new_connections(serve):
    server = serve(Hangup)
    load, records = run_load(server.server_address[1], seconds=0.5, connections=2)
    assert records and load.failed() == len(records)
    assert set(zd.failure_breakdown(records)) <= {"RemoteDisconnected", "ConnectionResetError", "BrokenPipeError"}


class CloseAfterAnswer(Handler):
    def do_GET(self):
        super().do_GET()
        self.close_connection = True  # closes without having said Connection: close


def test_a_connection_the_server_closed_while_idle_is_made_again(serve):
    # nginx closes idle keep-alive connections when it reloads: a client does not send
    # its next request on them. (A close racing with the request is still a failure,
    # hence no exact count.)
    server = serve(CloseAfterAnswer)
    load, records = run_load(server.server_address[1], seconds=0.5, connections=2)
    assert len(records) > 10
    assert load.closed_by_server() > 0
    assert load.failed() < len(records) / 2


def test_a_refused_connection_is_a_failed_request():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    load, records = run_load(port, seconds=0.2, connections=1)
    assert records and zd.failure_breakdown(records) == {"ConnectionRefusedError": len(records)}


def test_the_load_stops_by_itself_after_max_seconds(serve):
    server = serve(Handler)
    load = zd.Load("127.0.0.1", server.server_address[1], 2, max_seconds=0.3).start()
    time.sleep(0.8)
    n = load.requests()
    time.sleep(0.2)
    assert load.requests() == n  # it no longer sends
    records = load.stop()
    assert load.truncated
    assert records[-1][0] <= load.started + 0.3


def test_a_request_times_out(serve):
    class Slow(Handler):
        def do_GET(self):
            time.sleep(0.5)
            super().do_GET()
    server = serve(Slow)
    load, records = run_load(server.server_address[1], seconds=0.3, connections=1, timeout=0.1)
    assert records and set(zd.failure_breakdown(records)) == {"TimeoutError"}


# -- the load over HTTPS ----------------------------------------------------------------

def self_signed(tmp_path, name):
    """A key and a self-signed certificate (CA:FALSE, as the nginx role makes them) for name."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture
def serve_tls(serve, tmp_path):
    """An HTTPS server on 127.0.0.1 with a certificate for localhost, which it also
    requires the client to ask for (SNI), as nginx's default server does; and that
    certificate's file, which clients trust."""
    cert, key = self_signed(tmp_path, "localhost")
    names = []

    def start(handler):
        server = serve(handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)

        def sni(sock, name, ctx):
            names.append(name)
            return None if name == "localhost" else ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        context.sni_callback = sni
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.names = names
        return server

    return start, cert


def test_the_load_over_https_names_the_site_and_trusts_its_certificate(serve_tls):
    start, cert = serve_tls
    server = start(Handler)
    load, records = run_load(server.server_address[1], tls_ca=cert, connections=2)
    assert len(records) > 20 and load.failed() == 0, zd.failure_breakdown(records)
    assert set(server.names) == {"localhost"} and set(server.hosts) == {"localhost"}
    # keep-alive: a handshake per connection, not per request
    assert len(server.names) == 2


def test_the_load_over_https_fails_on_a_certificate_it_does_not_trust(serve_tls, tmp_path):
    start, _cert = serve_tls
    server = start(Handler)
    (tmp_path / "other").mkdir()
    other, _key = self_signed(tmp_path / "other", "localhost")  # the same name, another certificate
    load, records = run_load(server.server_address[1], seconds=0.3, tls_ca=other, connections=1)
    assert records and load.failed() == len(records)
    assert set(zd.failure_breakdown(records)) == {"SSLCertVerificationError"}
