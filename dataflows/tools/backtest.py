"""Backtest: replay a JSONL or Parquet file of events through eddy's own dataflow, then write the report.

python -m dataflows.tools.backtest events.jsonl [--label-delay 60] [--out artifacts/backtest]
    [--sql-dir DIR] [--model NAME]

The same flow as the live job (`dataflows.flow.wiring.build_flow`: same decoding, event-time order, SQL features,
River + LightGBM ensemble), with the file in place of the Kafka topics and files in place of the output
topics: `predictions.jsonl`, `metrics.jsonl`, `dead_letters.jsonl`, `alerts.jsonl`, the model registry under
`registry/`, and `report.html` / `report.png`. Try an SQL edit or another model here before running it live.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.flow.codec import Invalid, parse_ts
from dataflows.flow.config import Config, ConfigError, load_config
from dataflows.flow.logs import configure_logging
from dataflows.flow.runs import is_run_id, runs_of
from dataflows.flow.wiring import build_flow
from dataflows.watch.report import DEFAULT_DRIFT_AT, ReportError, format_summary, read_registry, write_report
from models.registry import flush_writes

log = logging.getLogger("eddy.backtest")

OUTPUTS = ("predictions", "metrics", "dead_letters", "alerts")


class BacktestError(RuntimeError):
    """A backtest that cannot run; the message names the file and the cause."""


@dataclass(frozen=True)
class BacktestResult:
    out_dir: Path
    events: int
    labels: int
    predictions: int
    metrics: int
    dead_letters: int
    seconds: float
    report: dict[str, Path] | None = None


def read_lines(path: str | Path) -> Iterator[bytes]:
    """The file's events as JSON bytes: JSONL lines as they are, Parquet rows encoded with orjson."""
    path = Path(path)
    if not path.exists():
        raise BacktestError(f"{path}: no such file (a .jsonl or .parquet file of events)")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        with path.open("rb") as handle:
            for line in handle:
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield line
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                yield orjson.dumps(row, option=orjson.OPT_NAIVE_UTC)
    else:
        raise BacktestError(f"{path}: unknown file type {suffix!r}; use .jsonl or .parquet")


def source_messages(config: Config, lines: Iterator[bytes], label_delay_s: float | None = None) -> Iterator:
    """Kafka messages as the flow would read them: events on partition 0 of the events topic, and with a
    label delay, each label stripped from its event and sent on the labels topic `label_delay_s` of event
    time later. Messages come in event-time order of arrival so that both partitions advance together."""
    events_topic, labels_topic = config.topics.events, config.topics.labels
    offsets = {events_topic: itertools.count(), labels_topic: itertools.count()}
    delayed: list[tuple[int, int, bytes]] = []
    order = itertools.count()

    def message(topic: str, value: bytes) -> KafkaSourceMessage:
        return KafkaSourceMessage(
            None,
            value,
            topic=topic,
            partition=0,
            offset=next(offsets[topic]),
            timestamp=(1, int(time.time() * 1000)),
        )

    for line in lines:
        if label_delay_s is None:
            yield message(events_topic, line)
            continue
        try:
            event = orjson.loads(line)
            ts = parse_ts(event, "ts") if isinstance(event, dict) else None
        except (orjson.JSONDecodeError, Invalid):
            event, ts = None, None
        if ts is None or "label" not in event:
            yield message(events_topic, line)  # passed through as is: the flow dead-letters or scores it
            continue
        while delayed and delayed[0][0] <= ts:
            yield message(labels_topic, heapq.heappop(delayed)[2])
        label = {"event_id": event.get("event_id"), "label": event.pop("label"), "ts": ts + round(label_delay_s * 1000)}
        heapq.heappush(delayed, (label["ts"], next(order), orjson.dumps(label)))
        yield message(events_topic, orjson.dumps(event))
    while delayed:
        yield message(labels_topic, heapq.heappop(delayed)[2])


def backtest_config(config: Config, out_dir: Path, sql_dir: str | None = None, model: str | None = None) -> Config:
    """`config` without a broker (no lag probe, no topic checks) and with its registry in `out_dir`."""
    changes: dict = {"bootstrap_servers": "", "tail": False}
    if sql_dir:
        changes["sql_dir"] = Path(sql_dir).resolve()
    if model:
        changes["model"] = model
    changes["ensemble"] = {**config.ensemble, "registry_dir": str(out_dir / "registry")}
    return replace(config, **changes)


