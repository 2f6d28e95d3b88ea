"""Tests of the notes app through the application factory, each with its own data
directory: python -m pytest (pip install -r requirements-test.txt)."""
import sqlite3

import pytest

from hello import create_app, read_version


@pytest.fixture
def app(tmp_path):
    return create_app({"TESTING": True, "DATA_DIR": str(tmp_path), "VERSION": "9.8.7-test"})


@pytest.fixture
def client(app):
    return app.test_client()


def test_home_shows_the_version(client):
    response = client.get("/")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "pydeploy demo: Flask" in body
    assert "Version 9.8.7-test" in body
    assert "/static/style.css" in body
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_post_note_then_get_shows_it(client, tmp_path):
    response = client.post("/notes", data={"text": "Hello from the tests"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/notes"

    response = client.get("/notes")
    assert response.status_code == 200
    assert "Hello from the tests" in response.get_data(as_text=True)
    # The note is in the data directory's database.
    with sqlite3.connect(tmp_path / "notes.sqlite3") as conn:
        assert conn.execute("SELECT text FROM note").fetchall() == [("Hello from the tests",)]


def test_notes_are_listed_newest_first(client):
    client.post("/notes", data={"text": "older note"})
    client.post("/notes", data={"text": "newer note"})
    body = client.get("/notes").get_data(as_text=True)
    assert body.index("newer note") < body.index("older note")


def test_notes_are_escaped(client):
    client.post("/notes", data={"text": "<script>alert(1)</script>"})
    body = client.get("/notes").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;" in body


@pytest.mark.parametrize("text", ["", "   \n ", "x" * 501])
def test_invalid_note_gives_400(client, tmp_path, text):
    response = client.post("/notes", data={"text": text})
    assert response.status_code == 400
    with sqlite3.connect(tmp_path / "notes.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM note").fetchone() == (0,)


def test_note_of_500_characters_is_accepted(client):
    assert client.post("/notes", data={"text": "y" * 500}).status_code == 303


def test_health_is_ok(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "version": "9.8.7-test", "database": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_health_reports_a_database_error(tmp_path):
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "missing")})
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["database"] == "error"


def test_health_fails_in_an_unhealthy_release(tmp_path):
    # A release built with scripts/build-dist --variant unhealthy.
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path), "VERSION": "9.8.7-test", "UNHEALTHY": True})
    response = app.test_client().get("/health")
    assert response.status_code == 500
    assert response.get_json() == {"status": "unhealthy", "version": "9.8.7-test", "database": "ok"}


def test_configuration_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASK_SECRET_KEY", "k" * 50)
    monkeypatch.setenv("APP_DATA_DIR", str(tmp_path))
    app = create_app()
    assert app.config["SECRET_KEY"] == "k" * 50
    assert app.config["DATABASE"] == str(tmp_path / "notes.sqlite3")
    assert app.test_client().get("/health").status_code == 200


def test_secret_key_is_required(monkeypatch):
    monkeypatch.delenv("FLASK_SECRET_KEY", raising=False)
    with pytest.raises(RuntimeError, match="FLASK_SECRET_KEY"):
        create_app()


def test_read_version(tmp_path):
    (tmp_path / "VERSION").write_text("2.3.4\n")
    assert read_version(tmp_path / "VERSION") == "2.3.4"
    assert read_version(tmp_path / "missing") == "dev"
