"""testssl.sh, Debian's, as a second opinion on the HTTPS configuration after sslyze
(test_sslyze.py): on the Debian 13 host, whose testssl.sh 3.2 prepare.yml installs
(Debian 12's 3.0 rates Mozilla's choice of no server cipher order HIGH; 3.2 does not),
against the site with the chain a test CA issued, that CA trusted."""
import json

# This file's host.
testinfra_hosts = ["ansible://debian13"]

TESTSSL_JSON = "/root/testssl.json"


def test_testssl_rates_nothing_high_or_critical(host):
    host.run("rm -f %s" % TESTSSL_JSON)
    cmd = host.run("testssl --quiet --color 0 --warnings off --ip 127.0.0.1 --add-ca /root/pydeploy-test-ca.pem "
                   "--jsonfile %s provided.test:443" % TESTSSL_JSON)
    findings = json.loads(host.file(TESTSSL_JSON).content_string)
    by_id = {f["id"]: f for f in findings}
    # It scanned: the protocols, the certificate (trusted through the test CA), the vulnerabilities.
    assert by_id["TLS1_3"]["finding"] == "offered with final" and by_id["TLS1_1"]["finding"] == "not offered", cmd.stdout
    assert by_id["cert_chain_of_trust"]["severity"] == "OK", by_id["cert_chain_of_trust"]
    assert "heartbleed" in by_id and len(findings) > 100
    assert by_id["overall_grade"]["finding"] in ("A+", "A"), by_id["overall_grade"]
    high = [(f["id"], f["severity"], f["finding"]) for f in findings if f["severity"] in ("HIGH", "CRITICAL")]
    assert high == [], high
