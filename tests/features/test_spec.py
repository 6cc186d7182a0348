"""Loading feature files: every way a file can be wrong is rejected with its file, line and cause."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from features.catalog import require_catalog
from features.planner import plan_group
from features.spec import FeatureFileError, load_group, parse_duration
from tests.features.conftest import FIELDS, REPO

HEADER = "-- group: g\n-- entity: user_id\n-- horizon: 1h\n"


def load(tmp_path: Path, text: str, name: str = "g.sql"):
    path = tmp_path / name
    path.write_text(text)
    return load_group(path, FIELDS)


def test_a_valid_file_gives_its_features(tmp_path):
    group = load(tmp_path, HEADER + "SELECT event_id, amount * 2 AS double_amount FROM events\n")
    assert (group.name, group.entity, group.horizon_ms, group.lateness_ms) == ("g", ("user_id",), 3_600_000, None)
    assert group.feature_names == ("double_amount",)


def test_a_syntax_error_names_file_line_and_column(tmp_path):
    expected = 'g.sql\': line 5, column 7: syntax error at or near "events"'
    with pytest.raises(FeatureFileError, match=re.escape(expected)):
        load(tmp_path, HEADER + "SELECT event_id\nFROMM events\n")


def test_a_missing_column_names_the_line_where_it_is_used(tmp_path):
    with pytest.raises(FeatureFileError, match=r"g\.sql': line 6, column 5: Binder Error: .*\"amout\"") as info:
        load(tmp_path, HEADER + "SELECT\n    event_id,\n    amout AS a\nFROM events\n")
    assert (info.value.line, info.value.column) == (6, 5)


def test_the_label_is_invisible_to_feature_sql(tmp_path):
    with pytest.raises(FeatureFileError, match="label columns are invisible to feature SQL"):
        load(tmp_path, HEADER + "SELECT event_id, label AS leak FROM events\n")


def test_sql_without_event_id_is_rejected(tmp_path):
    with pytest.raises(FeatureFileError, match=re.escape("line 4: the SELECT returns no `event_id` column")):
        load(tmp_path, HEADER + "SELECT amount FROM events\n")


def test_missing_header_keys_show_a_header_to_paste(tmp_path):
    with pytest.raises(FeatureFileError, match=r"line 1: missing header key\(s\) horizon.*\n-- group: user_velocity"):
        load(tmp_path, "-- group: g\n-- entity: user_id\nSELECT event_id FROM events\n")


def test_an_unknown_header_key_suggests_the_nearest(tmp_path):
    expected = "line 3: unknown header key 'horizn'; did you mean 'horizon'?"
    with pytest.raises(FeatureFileError, match=re.escape(expected)):
        load(tmp_path, "-- group: g\n-- entity: user_id\n-- horizn: 1h\nSELECT event_id FROM events\n")


def test_an_unknown_entity_column_suggests_the_nearest(tmp_path):
    with pytest.raises(
        FeatureFileError,
        match=re.escape("line 2: entity column 'user' is not an event column; did you mean 'user_id'?"),
    ):
        load(tmp_path, "-- group: g\n-- entity: user\n-- horizon: 1h\nSELECT event_id FROM events\n")


def test_a_bad_duration_is_rejected(tmp_path):
    with pytest.raises(FeatureFileError, match=re.escape("line 3: horizon: invalid duration '1 hour'")):
        load(tmp_path, "-- group: g\n-- entity: user_id\n-- horizon: 1 hour\nSELECT event_id FROM events\n")
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("10")


@pytest.mark.parametrize(
    ("select", "why"),
    [
        ("lead(amount) OVER (PARTITION BY user_id ORDER BY ts)", r"lead\(\) reads rows after the current one"),
        ("sum(amount) OVER (PARTITION BY user_id)", r"has no ORDER BY"),
        (
            "sum(amount) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING)",
            r"frame that ends after the current row",
        ),
    ],
)
def test_windows_that_see_later_events_are_rejected(tmp_path, select, why):
    with pytest.raises(FeatureFileError, match=r"line 4, column 18: .*" + why):
        load(tmp_path, HEADER + f"SELECT event_id, {select} AS f FROM events\n")


@pytest.mark.parametrize("body", ["DROP TABLE events", "SELECT event_id FROM events; SELECT 1"])
def test_only_one_select_is_accepted(tmp_path, body):
    with pytest.raises(FeatureFileError, match=re.escape("g.sql': line 4")):
        load(tmp_path, HEADER + body + "\n")


def test_feature_sql_cannot_read_files(tmp_path):
    with pytest.raises(FeatureFileError, match="disabled by configuration"):
        load(tmp_path, HEADER + "SELECT event_id, (SELECT count(*) FROM read_csv('/etc/hosts')) AS n FROM events\n")


def test_feature_names_must_be_unique_across_files(tmp_path):
    (tmp_path / "a.sql").write_text(HEADER + "SELECT event_id, amount AS x FROM events\n")
    other = HEADER.replace("group: g", "group: h")
    (tmp_path / "b.sql").write_text(other + "SELECT event_id, amount AS x FROM events\n")
    with pytest.raises(FeatureFileError, match=re.escape("b.sql': feature 'x' is also produced by")):
        require_catalog(tmp_path, FIELDS)


@pytest.mark.parametrize(
    ("folder", "fields"),
    [
        ("sql/transactions", FIELDS),
        (
            "sql/phishing",
            {
                name: "double"
                for name in (
                    "empty_server_form_handler",
                    "popup_window",
                    "https",
                    "request_from_other_domain",
                    "anchor_from_other_domain",
                    "is_popular",
                    "long_url",
                    "age_of_domain",
                    "ip_in_url",
                )
            },
        ),
    ],
)
def test_the_shipped_files_load(folder, fields):
    catalog = require_catalog(REPO / folder, fields)
    assert catalog.feature_names
    assert len(catalog.version) == 12


def test_a_window_longer_than_the_horizon_is_rejected(tmp_path):
    select = "count(*) OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 2 HOURS PRECEDING AND CURRENT ROW)"
    with pytest.raises(FeatureFileError, match=r"line 4, column \d+: the window reaches back INTERVAL 2 HOURS"):
        load(tmp_path, HEADER + f"SELECT event_id,\n {select} AS n FROM events\n".replace(",\n", ", "))


@pytest.mark.parametrize(
    ("select", "planned"),
    [
        (
            "sum(amount) OVER (PARTITION BY user_id ORDER BY ts "
            "RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)",
            True,
        ),
        ("lag(amount) OVER (PARTITION BY user_id ORDER BY ts, event_id)", False),
        (
            "sum(amount) OVER (PARTITION BY country ORDER BY ts "
            "RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)",
            False,
        ),
        ("sum(amount) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW)", False),
    ],
)
def test_only_windowed_aggregates_over_the_entity_get_a_fast_plan(tmp_path, select, planned):
    group = plan_group(load(tmp_path, HEADER + f"SELECT event_id, {select} AS f FROM events\n"), FIELDS)
    assert (group.segments is not None) == planned
