"""The `[ensemble]` refit settings compared on two streams: how the defaults were chosen.

The transactions stream (eddy's SQL features from `sql/transactions`, computed by `features.backfill`, plus
the raw string fields) and an Agrawal stream whose concept changes abruptly half-way (River's generator:
function 0, then function 2), which trees learn and a linear model does not. Each setting runs the
`Ensemble` prequentially (score, then learn) with fits done in-process at their effect points (the same
predictions as in the background) and prints each member's and the ensemble's ROC AUC and log loss over
the stream and after the change, the labels until the first model in force, the refits by trigger and
gate decision, and fit time p50/p99 (a fit here is the gated fit plus, once it passes, the whole-window
fit; with a search, all its trials).

    python -m bench.refits --events 40000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from river.datasets import synth

from dataflows.flow.config import ENSEMBLE_DEFAULTS, load_config
from dataflows.tools.datasets import transactions
from features.backfill import backfill
from features.schema import to_arrow
from features.timestamps import to_ms
from models.ensemble import Ensemble
from models.gate import log_loss, roc_auc

Stream = list[tuple[dict, bool, float | None]]

BEFORE = {"refit_every": 10_000, "lag": 10_000, "refit_whole": False, "drift_detector": None}
"""The defaults before issue 16: a refit every 10,000 labels taking effect 10,000 labels later."""

SETTINGS = {
    "defaults": {},
    "before issue 16": BEFORE,
    "no drift detector": {"drift_detector": None},
    "whole-window refit": {"refit_whole": True},
    "every 5000, lag 2000": {"refit_every": 5_000, "lag": 2_000},
    "search, 8 trials": {"search_trials": 8},
}


def transactions_stream(n: int, seed: int) -> tuple[Stream, list[str]]:
    config = load_config()
    events = list(transactions(n=n, seed=seed))
    rows = [{**e, "ts": to_ms(e["ts"])} for e in events]
    table = to_arrow(rows, config.fields)
    features = backfill(config.sql_dir, table, config.fields).to_pylist()
    by_id = {row.pop("event_id"): row for row in features}
    strings = [name for name, kind in config.fields.items() if kind == "string"]
    stream = []
    for event, row in zip(events, rows, strict=True):
        x = {k: v for k, v in by_id[event["event_id"]].items() if v is not None and v == v}
        x.update({name: event[name] for name in strings})
        stream.append((x, bool(event["label"]), row["ts"] / 1000))
    return stream, strings


def agrawal_stream(n: int, seed: int) -> Stream:
    before = synth.Agrawal(classification_function=0, seed=seed).take(n // 2)
    after = synth.Agrawal(classification_function=2, seed=seed + 1).take(n - n // 2)
    return [(x, bool(y), None) for x, y in [*before, *after]]


def run(stream: Stream, params: dict) -> dict:
    model = Ensemble(**params)
    scores = np.empty((len(stream), 3))
    labels = np.empty(len(stream), dtype=bool)
    first = None
    started = time.perf_counter()
    for i, (x, y, ts) in enumerate(stream):
        scored = model.predict_proba_one_detailed(x)
        lightgbm = scored.scores["lightgbm"]
        if first is None and lightgbm is not None:
            first = i
        scores[i] = (scored.score, scored.scores["river"], scored.scores["river"] if lightgbm is None else lightgbm)
        labels[i] = y
        model.learn_one(x, y, ts=ts)
    fits = sorted(r["fit_seconds"] for r in model.registry.versions() if r["fit_seconds"] is not None)
    half = len(stream) // 2
    quality = {
        segment: {
            name: {
                "auc": round(roc_auc(labels[part], scores[part, j]), 4),
                "log_loss": round(log_loss(labels[part], scores[part, j]), 4),
            }
            for j, name in enumerate(("ensemble", "river", "lightgbm"))
        }
        for segment, part in (("whole", slice(None)), ("after_change", slice(half, None)))
    }
    health = model.health()
    return {
        "quality": quality,
        "labels_until_first_model": first,
        "refits": health["triggers"],
        "accepted": health["accepted"],
        "rejected": health["rejected"],
        "fit_s_p50": round(statistics.median(fits), 3) if fits else None,
        "fit_s_p99": round(float(np.percentile(fits, 99)), 3) if fits else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def latency(stream: Stream, params: dict) -> dict:
    """The scoring thread's time per event (score + learn) while a background fit runs and while none does,
    fits in the worker process as in the flow; the longest event is a wait at an effect point."""
    model = Ensemble(**{**params, "background": "process"})
    busy, idle = [], []
    for x, y, ts in stream:
        refitting = model.refitting
        started = time.perf_counter_ns()
        model.predict_proba_one(x)
        model.learn_one(x, y, ts=ts)
        (busy if refitting else idle).append((time.perf_counter_ns() - started) / 1000)

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 1) if values else None

    return {
        "events_while_fitting": len(busy),
        "fitting_p50_us": pct(busy, 50),
        "fitting_p99_us": pct(busy, 99),
        "idle_p50_us": pct(idle, 50),
        "idle_p99_us": pct(idle, 99),
        "longest_ms": round(max(busy + idle) / 1000, 1),
    }


def base_params() -> dict:
    keys = set(Ensemble.__init__.__code__.co_varnames) - {"self", "background", "registry_dir"}
    return {k: v for k, v in ENSEMBLE_DEFAULTS.items() if k in keys} | {"background": None, "keep": 1_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="events per stream")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--settings", nargs="*", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument(
        "--streams", nargs="*", choices=["transactions", "agrawal"], default=["transactions", "agrawal"]
    )
    parser.add_argument(
        "--latency", action="store_true", help="also time the scoring thread while fits (plain, and searching) run"
    )
    args = parser.parse_args()
    report = {"events": args.events, "defaults": base_params(), "streams": {}}
    for name in args.streams:
        if name == "transactions":
            stream, strings = transactions_stream(args.events, args.seed)
        else:
            stream, strings = agrawal_stream(args.events, args.seed), []
        report["streams"][name] = out = {}
        print(f"{name}: {len(stream)} events, {sum(y for _, y, _ in stream)} positive, change at {len(stream) // 2}")
        for setting in args.settings:
            params = {**base_params(), "lightgbm_fields": strings, **SETTINGS[setting]}
            result = out[setting] = run(stream, params)
            q = result["quality"]
            print(
                f"  {setting:>22}: "
                + "  ".join(
                    f"{who} auc {q[seg][who]['auc']:.4f} ll {q[seg][who]['log_loss']:.4f}"
                    for seg in ("whole", "after_change")
                    for who in ("ensemble", "lightgbm")
                )
                + f"  first model {result['labels_until_first_model']}  refits {result['refits']}"
                f" ({result['accepted']} in force)  fit p50/p99 {result['fit_s_p50']}/{result['fit_s_p99']} s",
                flush=True,
            )
        if args.latency:
            params = {**base_params(), "lightgbm_fields": strings}
            out["latency"] = {
                label: latency(stream, {**params, **extra})
                for label, extra in (("defaults", {}), ("search, 8 trials", {"search_trials": 8}))
            }
            for label, figures in out["latency"].items():
                print(f"  scoring thread, {label}: {figures}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
