"""pydeploy.web.release attacked as the application user (who owns shared/) or a
hostile or damaged archive would attack it. Each test is named after the attack; it
asserts the refusal (or the harmless outcome) and that nothing outside the root
changed: a sentinel tree and the root's parent are snapshotted, with owners and
modes, before and after.

Run as root (as CI does, and as the module runs on a host), the application user is
a real other user (nobody) who plants links through a forked process of its own, and
chown effects are visible; as a normal user the same tests run with that user as the
application user."""
import builtins
import bz2
import errno
import gzip
import hashlib
import io
import json
import lzma
import os
import pathlib
import random
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import traceback

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.pydeploy.web.plugins.module_utils import _release
from ansible_collections.pydeploy.web.plugins.modules import release

ROOT_USER = os.geteuid() == 0
APP_UID = 65534 if ROOT_USER else os.getuid()
APP_GID = 65534 if ROOT_USER else os.getgid()
needs_root = pytest.mark.skipif(not ROOT_USER, reason="needs a second user: runs as root in CI")


# ------------------------------------------------------------------ the host

class Host:
    """A sandbox laid out as the app_release role lays out a host: the root and
    releases/ root:root 0755, .pydeploy/ root 0700, shared/ owned by the application
    user; beside the root, a sentinel tree owned by root that nothing may touch."""

    def __init__(self, base):
        self.base = base
        self.srv = base / "srv"
        self.root = self.srv / "app"
        self.shared = self.root / "shared"
        self.outside = base / "outside"
        for d in (self.srv, self.root, self.root / "releases", self.root / ".pydeploy", self.shared):
            d.mkdir(mode=0o755)
        os.chmod(self.root / ".pydeploy", 0o700)
        os.chown(self.shared, APP_UID, APP_GID)
        (self.outside / "etc").mkdir(parents=True)
        (self.outside / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        (self.outside / "etc" / "sub").mkdir()
        (self.outside / "etc" / "sub" / "file").write_text("deep")
        (self.outside / "secret").write_text("do not truncate")
        os.chmod(self.outside / "secret", 0o600)
        # As any earlier run leaves it (empty, 0644), so that the first run changes nothing there.
        (self.root / ".pydeploy" / "lock").write_text("")
        os.chmod(self.root / ".pydeploy" / "lock", 0o644)

    def snapshot(self, *, skip_root=False):
        """Type, mode, owner and content of everything under the sentinel tree and the
        root's parent (the root itself too unless skip_root)."""
        out = {}
        tops = [self.outside, self.srv]
        for top in tops:
            for dirpath, dirnames, filenames in os.walk(top):
                if skip_root and os.path.abspath(dirpath).startswith(str(self.root)):
                    continue
                for n in [""] + dirnames + filenames:
                    p = os.path.join(dirpath, n) if n else dirpath
                    if skip_root and p.startswith(str(self.root)):
                        continue
                    st = os.lstat(p)
                    if stat.S_ISLNK(st.st_mode):
                        content = os.readlink(p)
                    elif stat.S_ISREG(st.st_mode):
                        with open(p, "rb") as f:
                            content = f.read()
                    else:
                        content = None
                    out[p] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content)
        return out

    def outside_snapshot(self):
        return dict(self.snapshot(skip_root=True))

    def as_app(self, fn, *args):
        """Run fn(*args) as the application user, in a process of its own, from inside
        shared/ (so that it needs no access to the directories above)."""
        if not ROOT_USER:
            cwd = os.getcwd()
            os.chdir(self.shared)
            try:
                fn(*args)
            finally:
                os.chdir(cwd)
            return
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.chdir(self.shared)
                os.setgroups([])
                os.setgid(APP_GID)
                os.setuid(APP_UID)
                fn(*args)
                code = 0
            finally:
                os._exit(code)
        _pid, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the application user could not plant it"


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tar_bytes(members, fmt=tarfile.PAX_FORMAT):
    """members: (name, kind, payload, extra pax headers) with kind file|dir|symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, kind, payload, *pax in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            data = None
            if kind == "file":
                data = payload.encode() if isinstance(payload, str) else payload
                info.size, info.mode = len(data), 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            if pax:
                info.pax_headers = pax[0]
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def write_archive(path, data):
    path.write_bytes(data)
    return str(path), sha256(path)


def gz(data):
    return gzip.compress(data, mtime=0)


APP = [("app", "dir", None), ("app/wsgi.py", "file", "VERSION = 1\n"), ("media", "dir", None),
       ("media/logo.png", "file", "logo")]


def deploy(run_module, host, archive, **kw):
    src, checksum = archive
    args = dict(root=str(host.root), src=src, checksum=checksum)
    args.update(kw)
    return run_module(release.main, args)


def first_release(run_module, host, tmp_path, **kw):
    archive = write_archive(tmp_path / "good.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, archive, **kw)
    assert not failed, result["msg"]
    return result


def assert_refused(result, failed, *words):
    assert failed, "accepted: %r" % (result,)
    assert "Traceback" not in result["msg"]
    for w in words:
        assert w in result["msg"], result["msg"]


def releases_of(host):
    return sorted(os.listdir(host.root / "releases"))


# ------------------------------------------------------- the privilege boundary

def test_symlinked_parent_in_shared_is_refused_not_followed(run_module, host, tmp_path):
    host.as_app(os.symlink, str(host.outside), "pub")
    before = host.snapshot()
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, archive, shared_paths=["pub/media"])
    assert_refused(result, failed, "shared_paths entry 'pub/media'", "%s/pub is a symlink" % host.shared)
    assert host.snapshot() == before  # nothing made under outside/, no release, no partial
    assert not (host.outside / "media").exists()


def test_symlink_planted_at_a_missing_shared_path_is_left_alone_and_not_followed(run_module, host, tmp_path):
    """shared/media -> outside/etc planted before the first deploy: shared/ 'has' media,
    so it is left as it is; the release's seed is not moved through the link and
    nothing is chowned there."""
    host.as_app(os.symlink, str(host.outside / "etc"), "media")
    before = host.outside_snapshot()
    result = first_release(run_module, host, tmp_path, shared_paths=["media"])
    assert host.outside_snapshot() == before
    assert os.readlink(host.shared / "media") == str(host.outside / "etc")
    assert os.readlink(host.root / "releases" / result["release_id"] / "media") == "../../shared/media"


def in_shared(host, path, kw, name):
    """Whether an os call's path names shared/<name>: relative to a directory
    descriptor (how the module works now) or as a path (how it used to)."""
    if any(kw.get(k) is not None for k in ("dir_fd", "dst_dir_fd")):
        return path == name
    return isinstance(path, (str, os.PathLike)) and os.path.abspath(path) == str(host.shared / name)


def swap_for_link(path, target):
    """What the application user does in the window: replace what root just made in
    shared/ by a link to a tree of root's."""
    os.rename(path, path + ".moved")
    os.symlink(target, path)


