"""pydeploy.web.venv builds real virtualenvs here, offline: the requirements name a
wheel made by the test, installed with --no-index from a local directory."""
import base64
import hashlib
import json
import marshal
import os
import subprocess
import sys
import zipfile

import pytest

from ansible_collections.pydeploy.web.plugins.modules import venv

PYTHON = os.path.realpath(sys.executable)


def make_wheel(directory, name="hello", version="1.0"):
    files = {
        "%s.py" % name: "import sys\n\ndef main():\n    print('%s', sys.prefix)\n" % name,
        "%s-%s.dist-info/METADATA" % (name, version): "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version),
        "%s-%s.dist-info/WHEEL" % (name, version): "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "%s-%s.dist-info/entry_points.txt" % (name, version): "[console_scripts]\n%s = %s:main\n" % (name, name),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, digest, len(text.encode())))
    record_path = "%s-%s.dist-info/RECORD" % (name, version)
    record.append("%s,," % record_path)
    files[record_path] = "\n".join(record) + "\n"
    wheel = os.path.join(str(directory), "%s-%s-py3-none-any.whl" % (name, version))
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture
def site(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "hello", "1.0")
    make_wheel(wheels, "hello", "2.0")
    make_wheel(wheels, "greet", "1.0")
    base = tmp_path / "venvs"
    base.mkdir()
    req = tmp_path / "requirements.txt"
    req.write_text("hello==1.0\n")
    args = dict(base_dir=str(base), requirements=str(req), python=PYTHON,
                extra_args=["--no-index", "--find-links", str(wheels)])
    return base, req, args


@pytest.fixture
def commands(monkeypatch):
    """Every argv the module runs, in order."""
    seen = []
    real = venv.AnsibleModule.run_command

    def spy(self, args, *a, **kw):
        seen.append(list(args))
        return real(self, args, *a, **kw)

    monkeypatch.setattr(venv.AnsibleModule, "run_command", spy)
    return seen


def installs(commands):
    return [c for c in commands if "install" in c]


def test_builds_a_working_venv_at_the_keyed_path(run_module, site):
    base, req, args = site
    result, failed = run_module(venv.main, args)
    assert not failed, result["msg"]
    assert result["changed"] and not result["reused"]
    assert len(result["key"]) == 16 and result["path"] == str(base / result["key"])
    assert result["packages"] == {"hello": "1.0"}
    assert result["python_version"] == "%d.%d.%d" % sys.version_info[:3]
    # The console script runs from its final place, with the final prefix.
    out = subprocess.run([os.path.join(result["path"], "bin", "hello")], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["hello", result["path"]]
    # Nothing of the build directory is left, in names or in file contents.
    assert sorted(os.listdir(base)) == [result["key"]]
    with open(os.path.join(result["path"], "bin", "hello")) as f:
        assert f.readline() == "#!%s/bin/python\n" % result["path"]
    with open(os.path.join(result["path"], "bin", "activate")) as f:
        assert ".partial" not in f.read()
    marker = json.loads((base / result["key"] / ".pydeploy-venv.json").read_text())
    assert marker["key"] == result["key"] and marker["packages"] == {"hello": "1.0"}


def test_bytecode_names_the_final_path(run_module, site):
    base, req, args = site
    result, _failed = run_module(venv.main, args)
    site_packages = [os.path.join(r, d) for r, ds, _files in os.walk(result["path"]) for d in ds if d == "site-packages"][0]
    pyc = [f for f in os.listdir(os.path.join(site_packages, "__pycache__")) if f.startswith("hello.")][0]
    with open(os.path.join(site_packages, "__pycache__", pyc), "rb") as f:
        code = marshal.loads(f.read()[16:])
    assert code.co_filename == os.path.join(site_packages, "hello.py")


def test_unchanged_requirements_reuse_the_venv_without_running_the_installer(run_module, site, commands):
    base, req, args = site
    first, _failed = run_module(venv.main, args)
    inode = os.stat(first["path"]).st_ino
    del commands[:]
    second, failed = run_module(venv.main, args)
    assert not failed
    assert second["changed"] is False and second["reused"] is True
    assert second["path"] == first["path"] and os.stat(second["path"]).st_ino == inode
    assert installs(commands) == []
    assert second["packages"] == {"hello": "1.0"}


def test_the_same_requirements_of_another_release_reuse_the_venv(run_module, site, tmp_path, commands):
    """Each release has its requirements file in its own directory: the path is not
    part of the key, the content (and what it includes, by relative name) is."""
    base, req, args = site
    first, _failed = run_module(venv.main, args)
    other = tmp_path / "releases" / "9f86d081884c"
    other.mkdir(parents=True)
    (other / "requirements.txt").write_text(req.read_text())
    del commands[:]
    second, failed = run_module(venv.main, dict(args, requirements=str(other / "requirements.txt")))
    assert not failed, second["msg"]
    assert second["reused"] and second["path"] == first["path"] and installs(commands) == []
    (other / "more.txt").write_text("greet==1.0\n")
    (other / "requirements.txt").write_text("hello==1.0\n-r more.txt\n")
    third, _failed = run_module(venv.main, dict(args, requirements=str(other / "requirements.txt")))
    assert third["key"] != first["key"]


def test_changed_requirements_build_a_new_venv_and_keep_the_old(run_module, site):
    base, req, args = site
    old, _failed = run_module(venv.main, args)
    req.write_text("hello==2.0\n")
    new, failed = run_module(venv.main, args)
    assert not failed and new["changed"]
    assert new["key"] != old["key"]
    assert sorted(os.listdir(base)) == sorted([old["key"], new["key"]])
    assert new["packages"] == {"hello": "2.0"}
    assert json.loads((base / old["key"] / ".pydeploy-venv.json").read_text())["packages"] == {"hello": "1.0"}


def test_included_requirement_files_are_part_of_the_key(run_module, site, tmp_path):
    base, req, args = site
    (tmp_path / "more.txt").write_text("greet==1.0\n")
    req.write_text("hello==1.0\n-r more.txt\n")
    first, _failed = run_module(venv.main, args)
    assert first["packages"] == {"hello": "1.0", "greet": "1.0"}
    (tmp_path / "more.txt").write_text("# comment changes the content\ngreet==1.0\n")
    second, _failed = run_module(venv.main, args)
    assert second["key"] != first["key"]


def test_unresolvable_requirement_fails_naming_it_and_leaves_nothing(run_module, site):
    base, req, args = site
    req.write_text("hello==1.0\nno-such-package-pydeploy==1.0\n")
    result, failed = run_module(venv.main, args)
    assert failed
    assert result["requirement"] == "no-such-package-pydeploy==1.0"
    assert "requirement 'no-such-package-pydeploy==1.0' cannot be installed" in result["msg"]
    assert result["rc"] != 0
    assert os.listdir(base) == []


def test_check_mode_reports_a_build_and_writes_nothing(run_module, site, commands):
    base, req, args = site
    result, failed = run_module(venv.main, args, check_mode=True)
    assert not failed and result["changed"] and not result["reused"]
    assert result["path"].startswith(str(base))
    assert os.listdir(base) == []
    assert installs(commands) == [] and not [c for c in commands if "venv" in c]


def test_check_mode_on_an_existing_venv_reports_no_change(run_module, site):
    base, req, args = site
    run_module(venv.main, args)
    result, _failed = run_module(venv.main, args, check_mode=True)
    assert result["changed"] is False and result["reused"] is True


def test_a_directory_not_built_by_the_module_is_left_alone(run_module, site):
    base, req, args = site
    probe, _failed = run_module(venv.main, args, check_mode=True)
    os.mkdir(probe["path"])
    (base / probe["key"] / "keep.txt").write_text("mine")
    result, failed = run_module(venv.main, args)
    assert failed and "was not built by this module" in result["msg"]
    assert (base / probe["key"] / "keep.txt").read_text() == "mine"


def test_a_partial_directory_from_a_killed_run_is_replaced(run_module, site):
    base, req, args = site
    probe, _failed = run_module(venv.main, args, check_mode=True)
    stale = base / (".%s.partial" % probe["key"])
    stale.mkdir()
    (stale / "junk").write_text("x")
    result, failed = run_module(venv.main, args)
    assert not failed and sorted(os.listdir(base)) == [probe["key"]]
    assert not (base / probe["key"] / "junk").exists()


def test_unpinned_requirements_warn(run_module, site, monkeypatch):
    base, req, args = site
    warnings = []
    monkeypatch.setattr(venv.AnsibleModule, "warn", lambda self, w: warnings.append(w))
    req.write_text("hello>=1.0\n")
    result, failed = run_module(venv.main, args)
    assert not failed
    assert len(warnings) == 1 and "'hello>=1.0'" in warnings[0]


@pytest.mark.parametrize("change, message", [
    (dict(python="/nonexistent/python3.99"), "interpreter /nonexistent/python3.99 does not exist"),
    (dict(installer="uv", uv="/nonexistent/uv"), "/nonexistent/uv is not an executable file"),
    (dict(requirements="/nonexistent/requirements.txt"), "cannot read requirements file /nonexistent/requirements.txt"),
    (dict(base_dir="/nonexistent/venvs"), "base_dir /nonexistent/venvs is not a directory"),
])
def test_bad_input_fails_with_a_message_that_names_it(run_module, site, change, message):
    base, req, args = site
    args.update(change)
    result, failed = run_module(venv.main, args)
    assert failed and message in result["msg"]


def test_installer_uv_requires_the_binary(run_module, site):
    base, req, args = site
    args["installer"] = "uv"
    result, failed = run_module(venv.main, args)
    assert failed and "uv" in result["msg"]


def test_secrets_in_environment_stay_out_of_argv_and_result(run_module, site, commands):
    base, req, args = site
    args["environment"] = {"PIP_INDEX_URL": "https://user:s3cret@index.invalid/simple"}
    result, failed = run_module(venv.main, args)
    assert not failed
    assert "s3cret" not in json.dumps(result) and "s3cret" not in json.dumps(commands)


@pytest.mark.parametrize("output, name", [
    ("ERROR: Could not find a version that satisfies the requirement django==9.9 (from versions: 4.2)\n"
     "ERROR: No matching distribution found for django==9.9", "django==9.9"),
    ("  × No solution found when resolving dependencies:\n  ╰─▶ Because nosuchpkg was not found in the "
     "package registry and you require nosuchpkg==1.0, we can conclude", "nosuchpkg"),
    ("  ╰─▶ Because there is no version of six==99.0 and you require six==99.0, we can conclude", "six==99.0"),
    ("ERROR: Failed building wheel for psycopg2\nFailed to build psycopg2", "psycopg2"),
    ("something else entirely", None),
])
def test_the_failing_requirement_is_read_from_pip_and_uv_output(output, name):
    assert venv.unresolvable_requirement(output) == name


def test_key_depends_on_interpreter_version_and_content():
    interp = dict(implementation="cpython", version="3.11.2", platform="linux-x86_64", cache_tag="cpython-311")
    k = venv.venv_key(interp, b"a==1\n")
    assert k == venv.venv_key(dict(interp), b"a==1\n")
    assert k != venv.venv_key(dict(interp, version="3.11.4"), b"a==1\n")
    assert k != venv.venv_key(interp, b"a==2\n")


@pytest.mark.parametrize("output, why", [
    ("WARNING: Retrying (Retry(total=0)) after connection broken by 'SSLError(SSLCertVerificationError(1, "
     "'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed'))': /simple/six/\n"
     "ERROR: No matching distribution found for six==1.16.0", "TLS certificate not trusted"),
    ("error: Request failed after 3 retries\n  Caused by: invalid peer certificate: UnknownIssuer", "TLS certificate not trusted"),
    ("Failed to establish a new connection: [Errno -2] Name or service not known", "name resolution failed"),
    ("ERROR: No matching distribution found for six==99", None),
])
def test_an_unreachable_index_is_told_apart_from_a_missing_package(output, why):
    found = venv.unreachable_index(output)
    if why is None:
        assert found is None
    else:
        assert found is not None and why in found


def test_a_tls_failure_is_reported_as_such_not_as_a_missing_package(run_module, site, monkeypatch):
    base, req, args = site
    real = venv.AnsibleModule.run_command

    def fake(self, argv, *a, **kw):
        if "install" in argv:
            return 1, "", ("WARNING: Retrying after connection broken by 'SSLError(SSLCertVerificationError("
                           "1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed'))'\n"
                           "ERROR: No matching distribution found for hello==1.0\n")
        return real(self, argv, *a, **kw)

    monkeypatch.setattr(venv.AnsibleModule, "run_command", fake)
    result, failed = run_module(venv.main, args)
    assert failed
    assert "the package index could not be reached (TLS certificate not trusted" in result["msg"]
    assert os.listdir(base) == []


def test_pruned_removes_what_no_kept_requirements_give_and_nothing_else(run_module, site, tmp_path):
    base, req, args = site
    kept, _failed = run_module(venv.main, args)
    other_req = tmp_path / "other.txt"
    other_req.write_text("hello==2.0\n")
    other, _failed = run_module(venv.main, dict(args, requirements=str(other_req)))
    by_path = tmp_path / "third.txt"
    by_path.write_text("greet==1.0\n")
    third, _failed = run_module(venv.main, dict(args, requirements=str(by_path)))
    foreign = base / ("ab" * 8)
    foreign.mkdir()  # a key-like directory the module did not build: never removed
    prune = dict(state="pruned", base_dir=str(base), python=PYTHON, keep_requirements=[str(req)],
                 keep=[third["path"]])
    # Check mode names what would go and removes nothing.
    preview, failed = run_module(venv.main, prune, check_mode=True)
    assert not failed and preview["changed"] and preview["pruned"] == [other["key"]]
    assert os.path.isdir(other["path"])
    result, failed = run_module(venv.main, prune)
    assert not failed, result["msg"]
    assert result["changed"] and result["pruned"] == [other["key"]]
    assert sorted(result["kept"]) == sorted([kept["key"], third["key"]])
    assert sorted(os.listdir(base)) == sorted([kept["key"], third["key"], foreign.name])
    again, _failed = run_module(venv.main, prune)
    assert again["changed"] is False and again["pruned"] == []


def test_pruned_keeps_everything_when_a_kept_release_key_is_unknown(run_module, site, tmp_path):
    base, req, args = site
    built, _failed = run_module(venv.main, args)
    result, failed = run_module(venv.main, dict(state="pruned", base_dir=str(base), python=PYTHON,
                                                keep_requirements=[str(tmp_path / "gone" / "requirements.txt")]))
    assert not failed and result["changed"] is False and result["pruned"] == []
    assert result["unknown"] == [str(tmp_path / "gone" / "requirements.txt")]
    assert os.listdir(base) == [built["key"]]
