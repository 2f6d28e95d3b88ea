"""The action plugin of pydeploy.web.release: the holder it names on the controller
(ansible-playbook's pid and start time), and the takeover of a lock whose run is gone
from this controller, never of a live run's or another controller's. The module runs
for real, in this process, against a root under tmp_path."""
import calendar
import json
import multiprocessing
import os
import socket
import subprocess
import time
from unittest import mock

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.pydeploy.web.plugins.action import release as action
from ansible_collections.pydeploy.web.plugins.modules import release as module

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a controller with /proc")


class Exited(Exception):
    def __init__(self, result):
        super().__init__(result.get("msg"))
        self.result = result


def run_module_here(module_args, check_mode=False):
    """What _execute_module returns, from the real module run in this process."""
    warnings = []

    def exit_json(self, **kw):
        raise Exited(dict(kw, warnings=warnings) if warnings else kw)

    def fail_json(self, msg, **kw):
        raise Exited(dict(kw, msg=msg, failed=True, **({"warnings": warnings} if warnings else {})))

    args = json.loads(json.dumps(dict(module_args, _ansible_check_mode=check_mode)))
    with mock.patch.object(basic.AnsibleModule, "exit_json", exit_json), \
            mock.patch.object(basic.AnsibleModule, "fail_json", fail_json), \
            mock.patch.object(basic.AnsibleModule, "warn", lambda self, w: warnings.append(w)), \
            patch_module_args(args):
        try:
            module.main()
        except Exited as e:
            return e.result
    raise AssertionError("the module neither exited nor failed")


@pytest.fixture
def plugin(monkeypatch):
    """plugin(args) -> (result, calls): the action plugin run on a task with args; calls
    are the module_args of each module call it made."""
    calls = []

    def execute(self, module_name=None, module_args=None, task_vars=None, **kw):
        assert module_name == "pydeploy.web.release"
        calls.append(json.loads(json.dumps(module_args)))
        return run_module_here(module_args)

    monkeypatch.setattr(action.ActionModule, "_execute_module", execute)
    monkeypatch.setattr(action.ActionModule, "_remove_tmp_path", lambda self, path: None)

    def run(args, async_val=0):
        task = mock.MagicMock(args=dict(args), async_val=async_val, check_mode=False, action="pydeploy.web.release")
        connection = mock.MagicMock(has_native_async=False)
        connection._shell.tmpdir = None
        plugin = action.ActionModule(task, connection, mock.MagicMock(), None, None, None)
        return plugin.run(task_vars={}), calls

    return run


@pytest.fixture
def root(tmp_path):
    return tmp_path / "srv" / "app"


