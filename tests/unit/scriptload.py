"""Load one of the repository's scripts (no .py suffix: bench/deploy, scripts/build-dist)
as a module, for the unit tests of its functions (tests/unit/conftest.py puts tests/unit on
sys.path)."""
import importlib.machinery
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script(relpath, name):
    loader = importlib.machinery.SourceFileLoader(name, os.path.join(ROOT, relpath))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