def test_shared_seed_swapped_for_a_link_after_the_move_gets_no_chown_through_it(
        run_module, host, tmp_path, monkeypatch):
    """The old code moved the seed into shared/ and then walked shared/media with
    os.walk + lchown: a link swapped in between handed the tree it named (think /etc)
    to the application user. Now the seed is owned like shared/ before it moves, and
    root does nothing in shared/ after the rename."""
    before = host.outside_snapshot()
    real_rename = os.rename
    swapped = []

    def rename_then_swap(src, dst, *a, **kw):
        real_rename(src, dst, *a, **kw)
        if in_shared(host, dst, kw, "media") and not swapped:
            host.as_app(swap_for_link, "media", str(host.outside / "etc"))
            swapped.append(True)

    monkeypatch.setattr(_release.os, "rename", rename_then_swap)
    first_release(run_module, host, tmp_path, shared_paths=["media"])
    monkeypatch.undo()
    assert swapped, "the seed was not moved by a rename into shared/"
    assert host.outside_snapshot() == before  # same owners: nothing chowned through the link
    moved = host.shared / "media.moved"
    assert (moved / "logo.png").read_text() == "logo"
    assert (os.stat(moved).st_uid, os.stat(moved / "logo.png").st_uid) == (APP_UID, APP_UID)


def test_link_planted_between_the_check_and_the_mkdir_is_not_followed(run_module, host, tmp_path, monkeypatch):
    """TOCTOU: shared/data is missing when looked at; the application user plants
    shared/data -> outside/etc before root makes it. mkdir fails on the link and
    the entry is left to its owner; nothing is made or chowned through it."""
    before = host.outside_snapshot()
    real_mkdir = os.mkdir

    def plant_then_mkdir(path, *a, **kw):
        if in_shared(host, path, kw, "data"):
            host.as_app(os.symlink, str(host.outside / "etc"), "data")
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(_release.os, "mkdir", plant_then_mkdir)
    result = first_release(run_module, host, tmp_path, shared_paths=["data"])
    monkeypatch.undo()
    assert host.outside_snapshot() == before
    assert os.readlink(host.shared / "data") == str(host.outside / "etc")
    assert os.readlink(host.root / "releases" / result["release_id"] / "data") == "../../shared/data"


def test_link_swapped_in_right_after_the_mkdir_is_refused(run_module, host, tmp_path, monkeypatch):
    before = host.outside_snapshot()
    real_mkdir = os.mkdir

    def mkdir_then_swap(path, *a, **kw):
        real_mkdir(path, *a, **kw)
        if in_shared(host, path, kw, "data"):
            host.as_app(swap_for_link, "data", str(host.outside / "etc"))

    monkeypatch.setattr(_release.os, "mkdir", mkdir_then_swap)
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, archive, shared_paths=["data"])
    monkeypatch.undo()
    assert_refused(result, failed, "shared_paths entry 'data'", "is a symlink")
    assert host.outside_snapshot() == before
    assert releases_of(host) == []


