"""The deploy job template as AWX runs it (docs/awx.md): ansible-runner with a private
data dir holding the AWX project's playbook (examples/awx/project/deploy.yml, which
imports pydeploy.web.deploy), an inventory whose app_env refers to the secret a
credential of examples/awx/credential-type.json injects, the survey's answer as extra
variables, and the credential's extra variables rendered from its injectors as AWX
renders them (a file of its own, passed with -e @file, its strings !unsafe).

Run before the end-to-end story (file order): it deploys the release converge deployed,
so it changes nothing, and the story starts from the host as converge left it."""
import glob
import json
import os
import shutil
import subprocess

import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from e2e import release_id

ROOT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", "")
AWX = os.path.join(ROOT, "examples", "awx")
SECRET_VARIABLE = "FLASK_SECRET_KEY"


def load_vars(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


class Unsafe(str):
    pass


class UnsafeDumper(yaml.SafeDumper):
    pass


UnsafeDumper.add_representer(Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value)))


def unsafe_yaml(data):
    """YAML with every string value tagged !unsafe (never templated), as AWX writes a
    credential's extra variables."""
    def mark(node):
        if isinstance(node, dict):
            return {k: mark(v) for k, v in node.items()}
        if isinstance(node, list):
            return [mark(x) for x in node]
        return Unsafe(node) if isinstance(node, str) else node

    return yaml.dump(mark(data), Dumper=UnsafeDumper)


def render_injectors(credential_type, inputs):
    """The extra variables a credential of this type injects (AWX's sandboxed Jinja)."""
    env = ImmutableSandboxedEnvironment()

    def walk(node):
        if isinstance(node, dict):
            return {walk(k): walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(x) for x in node]
        return env.from_string(node).render(**inputs)

    return walk(credential_type["injectors"]["extra_vars"])


def test_the_deploy_job_template_runs_under_ansible_runner(host, tmp_path):
    name = host.backend.get_hostname()
    molecule_inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    scenario_vars = load_vars(os.path.join(molecule_inventory, "group_vars", "all"))
    host_vars = load_vars(os.path.join(molecule_inventory, "host_vars", name))
    secret = scenario_vars["app_env"][SECRET_VARIABLE]
    with open(os.path.join(AWX, "credential-type.json")) as f:
        credential_type = json.load(f)

    pdd = tmp_path / "awx"
    (pdd / "project").mkdir(parents=True)
    (pdd / "inventory" / "group_vars").mkdir(parents=True)
    (pdd / "env").mkdir()
    # The project: its deploy playbook, as the job template names it.
    shutil.copy(os.path.join(AWX, "project", "deploy.yml"), pdd / "project" / "deploy.yml")
    # The inventory: the container in group web; the application's variables as the
    # scenario sets them, but the secret given by the credential; no artifact (the survey).
    (pdd / "inventory" / "hosts.yml").write_text(yaml.safe_dump({"web": {"hosts": {name: host_vars}}}))
    app_vars = {k: v for k, v in scenario_vars.items() if k.startswith("app_") and k != "app_artifact"}
    app_vars["app_env"] = dict(app_vars["app_env"], **{SECRET_VARIABLE: "{{ pydeploy_secret_key }}"})
    (pdd / "inventory" / "group_vars" / "web.yml").write_text(yaml.safe_dump(app_vars))
    # The survey's answers (AWX: env/extravars), the same release converge deployed.
    (pdd / "env" / "extravars").write_text(yaml.safe_dump(
        {"app_artifact": scenario_vars["app_artifact"], "app_artifact_checksum": "", "app_release_id": ""}))
    # The credential's extra variables, in a file of their own (AWX: env/tmp*, -e @file).
    injected = render_injectors(credential_type, {"secret_key": secret})
    (pdd / "env" / "credential_extravars").write_text(unsafe_yaml(injected))
    (pdd / "env" / "cmdline").write_text("-e @%s" % (pdd / "env" / "credential_extravars"))
    # pydeploy.web from this checkout (AWX: the project's collections/ or the EE's).
    (pdd / "env" / "envvars").write_text(yaml.safe_dump(
        {"ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, ".collections")}))

    proc = subprocess.run(["ansible-runner", "run", str(pdd), "--playbook", "deploy.yml", "--ident", "deploy"],
                          capture_output=True, text=True, timeout=600, check=False)
    artifacts = pdd / "artifacts" / "deploy"
    stdout = (artifacts / "stdout").read_text() if (artifacts / "stdout").exists() else proc.stdout
    assert (artifacts / "status").read_text() == "successful", stdout[-3000:]
    assert (artifacts / "rc").read_text() == "0"
    assert proc.returncode == 0

    events = [json.loads(open(p).read()) for p in sorted(glob.glob(str(artifacts / "job_events" / "*.json")))]
    assert events and any(e["event"] == "playbook_on_stats" for e in events)
    # The release converge deployed, named in what the tasks on the host returned.
    first = release_id("flask-1.0.0.tar.gz")
    assert any(e["event"] == "runner_on_ok" and e["event_data"].get("host") == name
               and first in json.dumps(e["event_data"].get("res", {})) for e in events), first
    # The same release and the same environment: nothing changed, nothing failed. (.env
    # unchanged means app_env reached the host with the credential's value.)
    stats = next(e for e in events if e["event"] == "playbook_on_stats")["event_data"]
    assert not stats.get("failures") and not stats.get("dark")
    assert stats.get("changed", {}).get(name, 0) == 0, stats
    assert os.path.basename(host.file("/srv/hello/current").linked_to) == first
    # The secret never reached a log: not in the job events, stdout or any artifact.
    for path in glob.glob(str(artifacts / "**"), recursive=True):
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                assert secret not in f.read(), path
