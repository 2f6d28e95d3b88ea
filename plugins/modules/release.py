#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pydeploy.web contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release
short_description: Verified, safe, atomic application releases from a tar archive
version_added: 0.1.0
description:
  - Manages the releases of one application under O(root). Each release is a directory
    C(releases/<id>) unpacked from a tar archive, with a C(RELEASE.json) manifest (id,
    sha256, source name, time in UTC, member count, size). C(current) is a symlink to
    the live release, C(shared/) holds what outlives releases (media, C(.env), data) and
    C(.pydeploy/) holds the deployment history and the lock.
  - The archive is opened once and read once, as a stream, from that one descriptor, into
    C(releases/.<id>.partial) (a directory only root can write), its SHA-256 computed over
    the very bytes that are unpacked. The directory is renamed into place only when the
    digest matches O(checksum) and the stream ended cleanly (the gzip, bzip2 or xz trailer
    checked, both tar end-of-archive blocks present, nothing but NUL padding after them). A
    failure leaves no partial directory, writes nothing to C(shared/) and does not touch
    C(current); a checksum mismatch is reported as such, whatever else is wrong with the bytes.
  - Member policy, a module's own (tarfile's C(filter=) is applied on top where the
    interpreter has it). Absolute names, C(..) components, control characters (NUL, newline,
    ESC, ...), name components over 255 bytes, paths over C(PATH_MAX) or deeper than
    O(max_depth), device nodes and FIFOs are refused; nothing is written through a symlink
    or twice under one name; symlinks must stay inside the release, judged against the
    release itself and also through chains of links; empty link targets and modification
    times out of range are refused; hardlinks must name a regular file of the archive.
    Setuid, setgid, sticky and group/world write bits are dropped. O(max_members) and
    O(max_size) stop decompression bombs. The error names the member and the reason.
  - Trust. O(root), C(releases/) and C(.pydeploy/), and every directory above O(root), must
    be real directories owned by root, by the user running the module or by O(owner), and
    not writable by their group or others (a directory above O(root) may be world-writable
    with the sticky bit, like C(/tmp)); a symlink above O(root) is followed only when root
    owns it. Otherwise the task fails, naming the directory, before anything is written.
    C(shared/) belongs to the application user and is treated as hostile; every operation
    there is made relative to an open directory, and a symlink in a shared path is refused,
    never followed. See the trust model in the collection's C(docs/releases.md).
  - C(current) is switched atomically (a new symlink renamed over the old one), so it is
    never missing and never points at an incomplete release.
  - Every unpack, switch, rollback, prune and failure mark is appended to
    C(.pydeploy/history.jsonl). Pruning and rollback follow the deploy order recorded there,
    never file times; the current release and the rollback target are never pruned.
  - A release marked with O(state=failed) (it failed its gate before the switch or its
    verification after it) is never a rollback target and is removed at the next prune
    (O(state=active) or O(state=pruned)), whatever O(keep_releases), unless it is the current
    release. Activating it again, rolling back to it by name, or unpacking it again after it
    was pruned clears the mark.
  - A lock (C(.pydeploy/lock), opened without following a link) keeps two calls of the module off one
    root; the second fails at once, naming the holder (pid, host, start time). The kernel drops the lock of a run that
    died, and the next run takes it over with a warning.
  - The deploy lock, C(.pydeploy/deploy.lock), is held by one playbook run for as long as it deploys
    (V(locked) at its start, V(unlocked) at its end), a JSON file naming the holder, the controller's
    C(ansible-playbook) process (host, pid, start time, user), and since when. A second run's V(locked)
    fails at once naming that holder. The module's action plugin fills in the holder on the controller,
    and takes over the lock of a run whose process is gone from this same controller (killed, crashed),
    with a warning; a lock older than O(stale_after) is taken over from any controller, with a warning.
    The file is created with C(O_CREAT|O_EXCL), replaced by a rename, never read or written through a
    link, in C(.pydeploy/), which only root can write. Only the deploy lock's own states look at it; a
    play calling other states of the module directly does not take part. See C(docs/operations.md).
  - When the release is already unpacked with the same SHA-256, the archive is not read
    at all, so a re-run costs a few system calls.
author:
  - pydeploy.web contributors (@pydeploy)