@pytest.mark.parametrize("planted", [False, True], ids=["as an option", "with a planted shared/RELEASE.json link"])
def test_manifest_cannot_be_shared_or_written_through_a_link(run_module, host, tmp_path, planted):
    if planted:
        host.as_app(os.symlink, str(host.outside / "secret"), "RELEASE.json")
    before = host.snapshot()
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, archive, shared_paths=["RELEASE.json"])
    assert_refused(result, failed, "shared_paths entry 'RELEASE.json'", "cannot be shared")
    assert host.snapshot() == before
    assert (host.outside / "secret").read_text() == "do not truncate"


def test_manifest_is_never_written_through_a_link(tmp_path):
    (tmp_path / "target").write_text("root's file")
    os.symlink(str(tmp_path / "target"), tmp_path / "RELEASE.json")
    with pytest.raises(FileExistsError):
        _release.write_manifest(str(tmp_path), dict(id="x"))
    assert (tmp_path / "target").read_text() == "root's file"


@pytest.mark.parametrize("name", ["lock", "history.jsonl"])
def test_planted_lock_or_history_link_is_not_followed(run_module, host, tmp_path, name):
    """Were .pydeploy/ ever writable by someone else, a lock -> file link used to
    truncate that file. Files of .pydeploy/ are opened with O_NOFOLLOW."""
    os.unlink(host.root / ".pydeploy" / "lock")
    if name == "history.jsonl":
        (host.root / ".pydeploy" / "lock").write_text("")
    os.symlink(str(host.outside / "secret"), host.root / ".pydeploy" / name)
    before = host.snapshot()
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, archive)
    assert_refused(result, failed, "%s/.pydeploy/%s is a symlink" % (host.root, name))
    assert host.snapshot() == before
    assert (host.outside / "secret").read_text() == "do not truncate"


@pytest.mark.parametrize("name", ["releases", ".pydeploy", "shared", "current-parent"])
def test_symlinked_layout_directory_is_refused(run_module, host, tmp_path, name):
    """A planted releases -> /elsewhere (or .pydeploy, shared, or the root itself via
    a link its owner controls) used to be followed by isdir()."""
    elsewhere = host.outside / "etc"
    if name == "current-parent":
        # The root's parent is a link owned by the application user.
        os.rename(host.srv, host.base / "real-srv")
        os.symlink(str(host.base / "real-srv"), host.srv)
        os.lchown(host.srv, APP_UID, APP_GID)
        expected = "is a symlink owned by"
        if not ROOT_USER:
            pytest.skip("the link's owner must be another user")
    else:
        path = host.root / name
        os.rename(path, str(path) + ".real")
        os.symlink(str(elsewhere), path)
        expected = "%s is a symlink; it must be a real directory" % path
    before = host.snapshot()
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, archive)
    assert_refused(result, failed, expected)
    assert host.snapshot() == before
    query, failed = run_module(release.main, dict(root=str(host.root), state="query"))
    assert_refused(query, failed, expected)


@needs_root
@pytest.mark.parametrize("what", ["root", "releases", ".pydeploy", "parent"])
def test_directory_the_app_user_owns_is_refused(run_module, host, tmp_path, what):
    path = {"root": host.root, "parent": host.srv}.get(what, host.root / what)
    os.chown(path, APP_UID, APP_GID)
    before = host.snapshot()
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, archive)
    assert_refused(result, failed, "%s is owned by" % path, "uid %d" % APP_UID, "must be owned by root")
    assert host.snapshot() == before


@pytest.mark.parametrize("what, mode", [("root", 0o775), ("releases", 0o757), (".pydeploy", 0o770),
                                        ("parent", 0o777)])
def test_directory_writable_by_group_or_others_is_refused(run_module, host, tmp_path, what, mode):
    path = {"root": host.root, "parent": host.srv}.get(what, host.root / what)
    os.chmod(path, mode)
    before = host.snapshot()
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, archive)
    assert_refused(result, failed, "%s is writable by" % path, "chmod go-w %s" % path)
    assert host.snapshot() == before


def test_sticky_world_writable_parent_and_a_root_owned_link_above_the_root_are_accepted(run_module, host, tmp_path):
    """Like /tmp above the root, and /srv -> /data/srv made by root: trusted."""
    os.chmod(host.base, 0o1777)
    os.rename(host.srv, host.base / "data-srv")
    os.symlink("data-srv", host.srv)
    result = first_release(run_module, host, tmp_path)
    assert result["current"] == result["release_id"]


# ------------------------------------------------------------------- integrity

