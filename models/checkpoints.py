"""Checkpoints of the River model beside the model registry, so that a model can leave the flow.

A checkpoint is taken every `every` labels learned and whenever a LightGBM refit takes effect or is rejected,
as two files in `directory`: `c000000010000.pkl` (the River model, and for an `Ensemble` the LightGBM member
and the blend in force, pickled) and `c000000010000.json` (what it is: labels learned, the SQL's
`features_version` it was trained on, River's version, the model's kind). They are named by the labels
learned, so a run resumed from its recovery snapshot that learns the same labels again writes the same
files again; the newest `keep` are kept. The model is pickled in the scoring thread, at the label that is
due (a few ms for logistic regression), and written by a background thread.

`python -m models.export` writes the newest checkpoint in portable form; a new flow warm-starts from it
(`warm_start`). Nothing here knows of Kafka or SQL: the caller passes the labels count and the
features_version.

>>> import tempfile
>>> from models.pipelines import make_model
>>> model, directory = make_model(), Path(tempfile.mkdtemp())
>>> checkpoints = RiverCheckpoints(directory, every=2)
>>> for n, (x, y) in enumerate([({"a": 1.0}, True), ({"a": -1.0}, False), ({"a": 2.0}, True)], start=1):
...     model.learn_one(x, y)
...     _ = checkpoints.observe(model, labels=n, features_version="abc")
>>> flush_writes()
>>> [(c.meta["labels"], c.meta["features_version"], c.meta["kind"]) for c in list_checkpoints(directory)]
[(2, 'abc', 'ScaleAndEncode | LogisticRegression')]
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import pickle
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import river
from river import base, compose

from models.background import SerialWorker
from models.registry import _atomic_write

log = logging.getLogger("eddy")

FORMAT = 1
"""Bump when the pickled payload changes shape; older checkpoints are then refused by name."""

SUBDIR = "checkpoints"
"""Where a run's checkpoints live inside its registry directory."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint on disk: its pickle and its metadata."""

    path: Path
    meta: dict[str, Any]

    def load(self) -> dict[str, Any]:
        """The pickled payload: `river`, `lightgbm`, `lightgbm_version`, `blend` and the metadata."""
        with self.path.open("rb") as f:
            payload = pickle.load(f)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{self.path}: checkpoint format {payload.get('format')!r}, this eddy reads {FORMAT}")
        return payload


def kind(model: base.Estimator) -> str:
    """What a River model is, by its classes: 'ScaleAndEncode | LogisticRegression', 'ARFClassifier'."""
    if isinstance(model, compose.Pipeline):
        return " | ".join(type(step).__name__ for step in model.steps.values())
    return type(model).__name__


def members(model: base.Classifier) -> dict[str, Any]:
    """The River model of `model` (the learner's model itself, or an `Ensemble`'s River member) with the
    LightGBM member and blend in force beside it, if any."""
    river_member = getattr(model, "river", None)
    if river_member is None:
        return {"river": model, "lightgbm": None, "lightgbm_version": None, "blend": None}
    return {
        "river": river_member,
        "lightgbm": model.lightgbm,
        "lightgbm_version": model.lightgbm_version,
        "blend": model._blend,
    }


def _refits(model: base.Classifier) -> int:
    registry = getattr(model, "registry", None)
    return 0 if registry is None else registry.accepted + registry.rejected


class RiverCheckpoints:
    """Takes checkpoints of a learner's model: `observe` it after every label it learns.

    Parameters
    ----------
    directory
        Where the files go (created on first write).
    every
        Labels learned between checkpoints (0: only at refits).
    keep
        How many checkpoints are kept, the newest.
    """

    def __init__(self, directory: str | os.PathLike, every: int = 10_000, keep: int = 5):
        if keep < 1:
            raise ValueError(f"keep must be at least 1; got {keep}")
        self.directory = Path(directory)
        self.every = every
        self.keep = keep
        self._labels: int | None = None
        self._refits: int | None = None

    def observe(self, model: base.Classifier, labels: int, features_version: str | None) -> bool:
        """Take a checkpoint if `labels` (learned so far) reached a multiple of `every` or a refit came since the
        last call; True if one was taken. The first call only notes where the model is (a resumed run does
        not checkpoint what it had)."""
        if labels == self._labels:
            return False  # nothing learned since, so no refit either: refits take effect in `learn_one`
        refits = _refits(model)
        last_labels, last_refits = self._labels, self._refits
        self._labels, self._refits = labels, refits
        if last_labels is None:
            return False
        due_every = self.every > 0 and labels // self.every > last_labels // self.every
        if not (due_every or refits != last_refits):
            return False
        parts = members(model)
        meta = {
            "format": FORMAT,
            "labels": labels,
            "features_version": features_version,
            "kind": kind(parts["river"]),
            "river_version": river.__version__,
            "python_version": platform.python_version(),
            "lightgbm_version": parts["lightgbm_version"],
            "reason": "refit" if refits != last_refits else "every",
        }
        blob = pickle.dumps({**parts, "format": FORMAT, "meta": meta}, protocol=pickle.HIGHEST_PROTOCOL)
        _WRITER.submit(lambda: _write_or_log(self.directory, self.keep, meta, blob))
        return True


