"""`python -m models.export OUT_DIR`: the models in force at the newest checkpoint, in portable form.

Writes into OUT_DIR:
- `river.pkl`: the River model, pickled (load it with the River version `river.json` names);
- `river.json`: what it is: River's and Python's versions, the `features_version` (the SQL it was trained on),
  the labels it learned, its kind;
- `lightgbm.txt`: the LightGBM member in force, in LightGBM's own model text
  (`lightgbm.Booster(model_file=...)`), with `lightgbm.json` (its version in the registry, its columns and
  the category codes of its string features), when the checkpoint has one;
- `logistic_regression.json`: for a linear River model, its weights and intercept, and the standard
  scaler's means and variances that come before them, enough to score without River.

It reads files only (`models.checkpoints`), so it runs beside a live flow or on a copy of the registry.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
from pathlib import Path
from typing import Any

from river import compose, linear_model, preprocessing

from models.checkpoints import Checkpoint, CheckpointError, list_checkpoints, newest_checkpoint

DEFAULT_REGISTRY = Path(".eddy/registry")
"""`[ensemble] registry_dir`'s default, relative to where the command runs."""


def export(checkpoint: Checkpoint, out_dir: str | Path) -> list[Path]:
    """Write the checkpoint's models into `out_dir` (created); the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = checkpoint.load()
    written = [out / "river.pkl", out / "river.json"]
    written[0].write_bytes(pickle.dumps(payload["river"], protocol=pickle.HIGHEST_PROTOCOL))
    _write_json(written[1], {**payload["meta"], "checkpoint": str(checkpoint.path)})
    member = payload["lightgbm"]
    if member is not None:
        (out / "lightgbm.txt").write_text(member.model_str)
        _write_json(
            out / "lightgbm.json",
            {
                "version": payload["lightgbm_version"],
                "columns": list(member.schema.columns),
                "categories": {
                    name: codes for name, codes in zip(member.schema.columns, member.schema.codes, strict=True) if codes
                },
            },
        )
        written += [out / "lightgbm.txt", out / "lightgbm.json"]
    weights = linear_weights(payload["river"])
    if weights is not None:
        _write_json(out / "logistic_regression.json", weights)
        written.append(out / "logistic_regression.json")
    return written


def linear_weights(model: Any) -> dict[str, Any] | None:
    """A logistic regression's weights and intercept, with the standard scaler's statistics before it (None
    for a model that is not a linear one). Its score: sigmoid(intercept + Σ weight × scaled value), a
    value scaled as (x − mean) / √variance (0 where the variance is 0), a string feature one-hot as
    `name_value`."""
    steps = list(model.steps.values()) if isinstance(model, compose.Pipeline) else [model]
    last = steps[-1]
    if not isinstance(last, linear_model.LogisticRegression):
        return None
    scaler = None
    for step in steps[:-1]:
        scaler = getattr(step, "scaler", scaler)
        if isinstance(step, preprocessing.StandardScaler):
            scaler = step
    out: dict[str, Any] = {
        "intercept": float(last.intercept),
        "weights": {str(k): float(v) for k, v in sorted(last.weights.items())},
    }
    if scaler is not None:
        out["scaler"] = {
            "mean": {str(k): float(v) for k, v in sorted(scaler.means.items())},
            "variance": {str(k): float(v) for k, v in sorted(scaler.vars.items())},
        }
    return out


def score_with_weights(weights: dict[str, Any], x: dict[str, float]) -> float:
    """P(True) for an all-numeric `x` from `linear_weights` alone, as a program without River would.

    >>> from models.pipelines import make_model
    >>> model = make_model()
    >>> for x, y in [({"a": 1.0}, True), ({"a": -1.0}, False), ({"a": 2.0}, True)]:
    ...     model.learn_one(x, y)
    >>> x = {"a": 0.5}
    >>> round(score_with_weights(linear_weights(model), x) - model.predict_proba_one(x)[True], 12)
    0.0
    """
    scaler = weights.get("scaler")
    total = weights["intercept"]
    for name, value in x.items():
        if scaler is not None:
            variance = scaler["variance"].get(name, 0.0)
            value = (value - scaler["mean"].get(name, 0.0)) / math.sqrt(variance) if variance > 0 else 0.0
        total += weights["weights"].get(name, 0.0) * value
    return 1.0 / (1.0 + math.exp(-total))


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.export",
        description="Write the models in force at the newest River checkpoint in portable form: river.pkl and "
        "river.json (River and SQL versions), lightgbm.txt (LightGBM's model text), logistic_regression.json "
        "(weights, for a linear River model).",
    )
    parser.add_argument("out_dir", help="folder to write the files into (created)")
    parser.add_argument(
        "--registry",
        type=Path,
        default=DEFAULT_REGISTRY,
        help=f"the model registry ([ensemble] registry_dir; default {DEFAULT_REGISTRY}): its newest run's newest "
        "checkpoint is exported",
    )
    parser.add_argument("--run", help="export the newest checkpoint of this run (a folder name in the registry)")
    args = parser.parse_args(argv)
    if args.run:
        found = list_checkpoints(args.registry / args.run)
        checkpoint = found[-1] if found else None
    else:
        checkpoint = newest_checkpoint(args.registry)
    if checkpoint is None:
        where = args.registry / args.run if args.run else args.registry
        print(
            f"no River checkpoint in {where}: a flow writes one every [model] checkpoint_every labels and at each "
            "refit (pass --registry DIR if [ensemble] registry_dir is elsewhere)",
            file=sys.stderr,
        )
        return 2
    try:
        written = export(checkpoint, args.out_dir)
    except (CheckpointError, OSError, pickle.UnpicklingError) as exc:
        print(f"cannot export {checkpoint.path}: {exc}", file=sys.stderr)
        return 2
    meta = checkpoint.meta
    print(f"{checkpoint.path}: {meta['kind']}, {meta['labels']} labels, features_version {meta['features_version']}")
    for path in written:
        print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
