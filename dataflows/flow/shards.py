"""Feature state spread over the workers: families, shards, the split after the ordering step and the join
before the learner.

Feature groups fall into *families* by their entity columns (`features.catalog.family_of`): the shipped
`sql/transactions` has `user_id` (user_day, user_short) and `merchant_id` (merchant_day, merchant_short).
An event's features in a family depend only on the history of its own entity (sql/README.md: partition by
the entity), so each family's window buffer and indexes are cut by entity into `shards` pieces, one Bytewax
key each, and every piece computes the family's groups for the events of its entities. `shards` is the
flow's worker count (workers per process x processes, read from `bytewax.run`'s arguments as Bytewax reads
them); groups with no entity form the family `none`, which is never split. With one worker nothing is cut:
one key (`WHOLE_KEY`) holds one engine over every group, as before the shards, since families apart would
each pay an engine's fixed cost per micro-batch and each hold every event's row (+40% feature CPU, twice
the rows, in bench.shards).

The ordering step stays one key and releases micro-batches in canonical order; the `Splitter` turns each
into a `Release` for the learner (the batch's items in order: the place of every event, label and dead
letter in the canonical sequence) and one `ShardBatch` per shard that has events in it. The learner's
`FeatureJoin` holds the releases in the order they arrive, which is the canonical order (they come from the
one ordering key down one channel: Bytewax's stateful operator hands a key its items of an epoch in arrival
order, and a Timely channel is first-in first-out), collects the shards' `FeaturePart`s whatever order they
come in, and lets a release through once all its parts are in and every earlier release has gone through.
So the learner sees exactly the sequence one worker gives, with the same feature dicts (keys in the whole
catalog's order), and its predictions are the same bit for bit.

Bytewax gives a key to worker `SipHash-1-3(key) % workers` (Rust's `DefaultHasher` with zero keys, over the
key's bytes and a 0xff terminator; `worker_of_key`, checked against the real placement by a test). Shard
keys are named so that a family's shards land on distinct workers: `user_id:0`, `user_id:1`, and where the
plain name would share a worker with another shard of its family, `user_id:1.1`, `user_id:1.2`, ...

>>> shard_keys("user_id", 2), shard_keys("merchant_id", 2), shard_keys("user_id", 1)
(('user_id:0', 'user_id:1'), ('merchant_id:0', 'merchant_id:1'), ('user_id:0',))
>>> sorted(worker_of_key(key, 3) for key in shard_keys("user_id", 3))
[0, 1, 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import zlib
from collections import deque
from pathlib import Path
from typing import Any

from dataflows.flow.messages import DeadLetter, Event, FeaturedEvent, FeaturePart, Release, ShardBatch
from features.catalog import NO_ENTITY, Catalog, load_catalog, require_catalog, signature
from features.schema import HIDDEN

log = logging.getLogger("eddy")


WHOLE_KEY = "all:0"
"""The feature step's one key with one shard: an engine over every group (family None); on several workers
`all:0.k`, placed on the learner's worker."""


class ShardCountError(RuntimeError):
    """Saved feature state cut into another number of shards than this run would cut it into."""


def shard_count(setting: int, workers: int) -> int:
    """Shards per feature family: `[flow] feature_shards`, or the flow's worker count when that is 0."""
    return setting if setting > 0 else max(1, workers)


def shard_count_error(saved: int, saved_workers: int, shards: int, workers: int, where: str) -> ShardCountError:
    return ShardCountError(
        f"{where} holds feature state cut into {saved} shard(s) per entity family by a flow of {saved_workers} "
        f"worker(s) in all; this run has {workers} worker(s) (workers per process x processes) and would cut it "
        f"into {shards}. Resuming would need the state re-sharded, which eddy does not do: resume with "
        f"{saved_workers} worker(s) in all (e.g. `-w {saved_workers}`), or keep {saved} shard(s) on this many "
        f"workers with `[flow] feature_shards = {saved}` (EDDY_FEATURE_SHARDS), or start over with a fresh "
        "recovery directory (see README, Recovery)."
    )


# -- how many workers the flow runs on ----------------------------------------------------------------------