def test_archive_swapped_after_it_was_opened_is_not_what_gets_unpacked(run_module, host, tmp_path, monkeypatch):
    """The old module hashed one open of src and let tarfile open the path again:
    a file swapped in between was unpacked unchecked. Now the bytes unpacked are the
    bytes hashed, from one descriptor."""
    good = write_archive(tmp_path / "good.tar.gz", gz(tar_bytes(APP)))
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(gz(tar_bytes([("app", "dir", None), ("app/wsgi.py", "file", "EVIL = 1\n")])))
    real_os_open, real_open = os.open, builtins.open
    swapped = []

    def swap_once(path):
        if os.fspath(path) == good[0] and not swapped:
            os.rename(evil, good[0])
            swapped.append(True)

    def os_open_then_swap(path, *a, **kw):
        fd = real_os_open(path, *a, **kw)
        swap_once(path)
        return fd

    def open_then_swap(path, *a, **kw):
        f = real_open(path, *a, **kw)
        if isinstance(path, (str, os.PathLike)):
            swap_once(path)
        return f

    monkeypatch.setattr(os, "open", os_open_then_swap)
    monkeypatch.setattr(builtins, "open", open_then_swap)
    result, failed = deploy(run_module, host, good)
    monkeypatch.undo()
    assert not failed, result["msg"]
    assert (host.root / "current" / "app" / "wsgi.py").read_text() == "VERSION = 1\n"
    assert swapped and sha256(good[0]) != good[1]  # the path now names the evil archive


def test_archive_rewritten_while_it_is_read_is_refused_as_a_checksum_mismatch(run_module, host, tmp_path, monkeypatch):
    """Bytes that change under the reader (same inode, rewritten in place) are hashed
    as read: the digest no longer matches and nothing is renamed into place."""
    blob = random.Random(7).randbytes(3 * _release.READ_CHUNK)  # incompressible: several reads
    archive = write_archive(tmp_path / "big.tar.gz", gz(tar_bytes(APP + [("blob", "file", blob)])))
    real_read = os.read
    reads = []

    def read_then_rewrite(fd, n):
        data = real_read(fd, n)
        reads.append(len(data))
        if len(reads) == 1:
            with open(archive[0], "r+b") as f:  # same inode
                f.seek(2 * _release.READ_CHUNK)
                f.write(b"\xff" * 4096)
        return data

    monkeypatch.setattr(_release.os, "read", read_then_rewrite)
    result, failed = deploy(run_module, host, archive)
    monkeypatch.undo()
    assert_refused(result, failed, "checksum mismatch for %s: expected sha256 %s" % (archive[0], archive[1]))
    assert releases_of(host) == [] and not os.path.lexists(host.root / "current")
    assert sorted(os.listdir(host.shared)) == []  # nothing seeded either


def cut(data, n):
    return data[:n]


