"""pydeploy.web.wsgi_callable: the names gunicorn and uWSGI take for a WSGI application,
directly and through Jinja as the roles' preflight checks use it."""
import pytest
from ansible.template import Templar, trust_as_template

from ansible_collections.pydeploy.web.plugins.test import wsgi_callable as plugin

wsgi_callable = plugin.wsgi_callable

# Valid with and without arguments=true.
PLAIN = [
    "mysite.wsgi:application",
    "hello:application",
    "hello:create_app()",
    "a.b.c:app",
    "_private._mod:_app",
    "app2:App_3",
    "app:match",  # a soft keyword is a name
]

# Valid only with arguments=true: a factory with literal arguments, as gunicorn takes it.
WITH_ARGUMENTS = [
    "myapp:create_app('prod')",
    'myapp:create_app("prod", debug=False)',
    "myapp:create_app(1, -2, 3.5, None, True, b'x')",
    "myapp:create_app(config={'a': [1, 2], 'b': (3,)}, tags={'x'})",
    "myapp:create_app('a:b')",  # the module ends at the first colon
    "myapp:create_app('café')",
    "myapp:create_app ('prod')",
    "myapp:create_app( 'prod' , debug = True )",
]

# Never valid.
INVALID = [
    "",
    "hello",
    "mysite/wsgi.py",
    "mysite.wsgi",
    ":application",
    "hello:",
    ".hello:app",
    "hello.:app",
    "hello..wsgi:app",
    "1hello:app",
    "hello-world:app",
    "hello:1app",
    "hello:app.attr",
    "hello:app:other",
    "class:app",
    "hello:class",
    "hello:None",
    "hello:True",
    "hello:create_app(",
    "hello:create_app)",
    "hello:create_app()()",
    "hello:create_app(os.environ)",
    "hello:create_app(name)",
    "hello:create_app(open('/etc/shadow'))",
    "hello:create_app(1 + 1)",
    "hello:create_app(*args)",
    "hello:create_app(**{'a': 1})",
    "hello:create_app(x=y)",
    "hello:factory.create()",
    "hello:(create_app)()",
    "hello:create_app(lambda: 1)",
    "hello:create_app('a'\n)",
    "hello:app\n",
    "hello:\tapp",
    " hello:app",
    "hello:app ",
    "hello:cré()",
    "hello:\uff46()",  # fullwidth f, which Python's parser would read as f
    "h\u00e9llo:app",
]


@pytest.mark.parametrize("name", PLAIN)
@pytest.mark.parametrize("arguments", [False, True])
def test_module_callable_and_factory_without_arguments_are_valid(name, arguments):
    assert wsgi_callable(name, arguments=arguments) is True


@pytest.mark.parametrize("name", WITH_ARGUMENTS)
def test_a_factory_with_literal_arguments_is_valid_with_arguments_true_only(name):
    assert wsgi_callable(name, arguments=True) is True
    assert wsgi_callable(name) is False


@pytest.mark.parametrize("name", INVALID)
@pytest.mark.parametrize("arguments", [False, True])
def test_invalid_names_are_refused(name, arguments):
    assert wsgi_callable(name, arguments=arguments) is False


@pytest.mark.parametrize("value", [None, 1, ["hello:app"], {"hello": "app"}, b"hello:app"])
def test_a_value_that_is_not_a_string_is_not_a_callable(value):
    assert wsgi_callable(value) is False


def test_arguments_must_be_a_boolean():
    assert wsgi_callable("a:f('x')", arguments="yes") is True
    with pytest.raises(TypeError):
        wsgi_callable("a:app", arguments="maybe")


def test_the_plugin_exports_the_test_by_its_name():
    assert plugin.TestModule().tests() == {"wsgi_callable": wsgi_callable}


@pytest.mark.parametrize("expression, variables, expected", [
    ("name is pydeploy.web.wsgi_callable", {"name": "hello:create_app()"}, True),
    ("name is pydeploy.web.wsgi_callable", {"name": "hello:create_app('prod')"}, False),
    ("name is pydeploy.web.wsgi_callable(arguments=true)", {"name": "hello:create_app('prod')"}, True),
    ("name is not pydeploy.web.wsgi_callable", {"name": "mysite/wsgi.py"}, True),
])
def test_the_jinja_test_as_the_roles_use_it(expression, variables, expected):
    templar = Templar(loader=None, variables=variables)
    assert templar.evaluate_conditional(trust_as_template(expression)) is expected
