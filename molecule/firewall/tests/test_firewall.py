"""The firewall as a client on the network sees it (the host client, Debian 12), and as
the host behind it (firewall, Debian 13) has it."""
import os
import shlex

import pytest
import testinfra

# This file's host; the client is reached through testinfra too.
testinfra_hosts = ["ansible://firewall"]

TABLE = "inet pydeploy_firewall"


@pytest.fixture(scope="module")
def client():
    return testinfra.get_host("ansible://client", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(scope="module")
def address(host):
    return host.check_output("hostname -I").split()[0]


def connects(client, address, port, timeout=2):
    """Whether a TCP connection from the client to address:port is made within timeout
    seconds ("open"), refused ("refused") or never answered ("dropped")."""
    script = ("import socket, sys\n"
              "try:\n"
              "    socket.create_connection((%r, %d), timeout=%g).close(); print('open')\n"
              "except ConnectionRefusedError: print('refused')\n"
              "except OSError: print('dropped')\n" % (address, port, timeout))
    return client.check_output("python3 -c %s" % shlex.quote(script))


def ssh(client, address, command, *options):
    return client.run("ssh -p 2222 -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=5 %s root@%s %s"
                      % (" ".join(options), address, shlex.quote(command)))


def test_http_https_and_the_extra_port_are_open(host, client, address):
    for port in (80, 443, 8443):
        assert connects(client, address, port) == "open", port


def test_a_port_the_rules_do_not_open_is_dropped_though_something_listens(host, client, address):
    assert host.socket("tcp://0.0.0.0:8080").is_listening
    assert connects(client, address, 8080) == "dropped"
    # (from the host itself it answers: loopback is not filtered)
    assert connects(host, "127.0.0.1", 8080) == "open"


def test_ssh_is_open_on_the_port_sshd_listens_on_and_found_by_the_role(host, client, address):
    assert ssh(client, address, "true").rc == 0
    rules = host.check_output("nft list table %s" % TABLE)
    assert "tcp dport { 80, 443, 2222, 8443 } accept" in rules, rules
    assert connects(client, address, 22) == "dropped"


def test_inbound_is_denied_for_ipv4_and_ipv6_by_default(host):
    rules = host.check_output("nft list table %s" % TABLE)
    assert "type filter hook input priority filter; policy drop;" in rules
    assert "ct state established,related accept" in rules
    # ICMPv6 (58; named from /etc/protocols where netbase is): IPv6 needs neighbour discovery
    assert "meta l4proto ipv6-icmp accept" in rules or "meta l4proto 58 accept" in rules, rules
    conf = host.file("/etc/nftables.conf")
    assert (conf.user, conf.mode) == ("root", 0o644)
    assert host.run("nft -c -f /etc/nftables.conf").rc == 0


def test_an_open_ssh_connection_survives_a_change_of_the_rules(host, client, address, play, restore):
    """An SSH connection the client holds open (a master connection, as Ansible's
    ControlPersist keeps one), then the rules change (one more port): the connection
    carries a new session afterwards, and the new port is open."""
    control = "/root/pydeploy-test-ssh.ctl"
    client.run("rm -f %s" % control)
    opened = ssh(client, address, "true", "-M", "-S", control, "-o", "ControlPersist=120")
    assert opened.rc == 0, opened.stderr
    assert connects(client, address, 9000) == "dropped"
    result = play(firewall_extra_tcp_ports=[8443, 9000])
    assert not result.failed, result
    assert result.task("Load the rules into the kernel")["changed"] is True
    alive = ssh(client, address, "echo alive", "-S", control, "-o", "ControlMaster=no")
    assert alive.rc == 0 and alive.stdout.strip() == "alive", alive.stderr
    assert client.run("ssh -S %s -O check root@%s" % (control, address)).rc == 0
    host.run("systemd-run --unit=listen-9000 python3 -m http.server 9000")
    try:
        host.run_expect([0], "for i in $(seq 50); do ss -Htln 'sport = :9000' | grep -q . && exit 0; sleep 0.2; done; exit 1")
        assert connects(client, address, 9000) == "open"
    finally:
        host.run("systemctl stop listen-9000")
        client.run("ssh -S %s -O exit root@%s" % (control, address))


def test_bad_ports_are_refused_before_anything_changes(host, play):
    before = host.file("/etc/nftables.conf").content_string
    result = play(firewall_extra_tcp_ports=[8443, 70000], firewall_udp_ports=[0])
    assert result.failed
    assert "ports must be whole numbers from 1 to 65535; not 0, 70000." in result.output, result
    assert result.stats.get("changed", 0) == 0
    assert host.file("/etc/nftables.conf").content_string == before


def test_the_rules_are_loaded_at_boot_and_again_when_the_kernel_lost_them(host, client, address, play):
    assert host.service("nftables").is_enabled
    host.run_expect([0], "nft delete table %s" % TABLE)
    assert connects(client, address, 8080) == "open"  # nothing filters now
    result = play()
    assert not result.failed, result
    assert result.task("Load the rules again, the kernel lacking them")["changed"] is True
    assert connects(client, address, 8080) == "dropped"
    # What boot does: nftables.service loads the same file.
    host.run_expect([0], "systemctl restart nftables")
    assert "policy drop" in host.check_output("nft list table %s" % TABLE)
    assert ssh(client, address, "true").rc == 0


def test_a_rerun_changes_nothing(play):
    result = play()
    assert not result.failed and result.stats.get("changed", 0) == 0, result
