"""scripts/sanity-summary: make sanity's line per test and total, from ansible-test's junit
files and output."""
from scriptload import load_script

ss = load_script("scripts/sanity-summary", "sanity_summary")

CASE = """<?xml version="1.0" ?>
<testsuites><testsuite name="ansible-test" tests="1">%s</testsuite></testsuites>
"""


def junit(tmp_path, **cases):
    d = tmp_path / "junit"
    d.mkdir()
    for name, body in cases.items():
        name = name.replace("_python_3_11", "-python-3.11").replace("_", "-")
        case = '<testcase classname="sanity" name="%s"%s' % (name, ">%s</testcase>" % body if body else "/>")
        (d / ("ansible-test-sanity-%s.xml" % name)).write_text(CASE % case)
    return str(d)


def run(tmp_path, capsys, log="", **cases):
    (tmp_path / "log").write_text(log)
    rc = ss.main([junit(tmp_path, **cases), str(tmp_path / "log"), "7"])
    return rc, capsys.readouterr().out.splitlines()


def test_passed_and_skipped_tests_count_no_findings(tmp_path, capsys):
    rc, out = run(tmp_path, capsys, pep8="", pslint_python_3_11="<skipped>No tests applicable.</skipped>")
    assert rc == 0
    assert out == ["sanity: pep8: 0 findings", "sanity: pslint-python-3.11: skipped: no tests applicable",
                   "sanity: 2 tests, 0 findings, 7 s"]


def test_findings_are_counted_from_the_output_per_test(tmp_path, capsys):
    log = ("Running sanity test \"pep8\"\nERROR: Found 3 pep8 issue(s) which need to be resolved:\n"
           "ERROR: Found 1 compile issue(s) which need to be resolved:\n")
    rc, out = run(tmp_path, capsys, log, pep8='<failure message="x">y</failure>', yamllint="",
                  compile_python_3_11='<failure message="x">y</failure>')
    assert rc == 1
    assert out == ["sanity: compile-python-3.11: 1 finding", "sanity: pep8: 3 findings", "sanity: yamllint: 0 findings",
                   "sanity: 3 tests, 4 findings, 7 s"]


def test_a_test_that_failed_without_a_count_is_one_finding(tmp_path, capsys):
    rc, out = run(tmp_path, capsys, pylint='<error message="crashed">traceback</error>')
    assert rc == 1 and out[0] == "sanity: pylint: 1 finding"


def test_no_results_at_all_fail(tmp_path, capsys):
    rc, out = run(tmp_path, capsys)
    assert rc == 1 and out == ["sanity: 0 tests, 0 findings, 7 s"]
