"""meta/execution-environment.yml: `ansible-builder create` (the venv's) makes its build
context offline, and the context names what the collection needs: itself, every
collection galaxy.yml depends on (community.general), the ansible-core and
ansible-runner that are tested, and no Python package beyond them."""
import ast
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
EE = os.path.join(ROOT, "meta", "execution-environment.yml")
# The ansible-builder beside this interpreter: the dev venv's, or ansible-test units' (from
# tests/unit/requirements.txt).
BUILDER = os.path.join(os.path.dirname(sys.executable), "ansible-builder")
# Collections that are not dependencies: ansible-core's own and this one.
OWN = {"ansible.builtin", "ansible.legacy", "pydeploy.web"}


def load(path):
    with open(os.path.join(ROOT, path)) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    root = tmp_path_factory.mktemp("ee")
    out = root / "context"
    # As docs/awx.md runs it: a copy of the definition at the collection's root, since
    # ansible-builder reads its file paths relative to the definition and they are relative
    # to the root (what a collection's meta/execution-environment.yml needs).
    (root / "meta").mkdir()
    for name in ("ee-requirements.txt", "ee-bindep.txt"):
        shutil.copy(os.path.join(ROOT, "meta", name), str(root / "meta" / name))
    shutil.copy(EE, str(root / "execution-environment.yml"))
    # Offline: any HTTP(S) request would go to a proxy that is not there.
    env = dict(os.environ, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", no_proxy="", NO_PROXY="")
    proc = subprocess.run([BUILDER, "create", "-c", str(out), "--output-filename", "Containerfile"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=str(root), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_an_ee_that_includes_the_collection_finds_its_requirements_files():
    """What ansible-builder runs in the build of an EE naming pydeploy.web (and
    galaxy-importer on upload): it reads the collection's meta/execution-environment.yml
    and opens the python and system files it names, relative to the collection's root."""
    script = ("import sys; from ansible_builder._target_scripts.introspect import process_collection; "
              "print(repr(process_collection(sys.argv[1])))")
    proc = subprocess.run([sys.executable, "-c", script, ROOT], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not present" not in proc.stdout
    # No Python package beyond ansible-core; the system packages ee-bindep.txt lists.
    with open(os.path.join(ROOT, "meta", "ee-bindep.txt")) as f:
        system = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert system
    assert proc.stdout.strip().splitlines()[-1] == repr(([], system))


def collections_used():
    """Collections named by the FQCN of a module, filter, test or lookup in the code."""
    patterns = [
        re.compile(r"^\s*(?:-\s+)?([a-z0-9_]+\.[a-z0-9_]+)\.[a-z0-9_]+:", re.M),           # a task's module
        re.compile(r"\|\s*([a-z0-9_]+\.[a-z0-9_]+)\.[a-z0-9_]+\b"),                         # a filter
        re.compile(r"\bis\s+(?:not\s+)?([a-z0-9_]+\.[a-z0-9_]+)\.[a-z0-9_]+\b"),            # a test
        re.compile(r"\b(?:lookup|query)\(\s*['\"]([a-z0-9_]+\.[a-z0-9_]+)\.[a-z0-9_]+['\"]"),  # a lookup
    ]
    found = set()
    for top in ("roles", "playbooks", "plugins"):
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith((".yml", ".yaml", ".j2", ".py")):
                    with open(os.path.join(dirpath, name)) as f:
                        text = f.read()
                    for pattern in patterns:
                        found.update(pattern.findall(text))
    return found


def test_ansible_builder_create_names_the_collection_and_its_dependencies(context):
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    collections = {c["name"]: c.get("version", "*") for c in requirements["collections"]}
    assert "pydeploy.web" in collections
    assert "community.general" in collections
    # Every dependency of galaxy.yml, with the same version range.
    for name, version in load("galaxy.yml")["dependencies"].items():
        assert collections.get(name) == version, (name, collections)
    assert (context / "Containerfile").is_file()
    assert "ansible-galaxy collection install" in (context / "Containerfile").read_text()


def test_every_collection_the_code_uses_is_a_dependency():
    used = collections_used() - OWN
    assert "community.general" in used  # supervisorctl, counter, filetree: the scan sees them
    assert used <= set(load("galaxy.yml")["dependencies"]), used


def test_the_ee_has_the_ansible_core_and_runner_that_are_tested(context):
    pins = {}
    with open(os.path.join(ROOT, "requirements-dev.txt")) as f:
        for line in f:
            if "==" in line and not line.lstrip().startswith("#"):
                name, version = line.split("#")[0].strip().split("==")
                pins[name] = version
    deps = load("meta/execution-environment.yml")["dependencies"]
    for key, package in (("ansible_core", "ansible-core"), ("ansible_runner", "ansible-runner")):
        requirement = Requirement(deps[key]["package_pip"])
        assert requirement.name == package
        assert requirement.specifier.contains(pins[package]), (requirement, pins[package])
        assert str(requirement) in (context / "Containerfile").read_text() or \
            deps[key]["package_pip"] in (context / "Containerfile").read_text()


def test_no_python_package_is_needed_beyond_ansible_core(context):
    # The EE's Python requirements are comments only ...
    lines = (context / "_build" / "requirements.txt").read_text().splitlines()
    assert [line for line in lines if line.strip() and not line.lstrip().startswith("#")] == []
    assert (context / "_build" / "bindep.txt").is_file()
    # ... because the collection's Python code imports the standard library and Ansible only
    # (django_manage's Django code is a script run by the application's virtualenv).
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "plugins")):
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(dirpath, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    assert top in sys.stdlib_module_names or top in ("ansible", "ansible_collections", "__future__"), \
                        "%s imports %s: add it to meta/ee-requirements.txt (controller) or the hosts' packages" % (name, module)


def test_the_unit_tests_ansible_builder_is_the_dev_venvs():
    """ansible-test units installs tests/unit/requirements.txt: the ansible-builder that
    runs this file there is the one requirements-dev.txt pins."""
    def pin(path):
        with open(os.path.join(ROOT, path)) as f:
            return [line.split("#")[0].strip() for line in f if line.startswith("ansible-builder==")]

    dev = pin("requirements-dev.txt")
    assert len(dev) == 1
    assert pin("tests/unit/requirements.txt") == dev