def end_of_members(data):
    """Offset of the end-of-archive blocks: after the last member's data."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        last = tf.getmembers()[-1]
    return last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


TAR = tar_bytes(APP)
_END = end_of_members(TAR)
TWO = tar_bytes(APP[:2])

DAMAGED = [
    ("gzip without its trailer", lambda: gz(TAR)[:-8], "gzip stream ends before its end marker"),
    ("gzip with a corrupt CRC trailer",
     lambda: gz(TAR)[:-8] + bytes(b ^ 0xFF for b in gz(TAR)[-8:-4]) + gz(TAR)[-4:],
     "is damaged: its gzip stream does not decompress (Error -3 while decompressing data: incorrect data check)"),
    ("xz with a flipped byte", lambda: lzma.compress(TAR)[:40] + bytes([lzma.compress(TAR)[40] ^ 1])
     + lzma.compress(TAR)[41:], "is damaged: its xz stream does not decompress"),
    ("gzip with garbage appended", lambda: gz(TAR) + b"GARBAGE!", "data after the end of its gzip stream"),
    ("bzip2 cut short", lambda: bz2.compress(TAR)[:-10], "bzip2 stream ends before its end marker"),
    ("xz cut short", lambda: lzma.compress(TAR)[:-10], "xz stream ends before its end marker"),
    ("xz with garbage appended", lambda: lzma.compress(TAR) + b"junk", "data after the end of its xz stream"),
    ("plain tar cut at a member boundary", lambda: TAR[:_END],
     "ends without its end-of-archive blocks"),
    ("tar with a garbage header after two good members",
     lambda: TWO[:end_of_members(TWO)] + b"\x7fGARBAGE" * 64 + b"\0" * 1024,
     "neither a member header nor the end of the archive"),
    ("tar with one end-of-archive block only", lambda: TAR[:_END + 512],
     "only one of its two end-of-archive blocks"),
    ("tar with data after its end blocks", lambda: TAR + b"trailing data", "data after the end of the tar archive"),
    ("gzip of a tar cut at a member boundary", lambda: gz(TAR[:_END]), "ends without its end-of-archive blocks"),
]


def test_the_damaged_archives_are_cut_where_they_say():
    assert TAR[_END:].count(b"\0") == len(TAR) - _END >= 1024
    assert TAR[_END - 512:_END].startswith(b"logo")  # the last member's data ends there


@pytest.mark.parametrize("case, make, message", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_damaged_archive_is_refused_not_taken_as_complete(run_module, host, tmp_path, case, make, message):
    first = first_release(run_module, host, tmp_path)
    before = host.snapshot()
    archive = write_archive(tmp_path / "damaged", make())
    result, failed = deploy(run_module, host, archive)
    assert_refused(result, failed, message)
    assert host.snapshot() == before
    assert releases_of(host) == [first["release_id"]]


CLEAN = [
    ("plain tar", lambda: TAR),
    ("gzip", lambda: gz(TAR)),
    ("gzip in two members (concatenated)", lambda: gz(TAR[:1024]) + gz(TAR[1024:])),
    ("gzip padded with NULs", lambda: gz(TAR) + b"\0" * 512),
    ("bzip2", lambda: bz2.compress(TAR)),
    ("xz", lambda: lzma.compress(TAR)),
    ("tar with a further record of padding", lambda: TAR + b"\0" * 10240),
]


@pytest.mark.parametrize("case, make", CLEAN, ids=[c[0] for c in CLEAN])
def test_clean_archives_of_every_kind_are_accepted(run_module, host, tmp_path, case, make):
    archive = write_archive(tmp_path / "clean", make())
    result, failed = deploy(run_module, host, archive)
    assert not failed, result["msg"]
    assert (host.root / "current" / "app" / "wsgi.py").read_text() == "VERSION = 1\n"
    assert result["manifest"]["members"] == 4


# ------------------------------------------------------------------ robustness

def test_symlink_through_the_partial_directory_name_is_refused(run_module, host, tmp_path):
    """app/l -> ../../.r1.partial/app/ok.txt stays inside releases/.r1.partial while
    unpacking and points outside the release once it is renamed to releases/r1."""
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes([
        ("app", "dir", None), ("app/ok.txt", "file", "ok"), ("app/l", "symlink", "../../.r1.partial/app/ok.txt")])))
    before = host.snapshot()
    result, failed = deploy(run_module, host, archive, release_id="r1")
    assert_refused(result, failed, "member 'app/l'", "points outside the release")
    assert host.snapshot() == before


def test_symlink_chain_through_the_partial_directory_name_is_refused(run_module, host, tmp_path):
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes([
        ("here", "symlink", "."), ("x", "symlink", "here/../.r1.partial/secret")])))
    result, failed = deploy(run_module, host, archive, release_id="r1")
    assert_refused(result, failed, "member 'x'", "resolves outside the release through other links")
    assert releases_of(host) == []


@pytest.mark.parametrize("root, message", [
    ("", "root must be an absolute path such as /srv/mysite, got ''"),
    ("srv/app", "root must be an absolute path"),
    ("/", "root must be a directory of its own"),
])
def test_empty_relative_or_slash_root_is_refused(run_module, tmp_path, root, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = run_module(release.main, dict(root=root, src=archive[0], checksum=archive[1]))
    assert_refused(result, failed, message)
    assert sorted(os.listdir(tmp_path)) == ["a.tar.gz"]  # nothing in the working directory


@pytest.mark.parametrize("release_id", ["r1\n", "r1\r", "r1 ", "r/1", ".r1", "r1\x1b"])
def test_release_id_with_a_newline_or_other_bytes_is_refused(run_module, host, tmp_path, release_id):
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, archive, release_id=release_id)
    assert_refused(result, failed, "release_id %r may hold letters" % release_id)
    assert releases_of(host) == []


@pytest.mark.parametrize("name", ["app/evil\nname", "app/\x1b[2Jclear", "app/tab\there", "app/del\x7f"])
def test_control_characters_in_member_names_are_refused(run_module, host, tmp_path, name):
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes([("app", "dir", None), (name, "file", "x")])))
    result, failed = deploy(run_module, host, archive)
    assert_refused(result, failed, "member %r: control character in name refused" % name)
    assert releases_of(host) == []


def deep_tree(levels):
    return tar_bytes([("/".join(["d"] * k), "dir", None) for k in range(1, levels + 1)]
                     + [("/".join(["d"] * levels + ["f"]), "file", "bottom")])


def test_tree_deeper_than_max_depth_is_refused_at_unpack(run_module, host, tmp_path):
    archive = write_archive(tmp_path / "deep.tar.gz", gz(deep_tree(1500)))
    result, failed = deploy(run_module, host, archive)
    assert_refused(result, failed, "101 levels deep, more than max_depth=100")
    assert releases_of(host) == []
    ok = write_archive(tmp_path / "ok.tar.gz", gz(deep_tree(30)))
    result, failed = deploy(run_module, host, ok, max_depth=31)
    assert not failed, result["msg"]


def test_deep_tree_left_by_an_older_version_is_pruned_without_recursion_limits(run_module, host, tmp_path):
    """1,500 levels under a kept release (unpacked before max_depth existed): every
    later prune used to fail with 'maximum recursion depth exceeded' after the switch
    and leave .deleting behind."""
    old = first_release(run_module, host, tmp_path, keep_releases=1)["release_id"]
    fd = os.open(host.root / "releases" / old / "app", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _attempt in range(1500):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)
    archive = write_archive(tmp_path / "v2.tar.gz", gz(tar_bytes(APP + [("v2", "file", "2")])))
    result, failed = deploy(run_module, host, archive, keep_releases=1, owner="0" if ROOT_USER else None)
    assert not failed, result["msg"]
    # keep_releases=1 keeps the rollback target: prune it too by rolling forward once more.
    third = write_archive(tmp_path / "v3.tar.gz", gz(tar_bytes(APP + [("v3", "file", "3")])))
    result, failed = deploy(run_module, host, third, keep_releases=1)
    assert not failed, result["msg"]
    assert old in result["pruned"]
    assert releases_of(host) == sorted([result["release_id"], result["rollback_target"]])


def pax_member(name, pax, kind="file", payload="x"):
    return [(name, kind, payload, pax)]


UNCAUGHT = [
    ("empty symlink target", tar_bytes([("l", "symlink", "")]), "member 'l': symlink with an empty target refused"),
    ("NUL in a PAX linkpath", tar_bytes(pax_member("l", {"linkpath": "a\0b"}, "symlink", "a")),
     "member 'l': symlink target 'a\\x00b' holds a NUL or control character"),
    ("PAX mtime 1e300", tar_bytes(pax_member("f", {"mtime": "1e300"})),
     "member 'f': modification time 1e+300 out of range"),
    ("PAX mtime NaN", tar_bytes(pax_member("f", {"mtime": "nan"})), "member 'f': modification time nan out of range"),
    ("a 300-character name component", tar_bytes([("a" * 300, "file", "x")]),
     "a name component of 300 bytes, more than 255"),
    ("a name over PATH_MAX", tar_bytes([("/".join(["b" * 200] * 21), "file", "x")]),
     "the path would be longer than PATH_MAX"),
    ("a symlink target over PATH_MAX", tar_bytes([("l", "symlink", "c/" * 2100)]),
     "symlink target longer than PATH_MAX"),
]


@pytest.mark.parametrize("case, data, message", UNCAUGHT, ids=[u[0] for u in UNCAUGHT])
def test_odd_member_is_refused_with_its_name_not_a_traceback(run_module, host, tmp_path, case, data, message):
    archive = write_archive(tmp_path / "odd.tar", data)
    before = host.snapshot()
    result, failed = deploy(run_module, host, archive)
    assert_refused(result, failed, message)
    assert host.snapshot() == before


def test_stale_lock_takeover_then_a_second_deploy_names_the_holder(run_module, host, tmp_path):
    """The takeover read the stale record, truncated without rewinding and wrote the
    new record after NUL bytes: a second deploy then said 'pid ? on host ? since ?'."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock_path = host.root / ".pydeploy" / "lock"
    lock_path.write_text(json.dumps(dict(pid=dead.pid, host="web-old", started="2026-11-20T09:00:00Z",
                                         padding="x" * 200)))
    with _release.Root(str(host.root)).open() as root:
        lock = root.lock()
        try:
            assert lock.stale["pid"] == dead.pid
            content = lock_path.read_bytes()
            assert b"\0" not in content
            assert json.loads(content)["pid"] == os.getpid()
            archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
            result, failed = deploy(run_module, host, archive)
        finally:
            lock.release()
    assert_refused(result, failed, "pid %d on host %s since 20" % (os.getpid(), socket.gethostname()))


