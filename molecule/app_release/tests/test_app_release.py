import json
import os

from hostcheck import as_demo

ROOT = "/srv/demo"
ARCHIVES = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"), "archives")


def release_id(version):
    with open(os.path.join(ARCHIVES, "demo-%s.tar.gz.sha256" % version)) as f:
        return f.read().strip()[:12]


def current(host):
    return host.file(ROOT + "/current").linked_to.rsplit("/", 1)[1]


def releases(host):
    return sorted(n for n in host.check_output("ls -A %s/releases" % ROOT).split())


def test_application_user_is_a_system_user_without_login(host):
    user = host.user("demo")
    assert user.exists and user.uid < 1000
    assert user.shell == "/usr/sbin/nologin" and user.group == "demo"


def test_layout_and_ownership(host):
    for path, owner, group, mode in [
            (ROOT, "root", "root", 0o755), (ROOT + "/releases", "root", "root", 0o755),
            (ROOT + "/shared", "demo", "demo", 0o755), (ROOT + "/.pydeploy", "root", "root", 0o700)]:
        f = host.file(path)
        assert f.is_directory and (f.user, f.group, f.mode) == (owner, group, mode), path
    assert host.file(ROOT + "/current").is_symlink
    assert host.file(ROOT + "/current").linked_to == "%s/releases/%s" % (ROOT, release_id("1"))


def test_release_code_is_readable_but_not_writable_by_the_app_user(host):
    app = ROOT + "/current/app.py"
    assert as_demo(host, "cat %s" % app).stdout == "VERSION = '1'\n"
    assert as_demo(host, "echo x >> %s" % app).rc != 0
    assert as_demo(host, "touch %s/current/new-file" % ROOT).rc != 0
    assert not host.run("find %s/releases/%s ! -user root -print -quit" % (ROOT, release_id("1"))).stdout.strip()


def test_manifest_describes_the_archive(host):
    manifest = json.loads(host.file("%s/current/RELEASE.json" % ROOT).content_string)
    with open(os.path.join(ARCHIVES, "demo-1.tar.gz.sha256")) as f:
        assert manifest["sha256"] == f.read().strip()
    assert manifest["id"] == release_id("1") and manifest["source"].endswith(".archive")


def test_shared_media_is_linked_and_writable_by_the_app_user(host):
    link = host.file(ROOT + "/current/media")
    assert link.is_symlink and link.linked_to == ROOT + "/shared/media"
    assert host.file(ROOT + "/shared/media/placeholder.txt").content_string == "shipped with version 1\n"
    assert as_demo(host, "touch %s/current/media/upload.jpg" % ROOT).rc == 0


def test_env_file_is_private_to_root_and_the_app_group(host):
    env = host.file(ROOT + "/shared/.env")
    assert (env.user, env.group, env.mode) == ("root", "demo", 0o640)
    lines = as_demo(host, "cat %s/shared/.env" % ROOT).stdout.splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        "DATABASE_URL=sqlite:////srv/demo/shared/db.sqlite3",
        "DJANGO_SETTINGS_MODULE=demo.settings",
        'SECRET_KEY="s3cret with spaces and \'quote\'"',
    ]
    # What sh reads back is the value that was given.
    assert as_demo(host, "set -a; . %s/shared/.env; printf %%s \"$SECRET_KEY\"" % ROOT).stdout == \
        "s3cret with spaces and 'quote'"
    assert host.run("sudo -u nobody cat %s/shared/.env" % ROOT).rc != 0


def test_a_rerun_uploads_nothing_and_changes_nothing(host, play):
    result = play()
    assert not result.failed, result
    assert result.task("Copy the archive from the controller").get("skipped") is True
    assert result.stats["changed"] == 0
    assert "secret" not in result.output.lower().replace("s3cret", "")  # nothing of the env is logged
    assert "s3cret" not in result.output
    assert not host.file(ROOT + "/.pydeploy/artifacts").listdir()


# Both stories end on version 1 current, as converge left the host: converge.yml runs
# again (restore_if_failed) only when one fails.
def test_second_version_switches_and_rollback_returns(host, play, restore_if_failed):
    v1, v2 = release_id("1"), release_id("2")
    result = play(demo_version="2")
    assert not result.failed, result
    assert current(host) == v2 and set(releases(host)) >= {v1, v2}
    assert host.file(ROOT + "/current/app.py").content_string == "VERSION = '2'\n"
    # media uploaded under v1 is still there under v2
    assert host.file(ROOT + "/current/media/placeholder.txt").content_string == "shipped with version 1\n"
    back = play("rollback.yml")
    assert not back.failed, back
    rolled = back.task("Roll back to the previous successful release")
    assert (rolled["previous"], rolled["current"]) == (v2, v1)
    assert current(host) == v1
    history = [json.loads(line) for line in host.file(ROOT + "/.pydeploy/history.jsonl").content_string.splitlines()]
    assert history[-1]["event"] == "rolled_back" and history[-1]["release"] == v1


def test_pruning_keeps_current_and_the_rollback_target(host, play, restore_if_failed):
    ids = [release_id(v) for v in "1234"]
    for v in "234":
        assert not play(demo_version=v).failed
    assert current(host) == ids[3]
    assert releases(host) == sorted(ids[1:])  # keep_releases: 3
    back = play("rollback.yml")
    assert not back.failed and current(host) == ids[2]
    # Deploying v1 again: it is unpacked anew, and neither the release rolled back to
    # before it nor the current one may be pruned.
    again = play(demo_version="1")
    assert not again.failed, again
    assert current(host) == ids[0]
    remaining = releases(host)
    assert ids[0] in remaining and ids[2] in remaining and len(remaining) == 3


def test_a_corrupt_archive_fails_and_the_running_release_keeps_serving(host, play, tmp_path):
    before = current(host)
    result = play(demo_version="1", app_release_checksum="0" * 64)
    assert result.failed
    assert current(host) == before
    assert not [n for n in releases(host) if n.endswith(".partial")]