options:
  root:
    description:
      - The application root, an absolute path such as C(/srv/mysite). Created with its layout when
        missing (directories mode C(0755), owned by the user running the module).
      - It must not be C(/), and it and the directories above it must be trusted (see the description).
    type: path
    required: true
  state:
    description:
      - V(active) unpacks the release when it is not present yet, then switches C(current) to it and prunes.
      - V(unpacked) unpacks the release when it is not present yet and leaves C(current) alone.
      - V(rollback) switches C(current) to O(release_id) when given, else to the previous successful
        release, the newest one activated before the current one that was not itself rolled back from.
      - V(pruned) removes releases marked failed (except the current one), old releases beyond
        O(keep_releases) and leftover partial directories.
      - V(failed) marks O(release_id) (or the release of O(checksum)) as failed, with O(reason), in the
        history, and changes nothing else (C(current) is left alone, nothing is unpacked or pruned). The
        release need not be present (its unpack may have failed). A release already counting as failed
        is left alone (no change). A failed release is never a rollback target and is removed at the
        next prune.
      - V(query) changes nothing and reports the state of the root.
      - V(locked) takes the deploy lock for the run named by O(holder) (creating O(root) and C(.pydeploy/)
        when missing, nothing else). Already held by that run, nothing changes. Held by another run, the
        task fails at once with a message naming it (controller, pid, start time, user, since when) and
        how to clear the lock, and returns it in RV(lock); unless the lock is older than O(stale_after)
        seconds, or O(takeover) is set, when it is taken over with a warning (RV(taken_over)).
      - V(unlocked) releases the deploy lock when the run named by O(holder) holds it (or whoever holds
        it, with O(force=true)). A lock held by another run is left alone, with a warning; no lock, no change.
      - V(env) writes O(env_content) to C(shared/.env), owned by the user running the module (root) and
        O(group), mode C(0640), and changes nothing else. C(shared/) belongs to the application user, so the
        file is written the way everything there is, relative to the open directory; a temporary file
        created without following a link, owned and moded through its descriptor, then renamed over
        C(.env), which replaces a symlink there instead of following it. The same content, owner, group and
        mode already there, nothing changes. C(shared/) must exist (a release unpacked by this module makes it).
    type: str
    choices: [active, unpacked, rollback, pruned, failed, query, locked, unlocked, env]
    default: active
  env_content:
    description:
      - With O(state=env), the content of C(shared/.env), as C(NAME=value) lines (the
        P(pydeploy.web.app_release#role) role renders it from C(app_release_env)).
      - Never logged, and the task returns no diff; give the task C(no_log) too, since the values are secrets.
    type: str
  src:
    description:
      - Path on the managed host of a C(.tar), C(.tar.gz), C(.tar.bz2) or C(.tar.xz) archive.
      - Needed, with O(checksum), when the release is not already unpacked.
    type: path
  checksum:
    description:
      - SHA-256 of O(src), 64 hex characters (surrounding white space, such as the newline of a
        C(.sha256) file, is ignored).
      - When the release is already unpacked, it must match the manifest, or the task fails
        (two different archives under one release id).
    type: str
  release_id:
    description:
      - Name of the release directory. Letters, digits, C(.), C(_) and C(-), not starting with a dot.
      - Defaults to the first 12 hex characters of O(checksum), so that every host of a deploy
        agrees on it without extra variables.
      - With O(state=rollback), the release to roll back to.
      - With O(state=failed), the release to mark failed (O(release_id) or O(checksum) is required).
    type: str
  reason:
    description:
      - Why the release failed, for example C(migrations failed) or C(health check after the switch
        failed); recorded in the history event of O(state=failed).
      - Only meaningful with O(state=failed); ignored otherwise.
    type: str
  keep_releases:
    description:
      - How many releases O(state=active) and O(state=pruned) keep, counting the current one.
        The rollback target is kept in any case. Releases marked failed (other than the current
        one) are removed in any case and do not count.
    type: int
    default: 5
  shared_paths:
    description:
      - Paths inside the release replaced by relative symlinks into C(shared/), for example
        C(media) or C(.env).
      - A path missing from C(shared/) is seeded with what the release holds there (moved, owned
        like C(shared/)), or made an empty directory; what C(shared/) already holds is never touched.
        Directories made on the way are owned like C(shared/).
      - A symlink on the way in C(shared/) (C(shared/pub -> /elsewhere) for C(pub/media)) is refused.
        C(RELEASE.json) cannot be shared.
    type: list
    elements: str
    default: []
  strip_components:
    description: Leading path components removed from member names, as C(tar --strip-components).
    type: int
    default: 0
  max_members:
    description: Most archive members accepted.
    type: int
    default: 100000
  max_size:
    description: Most bytes of file content accepted, summed over all members.
    type: int
    default: 2147483648
  max_depth:
    description:
      - Most path components a member name may have (after O(strip_components)); deeper members
        are refused.
      - Keeps trees that later tools cannot walk or remove (recursion limits, C(PATH_MAX)) off the host.
    type: int
    default: 100
  owner:
    description: Owner of the unpacked files (name or uid). Defaults to the user running the module.
    type: str
  group:
    description:
      - Group of the unpacked files (name or gid).
      - With O(state=env), the group of C(shared/.env), which it can read (required).
    type: str
  mode:
    description:
      - Mode of the release directory itself, in octal, for example V('0750'), and quoted, since an
        unquoted V(755) is the decimal number 755 (C(0o1363)).
      - A mode with group or world write, setuid, setgid or sticky bits is refused.
      - Files keep their archive modes, without setuid, setgid, sticky and group/world write bits.
    type: raw
    default: "0755"
  holder:
    description:
      - The run that takes or releases the deploy lock, with O(state=locked) and O(state=unlocked).
      - Filled in by the module's action plugin on the controller, for the C(ansible-playbook) process
        that runs the play; setting it in a task is refused.
    type: dict
    suboptions:
      host:
        description: Host name of the controller.
        type: str
        required: true
      pid:
        description: Process id of C(ansible-playbook) on the controller.
        type: int
        required: true
      started:
        description: When that process started, in UTC, such as C(2026-12-04T18:00:00Z); null where the controller has no C(/proc).
        type: str
      user:
        description: The controller user running it.
        type: str
      start_ticks:
        description: Its start time in clock ticks since boot (C(/proc/<pid>/stat)), which tells it from a later process with the same pid.
        type: int
      boot_id:
        description: The controller kernel's boot id (C(/proc/sys/kernel/random/boot_id)).
        type: str
      pid_ns:
        description: The inode of the controller's pid namespace (C(/proc/self/ns/pid)); a container has its own.
        type: int
  stale_after:
    description:
      - With O(state=locked), age in seconds after which a deploy lock held by another run is taken over,
        with a warning, wherever that run's controller is. This is how the lock of a run killed on another
        controller, or in a container that is gone (AWX), is cleared, since its process cannot be checked.
      - V(0) never takes a lock over by its age.
    type: int
    default: 21600
  takeover:
    description:
      - With O(state=locked), take the lock over from the run named in O(takeover_of), if the lock still
        names it.
      - Set by the action plugin, never in a task, once it has seen on the controller that this run's
        process is gone (the pid is not running, or it is a later process with the same pid).
    type: bool
    default: false
  takeover_of:
    description:
      - The lock to take over with O(takeover), as RV(lock) returned it when the lock was refused. Set by the
        action plugin.
    type: dict
  force:
    description:
      - With O(state=unlocked), remove the deploy lock whoever holds it.
    type: bool
    default: false
extends_documentation_fragment:
  - pydeploy.web.attributes
  - pydeploy.web.attributes.platform
attributes:
  check_mode:
    support: full
    details:
      - The checksum of O(src) is verified (it only reads); nothing is written and no lock is taken.
      - With O(state=failed), reports whether the mark would be recorded, without recording it.
      - With O(state=locked) and O(state=unlocked), reports whether the lock would be taken, taken over or
        released (and fails when it would be refused), without writing it.
      - With O(state=env), reports whether C(shared/.env) would change, without writing it.
  diff_mode:
    support: full
    details:
      - Shows the target of C(current) and the list of releases before and after.
      - O(state=locked) and O(state=unlocked) return no diff; RV(lock) and RV(taken_over) say what they did.
      - O(state=env) returns no diff (the file holds secrets).
notes:
  - Run it with privileges that can create O(root) and set O(owner); the app_release role does.
  - O(src) must be on the managed host; the P(pydeploy.web.app_release#role) role copies it there
    only when the release is not present yet.
seealso:
  - module: ansible.builtin.unarchive
  - module: community.general.deploy_helper
"""

EXAMPLES = r"""
- name: Unpack the release and make it current
  pydeploy.web.release:
    root: /srv/mysite
    src: /srv/mysite/.pydeploy/artifacts/mysite-1.4.2.tar.gz
    checksum: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    shared_paths: [media, .env]
    owner: root
    group: mysite
    keep_releases: 5
  register: mysite_release

- name: Unpack only; the switch comes after the health check
  pydeploy.web.release:
    root: /srv/mysite
    state: unpacked
    src: /srv/mysite/.pydeploy/artifacts/mysite-1.4.2.tar.gz
    checksum: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

- name: Switch to the release unpacked above
  pydeploy.web.release:
    root: /srv/mysite
    release_id: 9f86d081884c

- name: Roll back to the previous successful release
  pydeploy.web.release:
    root: /srv/mysite
    state: rollback

- name: Roll back to a named release
  pydeploy.web.release:
    root: /srv/mysite
    state: rollback
    release_id: 2c26b46b68ff

- name: Mark the release that failed its health check; it is removed at the next prune
  pydeploy.web.release:
    root: /srv/mysite
    state: failed
    release_id: 9f86d081884c
    reason: health check through nginx failed after the switch

- name: Take the deploy lock of the application for this run (the action plugin fills in the holder)
  pydeploy.web.release:
    root: /srv/mysite
    state: locked
    stale_after: 21600

- name: Release it at the end, also when the deploy failed
  pydeploy.web.release:
    root: /srv/mysite
    state: unlocked

- name: Clear the lock a run killed on another controller left behind
  pydeploy.web.release:
    root: /srv/mysite
    state: unlocked
    force: true

- name: Write the environment of the release that went live, readable by the application's group
  pydeploy.web.release:
    root: /srv/mysite
    state: env
    group: mysite
    env_content: "{{ lookup('ansible.builtin.template', 'env.j2') }}"
  no_log: true

- name: What is live, and what would a rollback go to?
  pydeploy.web.release:
    root: /srv/mysite
    state: query
  register: mysite_releases
"""

RETURN = r"""
release_id:
  description:
    - The release this task unpacked, switched to, rolled back to or marked failed; for V(query) and V(pruned),
      the current one.
  returned: always
  type: str
  sample: 9f86d081884c
release_path:
  description: Absolute path of that release.
  returned: when release_id is known
  type: str
  sample: /srv/mysite/releases/9f86d081884c
release_present:
  description: Whether that release is unpacked and complete (after the task; in check mode, as it would be).
  returned: always
  type: bool
  sample: true
current:
  description: The release C(current) points at after the task (in check mode, would point at).
  returned: always
  type: str
  sample: 9f86d081884c
previous:
  description: The release C(current) pointed at before the task; null on a first deploy.
  returned: always
  type: str
  sample: 2c26b46b68ff
rollback_target:
  description: The release V(state=rollback) would switch to now; null when there is none.
  returned: always
  type: str
  sample: 2c26b46b68ff
releases:
  description: Complete releases after the task, oldest first in deploy order.
  returned: always
  type: list
  elements: str
  sample: [2c26b46b68ff, 9f86d081884c]
failed_releases:
  description:
    - Releases present on disk that count as failed after the task (in check mode, as they would), oldest
      first in deploy order. Only the current release can remain here after a prune.
  returned: always
  type: list
  elements: str
  sample: [9f86d081884c]
pruned:
  description: Releases removed (in check mode, that would be removed), those marked failed first.
  returned: always
  type: list
  elements: str
  sample: [fcde2b2edba5]
unpacked:
  description: Whether the archive was unpacked by this task.
  returned: always
  type: bool
  sample: true
switched:
  description: Whether C(current) was switched by this task.
  returned: always
  type: bool
  sample: true
lock:
  description:
    - With O(state=locked), the deploy lock as it is held after the task (in check mode, would be); when the
      task fails because another run holds it, that run's lock. With O(state=unlocked), the lock another run
      holds, left alone, or null.
    - C(host), C(pid), C(started), C(user) (and C(start_ticks), C(boot_id), C(pid_ns)) name the holder, as in
      O(holder); C(since) is when it took the lock, in UTC. A file that is not a complete lock has only
      C(unreadable=true) and C(since), its modification time.
  returned: with state locked or unlocked
  type: dict
  sample: {"host": "ci-runner-2", "pid": 48213, "started": "2026-12-04T18:00:00Z", "user": "deploy",
           "start_ticks": 912345, "boot_id": "5e0c...", "pid_ns": 4026531836, "since": "2026-12-04T18:00:07Z"}
env_path:
  description: Absolute path of the environment file written (or left as it was) with O(state=env).
  returned: with state env
  type: str
  sample: /srv/mysite/shared/.env
taken_over:
  description: The deploy lock taken over by this task (in check mode, that would be), or null.
  returned: with state locked
  type: dict
  sample: {"host": "ci-runner-2", "pid": 47100, "started": "2026-12-04T17:40:00Z", "user": "deploy",
           "since": "2026-12-04T17:40:06Z"}
manifest:
  description: Content of the release's C(RELEASE.json).
  returned: when the release is present
  type: dict
  sample: {"id": "9f86d081884c", "sha256": "9f86d0...", "source": "mysite-1.4.2.tar.gz",
           "time": "2026-11-20T10:00:00Z", "members": 1843, "size": 10485760}
"""

import grp
import os
import pwd
import stat
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pydeploy.web.plugins.module_utils._release import (
    ENV_FILE, HOLDER_KEYS, MAX_DEPTH, RELEASE_ID, SHA256, ReleaseError, Root, describe_holder, extract, link_shared,
    parse_utc, same_holder, sha256_file, shared_parts, utcnow, write_manifest, write_shared_file,
)

# How long the deploy lock's states wait for a call of the module from another run to
# release the root's per-call lock (a long unpack holds it), before they fail naming it.
PER_CALL_LOCK_WAIT = 60


def _lookup(name, kind):
    """uid or gid of a name or number; None when the host has no such user or group."""
    if name is None:
        return -1
    try:
        return int(name)
    except ValueError:
        pass
    try:
        return pwd.getpwnam(name).pw_uid if kind == "owner" else grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _mode(value):
    """The release directory's mode. An integer is taken as it is (YAML reads an
    unquoted 0755 as 493, that is 0o755); a mode that would let others write the
    release or set special bits is refused, which is what an unquoted 755 (0o1363)
    comes to."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        try:
            mode = int(str(value).strip(), 8)
        except ValueError:
            raise ReleaseError("mode %r is not an octal number such as '0755'" % (value,))
    if mode < 0 or mode & ~0o755:
        raise ReleaseError("mode %r (%s in octal) would let the group or others write the release directory, or "
                           "set setuid, setgid or sticky bits; give the mode quoted, in octal, such as '0755'"
                           % (value, "0o%o" % mode if mode >= 0 else mode))
    return mode


class Release:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.p = p
        self.check = module.check_mode
        checksum = p["checksum"].strip().lower() if p["checksum"] is not None else None
        if checksum is not None and not SHA256.fullmatch(checksum):
            raise ReleaseError("checksum must be a SHA-256 as 64 hex characters, got %r" % p["checksum"])
        self.checksum = checksum or None
        self.release_id = p["release_id"] or (self.checksum[:12] if self.checksum else None)
        if self.release_id and not RELEASE_ID.fullmatch(self.release_id):
            raise ReleaseError("release_id %r may hold letters, digits, '.', '_' and '-' and must not start "
                               "with a dot" % self.release_id)
        for raw in p["shared_paths"]:
            shared_parts(raw)
        self.mode = _mode(p["mode"])
        self.uid = _lookup(p["owner"], "owner")
        self.gid = _lookup(p["group"], "group")
        self.root = Root(p["root"], trusted_uids=[self.uid] if self.uid is not None else [])
        self.history = []
        self.simulated = set()  # releases check mode pretends to have unpacked

    # -- helpers -------------------------------------------------------------

    def present(self, rid):
        return rid in self.simulated or self.root.manifest(rid) is not None

    @staticmethod
    def describe(current, releases):
        return "current -> %s\nreleases (oldest first):\n%s" % (
            ("releases/" + current) if current else "(none)", "".join("  %s\n" % r for r in releases))

    def ordered(self):
        order = self.root.ordered(self.history)
        return order + [r for r in sorted(self.simulated) if r not in order]

    def note(self, event, **fields):
        entry = dict(event=event, time=utcnow(), **fields)
        self.history.append(entry)
        if not self.check:
            self.root.record(event, **fields)

    # -- steps ---------------------------------------------------------------

    def unpack(self):
        p = self.p
        rid = self.release_id
        if not p["src"] or not self.checksum:
            raise ReleaseError("release %s is not unpacked under %s; src and checksum are needed to unpack it"
                               % (rid, self.root.releases_dir))
        src = p["src"]
        for kind, value in (("owner", self.uid), ("group", self.gid)):
            if value is None:
                raise ReleaseError("%s %r does not exist on this host" % (kind, p[kind]))
        try:
            fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = None
        try:
            if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ReleaseError("src %s does not exist on this host (or is not a file)" % src)
            if self.check:
                actual = sha256_file(src)
                if actual != self.checksum:
                    raise ReleaseError("checksum mismatch for %s: expected sha256 %s, actual %s; nothing was written"
                                       % (src, self.checksum, actual))
                self.simulated.add(rid)
                return
            if self.root.exists(rid):
                raise ReleaseError("%s exists but is not a complete release (no RELEASE.json); move it away"
                                   % self.root.release_path(rid))
            started = time.time()
            partial = self.root.new_partial(rid)
            try:
                # Read once, hashed as it is read; nothing below is kept unless the
                # digest matched and the archive ended cleanly.
                members, size = extract(fd, partial, self.checksum, name=src, strip_components=p["strip_components"],
                                        max_members=p["max_members"], max_size=p["max_size"],
                                        max_depth=p["max_depth"], uid=self.uid, gid=self.gid)
                link_shared(self.root, partial, p["shared_paths"], self.uid, self.gid)
                write_manifest(partial, dict(id=rid, sha256=self.checksum, source=os.path.basename(src),
                                             time=utcnow(), members=members, size=size), self.uid, self.gid)
                os.lchown(partial, self.uid, self.gid)
                os.chmod(partial, self.mode)
                self.root.commit_partial(rid)
            except BaseException:
                self.root.discard_partial(rid)
                raise
        finally:
            if fd is not None:
                os.close(fd)
        self.note("unpacked", release=rid, sha256=self.checksum, source=os.path.basename(src), members=members,
                  size=size, seconds=round(time.time() - started, 3))

    def switch(self, rid, previous, event):
        if not self.check:
            self.root.switch(rid)
        fields = dict(release=rid, previous=previous)
        manifest = self.root.manifest(rid)
        if manifest:
            fields["sha256"] = manifest.get("sha256")
        self.note(event, **fields)

    def prune(self, current):
        doomed = self.root.to_prune(self.p["keep_releases"], current, self.history)
        doomed = [r for r in doomed if r not in self.simulated]
        if not self.check:
            for rid in doomed:
                self.root.remove_release(rid)
            if doomed:
                self.note("pruned", releases=doomed, keep=self.p["keep_releases"])
            self.root.remove_leftovers()
        return doomed

    # -- states --------------------------------------------------------------

    def run(self):
        p = self.p
        state = p["state"]
        self.history = self.root.history()
        before = self.root.current()
        result = dict(changed=False, previous=before, unpacked=False, switched=False, pruned=[])
        leftovers = self.root.leftovers()
        current = before
        before_text = self.describe(before, self.root.ordered(self.history))

        if state in ("active", "unpacked"):
            if not self.release_id:
                raise ReleaseError("state=%s needs checksum (or release_id for a release already unpacked)" % state)
            manifest = self.root.manifest(self.release_id)
            if manifest is not None:
                if self.checksum and manifest.get("sha256") != self.checksum:
                    raise ReleaseError(
                        "release %s is already unpacked from an archive with sha256 %s, but checksum is %s; "
                        "give this archive another release_id" % (self.release_id, manifest.get("sha256"),
                                                                  self.checksum))
            else:
                self.unpack()
                result["unpacked"] = True
            if state == "active" and before != self.release_id:
                self.switch(self.release_id, before, "activated")
                current = self.release_id
                result["switched"] = True
        elif state == "failed":
            if not self.release_id:
                raise ReleaseError("state=failed needs release_id (or checksum) of the release to mark failed")
            if self.release_id not in self.root.failed(self.history):
                self.note("failed", release=self.release_id, reason=p["reason"] or "")
                result["changed"] = True
        elif state == "rollback":
            if before is None:
                raise ReleaseError("%s has no current release to roll back from" % self.root.path)
            target = self.release_id or self.root.rollback_target(before, self.history)
            if target is None:
                raise ReleaseError("no release to roll back to: none was activated before %s and is still "
                                   "present under %s" % (before, self.root.releases_dir))
            if not self.present(target):
                raise ReleaseError("release %s is not unpacked under %s; present: %s"
                                   % (target, self.root.releases_dir, ", ".join(self.ordered()) or "none"))
            self.release_id = target
            if target != before:
                self.switch(target, before, "rolled_back")
                current = target
                result["switched"] = True
        else:
            self.release_id = self.release_id or before

        if state in ("active", "pruned"):
            result["pruned"] = self.prune(current)
            if leftovers and not self.check:
                result["changed"] = True

        result["changed"] = bool(result["changed"] or result["unpacked"] or result["switched"] or result["pruned"])
        releases = [r for r in self.ordered() if r not in result["pruned"]]
        if self.module._diff:
            result["diff"] = dict(
                before_header="%s (before)" % self.root.path,
                after_header="%s (after)" % self.root.path,
                before=before_text,
                after=self.describe(current, releases),
            )
        result.update(
            release_id=self.release_id,
            current=current,
            rollback_target=self.root.rollback_target(current, self.history) if current else None,
            releases=releases,
            failed_releases=[r for r in releases if r in self.root.failed(self.history)],
            release_present=bool(self.release_id) and self.present(self.release_id),
        )
        if self.release_id:
            result["release_path"] = self.root.release_path(self.release_id)
            manifest = self.root.manifest(self.release_id)
            if manifest:
                result["manifest"] = manifest
        return result


def deploy_lock(module, root):
    """States locked and unlocked: the deploy lock of the root, read and changed under
    the root's per-call lock (outside check mode). Returns the result, or fails."""
    p = module.params
    state = p["state"]
    holder = dict((k, v) for k, v in (p["holder"] or {}).items() if k in HOLDER_KEYS and v is not None)
    dlock = root.deploy_lock()
    found = dlock.read()
    result = dict(changed=False, lock=found)
    if state == "unlocked":
        if found is None:
            result["lock"] = None
        elif p["force"] or same_holder(found, holder):
            if not module.check_mode:
                dlock.remove()
            result.update(changed=True, lock=None)
        else:
            module.warn("the deploy lock %s is held by %s, not by this run; left alone (force: true removes it)"
                        % (dlock.path, describe_holder(found)))
        return result

    result["taken_over"] = None
    mine = dict(holder, since=utcnow())
    if found is not None and same_holder(found, holder):
        return result  # this run holds it already
    if found is not None:
        since = parse_utc(found.get("since"))
        age = time.time() - since if since is not None else None
        if p["takeover"] and same_holder(found, p["takeover_of"]) and not found.get("unreadable"):
            module.warn("took over the deploy lock %s of %s, whose process is gone"
                        % (dlock.path, describe_holder(found)))
        elif p["stale_after"] > 0 and age is not None and age >= p["stale_after"]:
            module.warn("took over the deploy lock %s of %s: it is older than stale_after (%d s), so its run is "
                        "taken to be dead" % (dlock.path, describe_holder(found), p["stale_after"]))
        else:
            if p["stale_after"] <= 0:
                clear = "nothing takes it over by its age (stale_after is 0)"
            elif since is None:
                clear = "it is taken over once it is older than stale_after (%d s)" % p["stale_after"]
            else:
                clear = "it is taken over from %s on, when it is older than stale_after (%d s)" % (
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since + p["stale_after"])), p["stale_after"])
            module.fail_json(
                msg="another deploy holds the deploy lock %s: %s. Wait for it to finish. If that run is dead (a run "
                    "killed on this controller is taken over at once; not one on another controller, or in a "
                    "container that is gone), %s; or remove the lock by hand on the managed host: rm %s (or the "
                    "release module with state=unlocked and force=true)"
                    % (dlock.path, describe_holder(found), clear, dlock.path),
                root=p["root"], lock=found, taken_over=None)
        result["taken_over"] = found
    if not module.check_mode:
        dlock.write(mine, replace=found is not None)
    result.update(changed=True, lock=mine)
    return result


