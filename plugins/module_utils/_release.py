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
    .pydeploy/lock          held (flock) by the module call that changes the root
    .pydeploy/deploy.lock   the deploy lock: held by one playbook run (its controller
                            process) from its start to its end, JSON naming the holder

Trust model. The module runs as root and the application user is untrusted. The
root, releases/ and .pydeploy/ (and every directory above the root) must be real
directories that only root (or the user running the module, or the configured
owner) can change: that is checked once, on descriptors, when the root is opened,
and from then on nothing but a trusted user can change what their paths name.
shared/ belongs to the application user: everything done there goes through
descriptors opened with O_NOFOLLOW relative to shared/'s own descriptor, so a
link planted there is refused instead of followed. A partial release
(releases/.<id>.partial, mode 0700 in root's releases/) is only ever written by
root. The archive is read from one descriptor, hashed as it is read, and nothing
is renamed into place unless the digest matched and the stream ended cleanly.
"""

from __future__ import annotations

import bz2
import collections
import datetime
import errno
import fcntl
import getpass
import hashlib
import json
import lzma
import math
import os
import pwd
import re
import shutil
import socket
import stat
import tarfile
import time
import zlib

MANIFEST = "RELEASE.json"
# Used with fullmatch(): `$` would accept a trailing newline.
RELEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK = 1024 * 1024
READ_CHUNK = 256 * 1024
RETAIN = 64 * 1024  # more than tarfile reads ahead (its record size, 10 KiB)
NAME_MAX = 255
PATH_MAX = 4096
MAX_DEPTH = 100
SYMLINK_HOPS = 40  # the kernel's limit (MAXSYMLINKS)
# ASCII control characters (NUL, newline, ESC, DEL, ...) are refused in member names.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# History events whose `release` decides whether that release counts as failed.
MARKING_EVENTS = ("unpacked", "activated", "rolled_back", "failed")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Times a member may carry (seconds from the epoch): beyond this os.utime() overflows.
_MTIME_LIMIT = 2 ** 40


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


# ------------------------------------------------------------------ trusted paths

def _owner_name(uid):
    try:
        return "%s (uid %d)" % (pwd.getpwuid(uid).pw_name, uid)
    except KeyError:
        return "uid %d" % uid


def _check_trusted(fd, where, uids, ancestor=False):
    """Raise unless the directory open at fd can only be changed by a trusted user:
    owned by one of uids and not writable by its group or others. A directory above
    the root may be world-writable with the sticky bit (like /tmp): nobody else can
    then rename or remove what a trusted user made in it."""
    st = os.fstat(fd)
    if st.st_uid not in uids:
        raise ReleaseError("%s is owned by %s; it must be owned by root (or by the user running the deploy), "
                           "since whoever owns it can redirect what root writes below it"
                           % (where, _owner_name(st.st_uid)))
    if st.st_mode & 0o022 and not (ancestor and st.st_mode & stat.S_ISVTX):
        raise ReleaseError("%s is writable by %s (mode %04o); only its owner may write there "
                           "(chmod go-w %s)" % (where, "others" if st.st_mode & 0o002 else "its group",
                                                stat.S_IMODE(st.st_mode), where))


def _open_dir_at(parent_fd, name, where, create, mode=0o755):
    """Open the directory `name` below parent_fd, never through a symlink. Returns
    (fd, created) or (None, False) when it is missing and not to be created."""
    created = False
    for _attempt in range(2):
        try:
            fd = os.open(name, _DIR, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                return None, False
            try:
                os.mkdir(name, mode, dir_fd=parent_fd)
                created = True
            except FileExistsError:
                pass
            continue
        except OSError as e:
            try:
                st = os.lstat(name, dir_fd=parent_fd)
            except OSError:
                raise e
            if stat.S_ISLNK(st.st_mode):
                raise ReleaseError("%s is a symlink; it must be a real directory (a link there would make root "
                                   "read and write wherever it points)" % where)
            if not stat.S_ISDIR(st.st_mode):
                raise ReleaseError("%s exists and is not a directory" % where)
            raise
        if created:
            os.fchmod(fd, mode)  # not what the umask left
        return fd, created
    raise ReleaseError("%s keeps changing while it is being opened" % where)


def _open_trusted_root(path, uids, create):
    """Open the directory at the absolute path, walking from / one component at a
    time. Every directory on the way must be trusted (_check_trusted); a symlink on
    the way is followed only when it is owned by a trusted user (it lies in a trusted
    directory, checked before). Returns the descriptor, or None when the path is
    missing and create is false."""
    fd = os.open("/", _DIR)
    try:
        _check_trusted(fd, "/", uids, ancestor=True)
        todo = [c for c in reversed(path.split("/")) if c]
        where = "/"
        hops = 0
        while todo:
            comp = todo.pop()
            if comp == ".":
                continue
            here = os.path.join(where, comp)
            if comp != "..":
                try:
                    st = os.lstat(comp, dir_fd=fd)
                except FileNotFoundError:
                    st = None
                if st is not None and stat.S_ISLNK(st.st_mode):
                    if st.st_uid not in uids:
                        raise ReleaseError("%s is a symlink owned by %s; a link above or at the application root "
                                           "must be owned by root" % (here, _owner_name(st.st_uid)))
                    hops += 1
                    if hops > SYMLINK_HOPS:
                        raise ReleaseError("%s: too many levels of symlinks" % path)
                    target = os.readlink(comp, dir_fd=fd)
                    if target.startswith("/"):
                        os.close(fd)
                        fd = os.open("/", _DIR)
                        where = "/"
                    todo.extend(c for c in reversed(target.split("/")) if c)
                    continue
            nfd, _created = _open_dir_at(fd, comp, here, create and comp != "..")
            if nfd is None:
                os.close(fd)
                return None
            os.close(fd)
            fd = nfd
            where = os.path.dirname(where) if comp == ".." else here
            _check_trusted(fd, where, uids, ancestor=bool(todo))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_state_file(dir_fd, name, flags, path, mode=0o644):
    """Open a file of .pydeploy/ (history, lock) without following a link."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise ReleaseError("%s is a symlink, not a file this module wrote; refused (remove it)" % path)


# --------------------------------------------------------------------- removal

def rmtree_at(parent_fd, name):
    """Remove parent_fd/name and everything below it without following a symlink and
    without recursion (any depth, a few descriptors): descend through O_NOFOLLOW
    descriptors, come back up through '..' checked against the device and inode
    recorded on the way down."""
    try:
        st = os.lstat(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    fd = os.open(name, _DIR, dir_fd=parent_fd)
    path = [(name, (st.st_dev, st.st_ino))]
    try:
        while True:
            sub = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        sub = entry.name
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if sub is not None:
                nfd = os.open(sub, _DIR, dir_fd=fd)
                nst = os.fstat(nfd)
                os.close(fd)
                fd = nfd
                path.append((sub, (nst.st_dev, nst.st_ino)))
                continue
            done, _ident = path.pop()
            if not path:
                os.close(fd)
                fd = None
                os.rmdir(done, dir_fd=parent_fd)
                return
            up = os.open("..", _DIR, dir_fd=fd)
            ust = os.fstat(up)
            os.close(fd)
            fd = up
            if (ust.st_dev, ust.st_ino) != path[-1][1]:
                raise ReleaseError("%s moved while it was being removed; stopped" % name)
            os.rmdir(done, dir_fd=fd)
    finally:
        if fd is not None:
            os.close(fd)


def rmtree_path(path):
    """rmtree_at for a path inside a directory only root can write (a partial release)."""
    parent = os.open(os.path.dirname(path), _DIR)
    try:
        rmtree_at(parent, os.path.basename(path))
    finally:
        os.close(parent)


# --------------------------------------------------------------------------- lock

class RootLock:
    """Exclusive lock on an application root. flock() is released by the kernel when
    its holder dies, so a crashed run never blocks the next one; the file's content
    names the holder for the message a second run fails with."""

    def __init__(self, dir_fd, path):
        self.dir_fd = dir_fd
        self.path = path
        self.fd = None
        self.stale = None

    def acquire(self, wait=0):
        """Take the lock, or fail naming its holder; wait is how many seconds to keep
        trying first (the deploy lock's states wait for a call of another run to end,
        so that they can name that run's holder of the deploy lock)."""
        fd = _open_state_file(self.dir_fd, os.path.basename(self.path), os.O_RDWR | os.O_CREAT, self.path)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ReleaseError("%s is not a regular file; remove it" % self.path)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
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
        os.pwrite(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), started=utcnow())).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    @staticmethod
    def _read(fd):
        try:
            data = os.pread(fd, 4096, 0).decode()
            return json.loads(data) if data.strip() else {}
        except (OSError, ValueError):
            return {}

    def release(self):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------ deploy lock

