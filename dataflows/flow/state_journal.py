"""Recovery snapshots that cost what changed: a journal of immutable chunks beside Bytewax's recovery store.

Bytewax snapshots the whole state of every key touched in an epoch. The ordering and feature steps hold
history that grows with rate × horizon (the dedupe ids, the window rows), so instead of pickling it at every
epoch each of them writes what the epoch added as one immutable chunk per stream here, and hands Bytewax a
small `Position`: the last chunk it wrote (its high-water mark) and, per stream, the first chunk still live.
This is the pattern of Quix Streams (a local store written in step with the committed offsets) and of Flink's
incremental checkpoints (immutable pieces shared by reference).

Recovery stays exact. A step writes its chunks, in one SQLite transaction, before it returns its snapshot,
so the journal is never behind a snapshot Bytewax committed. On resume, `open` deletes the chunks of epochs
Bytewax never committed (after the resumed position) and returns the live ones, which the step replays into
its state. Chunks that no snapshot can need any more are deleted `KEEP_POSITIONS` snapshots late, so that a
resume from one of the last few snapshots still finds all of them; a resume that cannot (a recovery store
restored from an older backup) is refused by name, never run on partial state.

One file, `DIR/eddy-state.sqlite3`, in WAL mode with full sync: a committed chunk survives the process being
killed. It also logs each snapshot's duration and bytes (`snapshot_log`), read by `python -m
dataflows.flow.recovery show` and `bench.soak`.

>>> import tempfile
>>> directory = Path(tempfile.mkdtemp())
>>> journal = StateJournal(directory, "step", "key", ("rows",))
>>> journal.open(None)
{'rows': []}
>>> first = journal.append({"rows": (b"a", 10)}, dead_below={"rows": 0})
>>> second = journal.append({"rows": (b"b", 20)}, dead_below={"rows": 15})
>>> second
Position(seq=2, first={'rows': 2})
>>> _ = journal.append({"rows": (b"c", 30)}, dead_below={"rows": 15})  # never committed by Bytewax
>>> StateJournal(directory, "step", "key", ("rows",)).open(second)
{'rows': [b'b']}
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE = "eddy-state.sqlite3"
KEEP_POSITIONS = 3
"""Chunks are deleted only once the last this-many positions are all past them: a resume from any of them
(Bytewax commits an epoch after the snapshots of every worker are written) finds its chunks."""
LOG_ROWS = 100_000
"""Snapshot log rows kept per step and key (~2.3 days of 2 s epochs)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    step TEXT NOT NULL, key TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    mark INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (step, key, stream, seq)
);
CREATE TABLE IF NOT EXISTS snapshot_log (
    step TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
    at REAL NOT NULL, seconds REAL NOT NULL, bytes INTEGER NOT NULL
);
"""


class JournalError(RuntimeError):
    """The journal cannot give back the state a snapshot refers to."""


@dataclass(frozen=True)
class Position:
    """Where a snapshot stands in the journal: its last chunk, and each stream's first live chunk."""

    seq: int
    first: dict[str, int]


