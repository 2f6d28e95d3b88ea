import sqlite3

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for

from .db import get_db

bp = Blueprint("main", __name__)

NOTE_MAX_LENGTH = 500
# The notes page shows this many notes, newest first.
NOTES_SHOWN = 100


@bp.get("/")
def home():
    # No database access here: the home page stays up when the database is not.
    return render_template("home.html", version=current_app.config["VERSION"])


@bp.route("/notes", methods=["GET", "POST"])
def notes():
    """The page that writes to and reads from the database."""
    error, text, status = None, "", 200
    if request.method == "POST":
        text = request.form.get("text", "").strip()
        if not text:
            error = "Write something first: a note cannot be empty."
        elif len(text) > NOTE_MAX_LENGTH:
            error = "A note is at most %d characters (this one has %d)." % (NOTE_MAX_LENGTH, len(text))
        else:
            conn = get_db()
            with conn:  # commits, or rolls back on an error
                note_id = conn.execute("INSERT INTO note (text) VALUES (?)", (text,)).lastrowid
            current_app.logger.info("note %s saved", note_id)
            # 303: the browser follows with a GET, and a reload does not post again.
            return redirect(url_for("main.notes"), code=303)
        status = 400

    # Rowids grow with each insert, so the highest id is the newest note.
    rows = get_db().execute(
        "SELECT id, text, created FROM note ORDER BY id DESC LIMIT ?", (NOTES_SHOWN,)
    ).fetchall()
    page = render_template(
        "notes.html",
        notes=rows,
        error=error,
        text=text,
        max_length=NOTE_MAX_LENGTH,
        version=current_app.config["VERSION"],
    )
    return page, status


@bp.get("/health")
def health():
    """200 when the database answers, 503 when it does not (500 in a release built with
    --variant unhealthy); for load balancers and the deployer's health-gated switch."""
    database, status = "ok", 200
    try:
        get_db().execute("SELECT 1").fetchone()
    except sqlite3.Error:
        current_app.logger.exception("health check: the database does not answer")
        database, status = "error", 503
    state = "ok" if status == 200 else "error"
    if current_app.config["UNHEALTHY"]:
        # A release built with `scripts/build-dist --variant unhealthy`: a drill for the
        # deployer's automatic revert. 500 Internal Server Error, what an application
        # broken by a release typically answers.
        state, status = "unhealthy", 500
    response = jsonify(
        status=state,
        version=current_app.config["VERSION"],
        database=database,
    )
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response
