"""The one door a stateful step's state goes through: `StepState.open` at start, `StepState.save` at a snapshot.

A step hands the door plain data (the `state()` of each domain object it holds, and the chunks of history
that go to the journal, `dataflows.flow.state_journal`) and gets plain data back on resume, from which it
rebuilds its objects with their `from_state`. What Bytewax and the recovery directory need stays here: the
bytes Bytewax stores for a step and key, tagged with `STATE_FORMAT` so that a resume from an incompatible
snapshot is refused by name instead of silently mis-restored; the journal's position; the snapshot log.

Without a recovery directory Bytewax still asks for a snapshot at every epoch and throws it away, so a door
built with no `state_dir` returns the `NOT_SAVED` marker instead, which a resume refuses.

>>> import tempfile
>>> door = StepState("step", Path(tempfile.mkdtemp()), ("rows",))
>>> door.open("key", None)
{'rows': []}
>>> blob = door.save({"n": 1}, {"rows": (b"a", 10)}, dead_below={"rows": 0})
>>> again = StepState("step", door.state_dir, ("rows",))
>>> saved = again.unpack(blob)
>>> saved["n"], again.open("key", saved)
(1, {'rows': [b'a']})
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

from dataflows.flow.state_journal import StateJournal

STATE_FORMAT = 7
"""Bump when the saved state of any step changes shape; old snapshots are then refused by name."""

NOT_SAVED = b"eddy: state not saved (this run had no recovery directory)"
"""What a step built with no `state_dir` returns for its snapshot: no state, and refused on resume."""


class StateFormatError(RuntimeError):
    """A recovery snapshot this version of eddy cannot resume from."""


class StepState:
    """The saved state of one stateful step and key.

    Parameters
    ----------
    step
        The Bytewax step id, which every snapshot names.
    state_dir
        The recovery directory (None: nothing is saved, a snapshot is `NOT_SAVED`).
    streams
        The kinds of journal chunk the step writes, one of each per snapshot (see `StateJournal`).
    """

    def __init__(self, step: str, state_dir: Path | None, streams: tuple[str, ...]):
        self.step = step
        self.state_dir = state_dir
        self.streams = tuple(streams)
        self.journal: StateJournal | None = None

    def unpack(self, resume: bytes | None) -> dict[str, Any] | None:
        """The state a snapshot was saved with (None for a fresh start); StateFormatError if this eddy did not
        write it."""
        return unpack(self.step, resume)

    def open(self, key: str, saved: dict[str, Any] | None) -> dict[str, list[bytes]]:
        """The journal of `key`, opened where `saved` (what `unpack` returned) left it: the live chunks of each
        stream, oldest first (none for a fresh start, or when nothing is saved)."""
        if self.state_dir is None:
            return {stream: [] for stream in self.streams}
        self.journal = StateJournal(self.state_dir, self.step, key, self.streams)
        return self.journal.open(None if saved is None else saved["position"])

    @property
    def saving(self) -> bool:
        """Whether `open` opened a journal, so that snapshots are kept (a recovery directory was given)."""
        return self.journal is not None

    @property
    def next_seq(self) -> int:
        """The number the next `save` gives its chunks."""
        return self.journal.next_seq

    def save(
        self,
        state: dict[str, Any],
        chunks: dict[str, tuple[bytes, int]],
        dead_below: dict[str, int],
        started: float | None = None,
    ) -> bytes:
        """Write `chunks` (`data`, `mark` per stream) to the journal and return the bytes Bytewax stores:
        `state` with the journal's position, tagged. `started` (a `time.perf_counter()`) is when the snapshot
        began, for the snapshot log."""
        started = time.perf_counter() if started is None else started
        if self.journal is None:
            return NOT_SAVED
        position = self.journal.append(chunks, dead_below=dead_below)
        blob = pack(self.step, {**state, "position": position})
        nbytes = sum(len(data) for data, _ in chunks.values()) + len(blob)
        self.journal.record(position.seq, time.perf_counter() - started, nbytes)
        return blob


def pack(step_id: str, state: Any) -> bytes:
    """The bytes Bytewax stores for `state`, tagged with the step and `STATE_FORMAT`."""
    return pickle.dumps({"format": STATE_FORMAT, "step": step_id, "state": state}, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(step_id: str, blob: bytes | None) -> Any:
    """The state `pack` tagged (None for no snapshot); StateFormatError, saying what to do, for bytes of
    another step, format or program."""
    if blob is None:
        return None
    if blob == NOT_SAVED:
        raise StateFormatError(
            f"step '{step_id}': the recovery snapshot holds no state: it was written by a flow built without "
            "snapshots (no recovery directory). Start with a fresh recovery directory (see README, Recovery)."
        )
    try:
        saved = pickle.loads(blob)
    except Exception as exc:
        raise StateFormatError(
            f"step '{step_id}': the recovery snapshot cannot be read ({exc}); it was written by an incompatible "
            "version of eddy. Start with a fresh recovery directory (see README, Recovery)."
        ) from exc
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT or saved.get("step") != step_id:
        found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise StateFormatError(
            f"step '{step_id}': the recovery snapshot has state format {found!r}, this eddy needs "
            f"{STATE_FORMAT}. Resume with the eddy version that wrote it, or start with a fresh recovery "
            "directory (see README, Recovery)."
        )
    return saved["state"]
