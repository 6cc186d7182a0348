"""River, LightGBM and their ensemble through eddy's own dataflow and SQL features, with the DEFAULT settings.

    python -m bench.ensemble [--events 100000] [--streams transactions agrawal] [--seed 42]

Each stream (`transactions`: the drifting card payments, `sql/transactions/`, eddy.toml; `agrawal`: River's
Agrawal loans whose rule changes half-way, `sql/agrawal/`, configs/agrawal.toml) is written to a JSONL file
and run through the backtest (`dataflows.tools.backtest`: the live job's dataflow with the file in place of
Kafka), labels inline, with the `[ensemble]` settings a config file gets by default; only `keep` is raised
so that the registry holds every refit's record (it does not change the model). Quality comes from the
predictions the flow published: each member's and the ensemble's log loss and exact ROC AUC over the whole
stream, after the drift, and on the events LightGBM scored (before its first model it has no score: "whole"
gives it the running base rate in its place). The refits come from the registry and the final metrics: labels
until the first LightGBM model in force, refits and their gate decisions, fit time p50/p99.

The scoring thread's latency during a refit cannot be told apart inside the flow, so the features the flow
published are fed once more, in the same order, to the model the flow builds (`build_model`), timing each
score + learn and splitting them by whether a refit (fit or search) is running; its scores must equal the
flow's, which the bench checks, so the timings are of the same work.

Prints a table per stream, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import orjson

from dataflows.flow.config import REPO_ROOT, load_config
from dataflows.flow.model_choice import build_model
from dataflows.tools import datasets
from dataflows.tools.backtest import run_backtest
from dataflows.watch.report import read_registry
from models.metrics import ExactROCAUC, LogLoss

STREAMS = {
    "transactions": (datasets.transactions, REPO_ROOT / "eddy.toml"),
    "agrawal": (datasets.agrawal, REPO_ROOT / "configs" / "agrawal.toml"),
}
NAMES = ("river", "lightgbm", "ensemble")


def run_stream(name: str, n: int, seed: int, drift_at: float, tmp: Path) -> dict:
    generate, config_path = STREAMS[name]
    events = list(generate(n, seed=seed, drift_at=drift_at))
    path = tmp / f"{name}.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    config = load_config(config_path, env={})
    config = replace(config, include_features=True, ensemble={**config.ensemble, "keep": 1_000_000})
    out = tmp / name
    started = time.perf_counter()
    result = run_backtest(path, config, out, report=False)
    flow_s = time.perf_counter() - started
    predictions = [orjson.loads(line) for line in (out / "predictions.jsonl").read_bytes().splitlines()]
    final = orjson.loads((out / "metrics.jsonl").read_bytes().splitlines()[-1])
    labels = {e["event_id"]: bool(e["label"]) for e in events}
    records = read_registry(out / "registry", [final["run"]] if final.get("run") else None)
    timing = time_the_scoring_thread(config, predictions, labels)
    return {
        "events": result.predictions,
        "positives": sum(labels.values()),
        "drift_at": int(n * drift_at),
        "flow_s": round(flow_s, 1),
        "ensemble_settings": {k: v for k, v in config.ensemble.items() if k not in {"registry_dir", "keep"}},
        "quality": quality(predictions, labels, int(n * drift_at)),
        "refits": refits(predictions, final, records),
        "scoring": timing,
    }


def quality(predictions: list[dict], labels: dict[str, bool], drift: int) -> dict:
    """Log loss and exact ROC AUC of each member and of the ensemble, by segment."""
    positives, base_rate = 0, []
    for i, p in enumerate(predictions):
        base_rate.append((positives + 0.5) / (i + 1.0))
        positives += labels[p["event_id"]]
    segments = {
        "whole": range(len(predictions)),
        "after_drift": range(drift, len(predictions)),
        "lightgbm_scored": [i for i, p in enumerate(predictions) if p["scores"].get("lightgbm") is not None],
    }
    segments["lightgbm_scored_after_drift"] = [i for i in segments["lightgbm_scored"] if i >= drift]
    out = {}
    for segment, indices in segments.items():
        figures = {}
        for name in NAMES:
            auc, loss = ExactROCAUC(), LogLoss()
            for i in indices:
                p = predictions[i]
                score = p["score"] if name == "ensemble" else p["scores"].get(name)
                score = base_rate[i] if score is None else score
                y = labels[p["event_id"]]
                auc.update(y, score)
                loss.update(y, score)
            figures[name] = {"log_loss": _round(loss.get(), 5), "roc_auc": _round(auc.get(), 4)}
        out[segment] = {"events": len(indices), **figures}
    return out


def refits(predictions: list[dict], final: dict, records: list[dict]) -> dict:
    first = next((i for i, p in enumerate(predictions) if p["model"].get("lightgbm") is not None), None)
    fits = sorted(r["fit_seconds"] for r in records if r.get("fit_seconds") is not None)
    health = final.get("refits") or {}
    return {
        "labels_until_first_model": first,
        "refits": len(records),
        "accepted": health.get("accepted"),
        "rejected": health.get("rejected"),
        "versions_in_force": len({p["model"].get("lightgbm") for p in predictions} - {None}),
        "fit_s_p50": _quantile(fits, 0.50),
        "fit_s_p99": _quantile(fits, 0.99),
        "blend": health.get("blend"),
        "reasons": sorted({r.get("reason") for r in records if not r.get("accepted")} - {None}),
    }


def time_the_scoring_thread(config, predictions: list[dict], labels: dict[str, bool]) -> dict:
    """Score + learn of each event by the flow's model on the flow's features, split by refit activity."""
    model = build_model(replace(config, ensemble={**config.ensemble, "registry_dir": None}))
    busy, idle, mismatches = [], [], 0
    clock = time.perf_counter_ns
    for offset, p in enumerate(predictions):
        x = p["features"]
        refitting = bool(getattr(model, "refitting", False))
        t0 = clock()
        scored = model.predict_proba_one_detailed(x)
        model.learn_one(
            x,
            labels[p["event_id"]],
            ts=datetime.fromisoformat(p["ts"]).timestamp(),
            offset=offset,
            features_version=p["features_version"],
        )
        (busy if refitting else idle).append(clock() - t0)
        mismatches += scored.score != p["score"]
    return {
        "same_scores_as_the_flow": mismatches == 0,
        "mismatches": mismatches,
        "during_refit": _latency(busy),
        "no_refit_running": _latency(idle),
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


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def targets(report: dict) -> dict:
    """Ensemble >= the best member on log loss and AUC, whole and after the drift; agrawal AUC >= 0.95."""
    out = {}
    for stream, figures in report.items():
        for segment in ("whole", "after_drift"):
            q = figures["quality"][segment]
            best_loss = min(q["river"]["log_loss"], q["lightgbm"]["log_loss"])
            best_auc = max(q["river"]["roc_auc"], q["lightgbm"]["roc_auc"])
            out[f"{stream} {segment} log loss <= best member"] = q["ensemble"]["log_loss"] <= best_loss
            out[f"{stream} {segment} ROC AUC >= best member"] = q["ensemble"]["roc_auc"] >= best_auc
        if stream == "agrawal":
            out["agrawal whole ROC AUC >= 0.95"] = figures["quality"]["whole"]["ensemble"]["roc_auc"] >= 0.95
    return out


def print_stream(name: str, figures: dict) -> None:
    events, positives, drift = figures["events"], figures["positives"], figures["drift_at"]
    print(f"\n{name}: {events:,} events, {positives:,} positive, drift at {drift:,}")
    print(f"  through the flow in {figures['flow_s']}s; [ensemble] {figures['ensemble_settings']}")
    print(f"  {'segment':<28} {'events':>7}  " + "  ".join(f"{n + ' ll / AUC':>22}" for n in NAMES))
    for segment, q in figures["quality"].items():
        cells = "  ".join(f"{_fmt(q[n]['log_loss'], 4):>11} / {_fmt(q[n]['roc_auc'], 4):>8}" for n in NAMES)
        print(f"  {segment:<28} {q['events']:>7,}  {cells}")
    r = figures["refits"]
    print(
        f"  refits {r['refits']} (accepted {r['accepted']}, rejected {r['rejected']}{_reasons(r)}); "
        f"{r['versions_in_force']} in force; first model in force after {r['labels_until_first_model']} labels; "
        f"fit p50 {r['fit_s_p50']} s, p99 {r['fit_s_p99']} s"
    )
    if r["blend"]:
        print(f"  blend at the end: {', '.join(f'{k} {v:.3f}' for k, v in r['blend'].items())}")
    s = figures["scoring"]
    print(
        f"  score + learn on the flow's features (same scores as the flow: {s['same_scores_as_the_flow']}): "
        f"during a refit {s['during_refit']}; none running {s['no_refit_running']}"
    )


def _reasons(r: dict) -> str:
    return f": {'; '.join(r['reasons'])}" if r["reasons"] else ""


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per stream (default: %(default)s)")
    parser.add_argument("--streams", nargs="+", choices=sorted(STREAMS), default=list(STREAMS))
    parser.add_argument("--seed", type=int, default=42, help="the streams' seed (default: %(default)s)")
    parser.add_argument("--drift-at", type=float, default=0.5, help="fraction of the stream (default: %(default)s)")
    args = parser.parse_args(argv)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.streams:
            report[name] = run_stream(name, args.events, args.seed, args.drift_at, Path(tmp))
            print_stream(name, report[name])
    met = targets(report)
    print("\ntargets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()))
    print(json.dumps({"streams": report, "targets": met}))


if __name__ == "__main__":
    main()
