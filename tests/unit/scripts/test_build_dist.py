"""scripts/build-dist: the example apps' release archives. The script has no .py suffix,
so it is loaded from its path; the command line is run as a subprocess."""
import ast
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from scriptload import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(ROOT, "scripts", "build-dist")


bd = load_script("scripts/build-dist", "build_dist")


@pytest.fixture(autouse=True)
def no_source_date_epoch(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def members(path):
    with tarfile.open(path) as tar:
        return tar.getmembers()


def read_member(path, name):
    with tarfile.open(path) as tar:
        return tar.extractfile(name).read()


def files_of(path):
    """{path below the top directory: bytes} of the archive's files, VERSION left out."""
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()
                if m.isfile() and not m.name.endswith("/VERSION")}


def copy_example(tmp_path, app):
    src = tmp_path / "src" / app
    shutil.copytree(os.path.join(ROOT, "examples", app), src,
                    ignore=shutil.ignore_patterns("__pycache__", "data", "staticfiles"))
    return src


@pytest.fixture
def flask_copy(tmp_path):
    """A copy of examples/flask with the local state a developer's checkout gathers."""
    src = tmp_path / "src" / "flask"
    shutil.copytree(os.path.join(ROOT, "examples", "flask"), src,
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    for d in ("__pycache__", "hello/__pycache__", "data", "staticfiles", "media",
              ".pytest_cache/v", "tests/__pycache__", "hello.egg-info"):
        (src / d).mkdir(parents=True, exist_ok=True)
    (src / "hello" / "__pycache__" / "views.cpython-311.pyc").write_bytes(b"\0compiled")
    (src / "hello" / "stray.pyc").write_bytes(b"\0compiled")
    (src / "data" / "notes.sqlite3").write_bytes(b"SQLite format 3\0")
    (src / "db.sqlite3").write_bytes(b"SQLite format 3\0")
    (src / "staticfiles" / "style.css").write_text("body {}\n")
    (src / ".pytest_cache" / "v" / "lastfailed").write_text("{}\n")
    (src / "tests" / "__pycache__" / "test_app.cpython-311-pytest.pyc").write_bytes(b"\0")
    (src / ".env").write_text("FLASK_SECRET_KEY=local\n")
    (src / "VERSION").write_text("0.0.1-source\n")
    return src


@pytest.mark.parametrize("app", ["django", "flask"])
def test_same_inputs_give_the_same_bytes(tmp_path, app):
    one, _sha256 = bd.build(app, "1.2.3", str(tmp_path / "one"))
    two, _sha256 = bd.build(app, "1.2.3", str(tmp_path / "two"))
    with open(one, "rb") as a, open(two, "rb") as b:
        assert a.read() == b.read()


def test_local_state_does_not_change_the_bytes(tmp_path, flask_copy):
    """Caches, databases and collected static files of a working copy leave the
    archive as it is in a clean checkout."""
    clean, _sha256 = bd.build("flask", "1.2.3", str(tmp_path / "clean"))
    dirty, _sha256 = bd.build("flask", "1.2.3", str(tmp_path / "dirty"), source_dir=str(flask_copy))
    with open(clean, "rb") as a, open(dirty, "rb") as b:
        assert a.read() == b.read()


def test_one_top_level_directory(tmp_path):
    path, _sha256 = bd.build("django", "1.2.3", str(tmp_path))
    assert os.path.basename(path) == "django-1.2.3.tar.gz"
    names = [m.name for m in members(path)]
    assert names[0] == "django-1.2.3"
    assert all(n == "django-1.2.3" or n.startswith("django-1.2.3/") for n in names)
    assert "django-1.2.3/manage.py" in names
    assert "django-1.2.3/mysite/wsgi.py" in names
    assert "django-1.2.3/guestbook/migrations/0001_initial.py" in names


def test_members_are_sorted_and_normalised(tmp_path):
    path, _sha256 = bd.build("django", "1.2.3", str(tmp_path))
    ms = members(path)
    names = [m.name for m in ms]
    assert names == sorted(names, key=lambda n: n.split("/"))
    # Every directory comes before its contents.
    seen = set()
    for m in ms:
        parent = m.name.rpartition("/")[0]
        assert not parent or parent in seen
        seen.add(m.name)
    for m in ms:
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "root", "root")
        assert m.mtime == bd.DEFAULT_MTIME
        assert m.isdir() or m.isfile()
        if m.isdir():
            assert m.mode == 0o755
    modes = {m.name: m.mode for m in ms}
    assert modes["django-1.2.3/manage.py"] == 0o755
    assert modes["django-1.2.3/mysite/settings.py"] == 0o644


