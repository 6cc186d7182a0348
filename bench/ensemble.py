"""River alone, LightGBM alone (refit on schedule) and their ensemble, prequentially on the transactions stream.

Quality: log loss and exact ROC AUC of each, over the whole stream, before and after the drift. "River" and
"LightGBM" are the ensemble's own members, scored before each event is learned; before LightGBM's first
model is in force, "LightGBM alone" predicts the running base rate. Speed: events per second and per-event
latency (score + learn) while a background refit is running versus while none is, and of a run with no
refits at all (River only). Blend variants are compared by replaying the recorded member scores.

The features are BENCH-ONLY stand-ins for eddy's SQL features (not `features/`): the raw fields plus per-user
and per-merchant counts and mean amounts over the last 10 minutes and hour, computed here in Python.

    python -m bench.ensemble --events 100000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import defaultdict, deque
from datetime import datetime

import numpy as np

from dataflows.tools.datasets import transactions
from models.blend import LogLossBlend
from models.ensemble import Ensemble
from models.metrics import ExactROCAUC, LogLoss

WINDOWS = {"10m": 600.0, "1h": 3600.0}


class RunningFeatures:
    """Per-user and per-merchant counts and mean amounts over trailing event-time windows."""

    def __init__(self) -> None:
        self.recent: dict[tuple[str, str, str], deque] = defaultdict(deque)
        self.seen_pairs: set[tuple[str, str]] = set()

    def __call__(self, event: dict, ts: float) -> dict:
        amount = float(event["amount"])
        x = {
            "amount": amount,
            "log_amount": math.log1p(amount),
            "category": event["category"],
            "country": event["country"],
            "new_merchant_for_user": (event["user_id"], event["merchant_id"]) not in self.seen_pairs,
        }
        for entity in ("user_id", "merchant_id"):
            for name, span in WINDOWS.items():
                queue = self.recent[entity, event[entity], name]
                while queue and queue[0][0] < ts - span:
                    queue.popleft()
                prefix = f"{entity.removesuffix('_id')}_{name}"
                x[f"{prefix}_count"] = len(queue)
                if queue:
                    mean = sum(a for _, a in queue) / len(queue)
                    x[f"{prefix}_mean_amount"] = mean
                    x[f"{prefix}_amount_ratio"] = amount / mean
                queue.append((ts, amount))
        self.seen_pairs.add((event["user_id"], event["merchant_id"]))
        return x


def prepared(n: int, seed: int) -> list[tuple[dict, bool, float]]:
    features, out = RunningFeatures(), []
    for event in transactions(n=n, seed=seed):
        ts = datetime.fromisoformat(event["ts"]).timestamp()
        out.append((features(event, ts), bool(event["label"]), ts))
    return out


def run(model: Ensemble, events) -> dict:
    """Prequential pass: member and ensemble scores per event, and latency split by refit activity."""
    clock = time.perf_counter_ns
    river, lightgbm, ensemble, versions = [], [], [], []
    busy, idle = [], []
    positives = 0
    start = time.perf_counter()
    for i, (x, y, ts) in enumerate(events):
        refitting = model.refitting
        t0 = clock()
        scored = model.predict_proba_one_detailed(x)
        model.learn_one(x, y, ts=ts, offset=i)
        (busy if refitting else idle).append(clock() - t0)
        river.append(scored.scores["river"])
        base_rate = (positives + 0.5) / (i + 1.0)
        lgbm = scored.scores["lightgbm"]
        lightgbm.append(base_rate if lgbm is None else lgbm)
        ensemble.append(scored.score)
        versions.append(scored.versions["lightgbm"])
        positives += y
    wall = time.perf_counter() - start
    return {
        "scores": {"river": river, "lightgbm": lightgbm, "ensemble": ensemble},
        "first_model": next((i for i, v in enumerate(versions) if v is not None), len(versions)),
        "events_per_s": round(len(events) / wall),
        "latency": {"during_refit": _latency(busy), "no_refit_running": _latency(idle), "all": _latency(busy + idle)},
        "wall_s": round(wall, 2),
    }


def _latency(durations_ns: list[int]) -> dict:
    if len(durations_ns) < 2:
        return {"events": len(durations_ns)}
    q = statistics.quantiles(durations_ns, n=100, method="inclusive")
    return {
        "events": len(durations_ns),
        "p50_us": round(q[49] / 1000, 1),
        "p99_us": round(q[98] / 1000, 1),
        "max_ms": round(max(durations_ns) / 1e6, 1),
    }


def quality(labels: list[bool], scores: list[float], drift: int) -> dict:
    out = {}
    for segment, sl in {
        "whole": slice(None),
        "before_drift": slice(None, drift),
        "after_drift": slice(drift, None),
    }.items():
        auc, loss = ExactROCAUC(), LogLoss()
        for y, p in zip(labels[sl], scores[sl], strict=True):
            auc.update(y, p)
            loss.update(y, p)
        out[segment] = {"log_loss": round(loss.get(), 5), "roc_auc": round(auc.get() or math.nan, 4)}
    return out


def replay_blend(labels, river, lightgbm, first_model: int, decay: float) -> list[float]:
    """The ensemble's scores had it used `LogLossBlend(decay)`, from the recorded member scores."""
    blend, out = LogLossBlend(decay), []
    for i, (y, r, g) in enumerate(zip(labels, river, lightgbm, strict=True)):
        scores = {"river": r, "lightgbm": g if i >= first_model else None}
        out.append(blend.combine(scores))
        blend.update(scores, y)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--refit-every", type=int, default=5_000)
    parser.add_argument("--window", type=int, default=20_000)
    parser.add_argument("--lag", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--blend-decay", type=float, default=0.999)
    parser.add_argument("--background", choices=["thread", "process"], default="process")
    args = parser.parse_args()

    events = prepared(args.events, args.seed)
    labels = [y for _, y, _ in events]
    drift = args.events // 2
    params = {
        "refit_every": args.refit_every,
        "window": args.window,
        "lag": args.lag,
        "num_boost_round": args.rounds,
        "blend_decay": args.blend_decay,
        "background": args.background,
    }
    with_refits = run(Ensemble(**params), events)
    without = run(Ensemble(**{**params, "refit_every": None}), events)

    scores = with_refits.pop("scores")
    without.pop("scores")
    report = {
        "events": args.events,
        "positives": sum(labels),
        "drift_at": drift,
        "params": params,
        "quality": {name: quality(labels, s, drift) for name, s in scores.items()},
    }
    first_model = with_refits.pop("first_model")
    without.pop("first_model")
    report["blend_variants_log_loss"] = {
        f"decay={d}": {
            seg: q["log_loss"]
            for seg, q in quality(
                labels, replay_blend(labels, scores["river"], scores["lightgbm"], first_model, d), drift
            ).items()
        }
        for d in (1.0, 0.9999, 0.999, 0.99)
    }
    report["speed"] = {"with_refits": with_refits, "no_refits_river_only": without}
    busy, idle = with_refits["latency"]["during_refit"], with_refits["latency"]["no_refit_running"]
    report["p99_during_refit_over_idle"] = round(busy["p99_us"] / idle["p99_us"], 2) if "p99_us" in busy else None

    q = report["quality"]
    print(f"transactions: {args.events} events, {sum(labels)} positive, drift at {drift}; features are bench-only")
    for seg in ("whole", "before_drift", "after_drift"):
        print(
            f"  {seg:>12}: "
            + "  ".join(f"{name} ll={q[name][seg]['log_loss']:.4f} auc={q[name][seg]['roc_auc']:.4f}" for name in q)
        )
    for variant, ll in report["blend_variants_log_loss"].items():
        print(f"  blend {variant:>12}: " + "  ".join(f"{seg} ll={v:.4f}" for seg, v in ll.items()))
    print(f"  with refits: {with_refits['events_per_s']} ev/s; during refit {busy}; no refit running {idle}")
    print(f"  no refits (River only): {without['events_per_s']} ev/s; {without['latency']['all']}")
    print(f"  p99 during refit / p99 with none running: {report['p99_during_refit_over_idle']}")
    print(json.dumps(report, default=lambda v: None if isinstance(v, float) and np.isnan(v) else v))


if __name__ == "__main__":
    main()
