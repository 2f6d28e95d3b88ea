"""examples/awx/: the files a user imports into AWX have the shape AWX's API takes (the
checks AWX makes on a survey spec and on a custom credential type's inputs and
injectors), they fit the playbooks' variables, and they ship in the collection."""
import fnmatch
import json
import os
import re

import pytest
import yaml
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
AWX = os.path.join(ROOT, "examples", "awx")
SURVEY_TYPES = {"text": str, "textarea": str, "password": str, "integer": int, "float": (int, float),
                "multiplechoice": str, "multiselect": (str, list)}
FIELD_KEYS = {"id", "label", "type", "format", "choices", "help_text", "multiline", "secret", "ask_at_runtime", "default"}
VARIABLE = re.compile(r"^[a-zA-Z_]+[a-zA-Z0-9_]*$")


def load(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return json.load(f) if path[-1].endswith(".json") else yaml.safe_load(f)


def playbook_variables():
    """What the playbooks accept: the app_* interface, release_id (rollback) and pydeploy_hosts."""
    return set(load("roles", "app", "meta", "argument_specs.yml")["argument_specs"]["deploy"]["options"]) | {"release_id", "pydeploy_hosts"}


def survey_errors(spec):
    """The checks AWX makes when a survey spec is POSTed to a job template's survey_spec."""
    errors = []
    for field, kind in (("name", str), ("description", str), ("spec", list)):
        if not isinstance(spec.get(field), kind):
            errors.append("%s missing or not a %s" % (field, kind.__name__))
    if errors or not spec["spec"]:
        return errors or ["spec has no question"]
    seen = set()
    for i, q in enumerate(spec["spec"]):
        missing = [field for field in ("type", "question_name", "variable", "required") if field not in q]
        if missing:
            errors.append("question %d: no %s" % (i, ", ".join(missing)))
            continue
        if not all(isinstance(q[f], str) for f in ("type", "question_name", "variable")) or not isinstance(q["required"], bool):
            errors.append("question %d: type, question_name, variable must be strings, required a boolean" % i)
        if q["variable"] in seen:
            errors.append("question %d: variable %s twice" % (i, q["variable"]))
        seen.add(q["variable"])
        if q["type"] not in SURVEY_TYPES:
            errors.append("question %d: type %s" % (i, q["type"]))
            continue
        if q.get("default", "") != "" and not isinstance(q["default"], SURVEY_TYPES[q["type"]]):
            errors.append("question %d: default of the wrong type" % i)
        for key in ("min", "max"):
            if q.get(key) is not None and not isinstance(q[key], int):
                errors.append("question %d: %s not an integer" % (i, key))
        if q["type"] in ("multiplechoice", "multiselect") and "choices" not in q:
            errors.append("question %d: no choices" % i)
    return errors


@pytest.mark.parametrize("name", ["survey-deploy.json", "survey-rollback.json"])
def test_the_survey_specs_are_what_awx_takes_and_ask_for_playbook_variables(name):
    spec = load("examples", "awx", name)
    assert survey_errors(spec) == []
    for q in spec["spec"]:
        assert q["variable"] in playbook_variables(), q["variable"]
        assert q.get("question_description"), q["variable"]
        # An answer left blank must mean the default: only optional text questions may be empty.
        if not q["required"]:
            assert q.get("default", "") == "" and q.get("min", 0) == 0, q["variable"]


def test_the_deploy_survey_asks_for_the_artifact():
    questions = {q["variable"]: q for q in load("examples", "awx", "survey-deploy.json")["spec"]}
    artifact = questions["app_artifact"]
    assert artifact["type"] == "text" and artifact["required"] is True and artifact["min"] >= 1
    assert not questions["app_release_id"]["required"]


def test_the_survey_checker_catches_what_awx_refuses():
    assert survey_errors({"name": "x", "description": "", "spec": []}) == ["spec has no question"]
    bad = {"name": "x", "description": "", "spec": [
        {"type": "text", "question_name": "a", "variable": "v", "required": "yes"},
        {"type": "string", "question_name": "b", "variable": "v", "required": True}]}
    assert len(survey_errors(bad)) == 3


def test_the_credential_type_is_what_awx_takes():
    ct = load("examples", "awx", "credential-type.json")
    assert ct["kind"] in ("cloud", "net")  # the kinds a custom credential type may have
    assert ct["name"] and isinstance(ct.get("description", ""), str)
    fields = ct["inputs"]["fields"]
    ids = [f["id"] for f in fields]
    assert len(ids) == len(set(ids)) and "tower" not in ids
    for field in fields:
        assert set(field) <= FIELD_KEYS and {"id", "label"} <= set(field), field
        assert VARIABLE.match(field["id"]), field["id"]
        assert field.get("type", "string") in ("string", "boolean")
    assert set(ct["inputs"].get("required", [])) <= set(ids)
    # Secrets go to extra variables only: no file, no environment variable.
    assert set(ct["injectors"]) == {"extra_vars"}
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    namespace = {i: "EXAMPLE" for i in ids}

    def check(key, node):
        if isinstance(node, dict):
            for k, v in node.items():
                assert re.match(r"^[a-zA-Z_{}]+[a-zA-Z0-9_{}]*$", k), k
                check(k, v)
        else:
            env.from_string(node).render(**namespace)  # only fields the inputs define

    check(None, ct["injectors"]["extra_vars"])


def test_the_credential_holds_secrets_and_the_inventory_refers_to_what_it_injects():
    ct = load("examples", "awx", "credential-type.json")
    for field in ct["inputs"]["fields"]:
        assert field.get("secret") is True, field["id"]  # AWX shows them as $encrypted$ only
    injected = set(ct["injectors"]["extra_vars"])
    # Not app_* names: the playbooks refuse an app_ variable they do not know.
    assert not [v for v in injected if v.startswith("app_") and v not in playbook_variables()]
    app = load("examples", "awx", "project", "inventory", "group_vars", "web", "app.yml")
    text = json.dumps(app)
    for variable in injected:
        assert "{{ %s }}" % variable in text, variable
    assert "app_artifact" not in app  # the survey's
    assert set(app) <= playbook_variables()


def test_the_project_runs_the_collections_playbooks():
    requirements = load("examples", "awx", "project", "collections", "requirements.yml")
    assert "pydeploy.web" in [c["name"] for c in requirements["collections"]]
    for name in ("site", "deploy", "rollback"):
        plays = load("examples", "awx", "project", name + ".yml")
        assert [p.get("ansible.builtin.import_playbook") for p in plays] == ["pydeploy.web." + name]


def test_the_awx_examples_ship_in_the_collection():
    """All but the project's one-line playbooks, which galaxy-importer's ansible-lint cannot
    resolve in an artifact (galaxy.yml; docs/awx.md shows them)."""
    ignore = load("galaxy.yml")["build_ignore"]
    kept_out = {os.path.join("examples", "awx", "project", name + ".yml") for name in ("site", "deploy", "rollback")}
    for dirpath, _dirs, files in os.walk(AWX):
        for name in files:
            path = os.path.relpath(os.path.join(dirpath, name), ROOT)
            parts = path.split(os.sep)
            prefixes = [os.sep.join(parts[:i]) for i in range(1, len(parts) + 1)]
            ignored = [p for p in ignore for x in prefixes if fnmatch.fnmatch(x, p)]
            assert bool(ignored) == (path in kept_out), (path, ignored)