DEPLOY_LOCK = "deploy.lock"
# What tells one holder (a playbook run on one controller) from another. user and
# started are for people; start_ticks, boot_id and pid_ns make the identity exact
# where the controller has /proc.
HOLDER_IDENTITY = ("host", "pid", "start_ticks", "boot_id", "pid_ns")
HOLDER_KEYS = ("host", "pid", "started", "user", "start_ticks", "boot_id", "pid_ns")


def same_holder(a, b):
    """Whether two holder records name the same run (their identity fields agree)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    return all(a.get(k) == b.get(k) for k in HOLDER_IDENTITY)


def parse_utc(text):
    """Seconds since the epoch of a time as utcnow() writes it; None when it is not one."""
    try:
        return datetime.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def _duration(seconds):
    seconds = max(0, int(seconds))
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    return "%.1f h" % (seconds / 3600.0)


def describe_holder(lock, now=None):
    """The holder of a deploy lock as a sentence: who, where, since when."""
    if lock.get("unreadable"):
        return "an unreadable lock file (written %s)" % lock.get("since", "at an unknown time")
    since = lock.get("since")
    age = ""
    since_s = parse_utc(since)
    if since_s is not None:
        age = ", %s ago" % _duration((time.time() if now is None else now) - since_s)
    return "ansible-playbook pid %s on controller %s, started %s, run by user %s, holding it since %s%s" % (
        lock.get("pid", "?"), lock.get("host", "?"), lock.get("started") or "at an unknown time",
        lock.get("user") or "?", since or "an unknown time", age)


class DeployLock:
    """The deploy lock of a root, .pydeploy/deploy.lock: a JSON file naming the run
    that holds it (controller host, pid, start time, user, since when). It is created
    with O_CREAT|O_EXCL and replaced (on a takeover) by a rename, never through a
    link, in .pydeploy/, which only root can write; callers hold the root's per-call
    flock (RootLock) while they read and change it."""

    def __init__(self, root):
        self.root = root
        self.path = os.path.join(root.state_dir, DEPLOY_LOCK)

    def read(self):
        """The lock's content (a dict; {"unreadable": True, "since": ...} for a file
        that is not a lock this module wrote in full), or None when there is none."""
        if self.root.state_fd is None:
            return None
        try:
            fd = _open_state_file(self.root.state_fd, DEPLOY_LOCK, os.O_RDONLY | os.O_NONBLOCK, self.path)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ReleaseError("%s is not a regular file, not a lock this module wrote; refused (remove it)"
                                   % self.path)
            data = os.read(fd, 65536)
        finally:
            os.close(fd)
        try:
            lock = json.loads(data.decode())
        except ValueError:
            lock = None
        if not isinstance(lock, dict) or not lock.get("host") or not isinstance(lock.get("pid"), int):
            # A crash between the create and the write, or a file someone else made.
            return {"unreadable": True, "since": datetime.datetime.fromtimestamp(
                st.st_mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        return lock

    def write(self, lock, replace=False):
        """Create the lock (it must not exist), or replace the one there atomically."""
        data = (json.dumps(lock, sort_keys=True) + "\n").encode()
        name = ".%s.%d.tmp" % (DEPLOY_LOCK, os.getpid()) if replace else DEPLOY_LOCK
        if replace:
            try:
                os.unlink(name, dir_fd=self.root.state_fd)
            except FileNotFoundError:
                pass
        fd = _open_state_file(self.root.state_fd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                              os.path.join(self.root.state_dir, name))
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(name, DEPLOY_LOCK, src_dir_fd=self.root.state_fd, dst_dir_fd=self.root.state_fd)
        os.fsync(self.root.state_fd)

    def remove(self):
        """Unlink the lock (unlink never follows a link)."""
        try:
            os.unlink(DEPLOY_LOCK, dir_fd=self.root.state_fd)
        except FileNotFoundError:
            return
        os.fsync(self.root.state_fd)


# ------------------------------------------------------------------ the stream

class _Source:
    """The archive as read from one open descriptor, hashed as it is read: the bytes
    that are unpacked are the bytes that are hashed."""

    def __init__(self, fd):
        self.fd = fd
        self.hash = hashlib.sha256()
        self.at_end = False

    def read(self):
        data = os.read(self.fd, READ_CHUNK)
        if data:
            self.hash.update(data)
        else:
            self.at_end = True
        return data

    def drain(self):
        while self.read():
            pass
        return self.hash.hexdigest()


_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
_MAGIC_OF = dict((kind, magic) for magic, kind in _MAGIC)


def _decompressor(kind):
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)  # checks the CRC-32 and length trailer
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)


class _Decompressed:
    """File-like reader of the tar stream inside a .tar, .tar.gz, .tar.bz2 or .tar.xz,
    at most CHUNK bytes of output at a time. Refuses a compressed stream that ends
    before its trailer and anything after it but another stream of the same kind
    (concatenated members) or NUL padding."""

    def __init__(self, source, label):
        self.source = source
        self.label = label
        self.pending = source.read()  # input not yet given to the decompressor
        self.kind = next((k for magic, k in _MAGIC if self.pending.startswith(magic)), None)
        self.dec = _decompressor(self.kind) if self.kind else None
        self.out = b""
        self.pos = 0
        self.done = False
        # The last RETAIN bytes handed out, as (offset, bytes): what tarfile read ahead
        # of the block it stopped at, for _check_end.
        self.produced = 0
        self.recent = collections.deque()
        self.recent_size = 0

    def _more(self):
        """Put more output in self.out; leave it empty at the end of the data."""
        if self.dec is None:
            self.out = self.pending or self.source.read()
            self.pending = b""
            self.done = not self.out
            return
        while not self.done:
            if self.dec.eof:
                rest = self.dec.unused_data + self.pending
                self.pending = b""
                while not rest and not self.source.at_end:
                    rest = self.source.read()
                if not rest:
                    self.done = True
                    return
                magic = _MAGIC_OF[self.kind]
                while len(rest) < len(magic) and not self.source.at_end:
                    rest += self.source.read()  # a next member's magic cut by a read
                if rest.startswith(magic):
                    self.dec = _decompressor(self.kind)
                    self.pending = rest
                    continue
                while rest:
                    if rest.count(b"\0") != len(rest):
                        raise ReleaseError("%s has data after the end of its %s stream (appended garbage); refused"
                                           % (self.label, self.kind))
                    rest = self.source.read()
                self.done = True
                return
            if self.kind == "gzip":
                data = self.dec.unconsumed_tail or self.pending or self.source.read()
                self.pending = b""
                out = self._decompress(data)
                if not out and not data and not self.dec.eof:
                    raise ReleaseError("%s is truncated: its %s stream ends before its end marker"
                                       % (self.label, self.kind))
            else:
                data = b""
                if self.dec.needs_input:
                    data = self.pending or self.source.read()
                    self.pending = b""
                    if not data:
                        raise ReleaseError("%s is truncated: its %s stream ends before its end marker"
                                           % (self.label, self.kind))
                out = self._decompress(data)
            if out:
                self.out = out
                return

    def _decompress(self, data):
        try:
            return self.dec.decompress(data, CHUNK)
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as e:
            raise ReleaseError("%s is damaged: its %s stream does not decompress (%s)" % (self.label, self.kind, e))

    def read(self, size):
        if self.pos >= len(self.out):
            self.out, self.pos = b"", 0
            if self.done:
                return b""
            self._more()
        data = self.out[self.pos:self.pos + size]
        self.pos += len(data)
        if data:
            self.recent.append((self.produced, data))
            self.produced += len(data)
            self.recent_size += len(data)
            while self.recent_size - len(self.recent[0][1]) >= RETAIN:
                self.recent_size -= len(self.recent.popleft()[1])
        return data

    def since(self, offset):
        """The bytes handed out from offset on (it must be among the last RETAIN)."""
        if offset > self.produced or (self.recent and offset < self.recent[0][0]):
            raise ReleaseError("%s: internal error: offset %d of the tar stream is no longer at hand"
                               % (self.label, offset))
        return b"".join(d[max(0, offset - start):] for start, d in self.recent if start + len(d) > offset)


# ----------------------------------------------------------------------- extraction

def _control(text):
    return CONTROL.search(text) is not None


def _member_parts(name, strip_components):
    """Split an archive member name into safe path components, or raise."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        raise ReleaseError("member %r: absolute path refused" % name)
    if "\0" in name:
        raise ReleaseError("member %r: NUL byte in name refused" % name)
    if _control(name):
        raise ReleaseError("member %r: control character in name refused" % name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ReleaseError("member %r: '..' component refused" % name)
    for p in parts:
        if len(os.fsencode(p)) > NAME_MAX:
            raise ReleaseError("member %r: a name component of %d bytes, more than %d, refused"
                               % (name, len(os.fsencode(p)), NAME_MAX))
    return parts[strip_components:]


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


def _makedirs(root, rel_dir, uid=-1, gid=-1):
    path = root
    for part in rel_dir:
        path = os.path.join(path, part)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise ReleaseError("%s exists and is not a directory" % os.path.relpath(path, root))
        else:
            os.chmod(path, 0o755)
            if uid != -1 or gid != -1:
                os.lchown(path, uid, gid)


def _file_mode(mode):
    # No setuid/setgid/sticky, no group or world write; the owner can always read.
    return (mode & 0o755) | 0o600


def _dir_mode(mode):
    return (mode & 0o755) | 0o700


def _escapes(parent_parts, link):
    """Whether the relative link target, read from the directory parent_parts (inside
    the release), names something outside the release, taken as written."""
    depth = len(parent_parts)
    for comp in link.split("/"):
        if comp in ("", "."):
            continue
        depth += -1 if comp == ".." else 1
        if depth < 0:
            return True
    return False


def _resolves_outside(dest, parent_parts, link):
    """Follow the link target as the kernel would, with the links now in dest, and say
    whether it leaves the release at any step. Judged against the release's own
    top (never against dest's name: a target through `../../.<id>.partial` leaves the
    release however it resolves while unpacking)."""
    cur = list(parent_parts)
    todo = list(reversed(link.split("/")))
    hops = 0
    while todo:
        comp = todo.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if not cur:
                return True
            cur.pop()
            continue
        try:
            st = os.lstat(os.path.join(dest, *(cur + [comp])))
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > SYMLINK_HOPS:
                return False  # the kernel refuses to resolve it: it cannot lead anywhere
            target = os.readlink(os.path.join(dest, *(cur + [comp])))
            if target.startswith("/"):
                return True
            todo.extend(reversed(target.split("/")))
            continue
        cur.append(comp)
    return False


def _check_mtime(member):
    mtime = member.mtime
    if not isinstance(mtime, (int, float)) or not math.isfinite(mtime) or abs(mtime) >= _MTIME_LIMIT:
        raise ReleaseError("member %r: modification time %r out of range, refused" % (member.name, mtime))


def _check_end(stream, end, name):
    """After the last member, at offset `end` of the tar stream, tarfile read a block
    that is not a member header and stopped; it does not say whether that was the end
    of the archive, a truncated one or garbage. The first end-of-archive block and the
    second must be there, and whatever follows (record padding) must be zeros to the
    end of the stream."""
    rest = stream.since(end)
    while len(rest) < 2 * tarfile.BLOCKSIZE:
        more = stream.read(CHUNK)
        if not more:
            break
        rest += more
    first, second = rest[:tarfile.BLOCKSIZE], rest[tarfile.BLOCKSIZE:2 * tarfile.BLOCKSIZE]
    if len(first) < tarfile.BLOCKSIZE:
        raise ReleaseError("%s is truncated: the tar archive ends without its end-of-archive blocks" % name)
    if first.count(b"\0") != tarfile.BLOCKSIZE:
        raise ReleaseError("%s is damaged: the block at offset %d is neither a member header nor the end of the "
                           "archive" % (name, end))
    if len(second) < tarfile.BLOCKSIZE or second.count(b"\0") != tarfile.BLOCKSIZE:
        raise ReleaseError("%s is truncated or damaged: the tar archive has only one of its two end-of-archive "
                           "blocks" % name)
    rest = rest[2 * tarfile.BLOCKSIZE:]
    while rest:
        if rest.count(b"\0") != len(rest):
            raise ReleaseError("%s has data after the end of the tar archive; refused" % name)
        rest = stream.read(CHUNK)


def extract(fd, dest, sha256, name="archive", strip_components=0, max_members=100000, max_size=2 * 1024 ** 3,
            max_depth=MAX_DEPTH, uid=-1, gid=-1):
    """Extract the tar archive open at fd (any of .tar, .tar.gz, .tar.bz2, .tar.xz)
    into the new, empty directory dest that only root can write, reading it once as a
    stream, hashing what is read, under this policy:

    - absolute names, '..' components, control characters, components longer than
      NAME_MAX, paths longer than PATH_MAX or deeper than max_depth, device and FIFO
      members are refused;
    - nothing is written through a symlink, and no name is written twice;
    - symlinks must stay inside the release, checked as written when they come and
      again, following every link, once all are in place (a chain of links can only
      be judged whole); an empty or NUL-bearing target is refused; hardlinks must name
      a regular file extracted before them;
    - setuid/setgid/sticky bits and group/world write bits are dropped; modification
      times must be finite and in range;
    - more than max_members members or more than max_size bytes of content stop it;
    - the stream must end cleanly (compression trailer, both end-of-archive blocks,
      nothing but padding after them) and its SHA-256 must be sha256.

    Where tarfile has data_filter (Python 3.12, 3.11.4+), it is applied on top.
    Files are owned by uid:gid (-1: unchanged). Returns (members, size). Raises
    ReleaseError, a checksum mismatch first when the bytes are not the expected
    ones; the caller removes dest on error.
    """
    dest = os.path.realpath(dest)
    source = _Source(fd)
    try:
        members, size = _extract(source, dest, name, strip_components, max_members, max_size, max_depth, uid, gid)
    except ReleaseError:
        # Bytes that are not the expected ones: say that, not what is wrong with them.
        actual = source.drain()
        if actual != sha256:
            raise ReleaseError("checksum mismatch for %s: expected sha256 %s, actual %s; nothing was written"
                               % (name, sha256, actual))
        raise
    actual = source.drain()
    if actual != sha256:
        raise ReleaseError("checksum mismatch for %s: expected sha256 %s, actual %s; nothing was written"
                           % (name, sha256, actual))
    return members, size


def _extract(source, dest, name, strip_components, max_members, max_size, max_depth, uid, gid):
    data_filter = getattr(tarfile, "data_filter", None)  # absent before Python 3.11.4
    chown = uid != -1 or gid != -1
    members = size = 0
    # Directories known to be real directories inside dest, created or checked here.
    # Nothing can turn one into a symlink later (a second member of that name is
    # refused), so their members skip the per-component walk.
    safe_dirs = {()}
    dirs = []
    links = []
    try:
        stream = _Decompressed(source, name)
        tf = tarfile.open(fileobj=stream, mode="r|")
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise ReleaseError("%s is not a readable tar archive (.tar, .tar.gz, .tar.bz2, .tar.xz): %s" % (name, e))
    dest_bytes = len(os.fsencode(dest))
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
                if len(parts) > max_depth:
                    raise ReleaseError("member %r: %d levels deep, more than max_depth=%d; refused (raise max_depth "
                                       "if this is expected)" % (member.name, len(parts), max_depth))
                if dest_bytes + 1 + len(os.fsencode(rel)) >= PATH_MAX:
                    raise ReleaseError("member %r: the path would be longer than PATH_MAX (%d bytes), refused"
                                       % (member.name, PATH_MAX))
                if member.ischr() or member.isblk():
                    raise ReleaseError("member %r: device node refused" % member.name)
                if member.isfifo():
                    raise ReleaseError("member %r: FIFO refused" % member.name)
                if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
                    raise ReleaseError("member %r: unsupported member type %r refused" % (member.name, member.type))
                _check_mtime(member)
                if member.issym() or member.islnk():
                    kind = "symlink" if member.issym() else "hardlink"
                    if not member.linkname:
                        raise ReleaseError("member %r: %s with an empty target refused" % (member.name, kind))
                    if "\0" in member.linkname or _control(member.linkname):
                        raise ReleaseError("member %r: %s target %r holds a NUL or control character, refused"
                                           % (member.name, kind, member.linkname))
                    if len(os.fsencode(member.linkname)) >= PATH_MAX:
                        raise ReleaseError("member %r: %s target longer than PATH_MAX (%d bytes) refused"
                                           % (member.name, kind, PATH_MAX))
                if data_filter is not None:
                    try:
                        data_filter(member, dest)
                    except tarfile.FilterError as e:
                        raise ReleaseError("member %r: refused by tarfile's data filter: %s" % (member.name, e))
                try:
                    size = _write_member(tf, member, parts, rel, dest, strip_components, safe_dirs, dirs, links,
                                         size, max_size, uid, gid, chown)
                except OSError as e:
                    raise ReleaseError("member %r: cannot be written: %s" % (member.name, e.strerror or e))
            _check_end(stream, tf.offset, name)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError, OverflowError) as e:
            raise ReleaseError("%s is damaged or truncated: %s" % (name, e))
    # A link is judged whole only once every link is in place: a -> b/c is harmless
    # until a later member makes b -> .. .
    for parent, member_name, link in links:
        if _resolves_outside(dest, parent, link):
            raise ReleaseError("member %r: symlink to %r resolves outside the release through other links, refused"
                               % (member_name, link))
    for target, member in reversed(dirs):  # deepest last-declared first; modes after content
        if chown:
            os.lchown(target, uid, gid)
        os.chmod(target, _dir_mode(member.mode))
        os.utime(target, (member.mtime, member.mtime))
    return members, size


