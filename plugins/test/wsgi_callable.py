# -*- coding: utf-8 -*-
# Copyright: pydeploy.web contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: wsgi_callable
short_description: Does a string name a WSGI callable as module:callable or module:factory()
version_added: 0.1.0
author:
  - pydeploy.web contributors (@pydeploy)
description:
  - Tests whether a string names a WSGI application the way gunicorn and uWSGI take it on
    their command line or in their configuration - a dotted module path, a colon, then
    the name of the callable in that module (V(mysite.wsgi:application)), or the name of a
    factory function followed by V(\(\)), which the server calls to get the application
    (V(hello:create_app\(\))).
  - Each part of the module path and the callable's name are ASCII Python identifiers that
    are not keywords; the module path has no empty part (no leading, trailing or doubled dot).
  - With O(arguments=true), the factory may also be given arguments, as gunicorn (20.1 and
    later) accepts them - positional and keyword arguments that are Python literals only
    (strings, bytes, numbers, booleans, V(None), and tuples, lists, sets and dicts of
    literals), such as V(myapp:create_app\('prod', debug=False\)). Anything else in the
    parentheses (a name, an attribute, a call, an expression such as V(1 + 1), V(*args) or
    V(**kwargs)) is refused, as gunicorn refuses it. uWSGI takes no arguments.
  - A value that is not a string, or that holds a control character such as a newline, is
    not a WSGI callable.
options:
  _input:
    description: The string to test, such as the value of C(gunicorn_wsgi_app).
    type: raw
    required: true
  arguments:
    description:
      - Whether a factory may be called with literal arguments (gunicorn) or only with
        none (uWSGI, and the app role, which may run either).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Check a WSGI callable for uWSGI (module:callable or module:factory())
  ansible.builtin.assert:
    that: uwsgi_wsgi_app is pydeploy.web.wsgi_callable
    fail_msg: give module:callable (mysite.wsgi:application) or module:factory() (hello:create_app())

- name: Check a WSGI callable for gunicorn, whose factories take literal arguments
  ansible.builtin.assert:
    that: gunicorn_wsgi_app is pydeploy.web.wsgi_callable(arguments=true)

# true:  "mysite.wsgi:application" is pydeploy.web.wsgi_callable
# true:  "hello:create_app()" is pydeploy.web.wsgi_callable
# false: "hello:create_app('prod')" is pydeploy.web.wsgi_callable
# true:  "hello:create_app('prod', debug=False)" is pydeploy.web.wsgi_callable(arguments=true)
# false: "hello:create_app(os.environ)" is pydeploy.web.wsgi_callable(arguments=true)
# false: "mysite/wsgi.py" is pydeploy.web.wsgi_callable
"""

RETURN = r"""
_value:
  description:
    - V(true) if the input names a WSGI callable in the accepted form, V(false) otherwise
      for any input.
  type: bool
"""

import ast
import keyword
import re

from ansible.module_utils.parsing.convert_bool import boolean

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _identifier(name):
    return bool(_IDENTIFIER.match(name)) and not keyword.iskeyword(name)


def _literal(node):
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _factory_call(text):
    """True if text is name(literal, ..., key=literal, ...), as gunicorn's import_app takes it."""
    try:
        expression = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    if not isinstance(expression, ast.Call) or not isinstance(expression.func, ast.Name):
        return False
    # The name as written: Python's parser normalizes a non-ASCII one (NFKC) to ASCII.
    if not _identifier(expression.func.id) or text[:text.index("(")].rstrip() != expression.func.id:
        return False
    if any(isinstance(arg, ast.Starred) for arg in expression.args):
        return False
    # kw.arg is None for **mapping, which gunicorn would pass on as a keyword named None.
    if any(kw.arg is None for kw in expression.keywords):
        return False
    return all(_literal(arg) for arg in expression.args) and all(_literal(kw.value) for kw in expression.keywords)


def wsgi_callable(value, arguments=False):
    """True if value is module:callable or module:factory() (with arguments=True, also
    module:factory(literal arguments))."""
    arguments = boolean(arguments, strict=True)
    if not isinstance(value, str) or _CONTROL.search(value):
        return False
    module, sep, target = value.partition(":")
    if not sep or not all(_identifier(part) for part in module.split(".")):
        return False
    if _identifier(target) or (target.endswith("()") and _identifier(target[:-2])):
        return True
    return arguments and _factory_call(target)


class TestModule:
    """The pydeploy.web.wsgi_callable test."""

    def tests(self):
        return {"wsgi_callable": wsgi_callable}