def test_source_date_epoch_sets_the_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    path, _sha256 = bd.build("flask", "1.2.3", str(tmp_path))
    assert {m.mtime for m in members(path)} == {1700000000}


def test_gzip_header_has_no_time_and_no_name(tmp_path):
    path, _sha256 = bd.build("flask", "1.2.3", str(tmp_path))
    with open(path, "rb") as f:
        header = f.read(10)
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] & 0x08 == 0  # FNAME flag
    assert header[4:8] == b"\0\0\0\0"  # MTIME


def test_version_file_is_generated(tmp_path, flask_copy):
    path, _sha256 = bd.build("flask", "4.5.6", str(tmp_path), source_dir=str(flask_copy))
    assert read_member(path, "flask-4.5.6/VERSION") == b"4.5.6\n"
    # The source's VERSION (0.0.1-source) is not packed a second time.
    assert [m.name for m in members(path)].count("flask-4.5.6/VERSION") == 1


def test_exclusions(tmp_path, flask_copy):
    path, _sha256 = bd.build("flask", "1.2.3", str(tmp_path), source_dir=str(flask_copy))
    names = [m.name[len("flask-1.2.3/"):] for m in members(path) if "/" in m.name]
    for name in names:
        parts = name.split("/")
        assert "__pycache__" not in parts
        assert ".pytest_cache" not in parts
        assert not name.endswith((".pyc", ".sqlite3"))
        assert not name.endswith(".egg-info")
        assert parts[0] not in ("data", "staticfiles", "media", ".env")
    assert "hello/__init__.py" in names
    assert "hello/static/style.css" in names
    assert "tests/test_app.py" in names


def test_symlinks_are_refused(tmp_path, flask_copy):
    os.symlink("__init__.py", flask_copy / "hello" / "alias.py")
    with pytest.raises(bd.BuildError, match="symbolic link"):
        bd.build("flask", "1.2.3", str(tmp_path / "out"), source_dir=str(flask_copy))


def test_a_data_link_is_left_out(tmp_path, flask_copy):
    """A working copy laid out like a server release (data -> shared/data) packs."""
    shutil.rmtree(flask_copy / "data")
    os.symlink(str(tmp_path), flask_copy / "data")
    path, _sha256 = bd.build("flask", "1.2.3", str(tmp_path / "out"), source_dir=str(flask_copy))
    assert not any(m.name.startswith("flask-1.2.3/data") for m in members(path))


def test_sha256_file(tmp_path):
    path, digest = bd.build("flask", "1.2.3", str(tmp_path))
    with open(path, "rb") as f:
        assert digest == hashlib.sha256(f.read()).hexdigest()
    with open(path + ".sha256") as f:
        assert f.read() == "%s  flask-1.2.3.tar.gz\n" % digest
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--check", "--quiet", "flask-1.2.3.tar.gz.sha256"],
                       cwd=str(tmp_path), check=True)


def test_versions_give_different_archives(tmp_path):
    _path, one = bd.build("flask", "1.0.0", str(tmp_path))
    _path, two = bd.build("flask", "2.0.0", str(tmp_path))
    assert one != two


def test_newdeps_variant_adds_a_requirement(tmp_path):
    plain, _sha256 = bd.build("django", "1.0.0", str(tmp_path / "plain"))
    newdeps, _sha256 = bd.build("django", "2.0.0", str(tmp_path / "newdeps"), variant="newdeps")
    before = read_member(plain, "django-1.0.0/requirements.txt").decode()
    after = read_member(newdeps, "django-2.0.0/requirements.txt").decode()
    assert after.startswith(before)
    added = [line for line in after[len(before):].splitlines() if line and not line.startswith("#")]
    assert added == ["six==1.16.0"]

    def other_files(path, top):
        return {m.name[len(top):]: read_member(path, m.name) for m in members(path)
                if m.isfile() and m.name not in (top + "requirements.txt", top + "VERSION")}

    # Nothing else differs.
    assert other_files(plain, "django-1.0.0/") == other_files(newdeps, "django-2.0.0/")


