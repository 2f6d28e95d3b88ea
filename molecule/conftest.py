"""Shared testinfra helpers: run a scenario's playbook again, as a user would, and
read what every task returned."""
import json
import os
import re
import subprocess

import pytest


# testinfra's id of a test host ("ansible://debian12") in a test's parameters, as in
# "test_x[ansible://debian12]" or "test_x[ansible://debian12-import-raises]".
HOST_ID = re.compile(r"\[(?:[^\]]*-)?([a-z]+://[^\]-]+)")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist (-n 2): one work unit per test host. A host's tests run in file
    order on one worker, as they must (they build on each other), while the scenario's
    hosts are verified side by side. A test with no host in its id is a unit of its own."""
    from xdist.scheduler import LoadScopeScheduling

    class ByHost(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            found = HOST_ID.search(nodeid)
            return found.group(1) if found else nodeid

    return ByHost(config, log)


class PlayResult:
    def __init__(self, proc, host):
        self.rc = proc.returncode
        self.output = proc.stdout + proc.stderr
        self.host = host
        try:
            self.data = json.loads(proc.stdout[proc.stdout.index("{"):])
        except ValueError:
            self.data = {"plays": [], "stats": {}}

    @property
    def stats(self):
        return self.data.get("stats", {}).get(self.host, {})

    @property
    def failed(self):
        return self.rc != 0

    def task(self, name):
        """What the task whose name starts with `name` returned on this host (last run)."""
        found = None
        for play in self.data["plays"]:
            for task in play["tasks"]:
                # Role tasks are named "<role FQCN> : <name>".
                if task["task"]["name"].split(" : ", 1)[-1].startswith(name) and self.host in task["hosts"]:
                    found = task["hosts"][self.host]
        if found is None:
            raise AssertionError("no task named %r ran on %s; output:\n%s" % (name, self.host, self.output[-3000:]))
        return found

    def failures(self):
        return [task["hosts"][self.host] for play in self.data["plays"] for task in play["tasks"]
                if task["hosts"].get(self.host, {}).get("failed")]

    def __repr__(self):
        return "<play rc=%d stats=%s>\n%s" % (self.rc, self.stats, self.output[-3000:])


@pytest.fixture
def play(host):
    """play(playbook, **extra_vars): run a playbook of this scenario against this host;
    play.spawn(playbook, **extra_vars) starts it without waiting;
    play.with_collections(path, playbook, **extra_vars) runs it with another copy of the
    collection."""
    scenario_dir = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    name = host.backend.get_hostname()

    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")

    def argv(playbook, extra_vars):
        args = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", name,
                os.path.join(scenario_dir, playbook)]
        return args + (["-e", json.dumps(extra_vars)] if extra_vars else [])

    def run(playbook="converge.yml", **extra_vars):
        proc = subprocess.run(argv(playbook, extra_vars), env=env, capture_output=True, text=True, timeout=900,
                              check=False)
        return PlayResult(proc, name)

    def spawn(playbook="converge.yml", output=None, **extra_vars):
        """Start the playbook and return its Popen, in a process group of its own (to kill);
        its output goes to the file object `output`, or nowhere."""
        return subprocess.Popen(argv(playbook, extra_vars), env=env, stdout=output or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT if output else subprocess.DEVNULL, start_new_session=True)

    def with_collections(path, playbook="converge.yml", **extra_vars):
        """Run the playbook with pydeploy.web from the collections under path (another
        copy of the collection, as after an upgrade) instead of this checkout."""
        proc = subprocess.run(argv(playbook, extra_vars), env=dict(env, ANSIBLE_COLLECTIONS_PATH=str(path)),
                              capture_output=True, text=True, timeout=900, check=False)
        return PlayResult(proc, name)

    run.spawn = spawn
    run.with_collections = with_collections
    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test (item.rep_setup, rep_call), for fixtures."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def restore(play):
    """Leave the host as converge.yml made it (its default variables), whatever the test did."""
    yield
    result = play()
    assert not result.failed, result


@pytest.fixture
def restore_if_failed(request, play):
    """For a test that ends with the host as converge.yml made it, when it passes: run
    converge.yml again only when the test failed (or never ran), to leave the host so for
    the tests after it. (A scenario's last test, a converge that changes nothing, checks
    that the tests that passed did.)"""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        result = play()
        assert not result.failed, result
