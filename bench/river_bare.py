"""River's bare predict + learn rate on transactions, and what `OnlineLearner` costs on top of it.

Events are generated and decoded before timing starts: this measures learning only, no Kafka, no JSON,
no features. x is the raw `amount`, `category` and `country` of each payment; labels are inline.

    python -m bench.river_bare --events 20000 --model logistic_regression
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime

from dataflows.tools.datasets import transactions
from models import MODELS, OnlineLearner, make_model


def decoded_events(n: int, seed: int) -> list[tuple[str, int, dict, bool]]:
    """(event_id, ts_ms, x, label) tuples, ready to learn from."""
    return [
        (
            e["event_id"],
            int(datetime.fromisoformat(e["ts"]).timestamp() * 1000),
            {"amount": e["amount"], "category": e["category"], "country": e["country"]},
            bool(e["label"]),
        )
        for e in transactions(n=n, seed=seed)
    ]


def summarise(durations_ns: list[int], wall_s: float) -> dict:
    quantiles = statistics.quantiles(durations_ns, n=100, method="inclusive")
    return {
        "events_per_s": round(len(durations_ns) / wall_s),
        "p50_us": round(quantiles[49] / 1000, 2),
        "p99_us": round(quantiles[98] / 1000, 2),
    }


def bare(events, model_name: str) -> dict:
    model, clock, durations = make_model(model_name), time.perf_counter_ns, []
    start = time.perf_counter()
    for _, _, x, y in events:
        t0 = clock()
        model.predict_proba_one(x)
        model.learn_one(x, y)
        durations.append(clock() - t0)
    return summarise(durations, time.perf_counter() - start)


def learner(events, model_name: str) -> dict:
    online, clock, durations = OnlineLearner(make_model(model_name), label_horizon_ms=60_000), time.perf_counter_ns, []
    start = time.perf_counter()
    for event_id, ts_ms, x, y in events:
        t0 = clock()
        online.score(event_id, ts_ms, x, y)
        durations.append(clock() - t0)
    return summarise(durations, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.river_bare", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="how many transactions (default 20000)")
    parser.add_argument("--model", default="logistic_regression", choices=sorted(MODELS), help="River pipeline")
    parser.add_argument("--seed", type=int, default=42, help="transactions generator seed")
    args = parser.parse_args(argv)

    events = decoded_events(args.events, args.seed)
    river = bare(events, args.model)
    eddy = learner(events, args.model)
    ratio = round(eddy["events_per_s"] / river["events_per_s"], 3)
    print(f"{len(events)} transactions, model {args.model}, labels inline")
    for name, figures in (("River predict+learn", river), ("OnlineLearner.score", eddy)):
        print(
            f"  {name:<20} {figures['events_per_s']:>9,} events/s   "
            f"p50 {figures['p50_us']:>8.1f} µs   p99 {figures['p99_us']:>8.1f} µs"
        )
    print(f"  OnlineLearner / River rate: {ratio:.3f}")
    result = {
        "benchmark": "river_bare",
        "events": len(events),
        "model": args.model,
        "river": river,
        "online_learner": eddy,
        "ratio": ratio,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
