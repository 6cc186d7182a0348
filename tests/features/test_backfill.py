"""The backfill command: JSONL or Parquet in (ISO or epoch-ms ts), Parquet out, errors named."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from features.backfill import main
from tests.features.conftest import REPO

EVENTS = [
    {"event_id": "b", "ts": "2026-01-01T00:00:01.000+00:00", "user_id": "u", "amount": 2.0, "label": True},
    {"event_id": "a", "ts": "2026-01-01T01:00:00+01:00", "user_id": "u", "amount": 1.0, "label": False},
    {"event_id": "c", "ts": "2026-01-01T00:30:00Z", "user_id": "v", "amount": 5.0, "label": False},
]
CONFIG = '[fields]\nuser_id = "string"\namount = "double"\n'


def expected_rows(table: pa.Table) -> list[tuple]:
    return [(r["event_id"], r["n_1h"], r["sum_1h"], r["previous_id"]) for r in table.to_pylist()]


def test_jsonl_with_iso_ts_gives_features_in_time_order(tmp_path, sql_dir):
    source, output, config = tmp_path / "events.jsonl", tmp_path / "out.parquet", tmp_path / "eddy.toml"
    source.write_bytes(b"\n".join(orjson.dumps(e) for e in EVENTS) + b"\n")
    config.write_text(CONFIG)
    assert main(["--sql-dir", str(sql_dir), "--config", str(config), str(source), str(output)]) == 0
    table = pq.read_table(output)
    assert table.column_names == ["event_id", "n_1h", "sum_1h", "previous_id"]
    assert expected_rows(table) == [("a", 1, 1.0, None), ("b", 2, 3.0, "a"), ("c", 1, 5.0, None)]


def test_parquet_with_epoch_ms_and_inferred_types(tmp_path, sql_dir):
    source, output = tmp_path / "events.parquet", tmp_path / "out.parquet"
    pq.write_table(
        pa.table(
            {
                "event_id": ["a", "b"],
                "ts": [1_767_225_600_000, 1_767_225_601_000],
                "user_id": ["u", "u"],
                "amount": [1.0, 2.0],
                "label": [True, False],
            }
        ),
        source,
    )
    assert main(["--sql-dir", str(sql_dir), "--config", str(tmp_path / "absent.toml"), str(source), str(output)]) == 0
    assert expected_rows(pq.read_table(output)) == [("a", 1, 1.0, None), ("b", 2, 3.0, "a")]


def test_a_bad_feature_file_fails_with_its_name(tmp_path, capsys):
    (tmp_path / "bad.sql").write_text("-- group: g\n-- entity: user_id\n-- horizon: 1h\nSELECT amount FROM events\n")
    source = tmp_path / "events.jsonl"
    source.write_bytes(orjson.dumps(EVENTS[0]) + b"\n")
    assert main(["--sql-dir", str(tmp_path), str(source), str(tmp_path / "out.parquet")]) == 1
    assert "bad.sql': line 4: the SELECT returns no `event_id` column" in capsys.readouterr().err


def test_the_module_runs_with_help():
    done = subprocess.run(
        [sys.executable, "-m", "features.backfill", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "--sql-dir" in done.stdout and "Parquet" in done.stdout