def workers_from_argv(argv: list[str], environ: dict[str, str] | None = None) -> int:
    """The flow's total worker count, from `python -m bytewax.run`'s arguments as Bytewax reads them:
    `-w/--workers-per-process` times the number of `-a/--addresses` (or the environment variables Bytewax
    falls back on: BYTEWAX_WORKERS_PER_PROCESS, BYTEWAX_ADDRESSES, and BYTEWAX_HOSTFILE_PATH for a process
    given an id but no addresses).

    >>> workers_from_argv(["run.py", "-w", "2", "dataflows.main"], {})
    2
    >>> workers_from_argv(["run.py", "-i", "1", "-a", "a:1;b:1;c:1", "-w3", "dataflows.main"], {})
    9
    >>> workers_from_argv(["run.py", "dataflows.main"], {"BYTEWAX_WORKERS_PER_PROCESS": "4"})
    4
    """
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("-w", "--workers-per-process", default=environ.get("BYTEWAX_WORKERS_PER_PROCESS"))
    parser.add_argument("-i", "--process-id", default=environ.get("BYTEWAX_PROCESS_ID"))
    parser.add_argument("-a", "--addresses", default=environ.get("BYTEWAX_ADDRESSES"))
    try:
        args, _ = parser.parse_known_args(argv[1:])
        per_process = int(args.workers_per_process) if args.workers_per_process not in (None, "") else 1
    except (argparse.ArgumentError, ValueError):
        return 1  # Bytewax refuses these arguments itself, with its own message
    addresses = args.addresses
    process_id = args.process_id
    if process_id is None and "BYTEWAX_POD_NAME" in environ and "BYTEWAX_STATEFULSET_NAME" in environ:
        process_id = environ["BYTEWAX_POD_NAME"]
    if process_id is not None and addresses is None and environ.get("BYTEWAX_HOSTFILE_PATH"):
        try:
            hosts = Path(environ["BYTEWAX_HOSTFILE_PATH"]).read_text().splitlines()
        except OSError:
            hosts = []
        addresses = ";".join(h.strip() for h in hosts if h.strip())
    processes = len(addresses.split(";")) if addresses else 1
    return max(1, per_process) * processes


# -- where Bytewax runs a key -----------------------------------------------------------------------------

_M64 = 0xFFFFFFFFFFFFFFFF


