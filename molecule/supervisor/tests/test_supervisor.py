"""supervisor: root-only control, one program changed at a time."""
import re

from hostcheck import restart_supervisord


CONFIG = "/etc/supervisor/supervisord.conf"
PASSWORD = "correct horse battery staple"


def pid(host, program):
    value = int(host.check_output("supervisorctl pid %s" % program))
    assert value > 0, program
    return value


def tcp_listeners(host):
    return host.check_output("ss -Hltnp").splitlines()


def test_supervisor_runs_and_starts_at_boot(host):
    service = host.service("supervisor")
    assert service.is_running and service.is_enabled


def test_configuration_and_program_files_are_readable_by_root_only(host):
    for path, mode in ((CONFIG, 0o600), ("/etc/supervisor/conf.d", 0o700),
                       ("/etc/supervisor/conf.d/demo-a.conf", 0o600), ("/etc/supervisor/conf.d/demo-b.conf", 0o600)):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "root", mode), path


def test_control_is_a_root_only_unix_socket_and_there_is_no_tcp_listener(host):
    sock = host.file("/run/supervisor.sock")
    assert sock.is_socket and sock.user == "root" and sock.mode == 0o700
    assert "[inet_http_server]" not in host.file(CONFIG).content_string
    assert not [line for line in tcp_listeners(host) if "supervisord" in line]
    # Another user cannot even connect to it (curl exits 7: could not connect).
    other = host.run("sudo -u nobody curl -s --unix-socket /run/supervisor.sock http://localhost/RPC2")
    assert other.rc == 7, other


def test_programs_run_as_their_users(host):
    assert host.check_output("ps -o user= -p %d" % pid(host, "demo-a")) == "demo"
    assert host.check_output("ps -o user= -p %d" % pid(host, "demo-b")) == "nobody"


def test_environment_reaches_the_program_exactly(host):
    log = host.file("/var/log/supervisor/demo-a.out.log").content_string
    assert "hello from pid %d as uid %d" % (pid(host, "demo-a"), host.user("demo").uid) in log
    assert "tricky: 50% off, \"quoted\" text, a=b;c\n" in log


def test_logs_are_rotated_by_size(host):
    program = host.file("/etc/supervisor/conf.d/demo-a.conf").content_string
    assert "stdout_logfile = /var/log/supervisor/demo-a.out.log" in program
    assert "stdout_logfile_maxbytes = 10MB" in program and "stdout_logfile_backups = 5" in program
    assert "stderr_logfile_maxbytes = 10MB" in program
    assert "redirect_stderr = true" in host.file("/etc/supervisor/conf.d/demo-b.conf").content_string


def test_changing_one_program_leaves_the_other_alone(host, play, restore):
    a, b = pid(host, "demo-a"), pid(host, "demo-b")
    supervisord = host.file("/run/supervisord.pid").content_string.strip()
    result = play(demo_greeting="changed")
    assert not result.failed, result
    assert pid(host, "demo-b") == b
    assert pid(host, "demo-a") != a
    assert host.file("/run/supervisord.pid").content_string.strip() == supervisord
    assert "GREETING=\"changed\"" in host.file("/etc/supervisor/conf.d/demo-a.conf").content_string
    log = host.file("/var/log/supervisor/demo-a.out.log").content_string
    assert "changed from pid %d" % pid(host, "demo-a") in log


def test_a_value_supervisor_would_misread_is_refused_before_it_is_written(host, play):
    a, b = pid(host, "demo-a"), pid(host, "demo-b")
    before = host.file("/etc/supervisor/conf.d/demo-a.conf").content_string
    result = play(demo_greeting="hello ; rm -rf /")
    assert result.failed, result
    assert [f for f in result.failures() if "GREETING" in f.get("msg", "")], result
    assert host.file("/etc/supervisor/conf.d/demo-a.conf").content_string == before
    assert (pid(host, "demo-a"), pid(host, "demo-b")) == (a, b)


def test_the_tcp_interface_needs_credentials(play):
    result = play(supervisor_inet_http_server=True)
    assert result.failed, result
    msg = result.task("Check that the TCP interface, when turned on, has credentials")["msg"]
    assert "there is no default password" in msg


def test_the_tcp_interface_listens_on_loopback_only_with_a_hashed_password(host, play, restore):
    result = play(supervisor_inet_http_server=True, supervisor_inet_http_server_username="admin",
                  supervisor_inet_http_server_password=PASSWORD)
    assert not result.failed, result
    assert PASSWORD not in result.output
    listeners = [line for line in tcp_listeners(host) if "supervisord" in line]
    assert len(listeners) == 1 and re.search(r"\s127\.0\.0\.1:9001\s", listeners[0]), listeners
    config = host.file(CONFIG)
    assert config.mode == 0o600
    assert PASSWORD not in config.content_string and "password = {SHA}" in config.content_string
    curl = "curl -s -o /dev/null -w '%{http_code}' "
    assert host.check_output(curl + "http://127.0.0.1:9001/") == "401"
    assert host.check_output(curl + "-u 'admin:%s' http://127.0.0.1:9001/" % PASSWORD) == "200"