def test_newdeps_variant_takes_another_extra_requirement(tmp_path):
    path, _sha256 = bd.build("flask", "2.0.1", str(tmp_path), variant="newdeps", extra_requirement="six==1.15.0")
    req = read_member(path, "flask-2.0.1/requirements.txt").decode()
    assert [l for l in req.splitlines() if l.startswith("six")] == ["six==1.15.0"]
    for bad, variant in (("six", "newdeps"), ("six==1.15.0; rm -rf /", "newdeps"), ("six==1.15.0", None)):
        with pytest.raises(bd.BuildError):
            bd.build("flask", "2.0.2", str(tmp_path), variant=variant, extra_requirement=bad)


@pytest.mark.parametrize("app", ["django", "flask"])
def test_unhealthy_variant_adds_the_marker_and_nothing_else(tmp_path, app):
    plain, _sha256 = bd.build(app, "1.0.0", str(tmp_path / "plain"))
    bad, _sha256 = bd.build(app, "1.0.0", str(tmp_path / "bad"), variant="unhealthy")
    top = "%s-1.0.0/" % app
    marker = read_member(bad, top + "UNHEALTHY")
    assert b"unhealthy" in marker and b"answers 500" in marker
    names = {m.name for m in members(bad)} - {m.name for m in members(plain)}
    assert names == {top + "UNHEALTHY"}


@pytest.mark.parametrize("app, variant", [
    ("django", "newdeps"), ("flask", "newdeps"), ("django", "unhealthy"), ("flask", "unhealthy"),
    ("django", "importfail"), ("flask", "importfail"), ("django", "migrationfail"), ("django", "marker"),
])
def test_variant_builds_are_reproducible(tmp_path, app, variant):
    one, _sha256 = bd.build(app, "2.0.0", str(tmp_path / "one"), variant=variant)
    two, _sha256 = bd.build(app, "2.0.0", str(tmp_path / "two"), variant=variant)
    plain, _sha256 = bd.build(app, "2.0.0", str(tmp_path / "plain"))
    with open(one, "rb") as a, open(two, "rb") as b, open(plain, "rb") as c:
        data = a.read()
        assert data == b.read()
        assert data != c.read()


def test_importfail_variant_django_wsgi_raises_on_import(tmp_path):
    plain, _sha256 = bd.build("django", "1.0.0", str(tmp_path / "plain"))
    bad, _sha256 = bd.build("django", "1.0.0", str(tmp_path / "bad"), variant="importfail")
    before, after = files_of(plain), files_of(bad)
    # Only the WSGI module changes: manage.py (migrate, collectstatic, check --deploy)
    # never imports it.
    assert set(before) == set(after)
    assert [rel for rel in before if before[rel] != after[rel]] == ["mysite/wsgi.py"]
    source = after["mysite/wsgi.py"].decode()
    message = "variant importfail: mysite.wsgi refuses to import (a drill for the deployer's import check)"
    assert 'raise RuntimeError("%s")' % message in source
    # A module-level raise, before the application is created.
    body = ast.parse(source).body
    raises = [i for i, node in enumerate(body) if isinstance(node, ast.Raise)]
    assigns = [i for i, node in enumerate(body) if isinstance(node, ast.Assign)
               and [t.id for t in node.targets] == ["application"]]
    assert len(raises) == 1 and len(assigns) == 1 and raises[0] < assigns[0]
    assert ast.literal_eval(body[raises[0]].exc.args[0]) == message
    # Nothing else in the app names the WSGI module but the settings, as a string.
    for rel, data in after.items():
        if rel.endswith(".py") and rel != "mysite/wsgi.py":
            assert b"import wsgi" not in data and b"mysite.wsgi import" not in data
            assert b"import mysite.wsgi" not in data


def test_importfail_variant_flask_factory_raises(tmp_path):
    plain, _sha256 = bd.build("flask", "1.0.0", str(tmp_path / "plain"))
    bad, _sha256 = bd.build("flask", "1.0.0", str(tmp_path / "bad"), variant="importfail")
    before, after = files_of(plain), files_of(bad)
    assert set(before) == set(after)
    assert [rel for rel in before if before[rel] != after[rel]] == ["hello/__init__.py"]
    tree = ast.parse(after["hello/__init__.py"].decode())
    (factory,) = [node for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name == "create_app"]
    # The docstring, then the raise: calling the factory fails before anything else.
    assert isinstance(factory.body[0], ast.Expr) and isinstance(factory.body[0].value, ast.Constant)
    raise_ = factory.body[1]
    assert isinstance(raise_, ast.Raise)
    assert raise_.exc.func.id == "RuntimeError"
    assert ast.literal_eval(raise_.exc.args[0]).startswith("variant importfail: hello.create_app() ")


