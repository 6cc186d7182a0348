"""Recovery directories: create them, and refuse a resume that Bytewax would silently get wrong.

Bytewax keys saved state by step id: a renamed stateful step, or a renamed `Dataflow`, resumes with no
state at all, yet with the input offsets of the old run, so the model would restart from nothing mid-stream.
`guard_recovery_dir` reads the directory's snapshots first and stops with a clear message instead.

    python -m dataflows.flow.recovery init DIR [--partitions N]
    python -m dataflows.flow.recovery show DIR
"""

from __future__ import annotations

import argparse
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

from dataflows.flow.shards import shard_count_error, workers_from_argv
from dataflows.flow.state_journal import FILE as JOURNAL_FILE
from dataflows.flow.state_journal import snapshot_log
from dataflows.flow.step_state import StateFormatError, unpack
from dataflows.flow.steps import OrderByEventTime
from dataflows.flow.wiring import FLOW_ID, STATEFUL_STEPS


class RecoveryError(RuntimeError):
    """A recovery directory this flow must not resume from."""


def recovery_dir_from_argv(argv: list[str]) -> Path | None:
    """The `-r DIR` that `python -m bytewax.run` was given (or BYTEWAX_RECOVERY_DIRECTORY)."""
    for i, arg in enumerate(argv):
        if arg in ("-r", "--recovery-directory") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--recovery-directory="):
            return Path(arg.split("=", 1)[1])
    env = os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")
    return Path(env) if env else None


def saved_steps(directory: Path) -> set[str]:
    """Step ids that have snapshots in the recovery directory."""
    steps: set[str] = set()
    for part in sorted(directory.glob("part-*.sqlite3")):
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as db:
            steps.update(row[0] for row in db.execute("SELECT DISTINCT step_id FROM snaps"))
    return steps


def saved_shards(directory: Path) -> tuple[int, int] | None:
    """(shards per feature family, workers) of the newest snapshot of the ordering step (which keeps them), or
    None if there is none; StateFormatError if it cannot be read."""
    newest: tuple[int, bytes] | None = None
    for part in sorted(directory.glob("part-*.sqlite3")):
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT snap_epoch, ser_change FROM snaps WHERE step_id = ? AND ser_change IS NOT NULL "
                "ORDER BY snap_epoch DESC LIMIT 1",
                (f"{FLOW_ID}.{OrderByEventTime.STEP}",),
            ).fetchone()
        if row is not None and (newest is None or row[0] > newest[0]):
            newest = row
    if newest is None:
        return None
    blob = pickle.loads(newest[1])  # Bytewax pickles what the step's snapshot returned
    if not isinstance(blob, bytes):
        return None
    state = unpack(OrderByEventTime.STEP, blob)
    if not isinstance(state, dict) or "split" not in state:
        return None
    return state["split"]["shards"], state["split"]["workers"]


def expected_steps() -> set[str]:
    return {f"{FLOW_ID}.{step}" for step in STATEFUL_STEPS}


def guard_recovery_dir(argv: list[str], shards: int | None = None) -> None:
    """Stop before the flow starts if the recovery directory holds another flow's (or old step ids') state, or
    feature state cut into another number of shards than `shards` (default: the worker count in `argv`)."""
    directory = recovery_dir_from_argv(argv)
    if directory is None:
        return
    if not directory.is_dir() or not any(directory.glob("part-*.sqlite3")):
        raise RecoveryError(
            f"recovery directory {directory} is not initialised; create it once with "
            f"`python -m dataflows.flow.recovery init {directory}` (or `task run:recover`)"
        )
    saved = saved_steps(directory)
    if not saved:
        return
    expected = expected_steps()
    missing = expected - saved
    unknown = {s for s in saved - expected if not s.startswith((f"{FLOW_ID}.read_kafka", f"{FLOW_ID}.write_"))}
    if missing:
        raise RecoveryError(
            f"recovery directory {directory} holds state for {sorted(saved)} but this flow's stateful steps are "
            f"{sorted(expected)}; missing: {sorted(missing)}"
            + (f", unknown: {sorted(unknown)}" if unknown else "")
            + ". Bytewax would resume these steps with no state (a renamed step or flow id). Resume with the "
            "eddy version that wrote the directory, or start over with a fresh one."
        )
    if not (directory / JOURNAL_FILE).exists():
        raise RecoveryError(
            f"recovery directory {directory} holds snapshots but not the journal they refer to "
            f"({directory / JOURNAL_FILE}: the window rows and dedupe ids the snapshots leave out). It was "
            "deleted or not copied with the directory; start over with a fresh recovery directory."
        )
    try:
        saved = saved_shards(directory)
    except StateFormatError as exc:
        raise RecoveryError(str(exc)) from None
    workers = workers_from_argv(argv)
    shards = shards or workers
    if saved is not None and saved[0] != shards:
        raise RecoveryError(str(shard_count_error(*saved, shards, workers, f"recovery directory {directory}")))


def describe_snapshots(directory: Path, last: int = 100) -> list[str]:
    """Per step (and key, for the feature step's shards): how many snapshots the journal logged, and the time
    and bytes of the last `last` of them."""
    rows = snapshot_log(directory)
    lines = []
    keys = {(row["step"], row["key"]) for row in rows}
    for step, key in sorted(keys):
        mine = [row for row in rows if row["step"] == step and row["key"] == key]
        recent = mine[-last:]
        seconds = sorted(row["seconds"] for row in recent)
        name = step if sum(1 for s, _ in keys if s == step) == 1 else f"{step} {key}"
        lines.append(
            f"{name}: {len(mine)} snapshots logged; the last {len(recent)}: "
            f"{sum(row['bytes'] for row in recent) / len(recent) / 1024:.1f} KiB and "
            f"{seconds[len(seconds) // 2] * 1000:.1f} ms (median, max {seconds[-1] * 1000:.1f} ms) each"
        )
    journal = directory / JOURNAL_FILE
    if journal.exists():
        size = sum(p.stat().st_size for p in directory.glob(JOURNAL_FILE + "*"))
        lines.append(f"journal {journal}: {size / 2**20:.1f} MiB")
    return lines


def init(directory: Path, partitions: int) -> None:
    if any(directory.glob("part-*.sqlite3")):
        print(f"{directory} is already initialised ({len(list(directory.glob('part-*.sqlite3')))} partitions)")
        return
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(directory), str(partitions)], check=True)
    print(f"initialised {directory} with {partitions} recovery partition(s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataflows.flow.recovery", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("init", help="create a recovery directory (once; harmless if it exists)")
    create.add_argument("directory", type=Path)
    create.add_argument("--partitions", type=int, default=1, help="recovery partitions (default: %(default)s)")
    show = commands.add_parser("show", help="list the steps with saved state, and check them against this flow")
    show.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.command == "init":
        init(args.directory, args.partitions)
        return 0
    print("\n".join(sorted(saved_steps(args.directory))) or "(no snapshots yet)")
    for line in describe_snapshots(args.directory):
        print(line)
    try:
        saved = saved_shards(args.directory) if any(args.directory.glob("part-*.sqlite3")) else None
        if saved is not None:
            print(f"feature state in {saved[0]} shard(s) per entity family, written by {saved[1]} worker(s)")
        guard_recovery_dir(["show", "-r", str(args.directory)], saved[0] if saved else None)
    except (RecoveryError, StateFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("compatible with this flow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
