"""pydeploy.web.release against real archives made by the tests: hostile members,
checksums, idempotence, check mode, pruning, rollback and the lock."""
import fcntl
import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile
import time

import pytest

from ansible_collections.pydeploy.web.plugins.module_utils import _release
from ansible_collections.pydeploy.web.plugins.modules import release


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_tar(path, members, compression="gz"):
    """members: list of (name, kind, payload) with kind file|dir|symlink|hardlink|chr|fifo;
    payload is the content (file), the link target (links) or a mode (dir)."""
    with tarfile.open(path, "w:%s" % compression if compression else "w") as tf:
        for name, kind, payload, *extra in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            data = None
            if kind == "file":
                data = payload.encode() if isinstance(payload, str) else payload
                info.size = len(data)
                info.mode = extra[0] if extra else 0o644
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = payload or 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return str(path), sha256(path)


def app_archive(tmp_path, version, extra=()):
    return make_tar(tmp_path / ("app-%s.tar.gz" % version), [
        ("app", "dir", 0o755),
        ("app/wsgi.py", "file", "VERSION = %r\n" % version),
        ("app/static/site.css", "file", "body{}"),
        ("manage.py", "file", "#!/usr/bin/env python3\n", 0o755),
    ] + list(extra))


@pytest.fixture(params=["own policy only (Python 3.11.2)", "with tarfile.data_filter"])
def filter_mode(request, monkeypatch):
    if request.param.startswith("own") and hasattr(tarfile, "data_filter"):
        monkeypatch.delattr(tarfile, "data_filter")
    elif not request.param.startswith("own") and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data_filter")
    return request.param


@pytest.fixture
def site(tmp_path):
    """An application root inside a sandbox directory, with a canary outside it."""
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "canary").write_text("untouched")
    return sandbox / "srv" / "app", sandbox