def test_migrationfail_variant_adds_a_failing_migration(tmp_path):
    plain, _sha256 = bd.build("django", "1.0.0", str(tmp_path / "plain"))
    bad, _sha256 = bd.build("django", "1.0.0", str(tmp_path / "bad"), variant="migrationfail")
    before, after = files_of(plain), files_of(bad)
    added = "guestbook/migrations/0002_migrationfail.py"
    assert set(after) - set(before) == {added}
    assert {rel: after[rel] for rel in before} == before  # everything else unchanged
    # It follows the app's only other migration.
    assert sorted(rel for rel in after if rel.startswith("guestbook/migrations/")) == [
        "guestbook/migrations/0001_initial.py", added, "guestbook/migrations/__init__.py"]
    source = after[added].decode()
    tree = ast.parse(source)
    (migration,) = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert migration.name == "Migration"
    fields = {t.id: node.value for node in migration.body if isinstance(node, ast.Assign)
              for t in node.targets}
    assert ast.literal_eval(fields["dependencies"]) == [("guestbook", "0001_initial")]
    (operation,) = fields["operations"].elts
    assert ast.unparse(operation) == "migrations.RunPython(fail, reverse_code=migrations.RunPython.noop)"
    (fail,) = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert fail.name == "fail" and [a.arg for a in fail.args.args] == ["apps", "schema_editor"]
    assert isinstance(fail.body[0], ast.Raise) and fail.body[0].exc.func.id == "RuntimeError"
    assert ast.literal_eval(fail.body[0].exc.args[0]) == (
        "variant migrationfail: this migration fails on purpose (a drill for the deployer's migration gate)")


def test_marker_variant_migration_adds_one_entry_each_time_it_is_applied(tmp_path):
    plain, _sha256 = bd.build("django", "1.0.0", str(tmp_path / "plain"))
    marked, _sha256 = bd.build("django", "1.0.0", str(tmp_path / "marked"), variant="marker")
    before, after = files_of(plain), files_of(marked)
    added = "guestbook/migrations/0002_marker.py"
    assert set(after) - set(before) == {added}
    assert {rel: after[rel] for rel in before} == before
    # Applied for real, on SQLite: one entry, and a second migrate adds none.
    with tarfile.open(marked) as tar:
        tar.extractall(tmp_path / "app")  # our own archive, just built
    app = tmp_path / "app" / "django-1.0.0"
    env = dict(os.environ, DJANGO_SECRET_KEY="unit-test", DJANGO_DATABASE_PATH=str(tmp_path / "db.sqlite3"))
    for _attempt in range(2):
        subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=app, env=env, check=True)
    count = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from guestbook.models import Entry; print(Entry.objects.filter(name='migration 0002_marker').count())"],
        cwd=app, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert count[-1] == "1"  # (Django 5.2's shell first says what it imported)


def test_migrationfail_variant_needs_a_django_app(tmp_path):
    with pytest.raises(bd.BuildError, match="variant migrationfail needs a Django app"):
        bd.build("flask", "1.0.0", str(tmp_path / "out"), variant="migrationfail")
    assert not (tmp_path / "out").exists()


def test_command_line_refuses_a_variant_for_all_before_writing(tmp_path):
    out = tmp_path / "dist"
    result = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--version", "3.0.0",
                             "--variant", "migrationfail", "all"], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr == "build-dist: variant migrationfail needs a Django app\n"
    assert not out.exists()  # not even the django archive


@pytest.mark.parametrize("app, rel", [("django", "mysite/wsgi.py"), ("flask", "hello/__init__.py")])
@pytest.mark.parametrize("times", [0, 2])
def test_importfail_variant_refuses_a_missing_or_repeated_anchor(tmp_path, app, rel, times):
    """An edit of the example that moves the anchor stops the build rather than let the
    variant build a release that works."""
    src = copy_example(tmp_path, app)
    path, anchor, _addition = bd.IMPORTFAIL_RAISE[app]
    assert path == rel
    source = (src / rel).read_text()
    assert source.count(anchor) == 1
    (src / rel).write_text(source.replace(anchor, "\n" if times == 0 else anchor + anchor))
    expected = "variant importfail: %s holds .* %d times, not once" % (rel, times)
    with pytest.raises(bd.BuildError, match=expected):
        bd.build(app, "1.0.0", str(tmp_path / "out"), variant="importfail", source_dir=str(src))
    assert not (tmp_path / "out").exists()


