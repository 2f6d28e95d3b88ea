"""The deploy flow (the pydeploy.web.app role and the playbooks) starts, stops and looks at its app-server instances
through one seam, the supervisor role's control entry point, so that another process
manager plugs in there alone: no supervisorctl command or module is written in the flow,
and every stop goes through tasks/stop.yml."""
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FLOW = [os.path.join(ROOT, "playbooks"), os.path.join(ROOT, "roles", "app")]


def flow_files():
    for dirpath, _dirs, files in (entry for top in FLOW for entry in os.walk(top)):
        for name in sorted(files):
            if name.endswith(".yml"):
                path = os.path.join(dirpath, name)
                with open(path) as f:
                    yield os.path.relpath(path, ROOT), f.read()


def tasks(node):
    """Every task (and block) of a task list or play list, nested ones included."""
    if isinstance(node, list):
        for item in node:
            yield from tasks(item)
    elif isinstance(node, dict):
        if "name" in node or "block" in node:
            yield node
        for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
            if key in node:
                yield from tasks(node[key])


def test_the_flow_names_no_process_manager_command():
    found = [(path, line) for path, text in flow_files() for line in text.splitlines()
             if re.search(r"supervisorctl|systemctl", line.split("#")[0])]
    assert found == []


def test_instances_are_controlled_through_the_supervisor_role_control_entry_point():
    controls = []
    for path, text in flow_files():
        for task in tasks(yaml.safe_load(text) or []):
            role = task.get("ansible.builtin.include_role") or {}
            # (The main entry point provisions supervisor with the role's main entry point.)
            if role.get("name") == "pydeploy.web.supervisor" and role.get("tasks_from", "main") != "main":
                controls.append((path, role.get("tasks_from"), (task.get("vars") or {}).get("supervisor_control_state")))
    # One start (the instance serving, when it stopped) and one stop, in stop.yml.
    assert sorted(controls) == [
        (os.path.join("roles", "app", "tasks", "stop.yml"), "control", "stopped"),
        (os.path.join("roles", "app", "tasks", "switch.yml"), "control", "started"),
    ]


def test_every_stop_of_an_instance_goes_through_stop_yml():
    includes = [(path, task["name"]) for path, text in flow_files() for task in tasks(yaml.safe_load(text) or [])
                if task.get("ansible.builtin.include_tasks") == "stop.yml"]
    assert sorted(path for path, _name in includes) == [
        os.path.join("roles", "app", "tasks", "failed.yml"),
        os.path.join("roles", "app", "tasks", "switch.yml"),
    ]
