"""pydeploy.web.app included from a user's own play (converge.yml): the same checks over
HTTP as the end-to-end scenarios, a second deploy and a rollback through the same play, and
the play's own tasks around the role. Molecule's idempotence step ran converge again."""
import os
import re
import shutil

from e2e import DIST, release_id
from hostcheck import http

SECRET = "app-role-secret-Qw7Lk2Vn9Zt4Rm6Xc3Bp"
CHECKOUT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", "")


def version(host):
    status, _headers, body = http(host, "/", hostname="shop.test")
    assert status == 200, body[-2000:]
    assert "pydeploy demo: Flask" in body
    return re.search(r"Version ([0-9A-Za-z.+-]+)", body).group(1)


def current(host):
    return os.path.basename(host.file("/srv/shop/current").linked_to)


def test_the_play_deployed_the_shop_and_ran_its_own_tasks(host):
    assert version(host) == "1.0.0"
    assert current(host) == release_id("flask-1.0.0.tar.gz")
    assert http(host, "/health", hostname="shop.test")[0] == 200
    status, headers, _body = http(host, "/static/style.css", hostname="shop.test")
    assert status == 200 and headers["content-type"].startswith("text/css")
    assert host.file("/etc/motd").content_string == "shop frontend, managed by the infra repository\n"
    assert "shop-" in host.check_output("supervisorctl status")


def test_a_second_deploy_and_a_rollback_through_the_same_play(host, play):
    result = play("converge.yml", shop_action="deploy", app_artifact=os.path.join(DIST, "flask-2.0.0.tar.gz"))
    assert not result.failed, result
    assert SECRET not in result.output
    assert version(host) == "2.0.0"
    assert current(host) == release_id("flask-2.0.0.tar.gz")
    # The play's own task after the role saw the new release healthy.
    assert result.task("Check that the shop answers through nginx")["status"] == 200

    result = play("converge.yml", shop_action="rollback")
    assert not result.failed, result
    assert version(host) == "1.0.0"
    assert current(host) == release_id("flask-1.0.0.tar.gz")


def test_bad_input_in_the_play_fails_before_any_change(host, play):
    before = current(host)
    result = play("converge.yml", app_server="apache")
    assert result.failed, result
    # Ansible's own check of the role's argument_specs (the play does not turn it off).
    assert "value of app_server must be one of: gunicorn, uwsgi, got: apache" in result.output, result
    assert result.stats.get("changed", 0) == 0, result
    assert current(host) == before
    assert version(host) == "1.0.0"


def live_program(host):
    """The supervisor program (shop-blue or shop-green) whose socket current links to."""
    link = host.file("/srv/shop/current/.pydeploy-uwsgi.sock").linked_to
    return "shop-" + os.path.basename(link)[:-len(".sock")]


def test_a_collection_upgrade_that_changes_a_template_starts_the_other_instance(host, play, tmp_path):
    # The collection as a later version would install it: the same, but for one line
    # in the template of uWSGI's configuration.
    upgraded = tmp_path / "ansible_collections" / "pydeploy" / "web"
    upgraded.mkdir(parents=True)
    for name in ("galaxy.yml", "meta", "plugins", "roles", "playbooks"):
        source = os.path.join(CHECKOUT, name)
        (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, upgraded / name)
    marker = "# changed by a later version of pydeploy.web"
    with open(upgraded / "roles/uwsgi/templates/etc/app/uwsgi.ini.j2", "a") as template:
        template.write(marker + "\n")
    release = current(host)
    before = live_program(host)

    # The same release and variables: only what the roles render changed.
    result = play.with_collections(tmp_path, "converge.yml", shop_action="deploy")
    assert not result.failed, result
    after = live_program(host)
    assert after != before
    assert marker in host.file("/etc/shop/uwsgi-%s.ini" % after[len("shop-"):]).content_string
    assert "STOPPED" in host.run("supervisorctl status %s" % before).stdout
    assert current(host) == release and version(host) == "1.0.0"

    # Back to this checkout's roles: the other instance again, without the line.
    result = play("converge.yml", shop_action="deploy")
    assert not result.failed, result
    assert live_program(host) == before
    assert marker not in host.file("/etc/shop/uwsgi-%s.ini" % before[len("shop-"):]).content_string
    assert current(host) == release and version(host) == "1.0.0"
