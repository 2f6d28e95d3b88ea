# -*- coding: utf-8 -*-
# Copyright: pydeploy.web contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of pydeploy.web.release: for the deploy lock's states (locked,
unlocked) it names the holder, the run on the controller, and takes over the lock of a
run on this controller whose process is gone. Every other state goes to the module as
it is.

Which process is "the run": ansible-playbook itself, the controller's top process. An
action plugin runs in a worker process that ansible-playbook forks for each task (its
multiprocessing context), so the worker's own pid changes from task to task and dies
with it, and os.getppid() is ansible-playbook only for as long as it lives (a worker
whose parent died is re-parented, to pid 1 or a subreaper). multiprocessing records the
parent when it forks the worker: multiprocessing.parent_process() is ansible-playbook
in a worker, and None in the process that is itself the top one (a strategy that runs
the action in the main process), where the pid is os.getpid(). Its start time, from
/proc/<pid>/stat, tells it from a later process that reuses the pid.
"""

from __future__ import annotations

import getpass
import multiprocessing
import os
import socket
import time

from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash

MODULE = "pydeploy.web.release"
# Set by this plugin only.
INTERNAL = ("holder", "takeover", "takeover_of")


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def start_ticks(pid, proc="/proc"):
    """When process pid started, in clock ticks since boot (field 22 of
    /proc/<pid>/stat); None when there is no such process or no /proc."""
    data = _read(os.path.join(proc, str(pid), "stat"))
    if data is None:
        return None
    try:
        # The command name, field 2, is in parentheses and may hold spaces and ')'.
        return int(data[data.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _boot_time(proc="/proc"):
    for line in (_read(os.path.join(proc, "stat")) or "").splitlines():
        if line.startswith("btime "):
            try:
                return int(line.split()[1])
            except (ValueError, IndexError):
                return None
    return None


def controller_pid():
    """The pid of ansible-playbook (see the module docstring)."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None else os.getpid()


def _user():
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry for the uid (a container's arbitrary uid)
        return str(os.getuid())


def holder(pid=None, proc="/proc"):
    """The holder record of this run: controller host, pid, start time, user and,
    where the controller has /proc, what makes the identity exact."""
    pid = controller_pid() if pid is None else pid
    record = dict(host=socket.gethostname(), pid=pid, user=_user())
    ticks = start_ticks(pid, proc)
    if ticks is not None:
        record["start_ticks"] = ticks
        btime = _boot_time(proc)
        if btime is not None:
            started = btime + ticks / float(os.sysconf("SC_CLK_TCK"))
            record["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        boot_id = (_read(os.path.join(proc, "sys/kernel/random/boot_id")) or "").strip()
        if boot_id:
            record["boot_id"] = boot_id
        try:
            record["pid_ns"] = os.stat(os.path.join(proc, "self/ns/pid")).st_ino
        except OSError:
            pass
    return record


def process_gone(lock, me, proc="/proc"):
    """Whether the run that holds `lock` is known to be dead: it ran on this controller
    (same host name, and the same kernel boot and pid namespace, which a container or
    another machine with the same name does not share), and its pid is not running or
    is running a later process. False whenever that cannot be known: another
    controller, a controller without /proc (macOS), a record without a start time."""
    if not isinstance(lock, dict) or lock.get("unreadable") or "start_ticks" not in me:
        return False
    if lock.get("host") != me.get("host"):
        return False
    for key in ("boot_id", "pid_ns"):
        if lock.get(key) is None or lock.get(key) != me.get(key):
            return False  # another machine or container by the same name, or a reboot: cannot tell
    pid, recorded = lock.get("pid"), lock.get("start_ticks")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(recorded, int):
        return False
    ticks = start_ticks(pid, proc)
    return ticks is None or ticks != recorded


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = True  # the other states, as the module alone supported it

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp  # tmp no longer has any effect
        args = dict(self._task.args)
        state = args.get("state")
        if state not in ("locked", "unlocked"):
            wrap_async = self._task.async_val and not self._connection.has_native_async
            result = merge_hash(result, self._execute_module(module_name=MODULE, module_args=args,
                                                             task_vars=task_vars, wrap_async=wrap_async))
            if not wrap_async:
                self._remove_tmp_path(self._connection._shell.tmpdir)
            return result

        given = [name for name in INTERNAL if name in args]
        if given or self._task.async_val:
            result.update(failed=True, msg="%s of %s with state=%s: %s" % (
                ", ".join(given) or "async", MODULE, state,
                "set by its action plugin on the controller, not in a task" if given
                else "the deploy lock is taken and released in the foreground"))
            return result
        me = holder()
        args["holder"] = me
        outcome = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        if state == "locked" and outcome.get("failed") and process_gone(outcome.get("lock"), me):
            # The lock names a run of this controller whose process is gone: take it over,
            # if the lock still names that run (the module checks, under its own lock).
            args.update(takeover=True, takeover_of=outcome["lock"])
            outcome = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        self._remove_tmp_path(self._connection._shell.tmpdir)
        return merge_hash(result, outcome)
