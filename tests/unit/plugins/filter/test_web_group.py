"""pydeploy.web.web_group: the name the app, gunicorn and uwsgi roles give an
application's web group."""
import hashlib

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.pydeploy.web.plugins.filter.web_group import web_group


def test_a_short_name_gets_the_suffix():
    assert web_group("mysite") == "mysite-web"
    assert web_group("a" * 28) == "a" * 28 + "-web"  # 32 characters: the limit


def test_a_long_name_is_cut_and_told_apart_by_a_hash():
    long_a, long_b = "a" * 23 + "-first-app", "a" * 23 + "-other-app"
    group_a, group_b = web_group(long_a), web_group(long_b)
    assert len(group_a) == 32 and len(group_b) == 32
    assert group_a == "a" * 23 + "-" + hashlib.sha1(long_a.encode()).hexdigest()[:4] + "-web"
    assert group_a != group_b
    assert web_group("b" * 29) == "b" * 23 + "-" + hashlib.sha1(b"b" * 29).hexdigest()[:4] + "-web"


@pytest.mark.parametrize("bad", ["", None, 3, ["mysite"]])
def test_anything_but_a_name_is_refused(bad):
    with pytest.raises(AnsibleFilterError, match="web_group expects an application name"):
        web_group(bad)