def _siphash13(data: bytes) -> int:
    """SipHash-1-3 with zero keys: Rust's `DefaultHasher::default()`, which Bytewax 0.21 routes keys with."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
        v0 = (v0 + v1) & _M64
        v1 = ((v1 << 13) | (v1 >> 51)) & _M64 ^ v0
        v0 = ((v0 << 32) | (v0 >> 32)) & _M64
        v2 = (v2 + v3) & _M64
        v3 = ((v3 << 16) | (v3 >> 48)) & _M64 ^ v2
        v0 = (v0 + v3) & _M64
        v3 = ((v3 << 21) | (v3 >> 43)) & _M64 ^ v0
        v2 = (v2 + v1) & _M64
        v1 = ((v1 << 17) | (v1 >> 47)) & _M64 ^ v2
        v2 = ((v2 << 32) | (v2 >> 32)) & _M64
        return v0, v1, v2, v3

    whole = len(data) - len(data) % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
        v0 ^= m
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of_key(key: str, workers: int) -> int:
    """The worker Bytewax 0.21 runs a stateful step's `key` on: a Rust `String`'s hash (its bytes, then 0xff)
    modulo the worker count, an index into the workers in order."""
    return _siphash13(key.encode() + b"\xff") % workers


def shard_keys(family: str, shards: int, workers: int | None = None) -> tuple[str, ...]:
    """The Bytewax keys of a family's shards on `workers` workers (default: as many as shards): shard s is
    `family:s`, or `family:s.k` with the smallest k that puts it on a worker none of the family's earlier
    shards is on (until every worker has one). The names depend on the worker count, so a flow keeps the
    ones it started with in its state."""
    workers = shards if workers is None else max(1, workers)
    if shards <= 1:
        return (f"{family}:0",)
    keys: list[str] = []
    taken: set[int] = set()
    for shard in range(shards):
        if len(taken) == workers:
            taken = set()
        key, k = f"{family}:{shard}", 0
        while worker_of_key(key, workers) in taken:
            k += 1
            key = f"{family}:{shard}.{k}"
        taken.add(worker_of_key(key, workers))
        keys.append(key)
    return tuple(keys)


def key_on_worker(name: str, worker: int, workers: int) -> str:
    """`name`, or `name.k` with the smallest k that Bytewax runs on `worker`."""
    key, k = name, 0
    while worker_of_key(key, workers) != worker:
        k += 1
        key = f"{name}.{k}"
    return key


# -- which shard an entity belongs to ---------------------------------------------------------------------


def _text(value: Any) -> bytes:
    """A stable byte form of an entity value: equal values as the SQL compares them give equal bytes."""
    kind = type(value)
    if kind is str:
        return value.encode("utf-8", "surrogatepass")
    if value is None:
        return b"\x00"
    if kind is float:
        return repr(value + 0.0).encode()  # -0.0 and 0.0 are one entity
    return repr(value).encode()


def entity_shard(values: tuple, shards: int) -> int:
    """The shard of an entity (its values in the family's sorted column order): CRC-32 of their text, not
    Python's `hash`, which is salted per process.

    >>> entity_shard(("u17",), 2), entity_shard(("u17",), 1), entity_shard(("m3", "u17"), 4)
    (0, 0, 2)
    """
    if shards <= 1:
        return 0
    data = _text(values[0]) if len(values) == 1 else b"\x1f".join(map(_text, values))
    return zlib.crc32(data) % shards


# -- the split, on the ordering key -----------------------------------------------------------------------


class Splitter:
    """Turns the ordering step's released micro-batches into a `Release` for the learner and `ShardBatch`es
    for the feature shards; returns `(key, message)` pairs. Lives in the ordering step, on its key.

    It also holds the feature definitions in force: it checks the SQL folder before each micro-batch (a
    stat), logs a reload or a refused edit, and stamps every message with the version, so all the shards of
    one micro-batch compute under one version (each reloads its own definitions when the stamp changes).

    And it keeps the engines' contract, batches in event-time order, for the whole stream rather than a
    shard's entities: an event whose ts is below the newest ts released before it (or, at a release's end,
    at or below) is dead-lettered `late` in its place, and no shard sees it. The ordering step releases in ts
    order, so this refuses nothing there; it keeps the rule whatever feeds the split.

    Plain state (`state()`): the release counter, the lateness marks and the shard count; the definitions
    are read from the folder again on resume, as the engines do.
    """

    def __init__(
        self,
        sql_dir: str | Path,
        fields: dict[str, str],
        shards: int = 1,
        mode: str = "event_time",
        state: dict | None = None,
        learner_key: str = "eddy",
        workers: int | None = None,
    ):
        self.sql_dir = str(sql_dir)
        self.fields = {k: v for k, v in fields.items() if k not in HIDDEN}
        self.shards = max(1, int(shards))
        self.workers = self.shards if workers is None else max(1, int(workers))
        self.event_time = mode != "arrival"
        self.learner_key = learner_key
        self.seq = 0
        self.max_ts: int | None = None
        self.floor: int | None = None
        self.keys: dict[str | None, tuple[str, ...]] = {}  # per family, named once: the state lives under them
        if state is not None:
            if state["shards"] != self.shards:
                raise shard_count_error(
                    state["shards"], state["workers"], self.shards, self.workers, "the recovery snapshot"
                )
            self.seq, self.max_ts, self.floor = state["seq"], state["max_ts"], state["floor"]
            self.keys = dict(state["keys"])
        self._signature = signature(self.sql_dir)
        self._reported_errors: set[str] = set()
        self._use(require_catalog(self.sql_dir, self.fields))

    def state(self) -> dict:
        return {
            "shards": self.shards,
            "workers": self.workers,
            "keys": dict(self.keys),
            "seq": self.seq,
            "max_ts": self.max_ts,
            "floor": self.floor,
        }

    def _keys(self, family: str | None) -> tuple[str, ...]:
        if family not in self.keys:
            if family is None:  # one shard: on the learner's worker, so its features never cross workers
                learner = worker_of_key(self.learner_key, self.workers)
                self.keys[None] = (key_on_worker(WHOLE_KEY, learner, self.workers),)
            else:
                self.keys[family] = shard_keys(family, 1 if family == NO_ENTITY else self.shards, self.workers)
        return self.keys[family]

    @property
    def version(self) -> str:
        return self.catalog.version

    def describe(self) -> str:
        """The families and their shard keys, for the start-up log."""
        return "; ".join(
            f"{family or 'every group'} "
            f"({', '.join(g.name for g in (self.catalog.subset(family) if family else self.catalog).groups)}) "
            f"on {', '.join(keys)}"
            for family, _, keys in self._routes
        )

    def _use(self, catalog: Catalog) -> None:
        self.catalog = catalog
        if self.shards == 1:
            # One shard of every family, so one engine over every group. Apart, the families would each pay
            # an engine's costs per micro-batch and hold every event's row (bench.shards).
            self.families: tuple[str | None, ...] = (None,)
            self._routes = [(None, (), self._keys(None))]
            self.names = None
            return
        families = catalog.families
        self.families = tuple(families)
        self._routes = [(family, columns, self._keys(family)) for family, columns in families.items()]
        # The learner merges the families' feature dicts in this order: the catalog's own order unless a
        # family's groups are not contiguous in it (then the learner reorders by `names`).
        merged = [name for family in self.families for name in catalog.subset(family).feature_names]
        self.names = None if merged == catalog.feature_names else tuple(catalog.feature_names)

    def reload(self) -> None:
        """At a micro-batch boundary: take edited definitions (a refused edit keeps the ones in force)."""
        current = signature(self.sql_dir)
        if current == self._signature:
            return
        self._signature = current
        catalog, errors = load_catalog(self.sql_dir, self.fields)
        if errors:
            for error in errors:
                message = str(error)
                if message not in self._reported_errors:
                    self._reported_errors.add(message)
                    log.error("feature edit refused, keeping version %s:\n%s", self.version, message)
            return
        if catalog.version == self.version:
            return
        previous, old_families = self.version, set(self.families)
        self._use(catalog)
        log.info(
            "feature definitions reloaded: version %s -> %s (%s)",
            previous,
            catalog.version,
            ", ".join(catalog.feature_names),
        )
        for family in self.families:
            if family is not None and family not in old_families:
                log.warning("feature family %s is new: its shards start with no history", family)

    def split(self, items: list) -> list[tuple[str, Any]]:
        """One released micro-batch (events, labels, dead letters in canonical order) -> messages by key."""
        if not items:
            return []
        self.reload()
        seq = self.seq
        self.seq += 1
        version = self.version
        routes = self._routes
        single = all(len(keys) == 1 for _, _, keys in routes)
        rows: list[dict] = []  # with one shard per family, every family takes the same list
        buckets = [[[] for _ in keys] for _, _, keys in routes] if not single else None
        placed = items
        saw_event = False
        max_ts, floor = self.max_ts, self.floor
        for i, item in enumerate(items):
            if type(item) is not Event:
                continue
            saw_event = True
            if self.event_time:
                mark = floor if max_ts is None else (max_ts if floor is None or max_ts > floor else floor)
                if mark is not None and item.ts < mark:
                    if placed is items:
                        placed = list(items)
                    placed[i] = DeadLetter(
                        item.raw,
                        item.key,
                        f"late: ts {item.ts} is before the watermark {mark} (max ts seen {max_ts} - lateness 0 ms)",
                        "features",
                        item.origin,
                        "late",
                    )
                    continue
                if max_ts is None or item.ts > max_ts:
                    max_ts = item.ts
            row = item.as_row()
            if single:
                rows.append(row)
                continue
            for (_, columns, keys), bucket in zip(routes, buckets, strict=True):
                if len(keys) == 1:
                    bucket[0].append(row)
                elif len(columns) == 1:
                    value = row[columns[0]]
                    data = value.encode("utf-8", "surrogatepass") if type(value) is str else _text(value)
                    bucket[zlib.crc32(data) % len(keys)].append(row)
                else:
                    bucket[entity_shard(tuple(row[c] for c in columns), len(keys))].append(row)
        if self.event_time and saw_event:
            self.max_ts = max_ts
            self.floor = max_ts + 1 if max_ts is not None else floor
        out: list[tuple[str, Any]] = []
        if single:
            if rows:
                out = [(keys[0], ShardBatch(seq, keys[0], family, rows, version)) for family, _, keys in routes]
        else:
            for (family, _, keys), bucket in zip(routes, buckets, strict=True):
                out.extend(
                    (key, ShardBatch(seq, key, family, part, version))
                    for key, part in zip(keys, bucket, strict=True)
                    if part
                )
        parts = tuple(key for key, _ in out)
        return [(self.learner_key, Release(seq, placed, parts, self.families, version, self.names)), *out]


# -- the join, on the learner's key -----------------------------------------------------------------------


class FeatureJoin:
    """Puts the shards' features back on the released events, in the canonical order; plain state.

    `push(items)` takes what reached the learner (releases, feature parts, and anything else, which passes
    straight through: the dead letters of decoding and reading) and returns the items ready to learn from,
    in order: every event of a release whose parts are all in, and of no earlier release still waiting, as
    a `FeaturedEvent` (or a `late` dead letter in its place), with its labels and dead letters where they were.

    Within an epoch every part of that epoch's releases reaches the learner before the epoch closes (the
    shards answer in the epoch they were asked in), so at a snapshot nothing waits here; what would wait is
    part of the learner's state all the same.
    """

    def __init__(self) -> None:
        self.pending: deque[Release] = deque()
        self.parts: dict[int, list[FeaturePart]] = {}
        self.next_seq = 0
        self._warned: set[tuple[str, str]] = set()

    def state(self) -> dict:
        """The releases waiting for their features and the parts in, by name (the join's own objects)."""
        return {"pending": self.pending, "parts": self.parts, "next_seq": self.next_seq}

    @classmethod
    def from_state(cls, state: dict) -> FeatureJoin:
        """The join `state` (from `state()`) describes."""
        join = cls()
        join.__setstate__(state)
        return join

    def __getstate__(self) -> dict:
        return self.state()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._warned = set()

    @property
    def waiting(self) -> int:
        """Releases held for their features."""
        return len(self.pending)

    def push(self, items: list) -> list:
        out: list = []
        for item in items:
            kind = type(item)
            if kind is Release:
                if item.seq != self.next_seq:
                    raise RuntimeError(
                        f"release {item.seq} reached the learner where release {self.next_seq} was due: the "
                        "canonical order is broken (the ordering step's and the learner's state disagree)"
                    )
                self.next_seq += 1
                self.pending.append(item)
            elif kind is FeaturePart:
                self.parts.setdefault(item.seq, []).append(item)
            else:
                out.append(item)
        pending, parts = self.pending, self.parts
        while pending:
            head = pending[0]
            got = parts.get(head.seq, ())
            if len(got) < len(head.parts):
                break
            pending.popleft()
            parts.pop(head.seq, None)
            self._assemble(head, got, out)
        return out

    def _assemble(self, release: Release, parts: list[FeaturePart], out: list) -> None:
        if sorted(p.key for p in parts) != sorted(release.parts):
            raise RuntimeError(
                f"release {release.seq} expected features from {sorted(release.parts)}, "
                f"got them from {sorted(p.key for p in parts)}"
            )
        version = release.version
        by_family: dict[str, list[dict[str, dict]]] = {}
        for part in parts:
            if part.version != version and (part.version, version) not in self._warned:
                self._warned.add((part.version, version))
                log.warning(
                    "feature shard %s computed with version %s where %s was in force (an edit landed between "
                    "their reloads); it catches up at its next micro-batch",
                    part.key,
                    part.version,
                    version,
                )
            by_family.setdefault(part.family, []).append(part.features)
        tables = [_merged(by_family.get(family, ())) for family in release.families]
        names = release.names
        one = tables[0] if len(tables) == 1 else None
        for item in release.items:
            if type(item) is not Event:
                out.append(item)
                continue
            event_id = item.event_id
            try:
                if one is not None:
                    features = one[event_id]
                elif not tables:
                    features = {}
                else:
                    features = {}
                    for table in tables:
                        features.update(table[event_id])
                    if names is not None:
                        features = {name: features[name] for name in names}
            except KeyError:
                reason = "the feature engine returned no features for this event"
                out.append(DeadLetter(item.raw, item.key, reason, "features", item.origin, "late"))
                continue
            out.append(FeaturedEvent(item, features, version))


def _merged(tables) -> dict:
    """One family's features by event_id, from its shards' parts (one part: as it came)."""
    if len(tables) == 1:
        return tables[0]
    merged: dict = {}
    for table in tables:
        merged.update(table)
    return merged
