"""bench/rolling/run: its figures (one row per cluster size, the time ratio, the table and
the verdicts) and the inventory it gives the playbooks; nothing here starts a container."""
import pytest
from scriptload import load_script

rl = load_script("bench/rolling/run", "rolling")


def test_sizes_must_be_increasing_and_positive():
    assert rl.parse_sizes("1,2,4,8") == [1, 2, 4, 8]
    assert rl.parse_sizes("3") == [3]
    for bad in ("", "2,1", "0,1", "1,1", "-1"):
        with pytest.raises(ValueError):
            rl.parse_sizes(bad)


def test_the_inventory_has_the_balancer_the_database_and_n_application_hosts():
    inv = rl.inventory(3)
    assert list(inv["web"]["hosts"]) == ["pydeploy-bench-rl-web1", "pydeploy-bench-rl-web2", "pydeploy-bench-rl-web3"]
    assert list(inv["lb"]["hosts"]) == ["pydeploy-bench-rl-lb"] and list(inv["db"]["hosts"]) == ["pydeploy-bench-rl-db"]
    assert inv["all"]["vars"]["ansible_connection"] == "community.docker.docker"
    web = inv["web"]["vars"]
    # The deploy drains the hosts in the balancer, whose site is the application's.
    assert web["app_loadbalancers"] == "{{ groups['lb'] }}"
    assert inv["lb"]["vars"]["loadbalancer_sites"][0]["name"] == web["app_name"]
    assert inv["lb"]["vars"]["loadbalancer_sites"][0]["health_path"] == web["app_health_path"]
    # One database, the application's password on both sides.
    assert inv["db"]["vars"]["postgresql_databases"][0]["password"] == web["app_env"]["PGPASSWORD"]
    assert len(web["app_env"]["DJANGO_SECRET_KEY"]) >= 50  # check --deploy wants 50 characters


def records(start, n, latency, outcome=200, step=0.1):
    return [(start + i * step, latency, outcome) for i in range(n)]


def test_a_row_splits_steady_state_from_the_deploy_window():
    steady = records(0.0, 100, 0.010) + records(30.0, 50, 0.010)
    during = records(10.0, 100, 0.020) + [(15.0, 0.001, 502), (16.0, 10.0, "ConnectionResetError")]
    row = rl.size_row(4, sorted(steady + during), {"start": 10.0, "end": 25.0, "exit_status": 0}, 0.0, 35.0)
    assert row["hosts"] == 4 and row["deploy_seconds"] == 15.0 and row["deploy_ok"]
    assert row["requests"] == 252 and row["failed"] == 2
    assert row["failures"] == {"502": 1, "ConnectionResetError": 1}
    assert row["steady"]["failed"] == 0 and row["during_deploy"]["failed"] == 2
    assert row["steady"]["p99_ms"] == 10.0 and row["during_deploy"]["p99_ms"] == 20.0
    assert row["p99_ratio"] == 2.0
    assert row["requests_per_s"] == 7.2


def row(hosts, seconds, failed=0, ratio=1.5, ok=True):
    return dict(hosts=hosts, deploy_seconds=seconds, deploy_ok=ok, requests=1000, failed=failed,
                steady={"p99_ms": 10.0}, during_deploy={"p99_ms": 10.0 * ratio}, p99_ratio=ratio)


def test_the_time_ratio_is_the_largest_size_over_the_smallest():
    assert rl.time_ratio([row(1, 40.0), row(2, 50.0), row(8, 100.0)]) == 2.5
    assert rl.time_ratio([row(1, 40.0)]) is None
    assert rl.time_ratio([]) is None


def test_the_table_has_a_line_per_size():
    table = rl.format_table([row(1, 40.0), row(8, 100.0, failed=3, ratio=4.0, ok=False)])
    lines = table.splitlines()
    assert lines[0].startswith("| app hosts | deploy s |") and len(lines) == 4
    assert lines[2] == "| 1 | 40.0 | 1000 | 0 | 10.0 ms | 15.0 ms | 1.50 |"
    assert lines[3] == "| 8 | 100.0 (FAILED) | 1000 | 3 | 10.0 ms | 40.0 ms | 4.00 |"


def test_the_verdicts_name_every_missed_target():
    good = rl.verdicts([row(1, 40.0), row(8, 100.0)])
    assert good[0].startswith("1 host(s): meets the targets") and good[1].startswith("8 host(s): meets the targets")
    assert good[2] == "deploy time 8 hosts / 1 host(s): 2.50x (target: at most 3x): holds"
    bad = rl.verdicts([row(1, 40.0), row(8, 200.0, failed=1), row(16, 400.0, ratio=3.5)])
    assert "MISSES" in bad[1] and "1 failed requests" in bad[1]
    assert "MISSES" in bad[2] and "p99 ratio 3.50" in bad[2]
    assert bad[3].endswith("10.00x (target: at most 3x): MISSED")
