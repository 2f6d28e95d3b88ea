"""tests/unit on sys.path (scriptload, the helper that loads a script without a .py
suffix), also when ansible-test units runs the tests with its own pytest configuration
instead of pytest.ini."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