def autostart(host, program):
    """autostart as the program's file says it, and as supervisord holds it (avail: auto/manual)."""
    found = re.findall(r"^autostart = (\S+)$", host.file("/etc/supervisor/conf.d/%s.conf" % program).content_string,
                       re.MULTILINE)
    assert len(found) == 1, found
    avail = [line.split() for line in host.check_output("supervisorctl avail").splitlines()]
    # "<name>  in use  auto|manual  <priority>"
    return found[0], [fields[-2] for fields in avail if fields[0] == program][0]


def control_play(play, name, state):
    result = play("control.yml", supervisor_control_name=name, supervisor_control_state=state)
    if state == "status" and not result.failed:
        result.status = result.task("Report the program's state")["supervisor_control_status"]
    return result


def test_the_control_entry_point_starts_stops_and_tells_one_program(host, play, restore_if_failed):
    """The seam through which the deploy flow starts and stops its app-server instances."""
    def control(name, state):
        return control_play(play, name, state)

    b = pid(host, "demo-b")
    result = control("demo-a", "stopped")
    assert not result.failed, result
    # Stopped, autostart = false written, and told to supervisord while stopped.
    assert result.stats["changed"] == 3, result
    assert host.run("supervisorctl status demo-a").stdout.split()[1] == "STOPPED"
    assert control("demo-a", "status").status == "STOPPED"
    assert autostart(host, "demo-a") == ("false", "manual")
    assert autostart(host, "demo-b") == ("true", "auto")
    # Stopped already, or unknown to supervisor: nothing to do, nothing fails.
    for name in ("demo-a", "no-such-program"):
        result = control(name, "stopped")
        assert not result.failed, (name, result)
        assert result.stats["changed"] == 0, (name, result)
    assert control("no-such-program", "status").status == "ABSENT"

    result = control("demo-a", "started")
    assert not result.failed, result
    # autostart = true written and told to supervisord, which started the program as it
    # took it; the start found it started.
    assert result.stats["changed"] == 2, result
    assert control("demo-a", "status").status == "RUNNING"
    assert pid(host, "demo-a") > 0
    assert autostart(host, "demo-a") == ("true", "auto")
    a = pid(host, "demo-a")
    result = control("demo-a", "started")
    assert result.stats["changed"] == 0, result
    assert pid(host, "demo-a") == a
    # A program supervisor does not know cannot be started.
    result = control("no-such-program", "started")
    assert result.failed, result
    assert "no such process" in result.output.lower(), result
    # Bad input is refused by the entry point's argument spec.
    result = control("demo-a", "restarted")
    assert result.failed, result
    assert "supervisor_control_state" in result.output, result
    assert pid(host, "demo-b") == b  # the other program was never touched


def test_after_a_restart_of_supervisord_only_the_programs_started_last_run(host, play, restore_if_failed):
    """What a reboot starts: a program stopped through the control entry point stays stopped."""
    result = control_play(play, "demo-a", "stopped")
    assert not result.failed, result
    restart_supervisord(host)
    assert host.run("supervisorctl status demo-a").stdout.split()[1] == "STOPPED"
    assert host.run("supervisorctl status demo-b").stdout.split()[1] == "RUNNING"

    result = control_play(play, "demo-a", "started")
    assert not result.failed, result
    restart_supervisord(host)
    assert host.run("supervisorctl status demo-a").stdout.split()[1] == "RUNNING"
    assert host.run("supervisorctl status demo-b").stdout.split()[1] == "RUNNING"


def test_a_running_program_is_never_restarted_for_its_autostart(host, play, restore_if_failed):
    """Started by hand after a stop (its file says autostart = false): started through the
    control entry point, it keeps running, untouched; its file holds the change for the next
    start of supervisord."""
    result = control_play(play, "demo-a", "stopped")
    assert not result.failed, result
    host.run_expect([0], "supervisorctl start demo-a")
    a, b = pid(host, "demo-a"), pid(host, "demo-b")
    result = control_play(play, "demo-a", "started")
    assert not result.failed, result
    assert result.stats["changed"] == 1, result  # the file only
    assert (pid(host, "demo-a"), pid(host, "demo-b")) == (a, b)
    # supervisord keeps what it read until it starts again, which is when autostart counts.
    assert autostart(host, "demo-a") == ("true", "manual")
    restart_supervisord(host)
    assert host.run("supervisorctl status demo-a").stdout.split()[1] == "RUNNING"
    assert autostart(host, "demo-a") == ("true", "auto")


def test_check_mode_reports_the_autostart_change_and_makes_none(host, play, restore_if_failed):
    before = host.file("/etc/supervisor/conf.d/demo-a.conf").content_string
    a = pid(host, "demo-a")
    result = play("control.yml", supervisor_control_name="demo-a", supervisor_control_state="stopped",
                  control_check_mode=True)
    assert not result.failed, result
    assert result.task("Write autostart")["changed"] is True
    assert host.file("/etc/supervisor/conf.d/demo-a.conf").content_string == before
    assert pid(host, "demo-a") == a


def test_a_rerun_changes_nothing(play):
    result = play()
    assert not result.failed, result
    assert result.stats["changed"] == 0, result
