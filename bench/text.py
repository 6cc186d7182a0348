"""Benchmark: a free-text field through the whole dataflow, against the same flow without it and bare River.

    python -m bench.text [--events 20000] [--latency-seconds 20] [--no-ensemble] [--repeats 2]

On the `messages` data set (support messages with spam, `body` ~200 characters, `configs/messages.toml`):
1. eddy's end-to-end throughput (events on a 3-partition topic, `EDDY_TAIL=false`, less the same run's
   start-up and shut-down over an empty topic) with River alone: with the text field, and the same flow
   without it (the events without `body`, the SQL without the features read from it); with the ensemble
   too, unless `--no-ensemble`;
2. event-to-prediction latency (p50/p99, Kafka timestamps) while events are replayed at 1,000 events/s (or
   half the text flow's rate if that is less), with and without the text;
3. River's bare predict+learn rate on the same text pipeline (`make_model` with `body` as text), on the same
   features the flow computes (computed beforehand, not timed), and its per-event time;
4. ROC AUC over the stream (exact, Mann-Whitney): eddy's predictions against the plain River loop's scores.
Target: eddy with the text >= 0.5x River's bare rate on the same text pipeline.
Prints figures for people, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.flow import eddy_latency, run_to_end, scoring_rate
from dataflows.flow.config import REPO_ROOT, load_config
from dataflows.tools import datasets
from models import make_model
from models.text import TextSettings

TEXT_CONFIG = REPO_ROOT / "configs" / "messages.toml"


def without_text(directory: Path) -> Path:
    """configs/messages.toml without `body`: its SQL keeps the features that do not read the text."""
    sql = directory / "sql"
    sql.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "sql" / "messages" / "sender.sql", sql)
    (sql / "channel.sql").write_text(
        "-- group: message\n-- entity: none\n-- horizon: 0s\nSELECT event_id, channel FROM events\n"
    )
    text = TEXT_CONFIG.read_text().replace('sql_dir = "../sql/messages"', f'sql_dir = "{sql}"')
    text = text.replace('body = "text"\n', "")
    path = directory / "eddy.toml"
    path.write_text(text)
    return path


def read_scores(bootstrap: str, topic: str, expected: int) -> tuple[dict[str, float], list[int]]:
    """Each prediction's score by event id, and the predictions' Kafka timestamps."""
    from dataflows.broker.consumer import assigned_consumer

    consumer, _ = assigned_consumer(bootstrap, topic)
    out: dict[str, float] = {}
    stamps: list[int] = []
    deadline = time.monotonic() + 180
    while len(out) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500, max_records=20_000).values():
            for record in batch:
                prediction = orjson.loads(record.value)
                out[prediction["event_id"]] = prediction["score"]
                stamps.append(record.timestamp)
    consumer.close()
    return out, stamps


def throughput(bootstrap: str, events: list[dict], ensemble: bool) -> tuple[dict, dict[str, float]]:
    # The start-up and shut-down of a run over an empty topic, the shorter of two: one alone varies by seconds
    # on a shared machine, which would swing the rate of a run of a few seconds.
    empty_s = min(run_to_end(bootstrap, [], ensemble, read_scores)[0] for _ in range(2))
    wall, (scores, stamps) = run_to_end(bootstrap, events, ensemble, read_scores)
    figures = {
        "events": len(scores),
        "events_per_s": round(len(scores) / max(wall - empty_s, 1e-3)),
        "scoring_events_per_s": scoring_rate(stamps),
        "wall_s": round(wall, 1),
        "start_up_s": round(empty_s, 1),
    }
    return figures, scores


def river_bare(events: list[dict], text: bool) -> tuple[dict, list[float]]:
    """River's predict+learn on the features the flow computes (beforehand, untimed), with `body` as text."""
    from dataflows.flow.codec import parse_ts
    from dataflows.flow.steps import model_input
    from features import FeatureEngine

    config = load_config(TEXT_CONFIG, env={})
    engine = FeatureEngine(config.sql_dir, config.fields)
    rows = [{**e, "ts": parse_ts(e, "ts")} for e in events]
    computed = {}
    for start in range(0, len(rows), 1_000):
        computed.update({e["event_id"]: model_input(f) for e, f in engine.push(rows[start : start + 1_000])})
    xs = []
    for e in events:
        x = computed[e["event_id"]]
        if not text:  # the flow without the text: no body, no feature read from it
            x = {k: v for k, v in x.items() if k in ("channel", "sender_messages_10m", "sender_messages_1h")}
        xs.append((x, e["label"]))
    model = make_model(config.model, ("body",) if text else (), TextSettings.from_table(config.text))
    clock, durations, scores = time.perf_counter_ns, [], []
    started = time.perf_counter()
    for x, y in xs:
        t0 = clock()
        scores.append(model.predict_proba_one(x)[True])
        model.learn_one(x, y)
        durations.append(clock() - t0)
    wall = time.perf_counter() - started
    quantiles = statistics.quantiles(durations, n=100, method="inclusive")
    figures = {
        "events": len(xs),
        "events_per_s": round(len(xs) / wall),
        "p50_us": round(quantiles[49] / 1000, 1),
        "p99_us": round(quantiles[98] / 1000, 1),
    }
    return figures, scores


def _rate(run: tuple[dict, list]) -> int:
    return run[0].get("scoring_events_per_s", run[0]["events_per_s"])


