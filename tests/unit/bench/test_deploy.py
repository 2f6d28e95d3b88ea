"""bench/deploy: what it counts and prints (tasks that ran, the slowest tasks, medians,
the table) from JSON-callback reports made here; nothing here starts a container."""
import pytest
from scriptload import load_script

bd = load_script("bench/deploy", "bench_deploy")


def report(*tasks):
    """A JSON-callback report of one play; tasks: (name, seconds, skipped) on host h."""
    out = []
    for i, (name, seconds, skipped) in enumerate(tasks):
        start = "2026-12-01T10:00:%02d.000000Z" % i
        end = "2026-12-01T10:00:%02d.%06dZ" % (i + int(seconds), int((seconds % 1) * 1e6))
        out.append({"task": {"name": name, "duration": {"start": start, "end": end}},
                    "hosts": {"h": {"skipped": True} if skipped else {"changed": False}}})
    return {"plays": [{"tasks": out}]}


def test_tasks_run_counts_what_ran_on_the_host_only():
    data = report(("a", 0.5, False), ("b", 0.1, True), ("c", 1.25, False))
    data["plays"][0]["tasks"].append({"task": {"name": "other host"}, "hosts": {"g": {}}})
    assert bd.tasks_run(data, "h") == 2
    assert bd.tasks_run({}, "h") == 0


def test_slowest_lists_the_tasks_that_ran_longest_first():
    data = report(("a", 0.5, False), ("skipped", 9.0, True), ("c", 1.25, False), ("d", 0.75, False))
    assert bd.slowest(data, "h", 2) == [(1.25, "c"), (0.75, "d")]


def test_summary_is_the_median_of_the_rounds():
    assert bd.summary([(10.0, 40), (12.0, 42), (30.0, 40)]) == dict(median=12.0, min=10.0, max=30.0, tasks=40, n=3)
    assert bd.summary([]) is None


def test_table_has_a_column_per_tree_and_strategy_and_the_targets():
    results = {"this tree": {"linear": {"site-noop": dict(median=11.5, tasks=30)}},
               "baseline abc": {"linear": {"site-noop": dict(median=48.0, tasks=94)}}}
    table = bd.format_table(results, ["site-noop", "rollback"], ["this tree", "baseline abc"], ["linear"])
    lines = table.splitlines()
    assert lines[0] == "| row | target | this tree, linear | baseline abc, linear |"
    assert lines[2] == "| site.yml, nothing to do | <= 12 s | 11.5 s (30 tasks) | 48.0 s (94 tasks) |"
    assert lines[3] == "| rollback.yml | <= 10 s | - | - |"


def test_rows_are_checked():
    with pytest.raises(SystemExit):
        bd.parse_args(["--rows", "site-noop,nope"])
    assert bd.parse_args(["--rows", "rollback"]).rows == ["rollback"]


def test_a_cell_with_fewer_runs_than_the_rounds_says_how_many():
    results = {"this tree": {"linear": {"rollback": dict(median=9.5, tasks=30, n=5)}},
               "baseline abc": {"linear": {"rollback": dict(median=40.0, tasks=70, n=1)}}}
    table = bd.format_table(results, ["rollback"], ["this tree", "baseline abc"], ["linear"], rounds=5)
    assert table.splitlines()[2] == "| rollback.yml | <= 10 s | 9.5 s (30 tasks) | 40.0 s (70 tasks, n=1) |"
