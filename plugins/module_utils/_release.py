# -*- coding: utf-8 -*-
# Copyright: pydeploy.web contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Release layout, safe archive extraction, deployment history and the root lock.

Private to pydeploy.web (leading underscore): no compatibility promise.

Host layout under an application root:

    releases/<id>/          one directory per release, RELEASE.json inside
    releases/.<id>.partial  an unpack in progress (never looks like a release)
    shared/                 paths linked into every release (media, .env, data)
    current -> releases/<id>
    .pydeploy/history.jsonl append-only record of unpacks, switches, rollbacks, prunes
                            and failure marks
    .pydeploy/lock          held (flock) by the run that changes the root
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import getpass
import hashlib
import json
import lzma
import os
import re
import shutil
import socket
import stat
import tarfile
import time
import zlib

MANIFEST = "RELEASE.json"
RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024
# History events whose `release` decides whether that release counts as failed.
MARKING_EVENTS = ("unpacked", "activated", "rolled_back", "failed")


class ReleaseError(Exception):
    """A refusal or failure with a message for the user; nothing outside the
    release's partial directory has been written when it is raised."""


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


# --------------------------------------------------------------------------- lock

class RootLock:
    """Exclusive lock on an application root. flock() is released by the kernel when
    its holder dies, so a crashed run never blocks the next one; the file's content
    names the holder for the message a second run fails with."""

    def __init__(self, path):
        self.path = path
        self.fd = None
        self.stale = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = self._read(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise ReleaseError(
                "another deploy holds the lock %s: pid %s on host %s since %s; wait for it to finish"
                % (self.path, holder.get("pid", "?"), holder.get("host", "?"), holder.get("started", "?")))
        previous = self._read(fd)
        if previous.get("pid"):
            # The file still names a holder, but nobody holds the flock: that run died.
            self.stale = previous
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), started=utcnow())).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    @staticmethod
    def _read(fd):
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return json.loads(os.read(fd, 4096).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------------- extraction

def _member_parts(name, strip_components):
    """Split an archive member name into safe path components, or raise."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        raise ReleaseError("member %r: absolute path refused" % name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ReleaseError("member %r: '..' component refused" % name)
    if any("\0" in p for p in parts):
        raise ReleaseError("member %r: NUL byte in name refused" % name)
    return parts[strip_components:]


def _inside(root, path):
    return path == root or path.startswith(root + os.sep)


def _check_parents(root, rel_parts, name):
    """Refuse to write through a symlink: every parent of the member must be a real
    directory inside root (or not exist yet)."""
    path = root
    for part in rel_parts[:-1]:
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise ReleaseError("member %r: would be written through the symlink %s, refused"
                               % (name, os.path.relpath(path, root)))
        if not stat.S_ISDIR(st.st_mode):
            raise ReleaseError("member %r: parent %s is not a directory" % (name, os.path.relpath(path, root)))


def _makedirs(root, rel_dir):
    path = root
    for part in rel_dir:
        path = os.path.join(path, part)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            if not os.path.isdir(path) or os.path.islink(path):
                raise ReleaseError("%s exists and is not a directory" % os.path.relpath(path, root))


def _file_mode(mode):
    # No setuid/setgid/sticky, no group or world write; the owner can always read.
    return (mode & 0o755) | 0o600


def _dir_mode(mode):
    return (mode & 0o755) | 0o700


def extract(archive, dest, strip_components=0, max_members=100000, max_size=2 * 1024 ** 3):
    """Extract a tar archive (any compression tarfile knows) into the empty or new
    directory dest, reading it once as a stream, under this policy:

    - absolute names, '..' components, device and FIFO members are refused;
    - nothing is written through a symlink, and no name is written twice;
    - symlinks must resolve inside dest, checked as they come and again once all are
      in place (a chain of links can only be judged whole); hardlinks must name a
      regular file extracted before them;
    - setuid/setgid/sticky bits and group/world write bits are dropped;
    - more than max_members members or more than max_size bytes of content stop it.

    Where tarfile has data_filter (Python 3.12, 3.11.4+), it is applied on top.
    Returns (members, size). Raises ReleaseError; the caller removes dest on error.
    """
    dest = os.path.realpath(dest)
    data_filter = getattr(tarfile, "data_filter", None)  # absent before Python 3.11.4
    members = size = 0
    # Directories known to be real directories inside dest, created or checked here.
    # Nothing can turn one into a symlink later (a second member of that name is
    # refused), so their members skip the per-component walk.
    safe_dirs = {()}
    dirs = []
    links = []
    try:
        tf = tarfile.open(archive, mode="r|*")
    except (tarfile.TarError, OSError) as e:
        raise ReleaseError("%s is not a readable tar archive (.tar, .tar.gz, .tar.bz2, .tar.xz): %s" % (archive, e))
    with tf:
        try:
            for member in tf:
                members += 1
                if members > max_members:
                    raise ReleaseError("archive has more than max_members=%d members; refused (raise max_members "
                                       "if this is expected)" % max_members)
                parts = _member_parts(member.name, strip_components)
                if not parts:
                    continue
                rel = "/".join(parts)
                if parts == [MANIFEST]:
                    raise ReleaseError("member %r: %s at the top of a release is written by the module, refused"
                                       % (member.name, MANIFEST))
                if member.ischr() or member.isblk():
                    raise ReleaseError("member %r: device node refused" % member.name)
                if member.isfifo():
                    raise ReleaseError("member %r: FIFO refused" % member.name)
                if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
                    raise ReleaseError("member %r: unsupported member type %r refused" % (member.name, member.type))
                if data_filter is not None:
                    try:
                        data_filter(member, dest)
                    except tarfile.FilterError as e:
                        raise ReleaseError("member %r: refused by tarfile's data filter: %s" % (member.name, e))
                target = os.path.join(dest, *parts)
                parent = tuple(parts[:-1])
                if parent not in safe_dirs:
                    _check_parents(dest, parts, member.name)
                    _makedirs(dest, parts[:-1])
                    safe_dirs.update(parent[:k] for k in range(len(parent) + 1))
                if member.isdir():
                    if os.path.lexists(target):
                        if os.path.islink(target) or not os.path.isdir(target):
                            raise ReleaseError("member %r: %s exists and is not a directory" % (member.name, rel))
                    else:
                        os.mkdir(target, 0o700)
                    safe_dirs.add(tuple(parts))
                    dirs.append((target, member))
                    continue
                if os.path.lexists(target):
                    raise ReleaseError("member %r: %s appears twice in the archive, refused" % (member.name, rel))
                if member.issym():
                    link = member.linkname
                    if link.startswith("/"):
                        raise ReleaseError("member %r: absolute symlink to %r refused" % (member.name, link))
                    resolved = os.path.normpath(os.path.join(os.path.realpath(os.path.dirname(target)), link))
                    if not _inside(dest, resolved):
                        raise ReleaseError("member %r: symlink to %r points outside the release, refused"
                                           % (member.name, link))
                    os.symlink(link, target)
                    links.append((target, member.name, link))
                elif member.islnk():
                    try:
                        link_parts = _member_parts(member.linkname, strip_components)
                    except ReleaseError as e:
                        raise ReleaseError("member %r: hardlink target %s" % (member.name, e))
                    source = os.path.join(dest, *link_parts) if link_parts else dest
                    _check_parents(dest, link_parts, member.name)
                    if not link_parts or not os.path.isfile(source) or os.path.islink(source):
                        raise ReleaseError("member %r: hardlink to %r, which is not a regular file extracted "
                                           "before it, refused" % (member.name, member.linkname))
                    os.link(source, target)
                else:
                    size += member.size
                    if size > max_size:
                        raise ReleaseError("archive content exceeds max_size=%d bytes; refused (raise max_size "
                                           "if this is expected)" % max_size)
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        src = tf.extractfile(member)
                        shutil.copyfileobj(src, out, CHUNK)
                    os.chmod(target, _file_mode(member.mode))
                    os.utime(target, (member.mtime, member.mtime))
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise ReleaseError("%s is damaged or truncated: %s" % (archive, e))
    # A link is judged whole only once every link is in place: a -> b/c is harmless
    # until a later member makes b -> .. .
    for target, name, link in links:
        if not _inside(dest, os.path.realpath(target)):
            raise ReleaseError("member %r: symlink to %r resolves outside the release through other links, refused"
                               % (name, link))
    for target, member in reversed(dirs):  # deepest last-declared first; modes after content
        os.chmod(target, _dir_mode(member.mode))
        os.utime(target, (member.mtime, member.mtime))
    return members, size


# ----------------------------------------------------------------------- the root

class Root:
    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.releases_dir = os.path.join(self.path, "releases")
        self.shared_dir = os.path.join(self.path, "shared")
        self.state_dir = os.path.join(self.path, ".pydeploy")
        self.history_path = os.path.join(self.state_dir, "history.jsonl")
        self.current_link = os.path.join(self.path, "current")

    def release_path(self, release_id):
        return os.path.join(self.releases_dir, release_id)

    # reading ----------------------------------------------------------------

    def manifest(self, release_id):
        try:
            with open(os.path.join(self.release_path(release_id), MANIFEST)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def current(self):
        """The release `current` points at, read from the link itself."""
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise ReleaseError("%s exists but is not a symlink; move it away so that releases can be "
                                   "switched" % self.current_link)
            raise
        return os.path.basename(os.path.normpath(target))

    def history(self):
        events = []
        try:
            with open(self.history_path) as f:
                for line in f:
                    line = line.strip()
                    if line:
                        try:
                            events.append(json.loads(line))
                        except ValueError:
                            continue  # a torn last line from a crash is not fatal
        except FileNotFoundError:
            pass
        return events

    def present(self):
        """Complete releases on disk (those with a manifest)."""
        try:
            names = os.listdir(self.releases_dir)
        except FileNotFoundError:
            return []
        return [n for n in names if not n.startswith(".") and self.manifest(n) is not None]

    def ordered(self, history=None):
        """Complete releases, oldest first, in the order the history recorded them
        (first unpack or activation); releases it does not know come first, by the
        time in their manifest. File times are never used."""
        history = self.history() if history is None else history
        first = {}
        for i, e in enumerate(history):
            rid = e.get("release")
            if rid and rid not in first and e.get("event") in ("unpacked", "activated", "rolled_back"):
                first[rid] = i
        present = self.present()
        unknown = sorted((r for r in present if r not in first),
                         key=lambda r: ((self.manifest(r) or {}).get("time", ""), r))
        known = sorted((r for r in present if r in first), key=lambda r: first[r])
        return unknown + known

    @staticmethod
    def failed(history):
        """Releases that count as failed: among the events naming a release in
        `release` (unpacked, activated, rolled_back, failed), the latest one is
        `failed`. Activating it again, rolling back to it or unpacking it again
        (after a prune) clears the mark. Present on disk or not."""
        latest = {}
        for e in history:
            rid = e.get("release")
            if rid and isinstance(rid, str) and e.get("event") in MARKING_EVENTS:
                latest[rid] = e["event"]
        return {rid for rid, event in latest.items() if event == "failed"}

    def rollback_target(self, current, history=None):
        """The newest release activated before `current` that was not itself rolled
        back from, does not count as failed, and is still on disk."""
        history = self.history() if history is None else history
        activated, rolled_back_from = [], set()
        for e in history:
            rid = e.get("release")
            if e.get("event") in ("activated", "rolled_back") and rid and rid not in activated:
                activated.append(rid)
            if e.get("event") == "rolled_back" and e.get("previous"):
                rolled_back_from.add(e["previous"])
        failed = self.failed(history)
        present = set(self.present())
        order = activated + [r for r in self.ordered(history) if r not in activated]
        if current in order:
            order = order[:order.index(current)]
        for rid in reversed(order):
            if rid != current and rid in present and rid not in rolled_back_from and rid not in failed:
                return rid
        return None

    def to_prune(self, keep, current, history=None):
        """Releases to remove, in this order: every release that counts as failed
        (except the current one), then the oldest of the others beyond `keep`
        (counting the current one). The current release and the rollback target
        are never returned."""
        history = self.history() if history is None else history
        ordered = self.ordered(history)
        failed = self.failed(history)
        doomed_failed = [r for r in ordered if r in failed and r != current]
        remaining = [r for r in ordered if r not in doomed_failed]
        protected = {current, self.rollback_target(current, history)}
        candidates = [r for r in remaining if r not in protected]
        excess = len(remaining) - keep
        return doomed_failed + (candidates[:excess] if excess > 0 else [])

    def leftovers(self):
        try:
            names = os.listdir(self.releases_dir)
        except FileNotFoundError:
            return []
        return [n for n in names if n.startswith(".") and (n.endswith(".partial") or n.endswith(".deleting"))]

    # writing ----------------------------------------------------------------

    def ensure_state_dir(self):
        """Only what the history and the lock need (for marking a release failed)."""
        if not os.path.isdir(self.path):
            os.makedirs(self.path, 0o755)
        if not os.path.isdir(self.state_dir):
            os.makedirs(self.state_dir, 0o755)

    def ensure_layout(self):
        for d in (self.path, self.releases_dir, self.shared_dir):
            if not os.path.isdir(d):
                os.makedirs(d, 0o755)
        if not os.path.isdir(self.state_dir):
            os.makedirs(self.state_dir, 0o755)

    def record(self, event, **fields):
        entry = dict(event=event, time=utcnow(), user=os.environ.get("SUDO_USER") or _whoami())
        entry.update(fields)
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = os.open(self.history_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def switch(self, release_id):
        """Point `current` at releases/<id> atomically: a new symlink renamed over the
        old one, so that `current` is never missing or half-made."""
        tmp = os.path.join(self.path, ".current.%d.tmp" % os.getpid())
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.join("releases", release_id), tmp)
        os.rename(tmp, self.current_link)
        _fsync_dir(self.path)

    def remove_release(self, release_id):
        path = self.release_path(release_id)
        doomed = os.path.join(self.releases_dir, ".%s.deleting" % release_id)
        os.rename(path, doomed)  # from here on it no longer looks like a release
        shutil.rmtree(doomed)

    def remove_leftovers(self):
        removed = []
        for name in self.leftovers():
            shutil.rmtree(os.path.join(self.releases_dir, name), ignore_errors=True)
            removed.append(name)
        return removed


def _whoami():
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry for the uid
        return str(os.getuid())


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def link_shared(root, release_dir, shared_paths, owner=None):
    """Replace each shared path inside the release by a relative symlink into
    root/shared. A path missing from shared/ is seeded with what the release holds
    there (moved), or made an empty directory; nothing already in shared/ is touched."""
    linked = []
    shared_st = os.stat(root.shared_dir)
    for raw in shared_paths:
        parts = [p for p in raw.strip("/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts or raw.startswith("/"):
            raise ReleaseError("shared_paths entry %r must be a relative path inside the release without '..'" % raw)
        inside = os.path.join(release_dir, *parts)
        shared = os.path.join(root.shared_dir, *parts)
        _check_parents(release_dir, parts, raw)
        _makedirs(release_dir, parts[:-1])
        if not os.path.lexists(shared):
            os.makedirs(os.path.dirname(shared), 0o755, exist_ok=True)
            if os.path.lexists(inside) and not os.path.islink(inside):
                shutil.move(inside, shared)
            else:
                os.mkdir(shared, 0o755)
            for dirpath, dirnames, filenames in os.walk(shared):
                for n in [dirpath] + [os.path.join(dirpath, x) for x in dirnames + filenames]:
                    os.lchown(n, shared_st.st_uid, shared_st.st_gid)
        if os.path.lexists(inside):
            if os.path.isdir(inside) and not os.path.islink(inside):
                shutil.rmtree(inside)
            else:
                os.unlink(inside)
        os.symlink(os.path.relpath(shared, os.path.dirname(inside)), inside)
        linked.append("/".join(parts))
    return linked


def chown_tree(path, uid, gid):
    if uid == -1 and gid == -1:
        return
    os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), uid, gid)


def write_manifest(release_dir, data):
    path = os.path.join(release_dir, MANIFEST)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def elapsed(start):
    return round(time.time() - start, 3)
