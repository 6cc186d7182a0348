"""All feature files of one folder, loaded together and versioned by a hash of their text.

Groups fall into *families* by their entity columns: every group of a family reads the history of the same
entities, so an engine over one family (`Catalog.subset`) can hold the history of any set of that family's
entities and compute exactly the whole engine's features for their events (the dataflow shards it so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from features.planner import plan_group
from features.spec import FeatureFileError, FeatureGroup, check_catalog, definitions_hash, load_group

NO_ENTITY = "none"
"""The family of groups with no entity (`entity: none`, which no column can be called)."""


def family_of(entity: tuple[str, ...]) -> str:
    """The family name of groups over `entity`: its columns sorted and comma-joined, or `NO_ENTITY`.

    >>> family_of(("user_id",)), family_of(("user_id", "merchant_id")), family_of(())
    ('user_id', 'merchant_id,user_id', 'none')
    """
    return ",".join(sorted(entity)) if entity else NO_ENTITY


@dataclass(frozen=True)
class Catalog:
    """The feature groups in force, in file-name order, and their `features_version`."""

    groups: tuple[FeatureGroup, ...]
    version: str

    @property
    def feature_names(self) -> list[str]:
        return [name for group in self.groups for name in group.feature_names]

    @property
    def horizon_ms(self) -> int:
        return max((g.horizon_ms for g in self.groups), default=0)

    @property
    def families(self) -> dict[str, tuple[str, ...]]:
        """Family name -> its entity columns (sorted), in the order of each family's first group."""
        out: dict[str, tuple[str, ...]] = {}
        for group in self.groups:
            out.setdefault(family_of(group.entity), tuple(sorted(group.entity)))
        return out

    def subset(self, family: str) -> Catalog:
        """The groups of one family, under the whole folder's `version` (empty if the family has none)."""
        return Catalog(tuple(g for g in self.groups if family_of(g.entity) == family), self.version)


def signature(sql_dir: str | Path) -> tuple[tuple[str, int, int], ...]:
    """A cheap fingerprint of the folder (names, sizes, mtimes) to notice edits without reading files."""
    try:
        entries = [e for e in os.scandir(sql_dir) if e.name.endswith(".sql") and e.is_file()]
    except FileNotFoundError:
        return ()
    return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries))


def load_catalog(sql_dir: str | Path, fields: dict[str, str]) -> tuple[Catalog | None, list[FeatureFileError]]:
    """Load every `*.sql` file, each with its plan; returns the catalog (None if any file fails) and every
    error found."""
    sql_dir = Path(sql_dir)
    if not sql_dir.is_dir():
        error = FeatureFileError(sql_dir, None, "no such folder of feature files")
        return None, [error]
    groups, texts, errors = [], {}, []
    for path in sorted(sql_dir.glob("*.sql")):
        try:
            text = path.read_text(encoding="utf-8")
            groups.append(plan_group(load_group(path, fields, text), fields))
            texts[path.name] = text
        except FeatureFileError as exc:
            errors.append(exc)
        except OSError as exc:
            errors.append(FeatureFileError(path, None, f"cannot read the file: {exc}"))
    if not errors:
        try:
            check_catalog(groups)
        except FeatureFileError as exc:
            errors.append(exc)
    if errors:
        return None, errors
    return Catalog(tuple(groups), definitions_hash(texts)), []


def require_catalog(sql_dir: str | Path, fields: dict[str, str]) -> Catalog:
    """Load the folder or raise its first error (start-up and backfill: nothing to fall back on)."""
    catalog, errors = load_catalog(sql_dir, fields)
    if errors:
        raise errors[0]
    return catalog