@pytest.mark.parametrize("mode, expected", [(493, 0o755), ("0750", 0o750), ("755", 0o755), ("0555", 0o555)])
def test_release_directory_mode(run_module, host, tmp_path, mode, expected):
    result = first_release(run_module, host, tmp_path, mode=mode)
    assert stat.S_IMODE(os.stat(result["release_path"]).st_mode) == expected


@pytest.mark.parametrize("mode", [755, 777, "0775", "1755", "4755", "rwx"])
def test_integer_or_writable_mode_is_refused_not_made_world_writable(run_module, host, tmp_path, mode):
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, archive, mode=mode)
    assert failed and "mode %r" % mode in result["msg"]
    assert releases_of(host) == []


def test_checksum_with_a_trailing_newline_is_taken_as_the_checksum(run_module, host, tmp_path):
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    result, failed = deploy(run_module, host, (archive[0], archive[1] + "\n"))
    assert not failed, result["msg"]
    assert result["release_id"] == archive[1][:12] and result["manifest"]["sha256"] == archive[1]


def test_planted_partial_symlink_is_refused_clearly(run_module, host, tmp_path):
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    partial = host.root / "releases" / (".%s.partial" % archive[1][:12])
    os.symlink(str(host.outside / "etc"), partial)
    before = host.snapshot()
    result, failed = deploy(run_module, host, archive)
    assert_refused(result, failed, "%s is a symlink, not a partial release this module left" % partial)
    assert host.snapshot() == before
    pruned, failed = run_module(release.main, dict(root=str(host.root), state="pruned"))
    assert_refused(pruned, failed, "is a symlink, not a partial release")
    assert host.snapshot() == before