class StateJournal:
    """The chunks of one step and key: `open` once, then `append` at every snapshot.

    Parameters
    ----------
    directory
        The recovery directory (`-r`); the journal is the file `FILE` in it.
    step, key
        Whose chunks these are (a Bytewax step id and state key).
    streams
        The kinds of chunk the step writes, one of each per snapshot.
    """

    def __init__(self, directory: str | Path, step: str, key: str, streams: tuple[str, ...]):
        self.path = Path(directory) / FILE
        self.step = step
        self.key = key
        self.streams = tuple(streams)
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._seq = 0
        self._live: dict[str, deque[tuple[int, int]]] = {s: deque() for s in self.streams}  # (seq, mark)
        self._positions: deque[Position] = deque(maxlen=KEEP_POSITIONS)
        self._deleted_below = dict.fromkeys(self.streams, 0)
        self._logged = 0

    def open(self, position: Position | None) -> dict[str, list[bytes]]:
        """Start afresh (`None`: this step's and key's chunks are deleted) or resume at `position`: chunks
        after it are deleted (Bytewax never committed them); the live chunks of each stream, oldest first."""
        with self._transaction():
            if position is None:
                self._db.execute("DELETE FROM chunks WHERE step = ? AND key = ?", (self.step, self.key))
                return {stream: [] for stream in self.streams}
            self._db.execute(
                "DELETE FROM chunks WHERE step = ? AND key = ? AND seq > ?", (self.step, self.key, position.seq)
            )
            out = {}
            for stream in self.streams:
                first = position.first.get(stream, position.seq + 1)
                rows = self._db.execute(
                    "SELECT seq, mark, data FROM chunks WHERE step = ? AND key = ? AND stream = ? AND seq >= ? "
                    "ORDER BY seq",
                    (self.step, self.key, stream, first),
                ).fetchall()
                if [seq for seq, _, _ in rows] != list(range(first, position.seq + 1)):
                    have = sorted({seq for seq, _, _ in rows})
                    raise JournalError(
                        f"step '{self.step}': the recovery snapshot needs chunks {first}..{position.seq} of "
                        f"'{stream}' from {self.path}, which holds {_ranges(have) or 'none of them'}. The journal "
                        "was deleted, or the recovery store was restored from an older backup than the journal. "
                        "Start with a fresh recovery directory (see README, Recovery)."
                    )
                self._live[stream] = deque((seq, mark) for seq, mark, _ in rows)
                self._deleted_below[stream] = first
                out[stream] = [bytes(data) for _, _, data in rows]
            self._seq = position.seq
            self._positions.clear()
            self._positions.append(position)
            return out

    def append(self, chunks: dict[str, tuple[bytes, int]], dead_below: dict[str, int]) -> Position:
        """Write one chunk per stream (`data`, `mark`) in one transaction and return the new position.

        A chunk is dead once its `mark` is below the stream's `dead_below`: the owner chooses what a mark is
        (the newest ts in it, the count of items written so far) so that dead chunks hold nothing its state
        still needs. Only leading dead chunks are dropped, so a chunk out of order merely lives longer."""
        self._seq += 1
        seq = self._seq
        for stream in self.streams:
            live = self._live[stream]
            live.append((seq, chunks[stream][1]))
            while len(live) > 1 and live[0][1] < dead_below[stream]:
                live.popleft()
        position = Position(seq, {stream: self._live[stream][0][0] for stream in self.streams})
        self._positions.append(position)
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO chunks (step, key, stream, seq, mark, data) VALUES (?, ?, ?, ?, ?, ?)",
                [(self.step, self.key, s, seq, int(chunks[s][1]), chunks[s][0]) for s in self.streams],
            )
            if len(self._positions) == KEEP_POSITIONS:
                for stream in self.streams:
                    safe = min(p.first[stream] for p in self._positions)
                    if safe > self._deleted_below[stream]:
                        self._db.execute(
                            "DELETE FROM chunks WHERE step = ? AND key = ? AND stream = ? AND seq < ?",
                            (self.step, self.key, stream, safe),
                        )
                        self._deleted_below[stream] = safe
        return position

    @property
    def next_seq(self) -> int:
        """The number the next `append` gives its chunks."""
        return self._seq + 1

    def record(self, seq: int, seconds: float, nbytes: int, at: float | None = None) -> None:
        """Log one snapshot's duration and bytes (the chunks and what Bytewax was handed)."""
        at = time.time() if at is None else at
        self._db.execute(
            "INSERT INTO snapshot_log (step, key, seq, at, seconds, bytes) VALUES (?, ?, ?, ?, ?, ?)",
            (self.step, self.key, seq, at, seconds, nbytes),
        )
        self._logged += 1
        if self._logged % 1000 == 0:
            self._db.execute(
                "DELETE FROM snapshot_log WHERE step = ? AND key = ? AND seq <= ?",
                (self.step, self.key, seq - LOG_ROWS),
            )

    def close(self) -> None:
        self._db.close()

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time across the flow's steps."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


BLOB_MIN_BYTES = 16_384
"""Byte strings at least this long in a pickled state are stored once, by digest (see `SharedBlobs`)."""