def _write_member(tf, member, parts, rel, dest, strip_components, safe_dirs, dirs, links, size, max_size, uid, gid, chown):
    target = os.path.join(dest, *parts)
    parent = tuple(parts[:-1])
    if parent not in safe_dirs:
        _check_parents(dest, parts, member.name)
        _makedirs(dest, parts[:-1], uid, gid)
        safe_dirs.update(parent[:k] for k in range(len(parent) + 1))
    if member.isdir():
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            os.mkdir(target, 0o700)
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise ReleaseError("member %r: %s exists and is not a directory" % (member.name, rel))
        safe_dirs.add(tuple(parts))
        dirs.append((target, member))
        return size
    if os.path.lexists(target):
        raise ReleaseError("member %r: %s appears twice in the archive, refused" % (member.name, rel))
    if member.issym():
        link = member.linkname
        if link.startswith("/"):
            raise ReleaseError("member %r: absolute symlink to %r refused" % (member.name, link))
        if _escapes(parts[:-1], link):
            raise ReleaseError("member %r: symlink to %r points outside the release, refused" % (member.name, link))
        os.symlink(link, target)
        if chown:
            os.lchown(target, uid, gid)
        links.append((parts[:-1], member.name, link))
    elif member.islnk():
        try:
            link_parts = _member_parts(member.linkname, strip_components)
        except ReleaseError as e:
            raise ReleaseError("member %r: hardlink target %s" % (member.name, e))
        source = os.path.join(dest, *link_parts) if link_parts else dest
        _check_parents(dest, link_parts, member.name)
        try:
            st = os.lstat(source) if link_parts else None
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise ReleaseError("member %r: hardlink to %r, which is not a regular file extracted "
                               "before it, refused" % (member.name, member.linkname))
        os.link(source, target, follow_symlinks=False)
    else:
        size += member.size
        if size > max_size:
            raise ReleaseError("archive content exceeds max_size=%d bytes; refused (raise max_size "
                               "if this is expected)" % max_size)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            src = tf.extractfile(member)
            while True:
                block = src.read(CHUNK)
                if not block:
                    break
                out.write(block)
            out.flush()
            if chown:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, _file_mode(member.mode))
            os.utime(fd, (member.mtime, member.mtime))
    return size