def snapshot(path):
    """Every path under `path` with its type and content, to prove nothing changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                out[p] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[p] = ("file", f.read())
            else:
                out[p] = ("dir", None)
    return out


def deploy(run_module, root, archive, **kw):
    src, checksum = archive
    args = dict(root=str(root), src=src, checksum=checksum)
    args.update(kw)
    return run_module(release.main, args)


# ----------------------------------------------------------------- hostile archives

HOSTILE = [
    ("traversal", [("../escaped", "file", "x")], "'..' component refused"),
    ("nested traversal", [("app/../../escaped", "file", "x")], "'..' component refused"),
    ("absolute path", [("/tmp/pydeploy-escaped", "file", "x")], "absolute path refused"),
    ("absolute symlink", [("etc", "symlink", "/etc")], "absolute symlink"),
    ("relative symlink escaping", [("up", "symlink", "../../..")], "points outside the release"),
    ("relative symlink escaping through a chain",
     [("here", "symlink", "."), ("up", "symlink", "here/..")], "resolves outside the release through other links"),
    ("file written through a symlink",
     [("inner", "dir", 0o755), ("door", "symlink", "inner"), ("door/file", "file", "x")],
     "would be written through the symlink door"),
    ("hardlink to an outside path", [("pw", "hardlink", "../../canary")], "'..' component refused"),
    ("hardlink to an absolute path", [("pw", "hardlink", "/etc/passwd")], "absolute path refused"),
    ("device node", [("null", "chr", None)], "device node refused"),
    ("FIFO", [("pipe", "fifo", None)], "FIFO refused"),
    ("duplicate name replacing a file by a symlink",
     [("a", "file", "x"), ("a", "symlink", "../../canary")], None),
    ("manifest forged by the archive", [("RELEASE.json", "file", "{}")], "written by the module"),
]


@pytest.mark.parametrize("case, members, reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_archive_is_refused_and_nothing_is_written_outside(
        run_module, site, tmp_path, filter_mode, case, members, reason):
    root, sandbox = site
    good = app_archive(tmp_path, "1")
    result, failed = deploy(run_module, root, good)
    assert not failed, result["msg"]
    before = snapshot(sandbox)
    bad = make_tar(tmp_path / "bad.tar.gz", [("app/ok.py", "file", "ok")] + members)
    result, failed = deploy(run_module, root, bad)
    assert failed, "%s was accepted" % case
    name = members[-1][0]
    assert repr(name) in result["msg"] or name in result["msg"]
    if reason and not (filter_mode.startswith("with") and "data filter" in result["msg"]):
        assert reason in result["msg"]
    # Nothing changed anywhere in the sandbox: no partial dir, current untouched, canary intact.
    assert snapshot(sandbox) == before
    assert os.readlink(root / "current") == "releases/" + good[1][:12]
    assert not os.path.exists("/tmp/pydeploy-escaped")


def test_setuid_and_group_write_bits_are_stripped(run_module, site, tmp_path, filter_mode):
    root, _sandbox = site
    archive = make_tar(tmp_path / "modes.tar", [("bin", "dir", 0o777), ("bin/tool", "file", "x", 0o6775),
                                                ("bin/data", "file", "x", 0o666)], compression=None)
    result, failed = deploy(run_module, root, archive)
    assert not failed, result["msg"]
    rel = root / "releases" / result["release_id"]
    assert os.stat(rel / "bin" / "tool").st_mode & 0o7777 == 0o755
    assert os.stat(rel / "bin" / "data").st_mode & 0o7777 == 0o644
    assert os.stat(rel / "bin").st_mode & 0o7777 == 0o755


def test_member_count_bomb_is_refused(run_module, site, tmp_path):
    root, _sandbox = site
    archive = make_tar(tmp_path / "many.tar.gz", [("f%d" % i, "file", "") for i in range(50)])
    result, failed = deploy(run_module, root, archive, max_members=20)
    assert failed and "more than max_members=20 members" in result["msg"]
    assert os.listdir(root / "releases") == []


def test_size_bomb_is_refused(run_module, site, tmp_path):
    root, _sandbox = site
    # 8 MiB of zeros compress to a few KiB: the declared content is what counts.
    archive = make_tar(tmp_path / "zeros.tar.xz", [("zeros", "file", b"\0" * (8 << 20))], compression="xz")
    assert os.path.getsize(archive[0]) < 100000
    result, failed = deploy(run_module, root, archive, max_size=1 << 20)
    assert failed and "exceeds max_size=1048576 bytes" in result["msg"]
    assert os.listdir(root / "releases") == []


def test_symlinks_and_hardlinks_inside_the_release_are_kept(run_module, site, tmp_path, filter_mode):
    root, _sandbox = site
    archive = make_tar(tmp_path / "links.tar.gz", [
        ("app", "dir", 0o755), ("app/real.py", "file", "x = 1\n"),
        ("app/alias.py", "symlink", "real.py"), ("top.py", "symlink", "app/real.py"),
        ("app/hard.py", "hardlink", "app/real.py")])
    result, failed = deploy(run_module, root, archive)
    assert not failed, result["msg"]
    rel = root / "releases" / result["release_id"]
    assert (rel / "top.py").read_text() == "x = 1\n" and os.readlink(rel / "app" / "alias.py") == "real.py"
    assert os.stat(rel / "app" / "hard.py").st_ino == os.stat(rel / "app" / "real.py").st_ino


# ------------------------------------------------------------------ normal deploys

def test_first_deploy_lays_out_the_root_and_switches(run_module, site, tmp_path):
    root, _sandbox = site
    archive = app_archive(tmp_path, "1")
    result, failed = deploy(run_module, root, archive, shared_paths=["media"])
    assert not failed, result["msg"]
    rid = archive[1][:12]
    assert result["changed"] and result["unpacked"] and result["switched"]
    assert result["release_id"] == rid and result["current"] == rid and result["previous"] is None
    assert result["release_path"] == str(root / "releases" / rid)
    assert os.readlink(root / "current") == "releases/" + rid
    assert (root / "current" / "app" / "wsgi.py").read_text() == "VERSION = '1'\n"
    manifest = json.loads((root / "releases" / rid / "RELEASE.json").read_text())
    assert manifest["sha256"] == archive[1] and manifest["id"] == rid and manifest["members"] == 4
    assert manifest["source"] == "app-1.tar.gz" and manifest["time"].endswith("Z")
    assert os.readlink(root / "releases" / rid / "media") == "../../shared/media"
    assert (root / "shared" / "media").is_dir()
    # File times come from the archive (collectstatic compares them).
    assert os.stat(root / "current" / "app" / "wsgi.py").st_mtime == 1700000000
    history = [json.loads(line) for line in (root / ".pydeploy" / "history.jsonl").read_text().splitlines()]
    assert [e["event"] for e in history] == ["unpacked", "activated"]
    assert history[1]["release"] == rid and history[1]["previous"] is None and history[1]["sha256"] == archive[1]
    assert os.listdir(root / "releases") == [rid]


def test_shared_path_is_seeded_from_the_release_once_and_never_overwritten(run_module, site, tmp_path):
    root, _sandbox = site
    v1 = app_archive(tmp_path, "1", [("media", "dir", 0o755), ("media/logo.png", "file", "v1 logo")])
    deploy(run_module, root, v1, shared_paths=["media"])
    assert (root / "shared" / "media" / "logo.png").read_text() == "v1 logo"
    (root / "shared" / "media" / "upload.jpg").write_text("user upload")
    v2 = app_archive(tmp_path, "2", [("media", "dir", 0o755), ("media/logo.png", "file", "v2 logo")])
    result, _failed = deploy(run_module, root, v2, shared_paths=["media"])
    assert (root / "current" / "media" / "upload.jpg").read_text() == "user upload"
    assert (root / "shared" / "media" / "logo.png").read_text() == "v1 logo"


def test_rerun_changes_nothing_and_does_not_read_the_archive(run_module, site, tmp_path, monkeypatch):
    root, _sandbox = site
    archive = app_archive(tmp_path, "1")
    deploy(run_module, root, archive)
    os.unlink(archive[0])  # a re-run must not need it

    def no_reading(*a, **kw):
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(release, "sha256_file", no_reading)
    monkeypatch.setattr(release, "extract", no_reading)
    result, failed = deploy(run_module, root, archive)
    assert not failed, result["msg"]
    assert result["changed"] is False and not result["unpacked"] and not result["switched"]
    history = (root / ".pydeploy" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2


def test_checksum_mismatch_fails_before_anything_is_written(run_module, site, tmp_path):
    root, _sandbox = site
    src, real = app_archive(tmp_path, "1")
    wrong = "0" * 64
    result, failed = run_module(release.main, dict(root=str(root), src=src, checksum=wrong))
    assert failed
    assert "expected sha256 %s, actual %s" % (wrong, real) in result["msg"]
    assert os.listdir(root / "releases") == []
    assert not os.path.lexists(root / "current")


def test_one_release_id_for_two_archives_is_refused(run_module, site, tmp_path):
    root, _sandbox = site
    deploy(run_module, root, app_archive(tmp_path, "1"), release_id="v1")
    result, failed = deploy(run_module, root, app_archive(tmp_path, "2"), release_id="v1")
    assert failed and "already unpacked from an archive with sha256" in result["msg"]


@pytest.mark.parametrize("args, message", [
    (dict(checksum="abc"), "checksum must be a SHA-256"),
    (dict(release_id="../x", checksum="a" * 64), "release_id '../x' may hold"),
    (dict(state="active"), "needs checksum"),
    (dict(state="rollback"), "has no current release to roll back from"),
    (dict(keep_releases=0), "keep_releases must be at least 1"),
    (dict(state="failed", reason="gate"), "state=failed needs release_id (or checksum)"),
])
def test_bad_input_fails_with_a_clear_message(run_module, site, args, message):
    root, _sandbox = site
    result, failed = run_module(release.main, dict(root=str(root), **args))
    assert failed and message in result["msg"]


def test_not_a_tar_archive(run_module, site, tmp_path):
    root, _sandbox = site
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not an archive")
    result, failed = run_module(release.main, dict(root=str(root), src=str(junk), checksum=sha256(junk)))
    assert failed and "is not a readable tar archive" in result["msg"]
    assert os.listdir(root / "releases") == []


def test_check_mode_reports_and_writes_nothing(run_module, site, tmp_path):
    root, sandbox = site
    archive = app_archive(tmp_path, "1")
    before = snapshot(sandbox)
    result, failed = run_module(release.main, dict(root=str(root), src=archive[0], checksum=archive[1],
                                                   _ansible_diff=True), check_mode=True)
    assert not failed, result["msg"]
    assert result["changed"] and result["unpacked"] and result["switched"]
    assert result["current"] == archive[1][:12]
    assert "current -> releases/%s" % archive[1][:12] in result["diff"]["after"]
    assert "current -> (none)" in result["diff"]["before"]
    assert snapshot(sandbox) == before and not root.exists()


def test_check_mode_still_verifies_the_checksum(run_module, site, tmp_path):
    root, _sandbox = site
    src, _sha256 = app_archive(tmp_path, "1")
    result, failed = run_module(release.main, dict(root=str(root), src=src, checksum="f" * 64), check_mode=True)
    assert failed and "checksum mismatch" in result["msg"]


def test_a_failed_unpack_leaves_no_partial_directory_and_current_alone(run_module, site, tmp_path):
    root, _sandbox = site
    v1 = app_archive(tmp_path, "1")
    deploy(run_module, root, v1)
    truncated = tmp_path / "truncated.tar.gz"
    with open(app_archive(tmp_path, "2")[0], "rb") as f:
        truncated.write_bytes(f.read()[:200])
    result, failed = run_module(release.main, dict(root=str(root), src=str(truncated), checksum=sha256(truncated)))
    assert failed
    assert os.listdir(root / "releases") == [v1[1][:12]]
    assert os.readlink(root / "current") == "releases/" + v1[1][:12]


# ------------------------------------------------------------- prune and rollback

def deploy_versions(run_module, root, tmp_path, versions, **kw):
    ids = []
    for v in versions:
        archive = app_archive(tmp_path, v)
        result, failed = deploy(run_module, root, archive, **kw)
        assert not failed, result["msg"]
        ids.append(result["release_id"])
    return ids


def test_pruning_follows_deploy_order_not_file_times(run_module, site, tmp_path):
    root, _sandbox = site
    ids = deploy_versions(run_module, root, tmp_path, ["1", "2", "3", "4"], keep_releases=10)
    # Scramble the times: the oldest release looks newest, the newest looks oldest.
    now = time.time()
    for age, rid in enumerate(ids):
        path = root / "releases" / rid
        os.utime(path, (now - 100000 * (len(ids) - age) * -1, now + 100000 * (len(ids) - age)))
        os.utime(path / "RELEASE.json", (1, 1))
    result, failed = run_module(release.main, dict(root=str(root), state="pruned", keep_releases=2))
    assert not failed, result["msg"]
    assert result["pruned"] == ids[:2]
    assert sorted(os.listdir(root / "releases")) == sorted(ids[2:])
    assert result["releases"] == ids[2:]


def test_pruning_never_removes_current_or_the_rollback_target(run_module, site, tmp_path):
    root, _sandbox = site
    ids = deploy_versions(run_module, root, tmp_path, ["1", "2", "3", "4"], keep_releases=10)
    # An operator pointed current back at the first release by hand.
    os.unlink(root / "current")
    os.symlink("releases/" + ids[0], root / "current")
    result, failed = run_module(release.main, dict(root=str(root), state="pruned", keep_releases=1))
    assert not failed, result["msg"]
    assert ids[0] in os.listdir(root / "releases")
    assert result["current"] == ids[0]
    assert set(result["pruned"]) == set(ids[1:]) - {result["rollback_target"]}


def test_active_prunes_to_keep_releases(run_module, site, tmp_path):
    root, _sandbox = site
    ids = deploy_versions(run_module, root, tmp_path, ["1", "2", "3", "4", "5"], keep_releases=3)
    assert sorted(os.listdir(root / "releases")) == sorted(ids[2:])


def test_leftover_partial_directories_are_removed(run_module, site, tmp_path):
    root, _sandbox = site
    deploy_versions(run_module, root, tmp_path, ["1"])
    (root / "releases" / ".deadbeef0000.partial").mkdir()
    result, failed = run_module(release.main, dict(root=str(root), state="pruned"))
    assert not failed and result["changed"]
    assert not (root / "releases" / ".deadbeef0000.partial").exists()


def test_rollback_reads_current_instead_of_guessing(run_module, site, tmp_path):
    root, _sandbox = site
    a, b, c = deploy_versions(run_module, root, tmp_path, ["1", "2", "3"])
    # current was moved to b outside the module: the rollback goes to the release before b.
    os.unlink(root / "current")
    os.symlink("releases/" + b, root / "current")
    result, failed = run_module(release.main, dict(root=str(root), state="rollback"))
    assert not failed, result["msg"]
    assert result["previous"] == b and result["current"] == a
    assert os.readlink(root / "current") == "releases/" + a


def test_rollback_twice_walks_back_and_skips_the_release_rolled_back_from(run_module, site, tmp_path):
    root, _sandbox = site
    a, b, c = deploy_versions(run_module, root, tmp_path, ["1", "2", "3"])
    first, _failed = run_module(release.main, dict(root=str(root), state="rollback"))
    assert (first["previous"], first["current"]) == (c, b)
    second, _failed = run_module(release.main, dict(root=str(root), state="rollback"))
    assert (second["previous"], second["current"]) == (b, a)
    history = [json.loads(line) for line in (root / ".pydeploy" / "history.jsonl").read_text().splitlines()]
    assert [(e["event"], e["release"], e["previous"]) for e in history if e["event"] == "rolled_back"] == [
        ("rolled_back", b, c), ("rolled_back", a, b)]


def test_rollback_to_a_named_release(run_module, site, tmp_path):
    root, _sandbox = site
    a, b, c = deploy_versions(run_module, root, tmp_path, ["1", "2", "3"])
    result, failed = run_module(release.main, dict(root=str(root), state="rollback", release_id=a))
    assert not failed and result["current"] == a and result["changed"]
    missing, failed = run_module(release.main, dict(root=str(root), state="rollback", release_id="nope"))
    assert failed and "release nope is not unpacked" in missing["msg"]


def test_rollback_with_nothing_before_fails_clearly(run_module, site, tmp_path):
    root, _sandbox = site
    deploy_versions(run_module, root, tmp_path, ["1"])
    result, failed = run_module(release.main, dict(root=str(root), state="rollback"))
    assert failed and "no release to roll back to" in result["msg"]


def test_unpacked_state_leaves_current_alone_and_query_reports(run_module, site, tmp_path):
    root, _sandbox = site
    (a,) = deploy_versions(run_module, root, tmp_path, ["1"])
    v2 = app_archive(tmp_path, "2")
    result, failed = deploy(run_module, root, v2, state="unpacked")
    assert not failed and result["unpacked"] and not result["switched"] and result["current"] == a
    query, _failed = run_module(release.main, dict(root=str(root), state="query", release_id=v2[1][:12]))
    assert query["changed"] is False and query["release_present"] is True
    assert query["current"] == a and query["releases"] == [a, v2[1][:12]]
    switch, _failed = run_module(release.main, dict(root=str(root), release_id=v2[1][:12]))
    assert switch["switched"] and switch["current"] == v2[1][:12] and not switch["unpacked"]


def test_current_that_is_a_directory_is_not_clobbered(run_module, site, tmp_path):
    root, _sandbox = site
    (root / "current").mkdir(parents=True)
    (root / "current" / "precious").write_text("x")
    result, failed = deploy(run_module, root, app_archive(tmp_path, "1"))
    assert failed and "is not a symlink" in result["msg"]
    assert (root / "current" / "precious").read_text() == "x"


# ------------------------------------------------------------------ failure marks

def history_of(root):
    return [json.loads(line) for line in (root / ".pydeploy" / "history.jsonl").read_text().splitlines()]


def mark_failed(run_module, root, rid=None, check_mode=False, **kw):
    args = dict(root=str(root), state="failed", **kw)
    if rid is not None:
        args["release_id"] = rid
    result, failed = run_module(release.main, args, check_mode=check_mode)
    assert not failed, result["msg"]
    return result


def without_history(snap, root):
    return {k: v for k, v in snap.items() if k != str(root / ".pydeploy" / "history.jsonl")}


def test_marking_a_release_failed_records_the_reason_and_changes_nothing_else(run_module, site, tmp_path):
    root, sandbox = site
    a, b = deploy_versions(run_module, root, tmp_path, ["1", "2"])
    v3 = app_archive(tmp_path, "3")
    c = deploy(run_module, root, v3, state="unpacked")[0]["release_id"]
    before = snapshot(sandbox)
    result = mark_failed(run_module, root, c, reason="migrations failed")
    assert result["changed"] and not result["switched"] and not result["unpacked"] and result["pruned"] == []
    assert result["release_id"] == c and result["release_present"] and result["manifest"]["id"] == c
    assert (result["previous"], result["current"], result["rollback_target"]) == (b, b, a)
    assert result["releases"] == [a, b, c] and result["failed_releases"] == [c]
    event = history_of(root)[-1]
    assert (event["event"], event["release"], event["reason"]) == ("failed", c, "migrations failed")
    assert event["time"].endswith("Z") and event["user"]
    # Only the history grew: current, the releases and shared/ are as they were.
    assert without_history(snapshot(sandbox), root) == without_history(before, root)
    assert os.readlink(root / "current") == "releases/" + b


def test_marking_twice_changes_nothing_the_second_time(run_module, site, tmp_path):
    root, _sandbox = site
    a, b = deploy_versions(run_module, root, tmp_path, ["1", "2"])
    assert mark_failed(run_module, root, b, reason="health check failed")["changed"]
    again = mark_failed(run_module, root, b, reason="another reason")
    assert again["changed"] is False and again["failed_releases"] == [b]
    events = [e for e in history_of(root) if e["event"] == "failed"]
    assert len(events) == 1 and events[0]["reason"] == "health check failed"


def test_marking_by_checksum_without_a_reason(run_module, site, tmp_path):
    root, _sandbox = site
    deploy_versions(run_module, root, tmp_path, ["1"])
    v2 = app_archive(tmp_path, "2")
    deploy(run_module, root, v2, state="unpacked")
    result = mark_failed(run_module, root, checksum=v2[1])
    assert result["changed"] and result["release_id"] == v2[1][:12] and result["failed_releases"] == [v2[1][:12]]
    assert history_of(root)[-1] == dict(history_of(root)[-1], event="failed", release=v2[1][:12], reason="")


def test_a_release_that_is_not_present_can_be_marked(run_module, site, tmp_path):
    root, _sandbox = site
    (a,) = deploy_versions(run_module, root, tmp_path, ["1"])
    result = mark_failed(run_module, root, "0123456789ab", reason="unpack failed")
    assert result["changed"] and result["release_present"] is False and "manifest" not in result
    assert result["failed_releases"] == [] and result["current"] == a and result["releases"] == [a]
    assert history_of(root)[-1]["release"] == "0123456789ab"
    assert mark_failed(run_module, root, "0123456789ab")["changed"] is False


def test_marking_on_a_fresh_root_writes_only_the_history(run_module, site):
    root, _sandbox = site
    result = mark_failed(run_module, root, "v1", reason="unpack failed")
    assert result["changed"] and result["current"] is None and result["releases"] == []
    assert sorted(os.listdir(root)) == [".pydeploy"]
    assert [e["event"] for e in history_of(root)] == ["failed"]


def test_marking_in_check_mode_reports_and_appends_nothing(run_module, site, tmp_path):
    root, sandbox = site
    a, b = deploy_versions(run_module, root, tmp_path, ["1", "2"])
    before = snapshot(sandbox)
    result = mark_failed(run_module, root, b, check_mode=True, reason="health check failed")
    assert result["changed"] and result["failed_releases"] == [b] and result["rollback_target"] == a
    assert snapshot(sandbox) == before
    mark_failed(run_module, root, b, reason="health check failed")
    again = mark_failed(run_module, root, b, check_mode=True)
    assert again["changed"] is False and again["failed_releases"] == [b]


def test_marking_takes_the_lock(run_module, site, tmp_path):
    root, _sandbox = site
    (a,) = deploy_versions(run_module, root, tmp_path, ["1"])
    holder = open(root / ".pydeploy" / "lock", "r+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write(json.dumps(dict(pid=4242, host="web1", started="2026-11-20T10:00:00Z")))
    holder.flush()
    try:
        result, failed = run_module(release.main, dict(root=str(root), state="failed", release_id=a))
    finally:
        holder.close()
    assert failed and "pid 4242 on host web1" in result["msg"]
    assert [e["event"] for e in history_of(root)] == ["unpacked", "activated"]


def test_a_failed_release_is_never_the_rollback_target(run_module, site, tmp_path):
    root, _sandbox = site
    a, b, c = deploy_versions(run_module, root, tmp_path, ["1", "2", "3"], keep_releases=10)
    assert mark_failed(run_module, root, b, reason="bad")["rollback_target"] == a
    result, failed = run_module(release.main, dict(root=str(root), state="rollback"))
    assert not failed and (result["previous"], result["current"]) == (c, a)


def test_failed_after_the_switch_then_rollback_then_prune(run_module, site, tmp_path):
    """The deploy playbook's path: c is live, fails its verification, is marked and
    rolled back from; the next prune removes it however many releases are kept."""
    root, _sandbox = site
    a, b, c = deploy_versions(run_module, root, tmp_path, ["1", "2", "3"], keep_releases=10)
    marked = mark_failed(run_module, root, c, reason="verification failed")
    assert marked["current"] == c and marked["failed_releases"] == [c] and marked["rollback_target"] == b
    # The current release is never pruned, failed or not.
    kept, _failed = run_module(release.main, dict(root=str(root), state="pruned", keep_releases=10))
    assert kept["pruned"] == [] and kept["failed_releases"] == [c] and c in os.listdir(root / "releases")
    back, failed = run_module(release.main, dict(root=str(root), state="rollback"))
    assert not failed and back["current"] == b and back["failed_releases"] == [c]
    assert back["rollback_target"] == a
    pruned, failed = run_module(release.main, dict(root=str(root), state="pruned", keep_releases=10))
    assert not failed and pruned["pruned"] == [c] and pruned["changed"]
    assert pruned["releases"] == [a, b] and pruned["failed_releases"] == []
    assert sorted(os.listdir(root / "releases")) == sorted([a, b])
    assert history_of(root)[-1]["event"] == "pruned" and history_of(root)[-1]["releases"] == [c]


def test_active_prunes_a_release_that_failed_its_gate(run_module, site, tmp_path):
    root, _sandbox = site
    a, b = deploy_versions(run_module, root, tmp_path, ["1", "2"], keep_releases=10)
    v3 = app_archive(tmp_path, "3")
    c = deploy(run_module, root, v3, state="unpacked")[0]["release_id"]
    mark_failed(run_module, root, c, reason="django check failed")
    result, failed = deploy(run_module, root, app_archive(tmp_path, "4"), keep_releases=10)
    assert not failed, result["msg"]
    d = result["release_id"]
    assert result["pruned"] == [c] and result["releases"] == [a, b, d] and result["failed_releases"] == []
    assert sorted(os.listdir(root / "releases")) == sorted([a, b, d])


def test_failed_releases_are_pruned_first_then_the_oldest_beyond_keep(run_module, site, tmp_path):
    root, _sandbox = site
    a, b, c, d, e = deploy_versions(run_module, root, tmp_path, ["1", "2", "3", "4", "5"], keep_releases=10)
    mark_failed(run_module, root, c)
    # Of a, b, d, e (c does not count), keep 3: a goes; d is the rollback target, e current.
    result, failed = run_module(release.main, dict(root=str(root), state="pruned", keep_releases=3))
    assert not failed and result["pruned"] == [c, a] and result["releases"] == [b, d, e]
    assert result["rollback_target"] == d


def test_to_prune_never_returns_current_or_the_rollback_target(tmp_path):
    root = _release.Root(str(tmp_path / "app"))
    root.ensure_layout()
    for rid in ("a", "b", "c"):
        os.mkdir(root.release_path(rid))
        _release.write_manifest(root.release_path(rid), dict(id=rid))
    history = [dict(event="activated", release=r) for r in ("a", "b", "c")]
    history += [dict(event="failed", release="c"), dict(event="failed", release="b")]
    assert root.rollback_target("c", history) == "a"
    assert root.to_prune(1, "c", history) == ["b"]
    assert root.to_prune(5, "c", history) == ["b"]


def test_activating_a_failed_release_again_clears_the_mark(run_module, site, tmp_path):
    root, _sandbox = site
    a, b, c = deploy_versions(run_module, root, tmp_path, ["1", "2", "3"], keep_releases=10)
    mark_failed(run_module, root, b, reason="flaky check")
    result, failed = run_module(release.main, dict(root=str(root), release_id=b, keep_releases=10))
    assert not failed and result["switched"] and result["current"] == b
    assert result["pruned"] == [] and result["failed_releases"] == []
    assert b not in _release.Root(str(root)).failed(history_of(root))
    assert mark_failed(run_module, root, b)["changed"], "the mark can be set again"


def test_rolling_back_to_a_failed_release_clears_the_mark(run_module, site, tmp_path):
    root, _sandbox = site
    a, b, c = deploy_versions(run_module, root, tmp_path, ["1", "2", "3"], keep_releases=10)
    mark_failed(run_module, root, b)
    result, failed = run_module(release.main, dict(root=str(root), state="rollback", release_id=b))
    assert not failed and result["current"] == b and result["failed_releases"] == []
    assert result["rollback_target"] == a
    pruned, _failed = run_module(release.main, dict(root=str(root), state="pruned", keep_releases=10))
    assert pruned["pruned"] == []


def test_unpacking_a_pruned_failed_release_again_clears_the_mark(run_module, site, tmp_path):
    root, _sandbox = site
    deploy_versions(run_module, root, tmp_path, ["1"])
    v2 = app_archive(tmp_path, "2")
    rid = deploy(run_module, root, v2, state="unpacked")[0]["release_id"]
    mark_failed(run_module, root, rid)
    assert run_module(release.main, dict(root=str(root), state="pruned"))[0]["pruned"] == [rid]
    result, failed = deploy(run_module, root, v2, state="unpacked")
    assert not failed and result["unpacked"] and result["failed_releases"] == []
    assert run_module(release.main, dict(root=str(root), state="pruned"))[0]["pruned"] == []


def test_failed_counts_only_the_latest_event_naming_the_release():
    history = [
        dict(event="unpacked", release="a"), dict(event="activated", release="a", previous=None),
        dict(event="unpacked", release="b"), dict(event="failed", release="b", reason="gate"),
        # Naming b as `previous`, in a prune or in another kind of event does not clear its mark.
        dict(event="activated", release="c", previous="b"), dict(event="pruned", releases=["b"]),
        dict(event="verified", release="b"),
        dict(event="failed", release="c", reason=""), dict(event="rolled_back", release="a", previous="c"),
        dict(event="failed", release="d"), dict(event="unpacked", release="d"),
        dict(event="failed", release="a"), dict(event="activated", release="a"),
    ]
    assert _release.Root.failed(history) == {"b", "c"}
    assert _release.Root.failed([]) == set()


def test_failed_releases_is_always_returned(run_module, site, tmp_path):
    root, _sandbox = site
    (a,) = deploy_versions(run_module, root, tmp_path, ["1"])
    query, _failed = run_module(release.main, dict(root=str(root), state="query"))
    assert query["failed_releases"] == []
    mark_failed(run_module, root, a)
    query, _failed = run_module(release.main, dict(root=str(root), state="query"))
    assert query["failed_releases"] == [a] and query["changed"] is False


# --------------------------------------------------------------------- the lock

def test_a_second_run_fails_fast_naming_the_holder(run_module, site, tmp_path):
    root, _sandbox = site
    deploy_versions(run_module, root, tmp_path, ["1"])
    lock_path = root / ".pydeploy" / "lock"
    holder = open(lock_path, "r+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write(json.dumps(dict(pid=4242, host="web1", started="2026-11-20T10:00:00Z")))
    holder.flush()
    try:
        started = time.time()
        result, failed = deploy(run_module, root, app_archive(tmp_path, "2"))
        assert time.time() - started < 5
    finally:
        holder.close()
    assert failed
    assert "pid 4242 on host web1 since 2026-11-20T10:00:00Z" in result["msg"]
    assert len(os.listdir(root / "releases")) == 1


def test_a_stale_lock_is_taken_over_with_a_warning(run_module, site, tmp_path, monkeypatch):
    root, _sandbox = site
    deploy_versions(run_module, root, tmp_path, ["1"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / ".pydeploy" / "lock").write_text(json.dumps(dict(pid=dead.pid, host=socket.gethostname(),
                                                             started="2026-11-20T09:00:00Z")))
    warnings = []
    monkeypatch.setattr(release.AnsibleModule, "warn", lambda self, w: warnings.append(w))
    result, failed = deploy(run_module, root, app_archive(tmp_path, "2"))
    assert not failed, result["msg"]
    assert len(warnings) == 1 and "pid %d" % dead.pid in warnings[0] and "no longer running" in warnings[0]
    assert (root / ".pydeploy" / "lock").read_text() == ""


def test_extract_reads_the_archive_once_from_one_descriptor(run_module, site, tmp_path, monkeypatch):
    """The archive is opened once, by the module, and every byte the digest covers
    is a byte that was unpacked: tarfile never opens a path of its own."""
    root, _sandbox = site
    archive = app_archive(tmp_path, "1")
    opened = []
    real_open = os.open

    def spy_open(path, *a, **kw):
        if path == archive[0]:
            opened.append(path)
        return real_open(path, *a, **kw)

    def no_path(*a, **kw):
        raise AssertionError("tarfile opened the archive by its path")

    monkeypatch.setattr(release.os, "open", spy_open)
    monkeypatch.setattr(_release.tarfile.TarFile, "gzopen", no_path)
    monkeypatch.setattr(release, "sha256_file", no_path)
    result, failed = deploy(run_module, root, archive)
    assert not failed, result["msg"]
    assert opened == [archive[0]]
    assert result["manifest"]["members"] == 4
    assert result["manifest"]["size"] == len("VERSION = '1'\n") + len("body{}") + len("#!/usr/bin/env python3\n")
