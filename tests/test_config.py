"""Configuration: errors name the file, the key path and what was expected; ${ENV} substitution."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from robot.backends.embedded.config import load_grid_config
from robot.config import load_config
from robot.yamlconfig import ConfigError
from robot.durations import format_duration, parse_duration

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "robot.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path, loader=load_config) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loader(path)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    return caught.value.problems


def test_shipped_configuration_is_valid():
    config = load_config(REPO / "configs" / "robot.yaml")
    grid = load_grid_config(config.resolve(config.backend.embedded.grid))
    assert {t.name for t in config.templates} >= {"AFT_zmumu", "AFT_ttbar"}
    assert sum(len(s.queues) for c in grid.clouds.values() for s in c.sites.values()) >= 10
    assert len(grid.clouds) >= 3


def test_unknown_key_is_named_with_its_path(tmp_path):
    path = write(tmp_path, "loop:\n  intervall: 30s\n")
    assert problems_of(path) == ["loop.intervall: unknown key; did you mean interval?"]


def test_an_unknown_key_gets_the_closest_known_one_at_any_depth(tmp_path):
    template = "  - {name: T, category: functional, payload: zmumu, input_dataset: 'x*', events_per_job: 5, activ: true}\n"
    path = write(tmp_path, "databse: {}\nstress: {operator: [a]}\ntemplates:\n" + template)
    assert sorted(problems_of(path)) == ["databse: unknown key; did you mean database?",
                                 "stress.operator: unknown key; did you mean operators?",
                                 "templates[0].activ: unknown key; did you mean active?"]
    assert problems_of(write(tmp_path, "zzz: 1\n")) == ["zzz: unknown key"]


def test_wrong_type_names_key_expected_and_found(tmp_path):
    path = write(tmp_path, "loop:\n  poll_batch_size: many\n")
    (problem,) = problems_of(path)
    assert problem.startswith("loop.poll_batch_size: ") and "integer" in problem and "'many'" in problem


def test_bad_duration_explains_the_format(tmp_path):
    path = write(tmp_path, "loop:\n  interval: soon\n")
    (problem,) = problems_of(path)
    assert problem.startswith("loop.interval: ") and "'30m'" in problem
    assert problem.count("'soon'") == 1  # not "got 'soon' (got 'soon')"


def test_missing_required_template_field_is_named_with_list_index(tmp_path):
    path = write(tmp_path, "templates:\n  - name: T\n    category: functional\n    payload: zmumu\n    events_per_job: 5\n")
    assert problems_of(path) == ["templates[0].input_dataset: missing required key"]


def test_several_problems_are_all_reported(tmp_path):
    path = write(tmp_path, "loop:\n  interval: soon\n  batch: 3\ntemplates:\n  - name: T\n")
    problems = problems_of(path)
    assert "loop.batch: unknown key" in problems
    assert any(p.startswith("loop.interval") for p in problems)
    assert "templates[0].category: missing required key" in problems


def test_duplicate_template_names_are_refused(tmp_path):
    template = "  - {name: T, category: functional, payload: zmumu, input_dataset: 'x*', events_per_job: 5}\n"
    path = write(tmp_path, "templates:\n" + template + template)
    (problem,) = problems_of(path)
    assert "unique" in problem and "T" in problem


def test_invalid_yaml_and_missing_file(tmp_path):
    (problem,) = problems_of(write(tmp_path, "loop: [unclosed\n"))
    assert problem.startswith("not valid YAML at line 2, column 1: ") and "expected ',' or ']'" in problem
    assert "line 1, column 7" in problem  # where the unclosed sequence starts (libyaml's parser or PyYAML's)
    assert "<unicode string>" not in problem and "\n" not in problem
    assert "cannot read" in problems_of(tmp_path / "absent.yaml")[0]
    assert "expected a mapping" in problems_of(write(tmp_path, "- a\n- b\n"))[0]


def test_environment_substitution_with_default_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOT_DB_PASSWORD", "s3cret")
    path = write(tmp_path, "database:\n  url: postgresql://robot:${ROBOT_DB_PASSWORD}@db/hc\n"
                           "data_dir: ${ROBOT_TEST_DATA:-/srv/robot}\n")
    config = load_config(path)
    assert config.database_url == "postgresql://robot:s3cret@db/hc"
    assert config.data_path == Path("/srv/robot")
    monkeypatch.delenv("ROBOT_DB_PASSWORD")
    (problem,) = problems_of(path)
    assert problem.startswith("database.url: ") and "ROBOT_DB_PASSWORD is not set" in problem


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "etc").mkdir()
    config = load_config(write(tmp_path / "etc", "data_dir: ../state\n"))
    assert config.data_path == (tmp_path / "state").resolve()
    assert config.database_url == f"sqlite:///{(tmp_path / 'state').resolve()}/healthrobot.db"


GRID = """
clouds:
  DE:
    sites:
      FZK-LCG2:
        storage: {FZK-LCG2_DATADISK: {}}
        queues: {ANALY_FZK: {slots: 2}}
"""


def test_grid_errors_name_the_path_through_clouds_and_sites(tmp_path):
    path = write(tmp_path, GRID.replace("slots: 2", "slots: -1"), "grid.yaml")
    (problem,) = problems_of(path, load_grid_config)
    assert problem.startswith("clouds.DE.sites.FZK-LCG2.queues.ANALY_FZK.slots: ")


def test_grid_fault_must_name_a_known_queue_and_mode(tmp_path):
    path = write(tmp_path, GRID + "faults:\n  - {queue: ANALY_NOPE, mode: stagein, start_after: 1m}\n", "grid.yaml")
    assert "unknown queue 'ANALY_NOPE'" in problems_of(path, load_grid_config)[0]
    path = write(tmp_path, GRID + "faults:\n  - {queue: ANALY_FZK, mode: meteor, start_after: 1m}\n", "grid.yaml")
    (problem,) = problems_of(path, load_grid_config)
    assert problem.startswith("faults[0].mode: ") and "stagein" in problem


def test_grid_queue_storage_must_belong_to_its_site(tmp_path):
    path = write(tmp_path, GRID.replace("slots: 2", "storage: CERN_DATADISK"), "grid.yaml")
    assert "not one of the site's endpoints" in problems_of(path, load_grid_config)[0]


@pytest.mark.parametrize("text,seconds", [("45s", 45), ("30m", 1800), ("2h", 7200), ("1d", 86400),
                                          ("1h30m", 5400), (90, 90), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "soon", "5 parsecs", "m5", -3, "1h-2m"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration():
    assert format_duration(timedelta(seconds=95)) == "1m35s"
    assert format_duration(timedelta(hours=2)) == "2h"
    assert format_duration(12) == "12s"