# ----------------------------------------------------------------------- the root

def _valid_name(name):
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


class Root:
    """An application root, opened once through descriptors that are checked to be
    trusted (see the module docstring); every later operation is relative to them.
    Use as a context manager, after open(), ensure_layout() or ensure_state_dir()."""

    LAYOUT = ("releases", "shared", ".pydeploy")

    def __init__(self, path, trusted_uids=()):
        if not isinstance(path, str) or not path.startswith("/"):
            raise ReleaseError("root must be an absolute path such as /srv/mysite, got %r" % (path,))
        if "\0" in path or _control(path):
            raise ReleaseError("root %r holds a NUL or control character" % (path,))
        self.path = os.path.normpath(path)
        if self.path == "/" or self.path.startswith("//"):
            raise ReleaseError("root must be a directory of its own such as /srv/mysite, not %r" % (path,))
        self.releases_dir = os.path.join(self.path, "releases")
        self.shared_dir = os.path.join(self.path, "shared")
        self.state_dir = os.path.join(self.path, ".pydeploy")
        self.history_path = os.path.join(self.state_dir, "history.jsonl")
        self.lock_path = os.path.join(self.state_dir, "lock")
        self.current_link = os.path.join(self.path, "current")
        self.uids = {0, os.geteuid()} | {u for u in trusted_uids if u is not None and u >= 0}
        self.fd = self.releases_fd = self.shared_fd = self.state_fd = None

    # opening ------------------------------------------------------------------

    def open(self, create=()):
        """Open the root and the layout directories that exist, creating those named
        in create ('root' and any of LAYOUT). Refuses an untrusted root, releases/ or
        .pydeploy/, and a shared/ that is not a real directory."""
        self.close()
        self.fd = _open_trusted_root(self.path, self.uids, "root" in create)
        if self.fd is None:
            return self
        for name, attr in (("releases", "releases_fd"), (".pydeploy", "state_fd"), ("shared", "shared_fd")):
            fd, _created = _open_dir_at(self.fd, name, os.path.join(self.path, name), name in create)
            setattr(self, attr, fd)
            if fd is not None and name != "shared":
                _check_trusted(fd, os.path.join(self.path, name), self.uids)
        return self

    def ensure_layout(self):
        return self.open(create=("root",) + self.LAYOUT)

    def ensure_state_dir(self):
        """Only what the history and the lock need (for marking a release failed)."""
        return self.open(create=("root", ".pydeploy"))

    def close(self):
        for attr in ("releases_fd", "shared_fd", "state_fd", "fd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def lock(self, wait=0):
        return RootLock(self.state_fd, self.lock_path).acquire(wait)

    def deploy_lock(self):
        return DeployLock(self)

    def release_path(self, release_id):
        return os.path.join(self.releases_dir, release_id)

    # reading ----------------------------------------------------------------

    def _names(self):
        if self.releases_fd is None:
            return []
        return os.listdir(self.releases_fd)

    def manifest(self, release_id):
        if self.releases_fd is None or not _valid_name(release_id):
            return None
        try:
            fd = os.open(release_id, _DIR, dir_fd=self.releases_fd)
        except OSError:
            return None
        try:
            mfd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            with os.fdopen(mfd) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def current(self):
        """The release `current` points at, read from the link itself."""
        if self.fd is None:
            return None
        try:
            target = os.readlink("current", dir_fd=self.fd)
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
        if self.state_fd is None:
            return events
        try:
            fd = _open_state_file(self.state_fd, "history.jsonl", os.O_RDONLY, self.history_path)
        except FileNotFoundError:
            return events
        with os.fdopen(fd) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue  # a torn last line from a crash is not fatal
                    if isinstance(event, dict):
                        events.append(event)
        return events

    def present(self):
        """Complete releases on disk (those with a manifest)."""
        return [n for n in self._names() if not n.startswith(".") and self.manifest(n) is not None]

    def exists(self, release_id):
        try:
            os.lstat(release_id, dir_fd=self.releases_fd)
        except FileNotFoundError:
            return False
        return True

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
                         key=lambda r: (str((self.manifest(r) or {}).get("time", "")), r))
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
        return [n for n in self._names()
                if n.startswith(".") and (n.endswith(".partial") or n.endswith(".deleting"))]

    # writing ----------------------------------------------------------------

    def record(self, event, **fields):
        entry = dict(event=event, time=utcnow(), user=os.environ.get("SUDO_USER") or _whoami())
        entry.update(fields)
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = _open_state_file(self.state_fd, "history.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                              self.history_path)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def switch(self, release_id):
        """Point `current` at releases/<id> atomically: a new symlink renamed over the
        old one, so that `current` is never missing or half-made."""
        tmp = ".current.%d.tmp" % os.getpid()
        try:
            os.unlink(tmp, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        os.symlink(os.path.join("releases", release_id), tmp, dir_fd=self.fd)
        os.rename(tmp, "current", src_dir_fd=self.fd, dst_dir_fd=self.fd)
        os.fsync(self.fd)

    def _remove_leftover(self, name):
        """Remove releases/<name>, a partial or half-removed release this module left.
        A symlink there is not something it left: refused rather than removed."""
        try:
            st = os.lstat(name, dir_fd=self.releases_fd)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise ReleaseError("%s is a symlink, not a partial release this module left; refused (remove it by "
                               "hand)" % os.path.join(self.releases_dir, name))
        rmtree_at(self.releases_fd, name)

    def new_partial(self, release_id):
        """An empty directory only root can write, releases/.<id>.partial; returns its path."""
        name = ".%s.partial" % release_id
        self._remove_leftover(name)
        os.mkdir(name, 0o700, dir_fd=self.releases_fd)
        return os.path.join(self.releases_dir, name)

    def discard_partial(self, release_id):
        try:
            self._remove_leftover(".%s.partial" % release_id)
        except (OSError, ReleaseError):
            pass

    def commit_partial(self, release_id):
        """Rename releases/.<id>.partial to releases/<id> (refused when that exists)."""
        if self.exists(release_id):
            raise ReleaseError("%s exists but is not a complete release (no %s); move it away"
                               % (self.release_path(release_id), MANIFEST))
        os.rename(".%s.partial" % release_id, release_id, src_dir_fd=self.releases_fd,
                  dst_dir_fd=self.releases_fd)

    def remove_release(self, release_id):
        doomed = ".%s.deleting" % release_id
        self._remove_leftover(doomed)  # an earlier prune that was interrupted
        os.rename(release_id, doomed, src_dir_fd=self.releases_fd, dst_dir_fd=self.releases_fd)
        # From here on it no longer looks like a release.
        rmtree_at(self.releases_fd, doomed)

    def remove_leftovers(self):
        removed = []
        for name in self.leftovers():
            self._remove_leftover(name)
            removed.append(name)
        return removed


def _whoami():
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry for the uid
        return str(os.getuid())


# ----------------------------------------------------------------- shared paths

def shared_parts(raw):
    """The components of a shared_paths entry, or raise."""
    parts = [p for p in raw.strip("/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts or raw.startswith("/"):
        raise ReleaseError("shared_paths entry %r must be a relative path inside the release without '..'" % raw)
    if _control(raw):
        raise ReleaseError("shared_paths entry %r holds a NUL or control character" % raw)
    if parts == [MANIFEST]:
        raise ReleaseError("shared_paths entry %r: %s is the release's manifest, written by the module; it cannot "
                           "be shared" % (raw, MANIFEST))
    if any(len(os.fsencode(p)) > NAME_MAX for p in parts):
        raise ReleaseError("shared_paths entry %r has a component longer than %d bytes" % (raw, NAME_MAX))
    return parts


def _chown_tree(path, uid, gid):
    """lchown path and everything below it, for a tree in a partial release (only root
    writes there) that is about to move to shared/. A file hardlinked to another name
    is first replaced by a copy of its own: giving it away must not give away the
    release's other name for it."""
    for dirpath, dirnames, filenames in [("", [], [path])] + list(os.walk(path)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                tmp = os.path.join(os.path.dirname(p), ".%s.pydeploy-copy" % os.path.basename(p))
                shutil.copy2(p, tmp, follow_symlinks=False)
                os.rename(tmp, p)
            os.lchown(p, uid, gid)


def _shared_parent(root, parts, raw, owner):
    """A descriptor of the directory in shared/ that holds the entry parts[-1]. Missing
    directories on the way are made, owned like shared/; a symlink on the way is
    refused: shared/ is the application user's, and nothing root does may follow a
    link there."""
    fd = os.open(".", _DIR, dir_fd=root.shared_fd)
    where = root.shared_dir
    try:
        for comp in parts[:-1]:
            where = os.path.join(where, comp)
            try:
                nfd, created = _open_dir_at(fd, comp, where, create=True)
            except ReleaseError as e:
                raise ReleaseError("shared_paths entry %r: %s" % (raw, e))
            os.close(fd)
            fd = nfd
            if created:
                os.fchown(fd, *owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy_into(src, st, parent_fd, name, owner):
    """Copy src (inside a partial release) to parent_fd/name in shared/, through
    descriptors only; for a shared/ on another file system than the release."""
    if stat.S_ISDIR(st.st_mode):
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            return
        fd = os.open(name, _DIR, dir_fd=parent_fd)
        try:
            with os.scandir(src) as entries:
                for entry in entries:
                    est = entry.stat(follow_symlinks=False)
                    if stat.S_ISLNK(est.st_mode):
                        os.symlink(os.readlink(entry.path), entry.name, dir_fd=fd)
                        os.chown(entry.name, *owner, dir_fd=fd, follow_symlinks=False)
                    else:
                        _copy_into(entry.path, est, fd, entry.name, owner)
            os.fchown(fd, *owner)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd)
        return
    try:
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=parent_fd)
    except FileExistsError:
        return
    with os.fdopen(out, "wb") as f, open(src, "rb") as i:
        while True:
            block = i.read(CHUNK)
            if not block:
                break
            f.write(block)
        f.flush()
        os.fchown(out, *owner)
        os.fchmod(out, stat.S_IMODE(st.st_mode))
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))


def _seed_shared(parent_fd, name, inside, owner, raw):
    """Give shared/ the entry `name` (below parent_fd) when it has none: what the
    release holds there (moved, owned like shared/), else an empty directory. An entry
    shared/ already has, whatever it is, is never touched."""
    try:
        os.lstat(name, dir_fd=parent_fd)
        return
    except FileNotFoundError:
        pass
    try:
        st = os.lstat(inside)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISLNK(st.st_mode):
        # Owned like shared/ while still in the partial release, where only root
        # writes; moved in by one rename (or link) that never follows a link.
        _chown_tree(inside, *owner)
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rename(inside, name, dst_dir_fd=parent_fd)
            else:
                os.link(inside, name, dst_dir_fd=parent_fd, follow_symlinks=False)
                os.unlink(inside)
        except OSError as e:
            if e.errno == errno.EXDEV:
                _copy_into(inside, st, parent_fd, name, owner)
            elif e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
            # Otherwise the application user made it meanwhile: it is theirs, untouched.
        return
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        return
    try:
        fd, _created = _open_dir_at(parent_fd, name, "shared/" + raw, create=False)
    except ReleaseError as e:
        raise ReleaseError("shared_paths entry %r: %s" % (raw, e))
    if fd is None:
        raise ReleaseError("shared_paths entry %r: shared/%s was removed while it was being made" % (raw, raw))
    try:
        os.fchmod(fd, 0o755)
        os.fchown(fd, *owner)
    finally:
        os.close(fd)


def link_shared(root, release_dir, shared_paths, uid=-1, gid=-1):
    """Replace each shared path inside the release (a partial release: only root
    writes there) by a relative symlink into root/shared. A path missing from shared/
    is seeded with what the release holds there (moved), or made an empty directory;
    nothing already in shared/ is touched. Everything in shared/ is done through
    descriptors relative to root.shared_fd, never through a link."""
    linked = []
    shared_st = os.fstat(root.shared_fd)
    owner = (shared_st.st_uid, shared_st.st_gid)
    for raw in shared_paths:
        parts = shared_parts(raw)
        rel = "/".join(parts)
        inside = os.path.join(release_dir, *parts)
        _check_parents(release_dir, parts, raw)
        _makedirs(release_dir, parts[:-1], uid, gid)
        parent_fd = _shared_parent(root, parts, raw, owner)
        try:
            _seed_shared(parent_fd, parts[-1], inside, owner, raw)
        finally:
            os.close(parent_fd)
        try:
            st = os.lstat(inside)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                rmtree_path(inside)
            else:
                os.unlink(inside)
        # releases/<id>/<parts> -> ../(one per component)../shared/<parts>
        os.symlink("../" * (len(parts) + 1) + "shared/" + rel, inside)
        if uid != -1 or gid != -1:
            os.lchown(inside, uid, gid)
        linked.append(rel)
    return linked


# ------------------------------------------------------------------ shared/.env

ENV_FILE = ".env"


def _read_entry(dir_fd, name, limit):
    """What is at `name` in the directory dir_fd, never through a link: (stat, bytes)
    for a regular file (None for the bytes when it holds more than limit), (lstat,
    None) for anything else, (None, None) when nothing is there."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, None
    except OSError:
        try:
            return os.lstat(name, dir_fd=dir_fd), None  # a symlink, a socket, ...
        except FileNotFoundError:
            return None, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return st, None
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return st, (b"".join(chunks) if size <= limit else None)
    finally:
        os.close(fd)


def write_shared_file(root, name, data, gid, mode=0o640, check=False):
    """Make shared/<name> (a file at the top of shared/, such as .env) a regular file
    holding data, owned by the user running the module (root) and group gid, with mode.
    shared/ belongs to the application user: everything is done relative to
    root.shared_fd, never through a link. A temporary file is created there (O_EXCL,
    O_NOFOLLOW), owned, moded and written through its descriptor, then renamed over
    the name, which replaces whatever is there (a symlink included) without following
    it. Returns whether anything changed (in check mode: would change)."""
    where = os.path.join(root.shared_dir, name)
    if root.shared_fd is None:
        if check:
            return True
        raise ReleaseError("%s does not exist: the application root has no shared/ yet (a release unpacked with "
                           "this module makes it)" % root.shared_dir)
    st, old = _read_entry(root.shared_fd, name, len(data))
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise ReleaseError("%s is a directory, where the file is to be written; remove it" % where)
    if (old == data and st.st_uid == os.geteuid() and st.st_gid == gid and stat.S_IMODE(st.st_mode) == mode
            and st.st_nlink == 1):
        return False
    if check:
        return True
    for _attempt in range(5):
        tmp = ".%s.pydeploy-%s" % (name, os.urandom(6).hex())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=root.shared_fd)
            break
        except FileExistsError:
            continue
    else:
        raise ReleaseError("could not create a temporary file in %s" % root.shared_dir)
    try:
        try:
            os.fchown(fd, os.geteuid(), gid)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=root.shared_fd, dst_dir_fd=root.shared_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=root.shared_fd)
        except OSError:
            pass
        raise
    return True


def write_manifest(release_dir, data, uid=-1, gid=-1):
    fd = os.open(os.path.join(release_dir, MANIFEST), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                 os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o644)
        os.fsync(fd)


def elapsed(start):
    return round(time.time() - start, 3)