def exact_auc(labels: list[bool], scores: list[float]) -> float:
    """Mann-Whitney: the share of (spam, genuine) pairs ranked right, ties counting 1/2."""
    ranked = sorted(zip(scores, labels, strict=True))
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + 1 + j) / 2  # the mean rank of a run of ties
        rank_sum += mid * sum(1 for _, y in ranked[i:j] if y)
        i = j
    positives = sum(labels)
    negatives = len(labels) - positives
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.text", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="messages for the throughput runs")
    parser.add_argument("--latency-seconds", type=float, default=20, help="length of each latency run")
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=1_000,
        help="events/s replayed in the latency runs, at most half the text flow's throughput: a rate both flows "
        "sustain, so that the latencies compare the work an event costs, not a queue (default: %(default)s)",
    )
    parser.add_argument("--no-ensemble", dest="ensemble", action="store_false", help="skip the ensemble's run")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="throughput runs of eddy and of bare River, the best of them reported: other work on a shared "
        "machine only ever slows a run down (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    bootstrap = load_config().bootstrap_servers
    events = list(datasets.messages(args.events))
    plain = [{k: v for k, v in e.items() if k != "body"} for e in events]
    labels = [e["label"] for e in events]
    mean_chars = statistics.mean(len(e["body"]) for e in events)

    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        configs = {"text": TEXT_CONFIG, "no_text": without_text(Path(tmp))}
        runs: dict[str, dict] = {}
        for name, stream in (("text", events), ("no_text", plain)):
            os.environ["EDDY_CONFIG"] = str(configs[name])
            print(f"eddy, {len(stream):,} messages, River alone, {name} ...", file=sys.stderr)
            tries = [throughput(bootstrap, stream, ensemble=False) for _ in range(args.repeats)]
            runs[name], scores = max(tries, key=_rate)
            if name == "text":
                eddy_scores = scores
        rate = min(args.latency_rate, runs["text"]["events_per_s"] / 2)
        latency = {}
        for name, stream in (("text", events), ("no_text", plain)):
            os.environ["EDDY_CONFIG"] = str(configs[name])
            print(f"latency at {rate:,.0f} events/s, {name} ...", file=sys.stderr)
            latency[name] = eddy_latency(bootstrap, stream, rate, args.latency_seconds, "event_time", False)
        if args.ensemble:
            os.environ["EDDY_CONFIG"] = str(TEXT_CONFIG)
            print("eddy with the ensemble (River + LightGBM on hashed text) ...", file=sys.stderr)
            runs["text_ensemble"], ensemble_scores = throughput(bootstrap, events, ensemble=True)
        os.environ.pop("EDDY_CONFIG")

    print("River bare on the same pipeline ...", file=sys.stderr)
    bare_text, bare_scores = max((river_bare(events, text=True) for _ in range(args.repeats)), key=_rate)
    bare_plain, _ = max((river_bare(events, text=False) for _ in range(args.repeats)), key=_rate)
    ids = [e["event_id"] for e in events]
    auc = {
        "eddy": round(exact_auc(labels, [eddy_scores[i] for i in ids]), 6),
        "river_loop": round(exact_auc(labels, bare_scores), 6),
        "eddy_max_abs_score_difference": max(abs(eddy_scores[i] - s) for i, s in zip(ids, bare_scores, strict=True)),
    }
    if args.ensemble:
        auc["eddy_ensemble"] = round(exact_auc(labels, [ensemble_scores[i] for i in ids]), 6)
    half = len(ids) // 2
    auc["eddy_after_drift"] = round(exact_auc(labels[half:], [eddy_scores[i] for i in ids[half:]]), 6)
    ratio = round(runs["text"]["events_per_s"] / bare_text["events_per_s"], 3)
    # The same run's pace from its first prediction to its last: no start-up measured on another run.
    scoring_ratio = round(runs["text"]["scoring_events_per_s"] / bare_text["events_per_s"], 3)
    figures = {
        "benchmark": "text",
        "events": len(events),
        "mean_text_chars": round(mean_chars, 1),
        "eddy": runs,
        "latency": latency,
        "river_bare_text": bare_text,
        "river_bare_no_text": bare_plain,
        "ratio_eddy_text_to_river_bare_text": ratio,
        "ratio_scoring_eddy_text_to_river_bare_text": scoring_ratio,
        "target_met": scoring_ratio >= 0.5,
        "ratio_text_to_no_text_eddy": round(runs["text"]["events_per_s"] / runs["no_text"]["events_per_s"], 3),
        "roc_auc": auc,
        "load_average": os.getloadavg()[0],
    }
    print(f"{len(events):,} messages, text ~{mean_chars:.0f} characters, River alone in eddy unless said")
    for name, run in runs.items():
        print(
            f"  eddy {name:<14} {run['events_per_s']:>8,} events/s  "
            f"({run['wall_s']}s wall, {run['start_up_s']}s start-up; "
            f"{run['scoring_events_per_s']:,} events/s from the first prediction to the last)"
        )
    for name, run in latency.items():
        print(
            f"  latency {name:<11} at {run['rate']:,} events/s: p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms "
            f"(all: p99 {run['p99_ms_all']} ms)"
        )
    for name, run in (("text", bare_text), ("no text", bare_plain)):
        print(
            f"  River bare, {name:<8} {run['events_per_s']:>8,} events/s  "
            f"p50 {run['p50_us']} µs  p99 {run['p99_us']} µs"
        )
    print(
        f"  eddy / River bare on the same text pipeline: {scoring_ratio:.2f} from the first prediction to the last "
        f"(target >= 0.5: {'met' if scoring_ratio >= 0.5 else 'NOT met'}); {ratio:.2f} by wall time less start-up"
    )
    print(f"  ROC AUC over the stream: {auc}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