def test_migrationfail_variant_refuses_a_later_migration(tmp_path):
    src = copy_example(tmp_path, "django")
    (src / "guestbook" / "migrations" / "0002_entry_email.py").write_text("# another migration\n")
    with pytest.raises(bd.BuildError, match="0001_initial.py is not the latest migration"):
        bd.build("django", "1.0.0", str(tmp_path / "out"), variant="migrationfail", source_dir=str(src))
    (src / "guestbook" / "migrations" / "0002_entry_email.py").unlink()
    migrations = src / "guestbook" / "migrations"
    (migrations / "0001_initial.py").rename(migrations / "0001_first.py")
    with pytest.raises(bd.BuildError, match="the app has no guestbook/migrations/0001_initial.py"):
        bd.build("django", "1.0.0", str(tmp_path / "out"), variant="migrationfail", source_dir=str(src))


def test_greeting_variant_changes_nothing_but_the_version(tmp_path):
    plain, _sha256 = bd.build("flask", "1.0.0", str(tmp_path / "plain"))
    greeting, _sha256 = bd.build("flask", "1.0.0", str(tmp_path / "greeting"), variant="greeting")
    with open(plain, "rb") as a, open(greeting, "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("version", ["", "../1", "1.0/2", "-rc1", "1 0", "v" * 65])
def test_bad_versions_are_refused(tmp_path, version):
    with pytest.raises(bd.BuildError, match="version"):
        bd.build("flask", version, str(tmp_path))
    assert not os.listdir(str(tmp_path))


def test_command_line_builds_all(tmp_path):
    out = tmp_path / "dist"
    result = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--version", "3.0.0", "all"],
                            capture_output=True, text=True, check=True)
    assert sorted(os.listdir(str(out))) == [
        "django-3.0.0.tar.gz", "django-3.0.0.tar.gz.sha256",
        "flask-3.0.0.tar.gz", "flask-3.0.0.tar.gz.sha256",
    ]
    # Each line: the checksum, two spaces, the archive written.
    for line, app in zip(result.stdout.splitlines(), ("django", "flask")):
        digest, path = line.split("  ")
        assert path == str(out / ("%s-3.0.0.tar.gz" % app))
        with open(path + ".sha256") as f:
            assert f.read().split()[0] == digest


def test_command_line_default_version(tmp_path):
    with open(os.path.join(ROOT, "examples", "flask", "VERSION")) as f:
        version = f.read().strip()
    subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path), "flask"],
                   capture_output=True, check=True)
    path = tmp_path / ("flask-%s.tar.gz" % version)
    assert read_member(str(path), "flask-%s/VERSION" % version) == ("%s\n" % version).encode()


def test_command_line_errors(tmp_path):
    result = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path), "--version", "../x", "flask"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("build-dist: ")
    result = subprocess.run([sys.executable, SCRIPT, "--variant", "nope", "flask"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2


def test_help_documents_the_variants():
    result = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, check=True)
    assert "newdeps" in result.stdout and "six==1.16.0" in result.stdout
    for name in bd.VARIANTS:
        assert "\n  %s " % name in result.stdout
    assert "health check answers 500" in " ".join(result.stdout.split())


def test_script_is_executable():
    """With the shebang ansible-test's sanity allows (`python` on PATH: the dev
    virtualenv's); callers that must not depend on PATH run it with their own
    interpreter (bench/*, molecule/e2e_shared/dist.yml)."""
    assert os.access(SCRIPT, os.X_OK)
    with open(SCRIPT) as f:
        assert f.readline() == "#!/usr/bin/env python\n"


def test_archive_extracts_with_the_tar_data_filter(tmp_path):
    """What the release module's unpack applies where Python has it."""
    if not hasattr(tarfile, "data_filter"):
        pytest.skip("tarfile has no data_filter on this Python")
    path, _sha256 = bd.build("django", "1.2.3", str(tmp_path))
    with tarfile.open(path) as tar:
        tar.extractall(str(tmp_path / "x"), filter="data")
    assert (tmp_path / "x" / "django-1.2.3" / "VERSION").read_text() == "1.2.3\n"


def test_gzip_stream_round_trips(tmp_path):
    data = bd.tar_bytes("t", {"a/b.txt": b"hello\n"}, set(), 0)
    assert gzip.decompress(bd.gzip_bytes(data)) == data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["t", "t/a", "t/a/b.txt"]
