"""A tiny WSGI application for the serving-stack scenarios.

Every path answers with what the application saw, as JSON: who runs it, where from,
which interpreter, and the headers the web server passed. /slow?seconds=N answers after
N seconds (to test graceful stops). Served as `hello:application`, or made by the
factory `hello:create_app()` (gunicorn may give it literal arguments: the entry point's
name and a greeting that replaces DEMO_GREETING).
"""
import json
import os
import sys
import time
from urllib.parse import parse_qs


def _make(entry, greeting=None):
    def app(environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body_bytes = len(environ["wsgi.input"].read(length)) if length else 0
        path = environ.get("PATH_INFO", "")
        if path == "/slow":
            seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["1"])[0])
            time.sleep(seconds)
        seen = {
            "app": "demo",
            "entry": entry,
            "path": path,
            "pid": os.getpid(),
            "uid": os.getuid(),
            "cwd": os.getcwd(),
            "prefix": sys.prefix,
            "greeting": os.environ.get("DEMO_GREETING", "") if greeting is None else greeting,
            "host": environ.get("HTTP_HOST"),
            "remote_addr": environ.get("REMOTE_ADDR"),
            "x_forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
            "x_forwarded_proto": environ.get("HTTP_X_FORWARDED_PROTO"),
            "x_real_ip": environ.get("HTTP_X_REAL_IP"),
            "scheme": environ.get("wsgi.url_scheme"),
            "body_bytes": body_bytes,
        }
        body = (json.dumps(seen, sort_keys=True) + "\n").encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


application = _make("application")


def create_app(entry="create_app", greeting=None):
    """The factory; gunicorn may pass it literal arguments (hello:create_app('x', greeting='y'))."""
    return _make(entry, greeting)
