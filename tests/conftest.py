"""Make this checkout importable as ansible_collections.pydeploy.web for the tests."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The link `make collections` creates (every make target does); made for a bare pytest run too.
if not os.path.lexists(os.path.join(ROOT, ".collections", "ansible_collections", "pydeploy", "web")):
    subprocess.run(["make", "-s", "-C", ROOT, "collections"], check=True)
sys.path.insert(0, os.path.join(ROOT, ".collections"))
