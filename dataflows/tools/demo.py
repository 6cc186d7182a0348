"""The end-to-end demo behind `task demo`: payments in, the dataflow learning, results a person can read.

    python -m dataflows.tools.demo [--events 30000] [--label-delay 30]

Expects the broker and topics to exist (`task demo` starts and resets them first).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson

from dataflows.broker.admin import BrokerError, require_topics
from dataflows.broker.consumer import read_to_end
from dataflows.flow.config import REPO_ROOT, load_config
from dataflows.tools import datasets
from dataflows.tools.replay import make_producer, replay

MALFORMED = [
    b'{"event_id": "broken-1", "ts": "2026-01-01T00:00:00Z", "amount": "a lot"',
    b'{"event_id": "broken-2", "ts": 1767225600, "user_id": "u1", "merchant_id": "m1", "amount": 5.0, '
    b'"category": "fuel", "country": "FR"}',
    b'{"event_id": "broken-3", "ts": "2026-01-01T00:00:00Z", "user_id": "u1", "merchant_id": "m1", '
    b'"amount": NaN, "category": "fuel", "country": "FR"}',
    b'["not", "an", "object"]',
]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "   -  " if value is None else f"{value:.{digits}f}"


def show_results(config, events: list[dict], run_s: float) -> None:
    t = config.topics
    kafka, security = config.bootstrap_servers, config.kafka_security
    predictions = [orjson.loads(r.value) for r in read_to_end(kafka, t.predictions, security=security)]
    reports = [orjson.loads(r.value) for r in read_to_end(kafka, t.metrics, security=security)]
    dead = read_to_end(kafka, t.dead_letters, security=security)
    final = reports[-1] if reports else {}
    print(f"\n4. results ({run_s:.1f}s for the flow, start-up included)")
    print(f"   {len(predictions):,} predictions on '{t.predictions}', {len(reports)} metrics messages on '{t.metrics}'")
    quality = final.get("quality", {})
    print("\n   prequential quality (every event scored before its label was learned; ROC AUC is exact)")
    print(f"   {'member':<10} {'ROC AUC':>8} {'log loss':>9} {'accuracy':>9}   {'rolling AUC':>11} {'labels':>7}")
    for name in ("score", "river", "lightgbm"):
        q = quality.get(name)
        if q:
            label = "ensemble" if name == "score" else name
            print(
                f"   {label:<10} {_fmt(q['roc_auc']):>8} {_fmt(q['log_loss']):>9} {_fmt(q['accuracy']):>9}   "
                f"{_fmt(q['roc_auc_rolling']):>11} {q['labels']:>7,}"
            )
    versions = sorted({p["model"].get("lightgbm") for p in predictions if p["model"].get("lightgbm")})
    if versions:
        first = next(p for p in predictions if p["model"].get("lightgbm"))
        print(
            f"\n   LightGBM refits in force: versions {versions}; first used for event {first['event_id']} "
            f"(registry: {config.ensemble.get('registry_dir', '-')})"
        )
    print_blend(predictions, (final.get("refits") or {}).get("blend"))
    reasons = final.get("dead_letters", {})
    print(
        f"\n   dead letters on '{t.dead_letters}': {len(dead)} "
        f"({', '.join(f'{k} {v}' for k, v in reasons.items()) or 'none'})"
    )
    for record in dead[:4]:
        headers = {k: v.decode() for k, v in record.headers}
        print(f"     - {headers['reason']}: {headers['error'][:90]}")
    labels = {e["event_id"]: e.get("label") for e in events}
    riskiest = sorted(predictions, key=lambda p: p["score"], reverse=True)[:5]
    print("\n   highest-scored payments, and whether they were fraud")
    for p in riskiest:
        print(f"     {p['event_id']}  score {p['score']:.3f}  fraud: {labels.get(p['event_id'])}")
    if predictions:
        print(f"\n   one prediction as published:\n     {orjson.dumps(predictions[len(predictions) // 2]).decode()}")


def print_blend(predictions: list[dict], blend: dict | None) -> None:
    """How much LightGBM contributes: the events it scored, how far the ensemble's score moved from River's
    on them, and the blend's weights at the end (`models.blend.HedgedStack`)."""
    both = [p for p in predictions if p["scores"].get("lightgbm") is not None]
    if not both or not blend:
        print("\n   blend: River alone (no LightGBM model in force yet)")
        return
    moved = sorted(abs(p["score"] - p["scores"]["river"]) for p in both)
    median, p99 = moved[(len(moved) - 1) // 2], moved[math.ceil(0.99 * len(moved)) - 1]
    print(
        f"\n   blend: LightGBM scored {len(both):,} of {len(predictions):,} events; on them the ensemble's score "
        f"differs from River's by {median:.4f} (median), {p99:.4f} (p99)"
    )
    shares = ", ".join(f"{name} {blend.get(name, 0.0):.2f}" for name in ("river", "lightgbm", "stack"))
    stack = ", ".join(f"{name} {blend.get(f'stack_{name}', 0.0):+.2f}" for name in ("river", "lightgbm", "bias"))
    print(f"   blend weights at the end: mixture {shares}; stack coefficients on the logits {stack}")


def main(argv: list[str] | None = None) -> int:
    config = load_config()
    parser = argparse.ArgumentParser(prog="python -m dataflows.tools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000, help="transactions to replay (default: %(default)s)")
    parser.add_argument(
        "--label-delay",
        type=float,
        default=30.0,
        help="labels follow their payment this many seconds later, in event time, on the labels "
        "topic (default: %(default)s; 0 keeps them inline)",
    )
    args = parser.parse_args(argv)
    t = config.topics
    try:
        require_topics(config.bootstrap_servers, t.all(), security=config.kafka_security)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    registry = config.ensemble.get("registry_dir")
    if registry and Path(registry).is_dir():
        shutil.rmtree(registry)
        print(f"0. starting from an empty model registry ({registry})")
    events = list(datasets.transactions(args.events))
    delayed = args.label_delay > 0
    print(
        f"1. replaying {len(events):,} synthetic card payments to '{t.events}' (fraud pattern changes halfway)"
        + (f"; labels on '{t.labels}', {args.label_delay:g}s later in event time" if delayed else "")
    )
    producer = make_producer(config.bootstrap_servers, security=config.kafka_security)
    result = replay(
        iter(events), producer, t.events, t.labels, 0.0 if delayed else None, label_event_delay_s=args.label_delay
    )
    print(f"   published {result.events:,} events" + (f" and {len(events):,} labels" if delayed else ""))
    print(f"2. adding {len(MALFORMED)} malformed messages, to show where bad input goes")
    for value in MALFORMED:
        producer.send(t.events, value=value)
    producer.flush()
    producer.close()

    print("3. running the dataflow until the end of its input: EDDY_TAIL=false python -m bytewax.run dataflows.main")
    started = time.monotonic()
    flow = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.main"],
        cwd=REPO_ROOT,
        env={**os.environ, "EDDY_TAIL": "false"},
        capture_output=True,
        text=True,
    )
    run_s = time.monotonic() - started
    if flow.returncode != 0:
        print(flow.stderr[-3000:], file=sys.stderr)
        print("error: the dataflow failed (its log is above)", file=sys.stderr)
        return 1
    show_results(config, events, run_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
