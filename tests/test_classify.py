"""Who is to blame: the error-code table and which error field speaks first."""
from __future__ import annotations

import pytest

from robot.classify import load_table, classify
from robot.yamlconfig import ConfigError

TABLE = load_table()


@pytest.mark.parametrize("code,name,klass", [
    (1099, "STAGEINFAILED", "site"), (1151, "STAGEINTIMEOUT", "site"), (1331, "MISSINGINPUTFILE", "site"),
    (1333, "NOREMOTESPACE", "site"), (1306, "SINGULARITYGENERALFAILURE", "site"), (1377, "CVMFSISNOTALIVE", "site"),
    (1098, "NOLOCALSPACE", "site"), (1305, "PAYLOADEXECUTIONFAILURE", "user"), (1212, "PAYLOADOUTOFMEMORY", "user"),
    (1163, "NOPROXY", "central"), (1324, "SERVICENOTAVAILABLE", "central"), (1100, "REPLICANOTFOUND", "central"),
    (1213, "REACHEDMAXTIME", "unknown"), (1144, "PANDAKILL", "none"),
])
def test_pilot_codes_follow_the_domain_table(code, name, klass):
    verdict = classify(TABLE, pilot=(code, "diag"))
    assert (verdict.source, verdict.name, verdict.klass, verdict.diag) == ("pilot", name, klass, "diag")


def test_pilot_code_speaks_before_the_payload_exit_code():
    verdict = classify(TABLE, pilot=(1099, "Get error"), exe=(1, "Traceback"))
    assert verdict.klass == "site"


def test_exe_error_alone_is_the_users():
    verdict = classify(TABLE, exe=(139, "segfault in user code"))
    assert (verdict.source, verdict.klass, verdict.code) == ("exe", "user", 139)


def test_server_side_codes():
    assert classify(TABLE, taskbuffer=(100, "killed")).klass == "none"
    assert classify(TABLE, taskbuffer=(104, "wait timeout")).klass == "site"
    assert classify(TABLE, jobdispatcher=(100, "lost heartbeat")).klass == "unknown"


def test_unknown_code_and_no_code_are_unknown_not_site():
    assert classify(TABLE, pilot=(9999, "")).klass == "unknown"
    assert classify(TABLE).klass == "unknown"


def test_a_deployment_table_changes_classes(tmp_path):
    extra = tmp_path / "classes.yaml"
    extra.write_text("pilot:\n  1203: {name: SIGSEGV, class: site}\n  4000: {name: LOCALTHING, class: central}\n")
    table = load_table(extra)
    assert classify(table, pilot=(1203, "")).klass == "site"
    assert classify(table, pilot=(4000, "")).name == "LOCALTHING"
    assert classify(table, pilot=(1099, "")).klass == "site"  # the rest stays


def test_a_bad_table_is_refused_with_its_entries_named(tmp_path):
    bad = tmp_path / "classes.yaml"
    bad.write_text("pilot:\n  1203: {name: SIGSEGV, class: weather}\n  1204: oops\nplanet:\n  1: {name: X, class: site}\n")
    with pytest.raises(ConfigError) as caught:
        load_table(bad)
    problems = caught.value.problems
    assert any(p.startswith("pilot.1203.class") and "weather" in p for p in problems)
    assert any(p.startswith("pilot.1204") for p in problems)
    assert any(p.startswith("planet: unknown error source") for p in problems)
