"""Make this checkout importable as ansible_collections.pydeploy.web for the tests."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tree that already is ansible_collections/pydeploy/web (ansible-test units runs in such
# a copy, and its pytest plugin loads the collection from there) needs no link.
if os.path.basename(os.path.dirname(os.path.dirname(ROOT))) != "ansible_collections":
    # The link `make collections` creates (every make target does); made for a bare pytest run too.
    if not os.path.lexists(os.path.join(ROOT, ".collections", "ansible_collections", "pydeploy", "web")):
        subprocess.run(["make", "-s", "-C", ROOT, "collections"], check=True)
    sys.path.insert(0, os.path.join(ROOT, ".collections"))
