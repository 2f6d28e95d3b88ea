"""Offline stand-in for the get-pip.py that ansible-test downloads to bootstrap pip in the
virtualenvs it creates (from ci-files.testing.ansible.com, which this project's test
machines cannot reach). `make sanity` copies it to
~/.ansible/test/cache/get_pip_<version>.py, where ansible-test looks before it downloads.

ansible-test runs it as get-pip.py: with the virtualenv's interpreter and the arguments
`--disable-pip-version-check pip==<version> --no-setuptools --no-wheel`. This bootstraps
pip from the interpreter's own ensurepip, then installs the pip version asked for from
the package index, trusting the system CA bundle (PIP_CERT overrides it), as pip on this
machine does."""

from __future__ import annotations

import os
import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")  # get-pip.py options that pip has not


def main() -> None:
    """Bootstrap pip, then install what was asked for; exit with pip's status on failure."""
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    env = dict(os.environ)
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    if "PIP_CERT" not in env and os.path.exists(bundle):
        env["PIP_CERT"] = bundle
    for argv in ([sys.executable, "-m", "ensurepip", "--default-pip"],
                 [sys.executable, "-m", "pip", "install"] + args):
        status = subprocess.call(argv, env=env)
        if status:
            sys.exit(status)


if __name__ == "__main__":
    main()
