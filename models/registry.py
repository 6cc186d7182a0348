"""Every LightGBM refit, accepted or rejected, with its metadata; the last `keep` versions are kept.

On disk each version is `v000012.json` (metadata) and, if a model was fitted, `v000012.txt` (LightGBM's
model text, loadable with `lightgbm.Booster(model_file=...)`). Writes are idempotent: a run recovered from a
snapshot that redoes a refit rewrites the same files. Without a directory the registry lives in memory only.

The files are written by one background thread, in the order the refits were saved: a save takes effect in
the scoring thread at once and costs it no disk I/O (~10 ms a refit). `flush_writes()` waits for the files: a
caller that saves the registry's state calls it first, so that the saved state never runs ahead of the
files it names; the process flushes at exit.

A write that fails (read-only or full disk, a path that is not a directory) removes its temporary file,
keeps the refit in memory, logs, and is counted: `write_health()` says how many failed and the latest error
while the latest write failed (an alert rule watches it).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

from models.background import SerialWorker
from models.lightgbm_member import LightGBMMember

log = logging.getLogger("eddy")


class ModelRegistry:
    """The last `keep` refits (metadata and model text) and counts of accepted and rejected ones."""

    def __init__(self, directory: str | os.PathLike | None = None, keep: int = 5):
        if keep < 1:
            raise ValueError(f"keep must be at least 1; got {keep}")
        self.directory = None if directory is None else Path(directory)
        self.keep = keep
        self.accepted = 0
        self.rejected = 0
        self._entries: deque[tuple[dict[str, Any], LightGBMMember | None]] = deque(maxlen=keep)
        self.write_failures = 0
        self.write_error: str | None = None

    def save(self, record: dict[str, Any], member: LightGBMMember | None) -> dict[str, Any]:
        """Record one refit; returns its metadata with the running counts."""
        if record["accepted"]:
            self.accepted += 1
        else:
            self.rejected += 1
        record = {**record, "accepted_total": self.accepted, "rejected_total": self.rejected}
        self._entries.append((record, member))
        if self.directory is not None:
            _WRITER.submit(functools.partial(_write_or_log, self.directory, self.keep, record, member, self))
        return record

    def write_health(self) -> dict[str, Any]:
        """Files that could not be written: how many refits failed to write, and the error of the latest write
        if it failed (None once a write succeeds again)."""
        return {
            "registry_write_failures": self.write_failures,
            "registry_write_error": self.write_error,
        }

    def _written(self, error: str | None) -> None:
        """On the writer thread: the outcome of one refit's write."""
        if error is not None:
            self.write_failures += 1
        self.write_error = error

    def versions(self) -> list[dict[str, Any]]:
        """Metadata of the kept versions, oldest first."""
        return [record for record, _ in self._entries]

    def load(self, version: int) -> LightGBMMember | None:
        """The kept model of `version`, or None if it was pruned or never fitted."""
        for record, member in self._entries:
            if record["version"] == version:
                return member
        return None

    def __repr__(self) -> str:
        return (
            f"ModelRegistry(directory={str(self.directory) if self.directory else None!r}, keep={self.keep}, "
            f"accepted={self.accepted}, rejected={self.rejected})"
        )


_WRITER = SerialWorker("eddy-registry-writer")


def flush_writes() -> None:
    """Wait until every registry file saved so far in this process is on disk."""
    _WRITER.join()


atexit.register(flush_writes)


def _write_or_log(
    directory: Path, keep: int, record: dict[str, Any], member: LightGBMMember | None, owner: ModelRegistry
) -> None:
    try:
        _write(directory, keep, record, member)
    except Exception as error:
        log.error(
            "model registry: could not write version %s to %s: %s (the refit is in effect and kept in memory; "
            "free the disk or fix the directory's permissions, or set [ensemble] registry_dir)",
            record["version"],
            directory,
            error,
        )
        owner._written(f"{type(error).__name__}: {error}")
    else:
        owner._written(None)


def _write(directory: Path, keep: int, record: dict[str, Any], member: LightGBMMember | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"v{record['version']:06d}"
    if member is not None:
        _atomic_write(stem.with_suffix(".txt"), member.model_str)
    try:
        _atomic_write(stem.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=True, default=str))
    except BaseException:
        stem.with_suffix(".txt").unlink(missing_ok=True)  # a version is on disk whole or not at all
        raise
    oldest_kept = record["version"] - keep
    for path in directory.glob("v*.*"):
        if path.suffix in (".json", ".txt") and path.stem[1:].isdigit() and int(path.stem[1:]) <= oldest_kept:
            path.unlink(missing_ok=True)


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
        tmp.replace(path)
    except BaseException:
        # A failed write (disk full, the target a directory) must not leave a partial file behind.
        tmp.unlink(missing_ok=True)
        raise
