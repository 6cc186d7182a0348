"""Benchmark: the backtest (a file through eddy's dataflow, no broker) on the transactions stream.

    python -m bench.backtest [--events 20000] [--label-delay SECONDS]

Writes the events to a temporary JSONL file, runs the backtest without the report, then the report alone.
Prints figures for people, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import orjson

from dataflows.flow.config import load_config
from dataflows.flow.runs import runs_of
from dataflows.tools import datasets
from dataflows.tools.backtest import run_backtest
from dataflows.watch.report import read_metrics_file, read_registry, write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backtest", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="transactions (default: %(default)s)")
    parser.add_argument("--label-delay", type=float, help="seconds of event time before each label (default: inline)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in datasets.transactions(args.events)))
        result = run_backtest(path, load_config(), Path(tmp) / "out", args.label_delay, report=False)
        started = time.perf_counter()
        metrics = read_metrics_file(Path(tmp) / "out" / "metrics.jsonl")
        refits = read_registry(Path(tmp) / "out" / "registry", runs_of(metrics))
        write_report(metrics, Path(tmp) / "out", registry=refits)
        report_s = time.perf_counter() - started
    figures = {
        "events": result.events,
        "labels": result.labels,
        "backtest_s": round(result.seconds, 2),
        "events_per_s": round(result.predictions / result.seconds, 1),
        "report_s": round(report_s, 2),
    }
    print(f"backtest: {result.events:,} events in {result.seconds:.1f}s ({figures['events_per_s']:,.0f} events/s)")
    print(f"report (HTML + PNG) from {len(metrics)} metrics messages: {report_s:.2f}s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
