"""Benchmark: the whole dataflow through the real broker, against the loop people write today.

    python -m bench.flow [--events 50000] [--latency-seconds 20] [--ensemble/--no-ensemble]

Measures, in one run, on the synthetic transactions stream:
1. eddy's end-to-end throughput: events already on a 3-partition topic, `EDDY_TAIL=false`, timed over the
   whole run less the same run's start-up and shut-down over an empty topic (the full wall time is printed
   too); once as configured (the ensemble unless `--no-ensemble`) and once with River alone, the learner
   the plain loop runs;
2. event-to-prediction latency (p50/p99, Kafka timestamps) while events are replayed at half that rate, in
   event-time mode and in arrival mode;
3. the plain loop: a kafka-python consumer that decodes JSON, predicts then learns with the same River
   pipeline on the raw fields and updates a metric per message (no SQL features, no output);
4. River's bare predict+learn rate on pre-decoded events.
Prints figures for people, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
import uuid

import orjson
from kafka import KafkaConsumer
from river import metrics

from dataflows.broker.admin import delete_topics, ensure_topics
from dataflows.broker.consumer import assigned_consumer
from dataflows.flow.config import REPO_ROOT, Topics, load_config, topics_env
from dataflows.tools import datasets
from dataflows.tools.replay import make_producer, replay
from models import make_model

RAW_FIELDS = ("amount", "category", "country")


def fresh_topics(bootstrap: str, partitions: int) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(*(f"bench-{n}-{suffix}" for n in ("events", "labels", "predictions", "metrics", "dlq", "alerts")))
    ensure_topics(bootstrap, topics.all(), partitions)
    return topics


def flow_env(topics: Topics, bootstrap: str, tail: bool, mode: str, ensemble: bool) -> dict[str, str]:
    return {
        **os.environ,
        **topics_env(topics, bootstrap),
        "EDDY_TAIL": "true" if tail else "false",
        "EDDY_MODE": mode,
        "EDDY_ENSEMBLE": "true" if ensemble else "false",
    }


def read_timestamps(bootstrap: str, topic: str, expected: int, timeout_s: float) -> dict[str, int]:
    """event_id -> Kafka timestamp (ms) of every record on `topic`, waiting for `expected` of them."""
    consumer, _ = assigned_consumer(bootstrap, topic)
    out: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500, max_records=20_000).values():
            for record in batch:
                out.setdefault(orjson.loads(record.value)["event_id"], record.timestamp)
    consumer.close()
    return out


def run_to_end(bootstrap: str, events: list[dict], ensemble: bool, read=None) -> tuple[float, int]:
    """Wall seconds of `python -m bytewax.run dataflows.main` over `events` (EDDY_TAIL=false), predictions
    (what `read(bootstrap, topic, expected)` makes of the predictions topic, when given)."""
    topics = fresh_topics(bootstrap, 3)
    try:
        if events:
            replay(iter(events), make_producer(bootstrap), topics.events)
        started = time.monotonic()
        flow = subprocess.run(
            [sys.executable, "-m", "bytewax.run", "dataflows.main"],
            cwd=REPO_ROOT,
            env=flow_env(topics, bootstrap, tail=False, mode="event_time", ensemble=ensemble),
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        if flow.returncode != 0:
            raise SystemExit(f"the flow failed:\n{flow.stderr[-3000:]}")
        if read is not None:
            predicted = read(bootstrap, topics.predictions, len(events))
        else:
            predicted = len(read_timestamps(bootstrap, topics.predictions, len(events), 120)) if events else 0
    finally:
        delete_topics(bootstrap, topics.all())
    return wall, predicted


def scoring_rate(kafka_timestamps_ms: list[int]) -> int:
    """Events/s from the first prediction to the last, by their Kafka timestamps: the pace of the run itself,
    without its start-up and shut-down, which a run over an empty topic repeats only to within seconds."""
    if len(kafka_timestamps_ms) < 2:
        return 0
    return round(
        (len(kafka_timestamps_ms) - 1) / max((max(kafka_timestamps_ms) - min(kafka_timestamps_ms)) / 1000, 1e-3)
    )


def eddy_throughput(bootstrap: str, events: list[dict], ensemble: bool) -> dict:
    """Events/s of a whole run, less the wall time of the same run over an empty topic (start-up, shut-down);
    and from its first prediction to its last (`scoring_rate`)."""
    empty_s, _ = run_to_end(bootstrap, [], ensemble)
    wall, stamps = run_to_end(bootstrap, events, ensemble, read=lambda b, t, n: read_timestamps(b, t, n, 120))
    predicted = len(stamps)
    return {
        "events": predicted,
        "events_per_s": round(predicted / max(wall - empty_s, 1e-3)),
        "scoring_events_per_s": scoring_rate(list(stamps.values())),
        "wall_s": round(wall, 1),
        "start_up_s": round(empty_s, 1),
    }


def eddy_latency(bootstrap: str, events: list[dict], rate: float, seconds: float, mode: str, ensemble: bool) -> dict:
    """Replay at `rate` while the flow tails; latency = prediction's Kafka timestamp - event's."""
    topics = fresh_topics(bootstrap, 3)
    n = min(len(events), int(rate * seconds))
    flow = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.main"],
        cwd=REPO_ROOT,
        env=flow_env(topics, bootstrap, tail=True, mode=mode, ensemble=ensemble),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    warm_up = min(500, n // 10)
    try:
        # An event's Kafka timestamp is taken when it is handed to the producer: a short linger, so that the
        # producer's batching counts little in eddy's latency. The first events warm the flow up (its first
        # feature batches, the refit worker) and are not counted.
        producer = make_producer(bootstrap, linger_ms=5)
        replay(iter(events[:warm_up]), producer, topics.events)
        read_timestamps(bootstrap, topics.predictions, warm_up, 60)
        replay(iter(events[warm_up:n]), producer, topics.events, rate=rate)
        sent = read_timestamps(bootstrap, topics.events, n, 60)
        done = read_timestamps(bootstrap, topics.predictions, n, 60)
    finally:
        flow.send_signal(signal.SIGINT)
        try:
            flow.wait(timeout=30)
        except subprocess.TimeoutExpired:
            flow.kill()
        delete_topics(bootstrap, topics.all())
    timed = {e["event_id"] for e in events[warm_up:n]}
    in_order = sorted((sent[e], done[e] - sent[e]) for e in done if e in sent and e in timed)
    everything = sorted(latency for _, latency in in_order)
    # Steady state: the middle 80 %. At the start the empty labels partitions hold the watermark back until
    # they count as idle; after the last event nothing advances the watermark, so the last `lateness` of
    # events wait for the idle timeout too. Both show in the overall p99 and max, reported beside.
    cut = len(in_order) // 10
    steady = sorted(latency for _, latency in in_order[cut : len(in_order) - cut])
    return {
        "mode": mode,
        "rate": round(rate),
        "events": len(in_order),
        "p50_ms": _pct(steady, 0.5),
        "p99_ms": _pct(steady, 0.99),
        "p99_ms_all": _pct(everything, 0.99),
        "max_ms_all": everything[-1] if everything else None,
    }


def plain_loop(bootstrap: str, events: list[dict]) -> dict:
    """What people write today: consume, decode, predict, learn, update a metric; nothing else."""
    topics = fresh_topics(bootstrap, 3)
    try:
        replay(iter(events), make_producer(bootstrap), topics.events)
        consumer = KafkaConsumer(
            topics.events,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            group_id=f"plain-{uuid.uuid4().hex[:6]}",
            enable_auto_commit=False,
        )
        model, metric = make_model(), metrics.ROCAUC()
        seen, started = 0, None
        deadline = time.monotonic() + 300
        while seen < len(events) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=1000).values():
                if started is None:
                    started = time.perf_counter()
                for record in batch:
                    event = json.loads(record.value)
                    x = {k: event[k] for k in RAW_FIELDS}
                    metric.update(event["label"], model.predict_proba_one(x))
                    model.learn_one(x, event["label"])
                    seen += 1
        elapsed = time.perf_counter() - started
        consumer.close()
    finally:
        delete_topics(bootstrap, topics.all())
    return {"events": seen, "events_per_s": round(seen / elapsed), "roc_auc_approx": round(metric.get(), 4)}


def river_bare_on_features(events: list[dict]) -> dict:
    """River alone on the same 32 SQL features eddy learns from (computed beforehand, not timed)."""
    from dataflows.flow.codec import parse_ts
    from dataflows.flow.steps import model_input
    from features import FeatureEngine

    config = load_config()
    engine = FeatureEngine(config.sql_dir, config.fields)
    rows = [{**e, "ts": parse_ts(e, "ts")} for e in events]
    computed = {}
    for start in range(0, len(rows), 10_000):  # the data sets are in ts order, as the flow would order them
        computed.update({e["event_id"]: model_input(f) for e, f in engine.push(rows[start : start + 10_000])})
    xs = [(computed[e["event_id"]], e["label"]) for e in events]
    model = make_model()
    started = time.perf_counter()
    for x, y in xs:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    return {"events": len(xs), "events_per_s": round(len(xs) / (time.perf_counter() - started))}


def river_bare(events: list[dict]) -> dict:
    model = make_model()
    rows = [({k: e[k] for k in RAW_FIELDS}, e["label"]) for e in events]
    started = time.perf_counter()
    for x, y in rows:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    return {"events": len(rows), "events_per_s": round(len(rows) / (time.perf_counter() - started))}


def _pct(values: list[int], q: float) -> int | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events for the throughput runs")
    parser.add_argument("--latency-seconds", type=float, default=20, help="length of each latency run")
    parser.add_argument(
        "--no-ensemble", dest="ensemble", action="store_false", help="River alone (no LightGBM refits) in eddy's runs"
    )
    args = parser.parse_args(argv)
    bootstrap = load_config().bootstrap_servers
    events = list(datasets.transactions(args.events))
    lateness_ms = load_config().flow.lateness_ms
    idle_s = load_config().flow.idle_timeout_s

    print(
        f"eddy, {args.events:,} events through the broker ({'ensemble' if args.ensemble else 'River alone'}) ...",
        file=sys.stderr,
    )
    eddy = eddy_throughput(bootstrap, events, args.ensemble)
    if args.ensemble:
        print("eddy with River alone ...", file=sys.stderr)
        river_alone = eddy_throughput(bootstrap, events, ensemble=False)
    else:
        river_alone = eddy
    half = eddy["events_per_s"] / 2
    print(f"latency at half that rate ({half:,.0f} events/s) ...", file=sys.stderr)
    event_time = eddy_latency(bootstrap, events, half, args.latency_seconds, "event_time", args.ensemble)
    arrival = eddy_latency(bootstrap, events, half, args.latency_seconds, "arrival", args.ensemble)
    print("the plain kafka-python + River loop ...", file=sys.stderr)
    plain = plain_loop(bootstrap, events)
    bare = river_bare(events)
    bare_features = river_bare_on_features(events)
    figures = {
        "benchmark": "flow",
        "events": args.events,
        "ensemble": args.ensemble,
        "eddy_events_per_s": eddy["events_per_s"],
        "eddy_scoring_events_per_s": eddy["scoring_events_per_s"],
        "eddy_river_alone_scoring_events_per_s": river_alone["scoring_events_per_s"],
        "eddy_wall_s": eddy["wall_s"],
        "eddy_start_up_s": eddy["start_up_s"],
        "eddy_river_alone_events_per_s": river_alone["events_per_s"],
        "ratio_eddy_river_alone_to_plain_loop": round(river_alone["events_per_s"] / plain["events_per_s"], 3),
        "ratio_eddy_river_alone_to_river_bare_same_features": round(
            river_alone["events_per_s"] / bare_features["events_per_s"], 3
        ),
        "plain_loop_events_per_s": plain["events_per_s"],
        "river_bare_events_per_s": bare["events_per_s"],
        "ratio_eddy_to_plain_loop": round(eddy["events_per_s"] / plain["events_per_s"], 3),
        "ratio_eddy_to_river_bare": round(eddy["events_per_s"] / bare["events_per_s"], 3),
        "river_bare_same_features_events_per_s": bare_features["events_per_s"],
        "ratio_eddy_to_river_bare_same_features": round(eddy["events_per_s"] / bare_features["events_per_s"], 3),
        "latency_event_time": event_time,
        "latency_arrival": arrival,
        "allowed_lateness_ms": lateness_ms,
        "peak_rss_mb_bench_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_mb_flow_processes": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    print(
        f"eddy end to end (features, {'ensemble' if args.ensemble else 'River'}, outputs, recovery-ready): "
        f"{eddy['events_per_s']:>8,} events/s   ({eddy['wall_s']}s wall, {eddy['start_up_s']}s of it start-up; "
        f"{eddy['scoring_events_per_s']:,} events/s from the first prediction to the last)"
    )
    if args.ensemble:
        print(
            f"eddy end to end with River alone (no LightGBM):             {river_alone['events_per_s']:>8,} events/s"
            f"   ({river_alone['scoring_events_per_s']:,} from the first prediction to the last)"
        )
    print(f"plain kafka-python + River loop (no features, no output):  {plain['events_per_s']:>8,} events/s")
    print(f"River bare predict+learn, pre-decoded, 3 raw fields:       {bare['events_per_s']:>8,} events/s")
    print(f"River bare predict+learn on eddy's 32 SQL features:        {bare_features['events_per_s']:>8,} events/s")
    print(
        f"ratios: eddy / plain loop {figures['ratio_eddy_to_plain_loop']:.2f}, "
        f"eddy / River bare {figures['ratio_eddy_to_river_bare']:.2f}, "
        f"eddy / River bare on the same features {figures['ratio_eddy_to_river_bare_same_features']:.2f}; "
        f"River alone: eddy / plain loop {figures['ratio_eddy_river_alone_to_plain_loop']:.2f}, "
        f"eddy / River bare on the same features {figures['ratio_eddy_river_alone_to_river_bare_same_features']:.2f}"
    )
    for run in (event_time, arrival):
        print(
            f"latency, {run['mode']:<10} at {run['rate']:,} events/s, steady state: p50 {run['p50_ms']} ms, "
            f"p99 {run['p99_ms']} ms; all events: p99 {run['p99_ms_all']} ms, max {run['max_ms_all']} ms "
            f"(allowed lateness {lateness_ms} ms of event time, idle timeout {idle_s:g} s)"
        )
    print(f"peak RSS: flow {figures['peak_rss_mb_flow_processes']} MB, bench {figures['peak_rss_mb_bench_process']} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
