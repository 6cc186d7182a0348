"""Feature state cut into shards: what the split and the join cost per event, and the feature work per family.

Two measurements on the synthetic transactions stream and the shipped SQL, in micro-batches as the ordering
step releases them (ts order, each push flushed):
1. the split after the ordering step (`Splitter.split`) and the join before the learner
   (`FeatureJoin.push`) per event, for 1 and 2 shards per family, against what the same work cost before the
   shards (rows for the engine, features by event_id, a `FeaturedEvent` per event: now done in the split and join);
2. the feature engines' CPU time per event: one engine over every group (one worker, as before the
   shards), one engine per family fed every event (the layout one worker does not use), and two shards per
   family (two workers: their sum, and the busier worker's share).

    python -m bench.shards [--events 40000] [--batches 50 1000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dataflows.flow.config import load_config
from dataflows.flow.messages import Event, FeaturedEvent, FeaturePart, Origin, Release
from dataflows.flow.shards import FeatureJoin, Splitter, worker_of_key
from dataflows.tools.datasets import transactions
from features import FeatureEngine
from features.timestamps import to_ms

REPO = Path(__file__).resolve().parents[1]


def events_of(n: int) -> list[Event]:
    out = []
    for i, record in enumerate(transactions(n)):
        fields = {k: record[k] for k in ("user_id", "merchant_id", "amount", "category", "country")}
        out.append(Event(record["event_id"], to_ms(record["ts"]), fields, None, Origin("events", 0, i), raw=b"{}"))
    return out


def cut(events: list[Event], size: int) -> list[list[Event]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def split_and_join(config, batches: list[list[Event]], shards: int) -> dict:
    """µs per event of the split and of the join, the engines' answers prepared beforehand (not timed)."""
    splitter = Splitter(config.sql_dir, config.fields, shards)
    feats = {f: {n: 1.0 for n in splitter.catalog.subset(f).feature_names} for f in splitter.families}
    split_s = join_s = 0.0
    join = FeatureJoin()
    n = 0
    for batch in batches:
        started = time.perf_counter()
        messages = splitter.split(batch)
        split_s += time.perf_counter() - started
        # The shards' answers, as ComputeFeatures builds them (a dict per event from the engine).
        arriving = [m for _, m in messages if isinstance(m, Release)]
        for _, m in messages[1:]:
            template = feats[m.family]
            features = {row["event_id"]: template.copy() for row in m.rows}
            arriving.append(FeaturePart(m.seq, m.key, m.family, features, m.version))
        started = time.perf_counter()
        out = join.push(arriving)
        join_s += time.perf_counter() - started
        n += len(out)
    return {"shards": shards, "split_us": round(split_s / n * 1e6, 2), "join_us": round(join_s / n * 1e6, 2)}


def before(batches: list[list[Event]], names: list[str]) -> float:
    """µs per event of what the feature step and the learner did per event before the shards."""
    template = dict.fromkeys(names, 1.0)
    spent, n = 0.0, 0
    for batch in batches:
        released = [template.copy() for _ in batch]  # the engine's output, not timed
        started = time.perf_counter()
        rows = [e.as_row() for e in batch]
        computed = {row["event_id"]: feats for row, feats in zip(rows, released, strict=True)}
        out = [FeaturedEvent(e, computed[e.event_id], "v") for e in batch]
        spent += time.perf_counter() - started
        n += len(out)
    return round(spent / n * 1e6, 2)


def engines(config, warm: list[Event], batches: list[list[Event]], shards: int | None) -> dict:
    """CPU µs per event of the feature engines as `shards` workers run them (None: one worker with one
    engine per family, each fed every event, the layout one worker does not use)."""
    options = {"auto_reload": False}
    splitter = Splitter(config.sql_dir, config.fields, shards or 1)
    if shards is None:
        families = FeatureEngine(config.sql_dir, config.fields).catalog.families
        pool = {f: FeatureEngine(config.sql_dir, config.fields, family=f, **options) for f in families}
    else:
        pool = {
            key: FeatureEngine(config.sql_dir, config.fields, family=family, **options)
            for family, _, keys in splitter._routes
            for key in keys
        }
    spent = dict.fromkeys(pool, 0.0)
    n = 0
    for phase, stream in (("warm", cut(warm, 1000)), ("timed", batches)):
        for batch in stream:
            messages = splitter.split(batch)
            if shards is None:
                rows = [e.as_row() for e in batch]
                work = dict.fromkeys(pool, rows)
            else:
                work = {key: m.rows for key, m in messages[1:]}
            for key, rows in work.items():
                started = time.process_time()
                pool[key].push(rows)
                if phase == "timed":
                    spent[key] += time.process_time() - started
            if phase == "timed":
                n += len(batch)
    per_worker: dict[int, float] = {}
    for key, seconds in spent.items():
        worker = 0 if shards is None else worker_of_key(key, shards)
        per_worker[worker] = per_worker.get(worker, 0.0) + seconds
    layouts = {None: "one per family, one worker", 1: "one over every group (one worker)"}
    return {
        "engines": layouts.get(shards, f"{shards} shards per family ({shards} workers)"),
        "cpu_us_per_event": round(sum(spent.values()) / n * 1e6, 2),
        "busiest_worker_cpu_us_per_event": round(max(per_worker.values()) / n * 1e6, 2),
        "buffer_rows": sum(len(e.buffer) for e in pool.values()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000, help="events in the timed stream")
    parser.add_argument("--warm", type=int, default=40_000, help="events held in the windows before timing")
    parser.add_argument("--batches", type=int, nargs="+", default=[50, 1000])
    args = parser.parse_args(argv)
    config = load_config(env={})
    stream = events_of(args.warm + args.events)
    warm, timed = stream[: args.warm], stream[args.warm :]
    names = FeatureEngine(config.sql_dir, config.fields).feature_names
    figures: dict = {"benchmark": "shards", "events": args.events, "warm": args.warm, "runs": []}
    for size in args.batches:
        batches = cut(timed, size)
        old = before(batches, names)
        costs = [split_and_join(config, batches, shards) for shards in (1, 2)]
        work = [engines(config, warm, batches, shards) for shards in (1, None, 2)]
        figures["runs"].append({"batch": size, "before_us": old, "split_join": costs, "engines": work})
        print(f"batch {size}: before the shards, rows + features by id + FeaturedEvent: {old:.2f} µs/event")
        for c in costs:
            layout = "one shard (one worker)" if c["shards"] == 1 else f"{c['shards']} shards per family"
            print(
                f"  {layout}: split {c['split_us']:.2f} + join {c['join_us']:.2f} µs/event "
                f"({c['split_us'] + c['join_us'] - old:+.2f} over before)"
            )
        for w in work:
            print(
                f"  feature engines, {w['engines']}: {w['cpu_us_per_event']:.1f} CPU µs/event, busiest worker "
                f"{w['busiest_worker_cpu_us_per_event']:.1f}; {w['buffer_rows']:,} buffer rows in all"
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
