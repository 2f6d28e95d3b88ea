"""The deploy lock of pydeploy.web.release (states locked and unlocked): taken,
refused naming the holder, idempotent for its own run, released only by its holder,
taken over when stale or when the action plugin found its process gone, never
through a link, and nothing written in check mode."""
import fcntl
import json
import os
import time

import pytest

from ansible_collections.pydeploy.web.plugins.modules import release

ME = dict(host="ctl1", pid=4100, started="2026-12-04T18:00:00Z", user="alice", start_ticks=777,
          boot_id="b00t", pid_ns=4026531836)
OTHER = dict(host="ctl2", pid=4242, started="2026-12-04T17:59:00Z", user="bob", start_ticks=555,
             boot_id="b00u", pid_ns=4026531836)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "srv" / "app"


@pytest.fixture
def warnings(monkeypatch):
    seen = []
    monkeypatch.setattr(release.AnsibleModule, "warn", lambda self, w: seen.append(w))
    return seen


def lock_file(root):
    return root / ".pydeploy" / "deploy.lock"


def read_lock(root):
    return json.loads(lock_file(root).read_text())


def run(run_module, root, state, holder="me", check_mode=False, **kw):
    args = dict(root=str(root), state=state, **kw)
    if holder is not None:
        args["holder"] = ME if holder == "me" else holder
    return run_module(release.main, args, check_mode=check_mode)


def plant(root, holder, age=0):
    """A lock held by `holder` since `age` seconds ago."""
    (root / ".pydeploy").mkdir(parents=True, exist_ok=True)
    lock = dict(holder, since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age)))
    lock_file(root).write_text(json.dumps(lock))
    return lock


def test_locked_creates_the_lock_naming_the_holder(run_module, root):
    result, failed = run(run_module, root, "locked")
    assert not failed, result["msg"]
    assert result["changed"] is True and result["taken_over"] is None
    on_disk = read_lock(root)
    assert on_disk == result["lock"]
    assert {k: on_disk[k] for k in ME} == ME
    assert abs(release.parse_utc(on_disk["since"]) - time.time()) < 5
    # Only what the lock needs: the root and .pydeploy/, no release layout.
    assert sorted(os.listdir(root)) == [".pydeploy"]
    assert sorted(os.listdir(root / ".pydeploy")) == ["deploy.lock", "lock"]


def test_locking_again_by_the_same_run_changes_nothing(run_module, root):
    first, _failed = run(run_module, root, "locked")
    again, failed = run(run_module, root, "locked")
    assert not failed, again["msg"]
    assert again["changed"] is False and again["lock"] == first["lock"]
    assert read_lock(root) == first["lock"]  # since is not moved


def test_a_second_run_is_refused_at_once_naming_the_holder(run_module, root, warnings):
    planted = plant(root, OTHER, age=90)
    started = time.time()
    result, failed = run(run_module, root, "locked")
    assert time.time() - started < 5
    assert failed
    msg = result["msg"]
    assert "ansible-playbook pid 4242 on controller ctl2, started 2026-12-04T17:59:00Z, run by user bob" in msg
    assert "holding it since %s, 90 s ago" % planted["since"] in msg
    assert "rm %s" % lock_file(root) in msg and "stale_after" in msg
    assert result["lock"] == planted  # for the action plugin to look at
    assert read_lock(root) == planted
    assert warnings == []


def test_a_different_process_with_the_same_pid_is_another_run(run_module, root):
    planted = plant(root, dict(ME, start_ticks=111))  # the pid reused by a later process
    result, failed = run(run_module, root, "locked")
    assert failed and result["lock"] == planted


def test_a_lock_older_than_stale_after_is_taken_over_with_a_warning(run_module, root, warnings):
    planted = plant(root, OTHER, age=7200)
    result, failed = run(run_module, root, "locked", stale_after=3600)
    assert not failed, result["msg"]
    assert result["changed"] is True and result["taken_over"] == planted
    assert {k: read_lock(root)[k] for k in ME} == ME
    assert len(warnings) == 1
    assert "took over the deploy lock" in warnings[0] and "pid 4242 on controller ctl2" in warnings[0]
    assert "older than stale_after (3600 s)" in warnings[0]


def test_stale_after_zero_never_takes_a_lock_over_by_its_age(run_module, root):
    planted = plant(root, OTHER, age=10 ** 7)
    result, failed = run(run_module, root, "locked", stale_after=0)
    assert failed and "stale_after is 0" in result["msg"]
    assert read_lock(root) == planted


def test_a_lock_younger_than_stale_after_says_when_it_will_be_taken_over(run_module, root):
    planted = plant(root, OTHER, age=100)
    result, failed = run(run_module, root, "locked", stale_after=3600)
    assert failed
    expected = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(release.parse_utc(planted["since"]) + 3600))
    assert "taken over from %s on" % expected in result["msg"]


def test_takeover_replaces_the_lock_it_was_given(run_module, root, warnings):
    planted = plant(root, OTHER)
    result, failed = run(run_module, root, "locked", takeover=True, takeover_of=planted)
    assert not failed, result["msg"]
    assert result["taken_over"] == planted and result["changed"] is True
    assert read_lock(root)["pid"] == ME["pid"]
    assert len(warnings) == 1 and "whose process is gone" in warnings[0] and "pid 4242" in warnings[0]
    assert not [n for n in os.listdir(root / ".pydeploy") if n.endswith(".tmp")]


def test_takeover_is_refused_when_the_lock_names_another_run_by_now(run_module, root, warnings):
    dead = plant(root, OTHER)
    newer = plant(root, dict(OTHER, pid=5000, start_ticks=999))  # another run took it meanwhile
    result, failed = run(run_module, root, "locked", takeover=True, takeover_of=dead)
    assert failed and "pid 5000" in result["msg"]
    assert read_lock(root) == newer and warnings == []