def test_leftover_directory_where_the_release_goes_is_refused(run_module, host, tmp_path):
    archive = write_archive(tmp_path / "a.tar.gz", gz(tar_bytes(APP)))
    (host.root / "releases" / archive[1][:12]).mkdir()
    result, failed = deploy(run_module, host, archive)
    assert_refused(result, failed, "exists but is not a complete release (no RELEASE.json)")


# ------------------------------------------------- shared/ seeding, done safely

@needs_root
def test_hardlinked_seed_does_not_hand_a_release_file_to_the_app_user(run_module, host, tmp_path):
    data = tar_bytes(APP)
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for m in src:
            dst.addfile(m, src.extractfile(m) if m.isreg() else None)
        link = tarfile.TarInfo("app/logo-copy.png")
        link.type, link.linkname = tarfile.LNKTYPE, "media/logo.png"
        dst.addfile(link)
    archive = write_archive(tmp_path / "h.tar", buf.getvalue())
    result, failed = deploy(run_module, host, archive, shared_paths=["media"], owner="0", group="0")
    assert not failed, result["msg"]
    code = os.lstat(os.path.join(result["release_path"], "app", "logo-copy.png"))
    seeded = os.lstat(host.shared / "media" / "logo.png")
    assert (code.st_uid, seeded.st_uid) == (0, APP_UID) and code.st_ino != seeded.st_ino


def test_seed_is_copied_through_descriptors_when_shared_is_on_another_file_system(
        run_module, host, tmp_path, monkeypatch):
    real_rename, real_link = os.rename, os.link

    def cross_device(real):
        def op(src, dst, *a, **kw):
            if kw.get("dst_dir_fd") is not None and dst in ("media", "wsgi.py"):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(src, dst, *a, **kw)
        return op

    monkeypatch.setattr(_release.os, "rename", cross_device(real_rename))
    monkeypatch.setattr(_release.os, "link", cross_device(real_link))
    result = first_release(run_module, host, tmp_path, shared_paths=["media", "app/wsgi.py"])
    monkeypatch.undo()
    assert (host.shared / "media" / "logo.png").read_text() == "logo"
    assert (host.shared / "app" / "wsgi.py").read_text() == "VERSION = 1\n"
    for p in (host.shared / "media", host.shared / "media" / "logo.png", host.shared / "app"):
        assert os.lstat(p).st_uid == APP_UID, p
    assert os.readlink(os.path.join(result["release_path"], "media")) == "../../shared/media"
    assert os.readlink(os.path.join(result["release_path"], "app", "wsgi.py")) == "../../../shared/app/wsgi.py"


def test_directories_made_in_shared_belong_to_the_app_user(run_module, host, tmp_path):
    result = first_release(run_module, host, tmp_path, shared_paths=["pub/media", "data"])
    for p in ("pub", "pub/media", "data"):
        st = os.lstat(host.shared / p)
        assert stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_gid) == (APP_UID, APP_GID), p
    assert os.readlink(os.path.join(result["release_path"], "pub", "media")) == "../../../shared/pub/media"


# ---------------------------------------------- as an unprivileged deploy user

