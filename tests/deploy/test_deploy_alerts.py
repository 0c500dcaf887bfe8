"""deploy/prometheus: the alert rules pass `promtool check rules` and their unit tests, use only
series Backstop exports (the certificate expiry included), and the PrometheusRule of the
monitoring component carries the same groups."""

import re
import subprocess

from deploy_common import DEPLOY, PROMTOOL, REPO

ALERTS = DEPLOY / "prometheus/alerts.yml"
REQUIRED_ALERTS = {"BackstopQueueNoLeader", "BackstopQueueInsufficientMembers",
                   "BackstopQueueFrequentLeaderChanges", "BackstopQueueSlowFsync",
                   "BackstopQueueOldestMessageTooOld", "BackstopQueueGrowing",
                   "BackstopIngestHighTempfailRatio", "BackstopCertificateExpiringSoon"}


def promtool(*args):
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_pass_promtool_check():
    assert "SUCCESS" in promtool("check", "rules", str(ALERTS))


def test_rules_pass_their_unit_tests():
    assert "SUCCESS" in promtool("test", "rules", str(DEPLOY / "prometheus/alerts_test.yml"))


def test_every_required_alert_is_defined_and_tested():
    text = ALERTS.read_text()
    tests = (DEPLOY / "prometheus/alerts_test.yml").read_text()
    for alert in REQUIRED_ALERTS:
        assert f"alert: {alert}\n" in text
        # An expectation that it fires, not only that it stays quiet.
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels", tests), alert


def exported_series():
    names = set()
    for source in ("cmd/backstop/role_metrics.cc", "common/metrics.cc"):
        path = REPO / source
        if path.exists():
            names |= set(re.findall(r'"((?:backstop|process|grpc)_[a-z_]+)"', path.read_text()))
    return names


def test_rules_use_only_exported_series():
    exported = exported_series()
    assert {"backstop_queue_has_leader",
            "backstop_tls_certificate_expiry_timestamp_seconds"} <= exported
    used = set(re.findall(r"\b(backstop_[a-z_]+?)(?:_bucket|_count|_sum)?\b(?![:(])",
                          ALERTS.read_text()))
    unknown = {name for name in used if name not in exported}
    assert unknown == set()


def test_prometheusrule_of_the_monitoring_component_is_current():
    result = subprocess.run(["python3", str(REPO / "tests/deploy/gen_prometheusrule.py"),
                             "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