@dataclass
class SharedBlobs:
    """Large immutable byte strings in a state, written to the journal once and referenced by digest.

    The learner's refit window is kept as slices pickled once as its rows are learned (`models.refit`); a
    state that holds them would otherwise copy the same megabytes into every snapshot. `dump` pickles a
    state with every `bytes` of `BLOB_MIN_BYTES` or more replaced by its BLAKE2 digest and returns the
    blobs it had not written before; `load` puts them back. Identity is cached (the digest of an object
    is computed once while it is referenced), and blobs no longer referenced are forgotten.

    >>> blobs = SharedBlobs()
    >>> big = bytes(BLOB_MIN_BYTES)
    >>> data, new = blobs.dump({"window": [big, big], "n": 1})
    >>> len(data) < 200, list(new.values()) == [big]
    (True, True)
    >>> blobs.dump({"window": [big], "n": 2})[1]  # written already: nothing new
    {}
    >>> SharedBlobs.load(data, new)["window"][1] == big
    True
    """

    known: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # id -> (blob, digest)
    chunk_of: dict[bytes, int] = field(default_factory=dict)  # digest -> seq of the chunk that holds it

    def dump(self, state: Any) -> tuple[bytes, dict[bytes, bytes]]:
        """The state pickled with its large byte strings by reference, and the blobs new to the journal."""
        out = io.BytesIO()
        pickler = _ReferencingPickler(out, self.known, self.chunk_of)
        pickler.dump(state)
        self.known = pickler.referenced
        return out.getvalue(), pickler.new

    def written(self, blobs: dict[bytes, bytes], seq: int) -> None:
        """`blobs` are now in the journal's chunk `seq`."""
        for digest in blobs:
            self.chunk_of[digest] = seq

    def first_needed(self, default: int) -> int:
        """The oldest chunk that holds a blob the last `dump` referenced (`default` if none)."""
        live = {digest for _, digest in self.known.values()}
        self.chunk_of = {digest: seq for digest, seq in self.chunk_of.items() if digest in live}
        return min(self.chunk_of.values(), default=default)

    def restore(self, chunks: list[bytes], first: int) -> dict[bytes, bytes]:
        """Every blob of the journal's chunks (numbered from `first`), remembered as written there."""
        blobs: dict[bytes, bytes] = {}
        for seq, chunk in enumerate(chunks, start=first):
            part = pickle.loads(chunk)
            blobs.update(part)
            self.written(part, seq)
        return blobs

    @staticmethod
    def load(data: bytes, blobs: dict[bytes, bytes]) -> Any:
        return _ReferencedUnpickler(io.BytesIO(data), blobs).load()


class _ReferencingPickler(pickle.Pickler):
    def __init__(self, file, known: dict[int, tuple[bytes, bytes]], chunk_of: dict[bytes, int]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.known = known
        self.chunk_of = chunk_of
        self.referenced: dict[int, tuple[bytes, bytes]] = {}
        self.new: dict[bytes, bytes] = {}

    def persistent_id(self, obj: Any) -> bytes | None:
        if type(obj) is not bytes or len(obj) < BLOB_MIN_BYTES:
            return None
        entry = self.referenced.get(id(obj)) or self.known.get(id(obj))
        if entry is None or entry[0] is not obj:
            entry = (obj, hashlib.blake2b(obj, digest_size=16).digest())
            if entry[1] not in self.chunk_of:
                self.new[entry[1]] = obj
        self.referenced[id(obj)] = entry
        return entry[1]


class _ReferencedUnpickler(pickle.Unpickler):
    def __init__(self, file, blobs: dict[bytes, bytes]):
        super().__init__(file)
        self.blobs = blobs

    def persistent_load(self, digest: bytes) -> bytes:
        try:
            return self.blobs[digest]
        except KeyError:
            raise JournalError(
                f"a saved state refers to blob {digest.hex()}, which the journal does not hold"
            ) from None


def snapshot_log(directory: str | Path) -> list[dict]:
    """Every logged snapshot in the recovery directory, oldest first (empty if the journal does not exist)."""
    path = Path(directory) / FILE
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT step, key, seq, at, seconds, bytes FROM snapshot_log ORDER BY at").fetchall()
    return [dict(zip(("step", "key", "seq", "at", "seconds", "bytes"), row, strict=True)) for row in rows]


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 7] -> '1..3, 7'."""
    out, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            out.append(str(start) if start == value else f"{start}..{value}")
            start = None
    return ", ".join(out)