@needs_root
def test_unprivileged_user_deploys_into_a_root_of_its_own_and_is_refused_one_of_another(run_module, request):
    """The module run by a deploy user that is not root: a root it owns is trusted, a
    root that a third user owns is not."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="pydeploy-unprivileged-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(base))
    os.chmod(base, 0o755)
    archive = write_archive(base / "a.tar.gz", gz(tar_bytes(APP)))
    os.chmod(archive[0], 0o644)
    mine, theirs = base / "mine", base / "theirs"
    mine.mkdir()
    theirs.mkdir()
    os.chown(mine, APP_UID, APP_GID)
    os.chown(theirs, 65533, 65533)
    # What a module run imports on first use (Ansible's JSON profiles) imported now, while
    # root can read it: ansible-test units serves Ansible from a temporary directory only
    # root can read, where the child, once it is the application user, could not.
    with patch_module_args({}):
        basic.AnsibleModule(argument_spec={})
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(APP_GID)
            os.setuid(APP_UID)
            out = [run_module(release.main, dict(root=str(d / "app"), src=archive[0], checksum=archive[1]))
                   for d in (mine, theirs)]
            os.write(w, json.dumps(out).encode())
        except BaseException:
            os.write(w, json.dumps({"error": traceback.format_exc()}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        pytest.fail("the unprivileged run ended without an answer (%s)" % base)
    out = json.loads(data)
    if isinstance(out, dict):
        pytest.fail("the unprivileged run failed:\n%s" % out["error"])
    (ok, ok_failed), (refused, refused_failed) = out
    assert not ok_failed, ok["msg"]
    assert os.lstat(mine / "app" / "releases" / ok["release_id"]).st_uid == APP_UID
    assert refused_failed and "%s is owned by" % theirs in refused["msg"] and "uid 65533" in refused["msg"]


def test_gzip_member_boundary_cut_by_a_read_is_still_one_clean_archive(run_module, host, tmp_path, monkeypatch):
    """The magic of a next gzip member split across two reads is not garbage."""
    first = gz(TAR[:2048])
    data = first + gz(TAR[2048:])
    archive = write_archive(tmp_path / "two.tar.gz", data)
    monkeypatch.setattr(_release, "READ_CHUNK", len(first) + 1)  # the next member's magic is cut after 1 byte
    result, failed = deploy(run_module, host, archive)
    assert not failed, result["msg"]
    assert (host.root / "current" / "app" / "wsgi.py").read_text() == "VERSION = 1\n"


# ------------------------------------------------------------------ shared/.env (state env)

ENV = "DJANGO_SECRET_KEY='s3cret value'\nDJANGO_DEBUG=0\n"


def write_env(run_module, host, content=ENV, check_mode=False, **kw):
    args = dict(root=str(host.root), state="env", group=str(APP_GID), env_content=content)
    args.update(kw)
    return run_module(release.main, args, check_mode=check_mode)


def test_env_is_written_root_owned_for_the_app_group_and_rewritten_only_when_it_differs(run_module, host):
    result, failed = write_env(run_module, host)
    assert not failed, result.get("msg")
    assert result["changed"] is True and result["env_path"] == str(host.shared / ".env")
    st = os.lstat(host.shared / ".env")
    assert stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        os.geteuid(), APP_GID, 0o640)
    assert (host.shared / ".env").read_text() == ENV
    assert "s3cret" not in json.dumps(result)
    inode = st.st_ino
    result, failed = write_env(run_module, host)
    assert not failed and result["changed"] is False
    assert os.lstat(host.shared / ".env").st_ino == inode  # left as it was
    # A mode or content changed behind its back is put right.
    os.chmod(host.shared / ".env", 0o644)
    assert write_env(run_module, host)[0]["changed"] is True
    assert stat.S_IMODE(os.lstat(host.shared / ".env").st_mode) == 0o640
    result, failed = write_env(run_module, host, content="A=1\n")
    assert not failed and result["changed"] is True
    assert (host.shared / ".env").read_text() == "A=1\n"
    assert not [n for n in os.listdir(host.shared) if n != ".env"]  # no temporary file left


def test_env_in_check_mode_reports_the_change_and_writes_nothing(run_module, host):
    before = host.snapshot()
    result, failed = write_env(run_module, host, check_mode=True)
    assert not failed and result["changed"] is True
    assert host.snapshot() == before


@pytest.mark.parametrize("target", ["secret", "etc/passwd", "missing"])
def test_env_link_planted_by_the_app_user_is_replaced_never_followed(run_module, host, target):
    """The application user owns shared/: a .env -> /etc/... link there used to be
    followed by the template module's chown and chmod of the path."""
    host.as_app(os.symlink, str(host.outside / target), ".env")
    outside = host.outside_snapshot()
    result, failed = write_env(run_module, host)
    assert not failed, result.get("msg")
    assert result["changed"] is True
    assert host.outside_snapshot() == outside
    st = os.lstat(host.shared / ".env")
    assert stat.S_ISREG(st.st_mode) and st.st_gid == APP_GID and stat.S_IMODE(st.st_mode) == 0o640
    assert (host.shared / ".env").read_text() == ENV


@needs_root
def test_env_hardlink_to_a_root_file_is_replaced_not_written_through(run_module, host):
    # (protected_hardlinks keeps the application user from making this link; root can,
    # and a file with two names is replaced, never rewritten in place.)
    os.link(host.outside / "secret", host.shared / ".env")
    result, failed = write_env(run_module, host)
    assert not failed and result["changed"] is True
    assert (host.outside / "secret").read_text() == "do not truncate"
    assert stat.S_IMODE(os.stat(host.outside / "secret").st_mode) == 0o600
    assert os.lstat(host.shared / ".env").st_nlink == 1


@pytest.mark.parametrize("planted, words", [
    ("dir", ["%s/.env is a directory"]),
    ("no-shared", ["/shared does not exist"]),
    ("no-group", ["group 'pydeploy-no-such-group' does not exist"]),
])
def test_env_that_cannot_be_written_fails_naming_why(run_module, host, planted, words):
    kw = {}
    if planted == "dir":
        host.as_app(os.mkdir, ".env")
    elif planted == "no-shared":
        shutil.rmtree(host.shared)
    else:
        kw["group"] = "pydeploy-no-such-group"
    before = host.snapshot()
    result, failed = write_env(run_module, host, **kw)
    assert_refused(result, failed, *[w % host.shared if "%s" in w else w for w in words])
    assert host.snapshot() == before