def run_backtest(
    path: str | Path,
    config: Config,
    out_dir: str | Path,
    label_delay_s: float | None = None,
    report: bool = True,
    drift_at: str | None = DEFAULT_DRIFT_AT,
) -> BacktestResult:
    """Run the file through the dataflow; write the outputs (and the report) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    registry = out / "registry"
    # The refits earlier backtests into this directory left: their own runs', not this one's.
    for old in registry.iterdir() if registry.is_dir() else []:
        if old.is_dir() and is_run_id(old.name):
            shutil.rmtree(old)
        elif old.is_file() and old.name.startswith("v"):
            old.unlink()
    config = backtest_config(config, out) if config.bootstrap_servers else config
    lines = list(read_lines(path))
    messages = list(source_messages(config, iter(lines), label_delay_s))
    counts = {config.topics.events: 0, config.topics.labels: 0}
    for m in messages:
        counts[m.topic] += 1
    sinks: dict[str, list[KafkaSinkMessage]] = {name: [] for name in OUTPUTS}

    def inputs(flow: Dataflow) -> tuple[Stream, Stream]:
        read = op.input("read_file", flow, TestingSource(messages, batch_size=config.flow.batch_size))
        errors = op.input("no_consumer_errors", flow, TestingSource([]))
        return read, errors

    def outputs(name: str, stream: Stream) -> None:
        op.output(f"write_{name}", stream, TestingSink(sinks[name]))

    # Without delayed labels the labels topic has no partition to wait for, as in a Kafka run that does not
    # tail and finds the labels topic empty: the events alone move the event-time watermark.
    partitions = {config.topics.events: 1, config.topics.labels: 1 if counts[config.topics.labels] else 0}
    flow = build_flow(config, partitions=partitions, inputs=inputs, outputs=outputs)
    log.info(
        "backtest: %s: %d events, %d labels -> %s",
        path,
        counts[config.topics.events],
        counts[config.topics.labels],
        out,
    )
    started = time.perf_counter()
    run_main(flow)
    flush_writes()
    seconds = time.perf_counter() - started
    for name, records in sinks.items():
        with (out / f"{name}.jsonl").open("wb") as handle:
            for record in records:
                handle.write(_line(name, record))
    log.info(
        "backtest: %d predictions in %.1fs (%.0f events/s)",
        len(sinks["predictions"]),
        seconds,
        len(sinks["predictions"]) / seconds if seconds else 0,
    )
    paths = None
    if report:
        metrics = [orjson.loads(r.value) for r in sinks["metrics"]]
        refits = read_registry(registry, runs_of(metrics))
        paths = write_report(metrics, out, drift_at, refits, f"eddy backtest: {Path(path).name}")
    return BacktestResult(
        out,
        counts[config.topics.events],
        counts[config.topics.labels],
        len(sinks["predictions"]),
        len(sinks["metrics"]),
        len(sinks["dead_letters"]),
        seconds,
        paths,
    )


def _line(name: str, record: KafkaSinkMessage) -> bytes:
    """One output record as a JSON line; a dead letter keeps its original bytes (as text) and its headers."""
    if name != "dead_letters":
        return record.value + b"\n"
    headers = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v) for k, v in record.headers or []}
    value = record.value.decode("utf-8", "replace") if isinstance(record.value, bytes) else record.value
    return orjson.dumps({"value": value, "headers": headers}) + b"\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dataflows.tools.backtest", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="events, .jsonl or .parquet (each with event_id, ts, the [fields] and label)")
    parser.add_argument(
        "--label-delay",
        type=float,
        metavar="SECONDS",
        help="strip each label from its event and deliver it this many seconds of event time later "
        "(default: labels stay inline, learned right after scoring)",
    )
    parser.add_argument("--out", default="artifacts/backtest", help="output directory (default: %(default)s)")
    parser.add_argument("--sql-dir", help="feature SQL directory to try (default: from eddy.toml / EDDY_SQL_DIR)")
    parser.add_argument("--model", help="River pipeline to try, by name (default: from eddy.toml / EDDY_MODEL)")
    parser.add_argument("--config", help="config file (default: eddy.toml or EDDY_CONFIG)")
    parser.add_argument("--drift-at", default=DEFAULT_DRIFT_AT, help="drift mark in the report (default: %(default)s)")
    parser.add_argument("--no-report", action="store_true", help="write the outputs only")
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    from features import FeatureFileError

    try:
        out = Path(args.out)
        config = backtest_config(load_config(args.config), out.resolve(), args.sql_dir, args.model)
        result = run_backtest(args.file, config, out, args.label_delay, not args.no_report, args.drift_at)
    except (BacktestError, ConfigError, FeatureFileError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"backtest of {args.file}: {result.events:,} events, {result.labels:,} delayed labels, "
        f"{result.predictions:,} predictions, {result.dead_letters:,} dead letters in {result.seconds:.1f}s"
    )
    if result.report:
        import json

        print(format_summary(json.loads(result.report["summary"].read_text())))
        print(f"report: {result.report['html']}\n        {result.report['png']}")
    print(f"outputs: {', '.join(str(result.out_dir / f'{name}.jsonl') for name in OUTPUTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
