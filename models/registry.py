"""Every LightGBM refit, accepted or rejected, with its metadata; the last `keep` versions are kept.

On disk each version is `v000012.json` (metadata) and, if a model was fitted, `v000012.txt` (LightGBM's
model text, loadable with `lightgbm.Booster(model_file=...)`). Writes are idempotent: a run recovered from a
snapshot that redoes a refit rewrites the same files. Without a directory the registry lives in memory only.
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

from models.lightgbm_member import LightGBMMember


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

    def save(self, record: dict[str, Any], member: LightGBMMember | None) -> dict[str, Any]:
        """Record one refit; returns its metadata with the running counts."""
        if record["accepted"]:
            self.accepted += 1
        else:
            self.rejected += 1
        record = {**record, "accepted_total": self.accepted, "rejected_total": self.rejected}
        self._entries.append((record, member))
        if self.directory is not None:
            self._write(record, member)
        return record

    def versions(self) -> list[dict[str, Any]]:
        """Metadata of the kept versions, oldest first."""
        return [record for record, _ in self._entries]

    def load(self, version: int) -> LightGBMMember | None:
        """The kept model of `version`, or None if it was pruned or never fitted."""
        for record, member in self._entries:
            if record["version"] == version:
                return member
        return None

    def _write(self, record: dict[str, Any], member: LightGBMMember | None) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = self.directory / f"v{record['version']:06d}"
        if member is not None:
            _atomic_write(stem.with_suffix(".txt"), member.model_str)
        _atomic_write(stem.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=True, default=str))
        oldest_kept = record["version"] - self.keep
        for path in self.directory.glob("v*.*"):
            if path.suffix in (".json", ".txt") and path.stem[1:].isdigit() and int(path.stem[1:]) <= oldest_kept:
                path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return (
            f"ModelRegistry(directory={str(self.directory) if self.directory else None!r}, keep={self.keep}, "
            f"accepted={self.accepted}, rejected={self.rejected})"
        )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
