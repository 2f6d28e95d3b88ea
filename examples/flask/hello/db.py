"""SQLite through the standard library: one connection per request (held in flask.g),
closed when the application context ends."""
import sqlite3

from flask import current_app, g

SCHEMA = """
CREATE TABLE IF NOT EXISTS note (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
)
"""


def get_db():
    """The request's connection, opened on first use. The table is created if missing,
    so a new (empty) data directory needs no setup step."""
    if "db" not in g:
        # Several app server workers share the file: wait for a lock rather than fail.
        conn = sqlite3.connect(current_app.config["DATABASE"], timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(SCHEMA)
        except sqlite3.Error:
            conn.close()
            raise
        g.db = conn
    return g.db


def close_db(exc=None):
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def init_app(app):
    app.teardown_appcontext(close_db)