def plant(root, holder):
    (root / ".pydeploy").mkdir(parents=True, exist_ok=True)
    lock = dict(holder, since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (root / ".pydeploy" / "deploy.lock").write_text(json.dumps(lock))
    return lock


def on_disk(root):
    return json.loads((root / ".pydeploy" / "deploy.lock").read_text())


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_holder_is_this_controller_process(plugin, root):
    result, calls = plugin(dict(root=str(root), state="locked"))
    assert not result.get("failed"), result
    me = calls[0]["holder"]
    # Not in a worker here: the top process is this one.
    assert me["pid"] == os.getpid() and me["host"] == socket.gethostname()
    assert me["start_ticks"] == action.start_ticks(os.getpid())
    assert me["boot_id"] == open("/proc/sys/kernel/random/boot_id").read().strip()
    assert me["user"] and me["started"].endswith("Z")
    assert {k: on_disk(root)[k] for k in me} == me
    assert len(calls) == 1 and "takeover" not in calls[0]


def _report_pid(queue):
    queue.put(action.controller_pid())


def test_in_a_forked_worker_the_holder_is_its_parent():
    """ansible-playbook forks a worker per task: the holder is ansible-playbook."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    worker = ctx.Process(target=_report_pid, args=(queue,))
    worker.start()
    pid = queue.get(timeout=30)
    worker.join()
    assert pid == os.getpid() != worker.pid


def test_the_start_time_is_the_process_start_time():
    before = time.time()
    child = subprocess.Popen(["sleep", "30"])
    try:
        record = action.holder(pid=child.pid)
    finally:
        child.kill()
        child.wait()
    started = calendar.timegm(time.strptime(record["started"], "%Y-%m-%dT%H:%M:%SZ"))
    assert before - 2 <= started <= time.time() + 1
    assert record["pid"] == child.pid


def test_without_proc_there_is_no_start_time_and_no_takeover(tmp_path):
    record = action.holder(pid=os.getpid(), proc=str(tmp_path / "no-proc"))
    assert "started" not in record and "start_ticks" not in record
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    lock = dict(action.holder(pid=os.getpid()), pid=dead_pid())
    assert action.process_gone(lock, record, proc=str(tmp_path / "no-proc")) is False


def test_a_dead_run_of_this_controller_is_taken_over_with_a_warning(plugin, root):
    me = action.holder()
    planted = plant(root, dict(me, pid=dead_pid(), start_ticks=12345))
    result, calls = plugin(dict(root=str(root), state="locked"))
    assert not result.get("failed"), result
    assert len(calls) == 2
    assert calls[1]["takeover"] is True and calls[1]["takeover_of"] == planted
    assert result["taken_over"] == planted and result["changed"] is True
    assert on_disk(root)["pid"] == os.getpid()
    assert any("took over the deploy lock" in w and "pid %d" % planted["pid"] in w and "process is gone" in w
               for w in result["warnings"]), result


def test_a_reused_pid_is_a_dead_run(plugin, root):
    me = action.holder()
    planted = plant(root, dict(me, start_ticks=me["start_ticks"] - 1))  # this pid, an earlier process
    result, calls = plugin(dict(root=str(root), state="locked"))
    assert not result.get("failed"), result
    assert len(calls) == 2 and result["taken_over"] == planted


def test_a_live_run_is_refused_and_the_failure_passed_through(plugin, root):
    child = subprocess.Popen(["sleep", "30"])
    try:
        planted = plant(root, action.holder(pid=child.pid))
        result, calls = plugin(dict(root=str(root), state="locked"))
    finally:
        child.kill()
        child.wait()
    assert result["failed"] is True and len(calls) == 1
    assert "ansible-playbook pid %d on controller %s" % (child.pid, socket.gethostname()) in result["msg"]
    assert result["lock"] == planted and on_disk(root) == planted


@pytest.mark.parametrize("other", [
    dict(host="another-controller"),
    dict(boot_id="another-boot"),  # a machine by the same name, or this one before a reboot
    dict(pid_ns=1),  # a container by the same name
], ids=["host", "boot", "pid-namespace"])
def test_a_run_of_another_controller_is_never_taken_over_by_its_pid(plugin, root, other):
    planted = plant(root, dict(action.holder(), **dict(other, pid=dead_pid())))
    result, calls = plugin(dict(root=str(root), state="locked"))
    assert result["failed"] is True and len(calls) == 1
    assert on_disk(root) == planted


def test_unlocked_names_this_run(plugin, root):
    plugin(dict(root=str(root), state="locked"))
    result, calls = plugin(dict(root=str(root), state="unlocked"))
    assert not result.get("failed") and result["changed"] is True, result
    assert calls[-1]["holder"]["pid"] == os.getpid()
    assert not (root / ".pydeploy" / "deploy.lock").exists()


@pytest.mark.parametrize("name", ["holder", "takeover", "takeover_of"])
def test_the_plugin_s_own_options_are_refused_in_a_task(plugin, root, name):
    result, calls = plugin(dict(root=str(root), state="locked", **{name: {"host": "x", "pid": 1}}))
    assert result["failed"] is True and name in result["msg"] and "action plugin" in result["msg"]
    assert calls == [] and not root.exists()


def test_the_lock_is_not_taken_in_the_background(plugin, root):
    result, calls = plugin(dict(root=str(root), state="locked"), async_val=60)
    assert result["failed"] is True and "async" in result["msg"] and "foreground" in result["msg"]
    assert calls == [] and not root.exists()


def test_other_states_go_to_the_module_unchanged(plugin, root):
    args = dict(root=str(root), state="query")
    result, calls = plugin(args)
    assert calls == [args]
    assert not result.get("failed") and result["current"] is None


def test_other_states_keep_async(plugin, root, monkeypatch):
    seen = []
    monkeypatch.setattr(action.ActionModule, "_execute_module",
                        lambda self, **kw: seen.append(kw["wrap_async"]) or {"ansible_job_id": "j1", "started": 1})
    result, _calls = plugin(dict(root=str(root), state="query"), async_val=60)
    assert seen == [True] and result["ansible_job_id"] == "j1"
