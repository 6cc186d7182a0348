"""Feature engine throughput: events/s and time per batch on the shipped transactions SQL.

The engine is first filled with `--buffer` events (the buffer then holds what the longest horizon keeps),
then the stream continues in batches of 100, 1000 and 10000 events; every `push` is timed (features of the
released events, buffer append and eviction). Two baselines at batch 1000, on the same buffer: each file's
own SQL over its entities' history (the engine with its segment plans switched off, as a file of plan
`sql` runs), and each group's SQL run over the whole buffer plus the batch, the naive way. Memory: the
process's peak RSS and the buffer's Arrow bytes. Events per CPU-second (DuckDB runs on one thread) are
steadier than wall-clock figures on a busy machine.

    python -m bench.features --buffer 100000 --batches 100 1000 10000
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from dataflows.tools.datasets import transactions
from features import FeatureEngine
from features.engine import run_group
from features.schema import to_arrow
from features.timestamps import to_ms

REPO = Path(__file__).resolve().parents[1]
REPEATS = {100: 40, 1000: 12, 10000: 3}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_batches(engine: FeatureEngine, events: list[dict], size: int, count: int) -> dict:
    times, cpu, released = [], 0.0, 0
    for i in range(count):
        batch = events[i * size : (i + 1) * size]
        started, started_cpu = time.perf_counter(), time.process_time()
        released += len(engine.push(batch))
        times.append(time.perf_counter() - started)
        cpu += time.process_time() - started_cpu
    return {
        "batch": size,
        "batches": count,
        "events_per_s": round(released / sum(times)),
        "events_per_cpu_s": round(released / cpu),
        "p50_ms": round(percentile(times, 0.5) * 1000, 2),
        "p99_ms": round(percentile(times, 0.99) * 1000, 2),
        "buffer_rows": len(engine.buffer),
    }


def naive_baseline(engine: FeatureEngine, events: list[dict], size: int, count: int) -> dict:
    """Each group's SQL over the whole buffer plus the batch, then keep the batch's rows."""
    con = engine._connection()
    times = []
    for i in range(count):
        batch = to_arrow(events[i * size : (i + 1) * size], engine.fields)
        started = time.perf_counter()
        relation = pa.concat_tables([engine.buffer.table, batch])
        for group in engine.catalog.groups:
            run_group(con, group, relation, batch["event_id"])
        times.append(time.perf_counter() - started)
    return {
        "batch": size,
        "events_per_s": round(size * count / sum(times)),
        "p50_ms": round(percentile(times, 0.5) * 1000, 2),
    }


def own_sql_baseline(engine: FeatureEngine, events: list[dict], size: int, count: int) -> dict:
    """The same engine and buffer with the segment plans switched off: each group runs its own SQL."""
    plain = copy.deepcopy(engine)
    plain.catalog = replace(plain.catalog, groups=tuple(replace(g, segments=None) for g in plain.catalog.groups))
    return run_batches(plain, events, size, count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sql-dir", default=str(REPO / "sql" / "transactions"))
    parser.add_argument("--buffer", type=int, default=100_000, help="events streamed before timing")
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=None, help="timed batches per size (default: by size)")
    parser.add_argument("--threads", type=int, default=1, help="DuckDB threads (default 1: one core)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the whole-buffer baseline")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    with open(REPO / "eddy.toml", "rb") as handle:
        fields = tomllib.load(handle)["fields"]
    counts = {size: args.repeat or REPEATS.get(size, 10) for size in args.batches}
    needed = args.buffer + sum(size * count for size, count in counts.items()) + 5 * 1000
    events = [{**e, "ts": to_ms(e["ts"])} for e in transactions(n=needed, seed=args.seed, drift_at=None)]

    engine = FeatureEngine(args.sql_dir, fields, threads=args.threads, auto_reload=False)
    started = time.perf_counter()
    for i in range(0, args.buffer, 10_000):
        engine.push(events[i : min(i + 10_000, args.buffer)])
    print(
        f"filled: {args.buffer} events in {time.perf_counter() - started:.1f} s; buffer holds "
        f"{len(engine.buffer)} rows ({engine.buffer.nbytes / 2**20:.1f} MiB), "
        f"{len(engine.feature_names)} features in {len(engine.catalog.groups)} groups"
    )

    position, results = args.buffer, []
    for size, count in counts.items():
        result = run_batches(engine, events[position:], size, count)
        position += size * count
        results.append(result)
        print(
            f"batch {size:>6}: {result['events_per_s']:>8} events/s ({result['events_per_cpu_s']} per CPU-second), "
            f"p50 {result['p50_ms']:>7.1f} ms, p99 {result['p99_ms']:>7.1f} ms per batch, "
            f"buffer {result['buffer_rows']} rows"
        )

    figures: dict = {
        "buffer_events": args.buffer,
        "features": len(engine.feature_names),
        "groups": len(engine.catalog.groups),
        "threads": args.threads,
        "batches": results,
    }
    if not args.no_baseline:
        mine = next((r for r in results if r["batch"] == 1000), None)
        baselines = (
            ("own_sql", "each file's own SQL over its entities' history", own_sql_baseline),
            ("whole_buffer", "window over the whole buffer", naive_baseline),
        )
        for key, label, measure in baselines:
            baseline = measure(engine, events[position:], 1000, 5)
            figures[f"baseline_{key}"] = baseline
            line = f"baseline, {label}, batch 1000: {baseline['events_per_s']} events/s, p50 {baseline['p50_ms']} ms"
            if mine:
                figures[f"speedup_vs_{key}"] = round(mine["events_per_s"] / baseline["events_per_s"], 2)
                line += f" (the engine is {figures[f'speedup_vs_{key}']}x)"
            print(line)
    figures["buffer_rows_end"] = len(engine.buffer)
    figures["buffer_mib"] = round(engine.buffer.nbytes / 2**20, 2)
    figures["events_streamed"] = position
    figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(
        f"memory: peak RSS {figures['peak_rss_mib']} MiB; buffer {figures['buffer_mib']} MiB for "
        f"{figures['buffer_rows_end']} rows after {position} events (bounded by the longest horizon)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
