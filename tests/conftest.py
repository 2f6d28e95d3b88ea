"""Make this checkout importable as ansible_collections.pydeploy.web for the tests."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The link make creates (Makefile, COLLECTION_LINK); made here too for a bare pytest run.
LINK = os.path.join(ROOT, ".collections", "ansible_collections", "pydeploy", "web")
if not os.path.islink(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink("../../..", LINK)
sys.path.insert(0, os.path.join(ROOT, ".collections"))