def list_checkpoints(directory: str | os.PathLike) -> list[Checkpoint]:
    """The checkpoints in `directory` (or its `checkpoints/` folder, a run's registry directory), oldest first."""
    directory = Path(directory)
    if (directory / SUBDIR).is_dir():
        directory = directory / SUBDIR
    found = []
    for path in sorted(directory.glob("c*.json")):
        pickled = path.with_suffix(".pkl")
        if not pickled.exists():
            continue
        try:
            found.append(Checkpoint(pickled, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # pruned or being replaced while listed
    return found


def newest_checkpoint(registry_dir: str | os.PathLike, exclude: str | None = None) -> Checkpoint | None:
    """The newest checkpoint of the newest run under `registry_dir` that has one (run directories sort by
    start time); `exclude` names a run to pass over (the one starting now)."""
    base_dir = Path(registry_dir)
    if not base_dir.is_dir():
        return None
    runs = sorted((p for p in base_dir.iterdir() if (p / SUBDIR).is_dir() and p.name != exclude), reverse=True)
    for run_dir in [*runs, base_dir]:
        found = list_checkpoints(run_dir / SUBDIR)
        if found:
            return found[-1]
    return None


def warm_start(model: base.Classifier, checkpoint: Checkpoint) -> base.Classifier:
    """`model` (fresh, as the configuration builds it) given the checkpoint's River model, and for an
    `Ensemble` its LightGBM member and blend: it scores as the checkpointed model did. Refuses a checkpoint
    of another kind of River model."""
    payload = checkpoint.load()
    fresh = members(model)["river"]
    if kind(payload["river"]) != kind(fresh):
        raise CheckpointError(
            f"{checkpoint.path} holds a {kind(payload['river'])} model; [model] name builds a {kind(fresh)}: "
            "set [model] name to the checkpoint's model, or start without a warm start"
        )
    if payload["meta"]["river_version"] != river.__version__:
        log.warning(
            "warm start: %s was written by River %s, this is River %s",
            checkpoint.path,
            payload["meta"]["river_version"],
            river.__version__,
        )
    if getattr(model, "river", None) is None:
        return payload["river"]
    model.river = payload["river"]
    if payload["lightgbm"] is not None:
        model.lightgbm, model.lightgbm_version = payload["lightgbm"], payload["lightgbm_version"]
    if payload["blend"] is not None:
        model._blend = payload["blend"]
    return model


_WRITER = SerialWorker("eddy-checkpoint-writer")


def flush_writes() -> None:
    """Wait until every checkpoint taken so far in this process is on disk."""
    _WRITER.join()


atexit.register(flush_writes)


def _write_or_log(directory: Path, keep: int, meta: dict[str, Any], blob: bytes) -> None:
    try:
        _write(directory, keep, meta, blob)
    except Exception as error:
        log.error("checkpoints: could not write labels=%s to %s: %s", meta["labels"], directory, error)


def _write(directory: Path, keep: int, meta: dict[str, Any], blob: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"c{meta['labels']:012d}"
    _atomic_write(stem.with_suffix(".pkl"), blob)
    _atomic_write(stem.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True))
    stems = sorted({p.stem for p in directory.glob("c*.json")} | {p.stem for p in directory.glob("c*.pkl")})
    for old in stems[:-keep]:
        for suffix in (".json", ".pkl"):
            (directory / old).with_suffix(suffix).unlink(missing_ok=True)
