"""The HTTPS sites held to Mozilla's intermediate profile by sslyze, run from the
controller as an outside client, on both hosts (testssl.sh, the second opinion:
test_testssl.py)."""
import os
import re
import subprocess

from test_nginx import CERT, TLS

testinfra_hosts = ["ansible://debian12", "ansible://debian13"]

# make test and make molecule give its path (sslyze has a virtualenv of its own:
# requirements-sslyze.txt); else where the Makefile makes it.
SSLYZE = os.environ.get("PYDEPLOY_SSLYZE") or os.path.join(
    os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."), ".venv-sslyze", "bin", "sslyze")


def sslyze(host, name, ca):
    """sslyze's scan of the site `name` on the host's address, the CA file `ca` trusted."""
    address = host.check_output("hostname -I").split()[0]
    assert os.access(SSLYZE, os.X_OK), "no sslyze at %s: make .venv-sslyze/.installed" % SSLYZE
    return subprocess.run([SSLYZE, "--mozilla_config=intermediate", "--certinfo_ca_file", ca,
                           "%s:443{%s}" % (name, address)], capture_output=True, text=True, timeout=300, check=False)


def test_sslyze_finds_the_provided_site_compliant_with_mozilla_intermediate(host):
    result = sslyze(host, "provided.test", TLS + "/ca.pem")
    assert "provided.test:443: OK - Compliant." in result.stdout, result.stdout[-4000:]
    assert result.returncode == 0, result.stderr


def test_sslyze_finds_the_self_signed_site_compliant_but_for_its_trust(host, tmp_path):
    """The same server configuration; a self-signed certificate (CA:FALSE) cannot pass a
    path validation, whoever trusts it: that is the one point sslyze reports."""
    ca = tmp_path / "secure.pem"
    ca.write_text(host.file(CERT).content_string)
    result = sslyze(host, "secure.test", str(ca))
    assert re.findall(r"^\s+\* (\w+):", result.stdout, re.MULTILINE) == ["certificate_path_validation"], \
        result.stdout[-4000:]
