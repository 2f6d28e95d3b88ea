import json

import pytest

WANTED = {"debian12": "3.11", "debian13": "3.13"}

EXTENSION = r"""
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "pdtest", NULL, -1, methods};
PyMODINIT_FUNC PyInit_pdtest(void) { return PyModule_Create(&mod); }
"""


@pytest.fixture
def wanted(host):
    return WANTED[host.backend.get_hostname()]


def test_requested_interpreter_is_installed(host, wanted):
    out = host.check_output("/usr/bin/python%s -c 'import platform; print(platform.python_version())'" % wanted)
    assert out.startswith(wanted + ".")


def test_exposed_facts_describe_the_real_interpreter(host, wanted):
    facts = json.loads(host.file("/var/lib/pydeploy-test/python_runtime.json").content_string)
    assert facts["interpreter"] == "/usr/bin/python%s" % wanted
    real = host.check_output("%s -c 'import platform; print(platform.python_version())'" % facts["interpreter"])
    assert facts["version"] == real


def test_an_unprivileged_user_can_create_a_venv_with_pip(host, wanted):
    host.run("rm -rf /tmp/pdtest-venv")
    cmd = host.run("su -s /bin/sh nobody -c '/usr/bin/python%s -m venv /tmp/pdtest-venv && "
                   "/tmp/pdtest-venv/bin/python -m pip --version'" % wanted)
    assert cmd.rc == 0, cmd.stderr
    assert "python %s" % wanted in cmd.stdout


def test_a_c_extension_builds_against_the_headers(host, wanted):
    py = "/usr/bin/python%s" % wanted
    host.run("mkdir -p /var/tmp/pdtest-ext")
    host.run("cat > /var/tmp/pdtest-ext/pdtest.c <<'EOF'\n%s\nEOF" % EXTENSION)
    include = host.check_output("%s -c \"import sysconfig; print(sysconfig.get_paths()['include'])\"" % py)
    suffix = host.check_output("%s -c \"import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))\"" % py)
    build = host.run("gcc -shared -fPIC -I%s -o /var/tmp/pdtest-ext/pdtest%s /var/tmp/pdtest-ext/pdtest.c" % (include, suffix))
    assert build.rc == 0, build.stderr
    assert host.check_output("cd /var/tmp/pdtest-ext && %s -c 'import pdtest; print(pdtest.answer())'" % py) == "42"


def test_an_unavailable_version_fails_before_installing_and_names_the_choices(host, wanted, play):
    result = play(python_runtime_version="3.99")
    assert result.failed, result
    msg = result.task("Fail when the distribution has no package")["msg"]
    assert "has no package python3.99" in msg
    assert "python%s" % wanted in msg.split("Available here:")[1]
    assert result.stats["failures"] == 1
    assert not host.exists("python3.99")


def test_a_malformed_version_is_refused_by_the_preflight_check(play):
    result = play(python_runtime_version="3.11; rm -rf /")
    assert result.failed, result
    assert "give a minor version such as '3.11'" in result.task("Check that python_runtime_version")["msg"]
