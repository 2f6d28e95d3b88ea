"""pydeploy demo: Flask. A small notes app built by an application factory; the app
servers load ``hello:create_app()``.

Configuration comes from the environment (the deployer writes ``shared/.env`` and the
app server puts it in the process environment):

- ``FLASK_SECRET_KEY``: required (unless testing).
- ``APP_DATA_DIR``: directory of the SQLite database ``notes.sqlite3`` (default
  ``<release>/data``, the deployer's link to the shared data directory).
- ``APP_LOG_LEVEL``: level of the log written to stderr (default INFO).

Nothing here reads the environment at import time: only create_app() does.
"""
import logging
import os
import sys
from pathlib import Path

from flask import Flask

from . import db, views

# The release root: VERSION and the ``data`` link to shared/data live here.
BASE_DIR = Path(__file__).resolve().parent.parent

# Largest request body accepted; a note is at most 500 characters.
MAX_CONTENT_LENGTH = 64 * 1024


def read_version(path):
    """The release version: the VERSION file written by scripts/build-dist."""
    try:
        return path.read_text(encoding="utf-8").strip() or "dev"
    except FileNotFoundError:
        return "dev"


def configure_logging(level):
    """Send log records to stderr, which the app server and supervisor collect.

    Called before the Flask object exists: Flask then sees a handler on the root logger
    and does not add its own, so nothing is logged twice. When someone else (a test
    runner, say) already configured the root logger, it is left alone.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level)
    logging.getLogger(__name__).setLevel(level)


def create_app(test_config=None):
    """Build the application. test_config, a mapping, overrides the configuration read
    from the environment (the tests pass TESTING, DATA_DIR and so on)."""
    level = os.environ.get("APP_LOG_LEVEL", "").strip().upper() or "INFO"
    if not isinstance(logging.getLevelName(level), int):
        raise RuntimeError("APP_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not %r" % level)
    configure_logging(level)

    app = Flask(__name__)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("FLASK_SECRET_KEY", ""),
        DATA_DIR=os.environ.get("APP_DATA_DIR") or str(BASE_DIR / "data"),
        VERSION=read_version(BASE_DIR / "VERSION"),
        # A release holding an UNHEALTHY file (scripts/build-dist --variant unhealthy)
        # fails its health check on purpose: /health answers 500.
        UNHEALTHY=(BASE_DIR / "UNHEALTHY").exists(),
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    if test_config is not None:
        app.config.from_mapping(test_config)

    if not app.config["SECRET_KEY"]:
        if not app.testing:
            raise RuntimeError(
                "FLASK_SECRET_KEY is not set: set it in the environment to a long random "
                "string, e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
            )
        app.config["SECRET_KEY"] = "testing-only-secret-key"
    # The database lives in the data directory unless the configuration names it.
    app.config.setdefault("DATABASE", os.path.join(app.config["DATA_DIR"], "notes.sqlite3"))

    db.init_app(app)
    app.register_blueprint(views.bp)

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    app.logger.info("pydeploy demo: Flask %s, database %s", app.config["VERSION"], app.config["DATABASE"])
    return app