def write_env(module, release):
    """State env: shared/.env with env_content, root's and the group's (0640)."""
    p = module.params
    if release.gid is None:
        raise ReleaseError("group %r does not exist on this host (state=env: the group that reads shared/.env)"
                           % p["group"])
    data = (p["env_content"] or "").encode("utf-8")
    changed = write_shared_file(release.root, ENV_FILE, data, release.gid, mode=0o640, check=module.check_mode)
    return dict(changed=changed, env_path=os.path.join(release.root.shared_dir, ENV_FILE))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            state=dict(type="str", default="active",
                       choices=["active", "unpacked", "rollback", "pruned", "failed", "query", "locked", "unlocked",
                                "env"]),
            env_content=dict(type="str", no_log=True),
            src=dict(type="path"),
            checksum=dict(type="str"),
            release_id=dict(type="str"),
            reason=dict(type="str"),
            keep_releases=dict(type="int", default=5),
            shared_paths=dict(type="list", elements="str", default=[]),
            strip_components=dict(type="int", default=0),
            max_members=dict(type="int", default=100000),
            max_size=dict(type="int", default=2 * 1024 ** 3),
            max_depth=dict(type="int", default=MAX_DEPTH),
            owner=dict(type="str"),
            group=dict(type="str"),
            mode=dict(type="raw", default="0755"),
            holder=dict(type="dict", options=dict(
                host=dict(type="str", required=True),
                pid=dict(type="int", required=True),
                started=dict(type="str"),
                user=dict(type="str"),
                start_ticks=dict(type="int"),
                boot_id=dict(type="str"),
                pid_ns=dict(type="int"),
            )),
            stale_after=dict(type="int", default=21600),
            takeover=dict(type="bool", default=False),
            takeover_of=dict(type="dict"),
            force=dict(type="bool", default=False),
        ),
        required_if=[("state", "locked", ["holder"]), ("state", "env", ["env_content", "group"]),
                     ("takeover", True, ["takeover_of"])],
        supports_check_mode=True,
    )
    p = module.params
    if p["keep_releases"] < 1:
        module.fail_json(msg="keep_releases must be at least 1 (the current release), got %d" % p["keep_releases"])
    if p["state"] == "unlocked" and not p["holder"] and not p["force"]:
        module.fail_json(msg="state=unlocked needs holder (the action plugin fills it in) or force=true")
    for name in ("strip_components", "max_members", "max_size", "max_depth", "stale_after"):
        if p[name] < 0:
            module.fail_json(msg="%s must not be negative, got %d" % (name, p[name]))

    lock = release = None
    try:
        locking = p["state"] in ("locked", "unlocked")
        release = Release(module)
        root = release.root
        if p["state"] in ("query", "unlocked", "env") or module.check_mode:
            root.open()
        elif p["state"] in ("failed", "locked"):
            root.ensure_state_dir()  # the history and the locks, nothing else
        else:
            root.ensure_layout()
        if p["state"] != "query" and not module.check_mode and root.state_fd is not None:
            lock = root.lock(wait=PER_CALL_LOCK_WAIT if locking else 0)
            if lock.stale:
                module.warn("took over the lock %s left by pid %s on %s (started %s), which is no longer running"
                            % (lock.path, lock.stale.get("pid"), lock.stale.get("host"), lock.stale.get("started")))
        if locking:
            result = deploy_lock(module, root)
        elif p["state"] == "env":
            result = write_env(module, release)
        else:
            result = release.run()
    except ReleaseError as e:
        module.fail_json(msg=str(e), root=p["root"])
    except OSError as e:
        module.fail_json(msg="%s failed under %s: %s" % (
            "an operation on %s" % e.filename if e.filename else "a file operation", p["root"], e.strerror or e),
            root=p["root"])
    finally:
        if lock is not None:
            lock.release()
        if release is not None:
            release.root.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
