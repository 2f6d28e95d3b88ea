#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pydeploy.web contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: venv
short_description: Build or reuse an application virtualenv keyed by interpreter and requirements
version_added: 0.1.0
description:
  - Builds a Python virtualenv for a pinned requirements file under O(base_dir), in a
    directory named after a key, the first 16 hex characters of a SHA-256 over the
    interpreter (implementation, full version, platform) and the content of the
    requirements file, including the files it pulls in with C(-r) or C(-c).
  - When a virtualenv with that key is already complete, it is reused as it is and the
    installer does not run, so an unchanged dependency set costs one interpreter probe
    and one file read. A changed dependency set builds a new virtualenv beside the old
    one, so that a rollback to an older release also gets its dependencies back.
  - A new virtualenv is built in C(base_dir/.<key>.partial) and renamed into place only
    when it is complete. Script shebangs and activation scripts are rewritten to the
    final path and bytecode is compiled with the final path, so the renamed virtualenv
    behaves as if it had been built where it stands. A failed install removes the
    partial directory; no virtualenv that looks ready is left behind.
  - The installer is C(pip) inside the new virtualenv, or C(uv pip install) with an
    C(uv) binary you provide (the P(pydeploy.web.virtualenv#role) role installs one).
  - The virtualenv is owned by the user the module runs as, so run it with
    C(become_user) set to the application user.
author:
  - pydeploy.web contributors (@pydeploy)
options:
  state:
    description:
      - V(present) builds or reuses the virtualenv of O(requirements).
      - V(pruned) removes the virtualenvs under O(base_dir) that none of O(keep_requirements) gives
        (their keys computed with O(python)) and that O(keep) does not name, in one call. Only
        directories this module built (with its marker file) are removed. When the key of one of
        O(keep_requirements) cannot be worked out (its file is gone or unreadable), nothing is
        removed and RV(unknown) names it.
    type: str
    choices: [present, pruned]
    default: present
  base_dir:
    description:
      - Directory that holds the virtualenvs, one per key, for example C(/srv/mysite/venvs).
      - It must exist and be writable by the user the module runs as.
    type: path
    required: true
  keep_requirements:
    description:
      - With O(state=pruned), the requirements files whose virtualenvs stay, for example those
        of the releases kept on the host.
    type: list
    elements: path
    default: []
  keep:
    description:
      - With O(state=pruned), virtualenvs that stay whatever their key (paths or keys), for
        example the one the serving instance runs.
    type: list
    elements: str
    default: []
  requirements:
    description:
      - Path on the managed host of a pinned requirements file (C(name==version) lines).
      - Required with O(state=present).
      - Lines C(-r FILE) and C(-c FILE) are followed (relative to the file that names
        them) and their content is part of the key.
      - Requirements that are not pinned with C(==) or C(===) (or given by hash or URL)
        produce a warning, since the same key could then hold different versions over time.
    type: path
  python:
    description:
      - Interpreter the virtualenv is created from (with O(state=pruned), the one the keys are
        computed for).
    type: path
    default: /usr/bin/python3
  installer:
    description:
      - Tool that installs the requirements into the new virtualenv.
      - V(pip) runs C(<venv>/bin/python -m pip install).
      - V(uv) runs C(uv pip install --python <venv>/bin/python); O(uv) must name the binary.
    type: str
    choices: [pip, uv]
    default: pip
  uv:
    description:
      - Path of the C(uv) binary. Required when O(installer=uv).
    type: path
  extra_args:
    description:
      - Extra arguments for the install command, for example C(--index-url URL) or
        C(--only-binary=:all:).
      - They are not part of the key.
    type: list
    elements: str
    default: []
  environment:
    description:
      - Environment variables for the installer, for example C(PIP_INDEX_URL) with
        credentials. Passed through the environment, never on the command line, and
        never returned.
    type: dict
    default: {}
  compile:
    description:
      - Compile the installed packages to bytecode (with the final path as their file
        name) before the virtualenv goes live, so the application user never needs write
        access to C(__pycache__) and the first start is not slowed by compiling.
    type: bool
    default: true
extends_documentation_fragment:
  - pydeploy.web.attributes
  - pydeploy.web.attributes.platform
attributes:
  check_mode:
    support: full
    details:
      - The interpreter is probed and the requirements are read; nothing is written.
      - With O(state=pruned), RV(pruned) lists what would be removed.
  diff_mode:
    support: none
notes:
  - O(state=present) never removes a virtualenv; a release that is rolled back to needs its
    own. O(state=pruned) removes those no kept release uses.
  - A lock file C(base_dir/.<key>.lock) keeps two runs from building the same key at once.
  - The P(pydeploy.web.virtualenv#role) role runs this module as the application user.
seealso:
  - module: ansible.builtin.pip
"""

EXAMPLES = r"""
- name: Build or reuse the virtualenv for the release's requirements
  pydeploy.web.venv:
    base_dir: /srv/mysite/venvs
    requirements: /srv/mysite/releases/3f2a9c1b7d4e/requirements.txt
    python: /usr/bin/python3.11
  become: true
  become_user: mysite
  register: mysite_venv

- name: Same with uv and a private index whose credentials stay out of argv
  pydeploy.web.venv:
    base_dir: /srv/mysite/venvs
    requirements: /srv/mysite/releases/3f2a9c1b7d4e/requirements.txt
    installer: uv
    uv: /opt/pydeploy/tools/uv-0.9.5/bin/uv
    environment:
      UV_INDEX_URL: "https://{{ vault_index_user }}:{{ vault_index_token }}@pypi.example.com/simple"
  become: true
  become_user: mysite

- name: Start the app from it
  ansible.builtin.debug:
    msg: "{{ mysite_venv.path }}/bin/gunicorn"

- name: Remove the virtualenvs that none of the kept releases uses
  pydeploy.web.venv:
    state: pruned
    base_dir: /srv/mysite/venvs
    keep_requirements:
      - /srv/mysite/releases/3f2a9c1b7d4e/requirements.txt
      - /srv/mysite/releases/9f86d081884c/requirements.txt
    keep: ["{{ mysite_venv.path }}"]
  become: true
  become_user: mysite
"""

RETURN = r"""
path:
  description: Absolute path of the virtualenv for these requirements (built or reused).
  returned: with O(state=present)
  type: str
  sample: /srv/mysite/venvs/5d41402abc4b2a76
key:
  description: The key the virtualenv is named after (16 hex characters).
  returned: with O(state=present)
  type: str
  sample: 5d41402abc4b2a76
reused:
  description: V(true) when a complete virtualenv with this key existed and the installer did not run.
  returned: with O(state=present)
  type: bool
  sample: true
pruned:
  description: Keys of the virtualenvs removed (in check mode, that would be removed).
  returned: with O(state=pruned)
  type: list
  elements: str
  sample: [0a1b2c3d4e5f6071]
kept:
  description: Keys that stay, those of O(keep_requirements) and O(keep).
  returned: with O(state=pruned)
  type: list
  elements: str
  sample: [5d41402abc4b2a76]
unknown:
  description: Files of O(keep_requirements) whose key could not be worked out; nothing was removed then.
  returned: with O(state=pruned)
  type: list
  elements: str
  sample: []
python:
  description: Interpreter the virtualenv was created from.
  returned: with O(state=present)
  type: str
  sample: /usr/bin/python3.11
python_version:
  description: Full version of that interpreter.
  returned: with O(state=present)
  type: str
  sample: 3.11.2
requirements_sha256:
  description: SHA-256 of the requirements file itself (without included files).
  returned: with O(state=present)
  type: str
  sample: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
packages:
  description: Installed distributions, name to version, as recorded when the virtualenv was built.
  returned: when the virtualenv exists (not in check mode before its first build)
  type: dict
  sample: {"Django": "5.2.8", "gunicorn": "23.0.0"}
installer:
  description: Installer that built the virtualenv.
  returned: with O(state=present)
  type: str
  sample: pip
duration:
  description: Seconds spent building, 0 when reused.
  returned: with O(state=present)
  type: float
  sample: 21.4
"""

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time

from ansible.module_utils.basic import AnsibleModule

MARKER = ".pydeploy-venv.json"
_KEY_NAME = re.compile(r"[0-9a-f]{16}\Z")
KEY_VERSION = "pydeploy-venv-key-v2"  # v2: files named relative to the first one, not by path
TAIL_LINES = 25

_PROBE = (
    "import json, platform, sys, sysconfig; "
    "print(json.dumps({'implementation': sys.implementation.name, "
    "'version': platform.python_version(), 'platform': sysconfig.get_platform(), "
    "'cache_tag': sys.implementation.cache_tag}))"
)

_LIST_DISTS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}))"
)

_INCLUDE = re.compile(r"^(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+)(\S+)")
_PINNED = re.compile(r"(===?[^=]|@|--hash)")

# What pip and uv print when a requirement cannot be had; the first group names it.
_UNRESOLVABLE = [
    re.compile(r"No matching distribution found for ([^\s]+)"),
    re.compile(r"Could not find a version that satisfies the requirement ([^\s]+)"),
    re.compile(r"Because ([^\s]+) was not found in the package registry"),
    re.compile(r"Because there is no version of ([^\s]+?)(?: and|,|\s)"),
    re.compile(r"Because only [^\s]+ is available and you require ([^\s]+?)(?:,|\s)"),
    re.compile(r"Failed to build `?([^\s`]+)`?"),
    re.compile(r"Failed to build ([^\s]+)"),
]


# What pip and uv print when the index cannot be reached at all; the pattern's label
# says why. Checked before _UNRESOLVABLE: pip then also says "no matching distribution".
_UNREACHABLE = [
    (re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|invalid peer certificate|UnknownIssuer"),
     "TLS certificate not trusted; add the proxy's or index's CA to the host's store"),
    (re.compile(r"Name or service not known|Temporary failure in name resolution|dns error|failed to lookup address"),
     "name resolution failed"),
    (re.compile(r"Failed to establish a new connection|Connection refused|ConnectTimeoutError|Read timed out|"
                r"operation timed out|error sending request"),
     "connection failed"),
]


def unreachable_index(output):
    for pattern, why in _UNREACHABLE:
        if pattern.search(output):
            return why
    return None


def tail(text, lines=TAIL_LINES):
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


class VenvError(Exception):
    def __init__(self, msg, **result):
        super().__init__(msg)
        self.msg = msg
        self.result = result


def read_requirements(path, seen=None, top=None):
    """Return (bytes to hash, list of unpinned requirement lines) for a requirements
    file and every file it includes with -r/-c, in the order pip reads them. Files are
    named in the bytes by their path relative to the first file's directory: the same
    requirements in another release directory give the same key."""
    seen = seen if seen is not None else set()
    top = top if top is not None else os.path.dirname(os.path.abspath(path))
    real = os.path.realpath(path)
    if real in seen:
        return b"", []
    seen.add(real)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise VenvError("cannot read requirements file %s: %s" % (path, e.strerror))
    name = os.path.relpath(os.path.abspath(path), top)
    chunks = [name.encode() + b"\0" + data + b"\0"]
    unpinned = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        include = _INCLUDE.match(line)
        if include:
            target = include.group(1)
            if "://" in target:
                unpinned.append(line)
                continue
            target = os.path.join(os.path.dirname(path), target)
            more, more_unpinned = read_requirements(target, seen, top)
            chunks.append(more)
            unpinned.extend(more_unpinned)
            continue
        if line.startswith("-"):
            continue  # options such as --index-url or --hash continuation lines
        if not _PINNED.search(line):
            unpinned.append(line)
    return b"".join(chunks), unpinned


def venv_key(interp, requirements_bytes):
    h = hashlib.sha256()
    h.update(KEY_VERSION.encode() + b"\n")
    for field in ("implementation", "version", "platform", "cache_tag"):
        h.update(("%s=%s\n" % (field, interp[field])).encode())
    h.update(requirements_bytes)
    return h.hexdigest()[:16]


def unresolvable_requirement(output):
    for pattern in _UNRESOLVABLE:
        m = pattern.search(output)
        if m:
            return m.group(1).strip("`'\",")
    return None


def relocate(tmp, final):
    """Rewrite references to the build directory in the scripts of bin/ and in
    pyvenv.cfg, so that the virtualenv works once renamed to `final`."""
    old, new = tmp.encode(), final.encode()
    candidates = [os.path.join(tmp, "pyvenv.cfg")]
    bindir = os.path.join(tmp, "bin")
    candidates += [os.path.join(bindir, n) for n in os.listdir(bindir)]
    rewritten = 0
    for path in candidates:
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        if b"\0" in data[:8192] or old not in data:
            continue  # binaries (the interpreter itself) and files without the path
        st = os.stat(path)
        with open(path + ".tmp", "wb") as f:
            f.write(data.replace(old, new))
        os.chmod(path + ".tmp", st.st_mode & 0o7777)
        os.rename(path + ".tmp", path)
        rewritten += 1
    return rewritten


class Venv:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.base_dir = os.path.abspath(p["base_dir"])
        self.requirements = os.path.abspath(p["requirements"]) if p["requirements"] else None
        self.keep_requirements = [os.path.abspath(r) for r in p["keep_requirements"]]
        self.keep = p["keep"]
        self.python = p["python"]
        self.installer = p["installer"]
        self.uv = p["uv"]
        self.extra_args = p["extra_args"]
        self.environment = {k: str(v) for k, v in p["environment"].items()}
        self.compile = p["compile"]
        self.env = dict(LC_ALL="C", LANG="C", PYTHONDONTWRITEBYTECODE="1",
                        PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        self.env.update(self.environment)

    def run(self, argv, cwd=None):
        rc, out, err = self.module.run_command(argv, cwd=cwd, environ_update=self.env)
        return rc, out, err

    def probe(self):
        if not os.path.exists(self.python):
            raise VenvError("interpreter %s does not exist; install it first (role pydeploy.web.python_runtime)"
                            % self.python)
        rc, out, err = self.run([self.python, "-c", _PROBE])
        if rc != 0:
            raise VenvError("interpreter %s did not run (rc %d): %s" % (self.python, rc, tail(err, 5)))
        return json.loads(out)

    def read_marker(self, path):
        try:
            with open(os.path.join(path, MARKER)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def build(self, key, final, interp, req_sha256):
        tmp = os.path.join(self.base_dir, ".%s.partial" % key)
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)  # left behind by a run that was killed
        started = time.time()
        try:
            rc, out, err = self.run([self.python, "-m", "venv", "--prompt", key, tmp])
            if rc != 0:
                raise VenvError("creating the virtualenv with %s -m venv failed (rc %d); on Debian the "
                                "interpreter's -venv package is needed" % (self.python, rc),
                                rc=rc, stdout=tail(out), stderr=tail(err))
            py = os.path.join(tmp, "bin", "python")
            if self.installer == "uv":
                argv = [self.uv, "pip", "install", "--python", py, "--no-progress", "-r", self.requirements]
            else:
                argv = [py, "-m", "pip", "install", "--no-input", "--no-compile",
                        "--disable-pip-version-check", "--progress-bar", "off", "-r", self.requirements]
            argv += self.extra_args
            rc, out, err = self.run(argv, cwd=os.path.dirname(self.requirements))
            if rc != 0:
                output = err + "\n" + out
                name = unresolvable_requirement(output)
                reach = unreachable_index(output)
                if reach:
                    what = "the package index could not be reached (%s)" % reach
                elif name:
                    what = "requirement '%s' cannot be installed" % name
                else:
                    what = "the install failed"
                raise VenvError("%s: %s (%s, rc %d); no virtualenv was left under %s. Last lines of its output:\n%s"
                                % (self.installer, what, self.requirements, rc, self.base_dir,
                                   tail(err) or tail(out)),
                                rc=rc, stdout=tail(out), stderr=tail(err), requirement=name)
            relocate(tmp, final)
            if self.compile:
                # -s/-p record the final path in the bytecode; compile errors (odd test
                # files in some packages) are not fatal, as with pip's own compile step.
                self.run([py, "-m", "compileall", "-q", "-j", "0", "-s", tmp, "-p", final,
                          os.path.join(tmp, "lib")])
            rc, out, err = self.run([py, "-c", _LIST_DISTS])
            packages = json.loads(out) if rc == 0 else {}
            for name in ("pip", "setuptools", "wheel"):
                packages.pop(name, None)
            marker = dict(key=key, python=self.python, python_version=interp["version"],
                          platform=interp["platform"], installer=self.installer,
                          requirements=self.requirements, requirements_sha256=req_sha256,
                          packages=packages, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          duration=round(time.time() - started, 1))
            with open(os.path.join(tmp, MARKER), "w") as f:
                json.dump(marker, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, final)
            return marker
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def ensure(self):
        req_bytes, unpinned = read_requirements(self.requirements)
        for line in unpinned[:10]:
            self.module.warn("requirement '%s' in %s is not pinned with ==; the virtualenv for this "
                             "key may not match what a fresh install would give" % (line, self.requirements))
        with open(self.requirements, "rb") as f:
            req_sha256 = hashlib.sha256(f.read()).hexdigest()
        interp = self.probe()
        key = venv_key(interp, req_bytes)
        final = os.path.join(self.base_dir, key)
        result = dict(changed=False, path=final, key=key, python=self.python,
                      python_version=interp["version"], requirements_sha256=req_sha256,
                      installer=self.installer, reused=False, duration=0.0)

        def existing():
            if self.module.check_mode and not os.path.isdir(self.base_dir):
                return None  # an earlier task would have created it
            if not os.path.isdir(self.base_dir):
                raise VenvError("base_dir %s is not a directory; create it owned by the application user"
                                % self.base_dir, **result)
            if not os.path.lexists(final):
                return None
            marker = self.read_marker(final)
            if marker is None:
                raise VenvError("%s exists but was not built by this module (no %s in it); move it away "
                                "and run again" % (final, MARKER), **result)
            return marker

        marker = existing()
        if marker is None and self.module.check_mode:
            result["changed"] = True
            return result
        if marker is None:
            if self.installer == "uv" and not (self.uv and os.access(self.uv, os.X_OK)):
                raise VenvError("installer=uv needs the uv binary; %s is not an executable file" % self.uv,
                                **result)
            if not os.access(self.base_dir, os.W_OK):
                raise VenvError("base_dir %s is not writable by uid %d; run the module as the application "
                                "user (become_user) and give that user the directory" % (self.base_dir, os.getuid()),
                                **result)
            lock_path = os.path.join(self.base_dir, ".%s.lock" % key)
            with open(lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    marker = existing()  # another run may have built it while we waited
                    if marker is None:
                        marker = self.build(key, final, interp, req_sha256)
                        result.update(changed=True, duration=marker["duration"])
                finally:
                    try:
                        os.unlink(lock_path)
                    except OSError as e:
                        if e.errno != errno.ENOENT:
                            raise
        if not result["changed"]:
            result["reused"] = True
            result["installer"] = marker.get("installer", self.installer)
        result["packages"] = marker.get("packages", {})
        return result

    def prune(self):
        interp = self.probe()
        keep, unknown = set(), []
        for path in self.keep_requirements:
            try:
                data, _unpinned = read_requirements(path)
            except VenvError:
                unknown.append(path)
                continue
            keep.add(venv_key(interp, data))
        keep.update(os.path.basename(os.path.normpath(k)) for k in self.keep if k)
        result = dict(changed=False, pruned=[], kept=sorted(keep), unknown=unknown)
        if unknown or not os.path.isdir(self.base_dir):
            return result  # a kept release whose key cannot be worked out keeps every virtualenv
        for name in sorted(os.listdir(self.base_dir)):
            path = os.path.join(self.base_dir, name)
            if (name in keep or not _KEY_NAME.match(name) or os.path.islink(path) or not os.path.isdir(path)
                    or self.read_marker(path) is None):
                continue  # not a virtualenv this module built, or one to keep
            result["pruned"].append(name)
            if not self.module.check_mode:
                shutil.rmtree(path)
        result["changed"] = bool(result["pruned"])
        return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "pruned"], default="present"),
            base_dir=dict(type="path", required=True),
            requirements=dict(type="path"),
            keep_requirements=dict(type="list", elements="path", default=[]),
            keep=dict(type="list", elements="str", default=[]),
            python=dict(type="path", default="/usr/bin/python3"),
            installer=dict(type="str", choices=["pip", "uv"], default="pip"),
            uv=dict(type="path"),
            extra_args=dict(type="list", elements="str", default=[]),
            environment=dict(type="dict", default={}, no_log=True),
            compile=dict(type="bool", default=True),
        ),
        required_if=[("installer", "uv", ["uv"]), ("state", "present", ["requirements"])],
        supports_check_mode=True,
    )
    try:
        venv = Venv(module)
        result = venv.ensure() if module.params["state"] == "present" else venv.prune()
    except VenvError as e:
        module.fail_json(msg=e.msg, **e.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