def test_takeover_needs_the_lock_to_take_over(run_module, root):
    result, failed = run(run_module, root, "locked", takeover=True)
    assert failed and "takeover_of" in result["msg"]


def test_locked_needs_a_holder(run_module, root):
    result, failed = run(run_module, root, "locked", holder=None)
    assert failed and "holder" in result["msg"]
    assert not root.exists()


def test_unlocked_removes_the_lock_of_its_own_run(run_module, root):
    run(run_module, root, "locked")
    result, failed = run(run_module, root, "unlocked")
    assert not failed, result["msg"]
    assert result["changed"] is True and result["lock"] is None
    assert not lock_file(root).exists()
    again, failed = run(run_module, root, "unlocked")
    assert not failed and again["changed"] is False


def test_unlocked_leaves_the_lock_of_another_run_with_a_warning(run_module, root, warnings):
    planted = plant(root, OTHER)
    result, failed = run(run_module, root, "unlocked")
    assert not failed, result["msg"]
    assert result["changed"] is False and result["lock"] == planted
    assert read_lock(root) == planted
    assert len(warnings) == 1 and "pid 4242 on controller ctl2" in warnings[0] and "force" in warnings[0]


def test_unlocked_with_force_removes_any_lock(run_module, root):
    plant(root, OTHER)
    result, failed = run(run_module, root, "unlocked", holder=None, force=True)
    assert not failed, result["msg"]
    assert result["changed"] is True and not lock_file(root).exists()


def test_unlocked_on_a_missing_root_creates_nothing(run_module, root):
    result, failed = run(run_module, root, "unlocked")
    assert not failed, result["msg"]
    assert result["changed"] is False and not root.exists()


def test_unlocked_needs_a_holder_or_force(run_module, root):
    result, failed = run(run_module, root, "unlocked", holder=None)
    assert failed and "holder" in result["msg"] and "force" in result["msg"]


def test_a_symlink_at_the_lock_path_is_refused_and_not_followed(run_module, root, tmp_path):
    (root / ".pydeploy").mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    os.symlink(str(target), str(lock_file(root)))
    for state in ("locked", "unlocked"):
        result, failed = run(run_module, root, state)
        assert failed and "is a symlink" in result["msg"], (state, result)
    assert target.read_text() == "precious"
    assert os.path.islink(lock_file(root))


def test_a_dangling_symlink_at_the_lock_path_is_not_created_through(run_module, root, tmp_path):
    (root / ".pydeploy").mkdir(parents=True)
    os.symlink(str(tmp_path / "made-by-root"), str(lock_file(root)))
    result, failed = run(run_module, root, "locked")
    assert failed and "is a symlink" in result["msg"]
    assert not (tmp_path / "made-by-root").exists()


def test_a_fifo_at_the_lock_path_is_refused_without_blocking(run_module, root):
    (root / ".pydeploy").mkdir(parents=True)
    os.mkfifo(str(lock_file(root)))
    result, failed = run(run_module, root, "locked")
    assert failed and "not a regular file" in result["msg"]


def test_an_unreadable_lock_is_held_until_stale(run_module, root):
    (root / ".pydeploy").mkdir(parents=True)
    lock_file(root).write_text("")  # a crash between the create and the write
    result, failed = run(run_module, root, "locked")
    assert failed and "an unreadable lock file" in result["msg"]
    old = time.time() - 7200
    os.utime(str(lock_file(root)), (old, old))
    result, failed = run(run_module, root, "locked", stale_after=3600)
    assert not failed, result["msg"]
    assert result["taken_over"]["unreadable"] is True and read_lock(root)["pid"] == ME["pid"]


def test_an_untrusted_state_directory_is_refused(run_module, root):
    (root / ".pydeploy").mkdir(parents=True)
    os.chmod(str(root / ".pydeploy"), 0o777)
    result, failed = run(run_module, root, "locked")
    assert failed and "is writable by others" in result["msg"]
    assert not lock_file(root).exists()


def test_check_mode_reports_and_writes_nothing(run_module, root, warnings):
    result, failed = run(run_module, root, "locked", check_mode=True)
    assert not failed and result["changed"] is True and result["lock"]["pid"] == ME["pid"]
    assert not root.exists()

    planted = plant(root, OTHER, age=7200)
    result, failed = run(run_module, root, "locked", check_mode=True, stale_after=3600)
    assert not failed and result["changed"] is True and result["taken_over"] == planted
    assert read_lock(root) == planted and len(warnings) == 1

    result, failed = run(run_module, root, "locked", check_mode=True)
    assert failed and "pid 4242" in result["msg"]

    run(run_module, root, "unlocked", holder=None, force=True)
    run(run_module, root, "locked")
    result, failed = run(run_module, root, "unlocked", check_mode=True)
    assert not failed and result["changed"] is True
    assert read_lock(root)["pid"] == ME["pid"]


def test_the_lock_is_written_under_the_per_call_lock(run_module, root, monkeypatch):
    """A call of another run that holds the root's per-call lock is waited for, then
    the deploy lock is read: a second run is refused naming the deploy lock's holder."""
    planted = plant(root, OTHER)
    holder = open(root / ".pydeploy" / "lock", "a+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    monkeypatch.setattr(release, "PER_CALL_LOCK_WAIT", 0.5)
    try:
        result, failed = run(run_module, root, "locked")
    finally:
        holder.close()
    assert failed and "another deploy holds the lock" in result["msg"]  # waited, then gave up
    result, failed = run(run_module, root, "locked")
    assert failed and result["lock"] == planted
