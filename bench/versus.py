"""Benchmark: this tree's flow against another revision's, interleaved on the same machine at the same time.

    python -m bench.versus REV [--events 50000] [--pairs 6] [--ensemble]

A figure from another day says little on a shared machine: the plain loop itself ran 10 % slower from one
day to the next here. This runs `python -m bytewax.run dataflows.main` (River alone unless `--ensemble`,
EDDY_TAIL=false) over the same events on fresh topics, alternately from this tree and from a git worktree of
REV, each run preceded by the same tree's run over an empty topic (start-up and shut-down, subtracted). Per
run it takes the wall time and the CPU time of the flow process (all its threads): the CPU per event is the
steadier figure when other work shares the machine, the events/s the one users see. Prints each pair, the
medians and this tree / REV, then one JSON object on the last line. The worktree is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.flow import flow_env, fresh_topics
from dataflows.broker.admin import delete_topics
from dataflows.flow.config import REPO_ROOT
from dataflows.tools import datasets
from dataflows.tools.replay import make_producer, replay


def timed_run(tree: Path, bootstrap: str, events: list[dict], ensemble: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the flow of `tree` over `events` published to fresh topics."""
    topics = fresh_topics(bootstrap, 3)
    try:
        if events:
            replay(iter(events), make_producer(bootstrap), topics.events)
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        flow = subprocess.run(
            [sys.executable, "-m", "bytewax.run", "dataflows.main"],
            cwd=tree,
            env=flow_env(topics, bootstrap, tail=False, mode="event_time", ensemble=ensemble),
            capture_output=True,
            text=True,
        )
        wall, after = time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
        if flow.returncode != 0:
            raise SystemExit(f"the flow of {tree} failed:\n{flow.stderr[-3000:]}")
    finally:
        delete_topics(bootstrap, topics.all())
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def one_pair_member(tree: Path, bootstrap: str, events: list[dict], ensemble: bool) -> dict:
    empty_wall, empty_cpu = timed_run(tree, bootstrap, [], ensemble)
    wall, cpu = timed_run(tree, bootstrap, events, ensemble)
    return {
        "events_per_s": round(len(events) / max(wall - empty_wall, 1e-3)),
        "cpu_us_per_event": round(1e6 * (cpu - empty_cpu) / len(events), 1),
        "load": round(os.getloadavg()[0], 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare with (a commit, tag or branch)")
    parser.add_argument("--events", type=int, default=50_000, help="events per run (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=6, help="runs of each tree, alternating (default: %(default)s)")
    parser.add_argument("--ensemble", action="store_true", help="River and LightGBM (default: River alone)")
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    events = list(datasets.transactions(args.events))
    runs: dict[str, list[dict]] = {"this": [], "base": []}
    with tempfile.TemporaryDirectory(prefix="eddy-versus-") as scratch:
        base = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), args.rev], cwd=REPO_ROOT, check=True)
        try:
            for pair in range(args.pairs):
                for name, tree in (("base", base), ("this", REPO_ROOT)):
                    runs[name].append(one_pair_member(tree, bootstrap, events, args.ensemble))
                print(f"pair {pair + 1}: {args.rev} {runs['base'][-1]}  this tree {runs['this'][-1]}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO_ROOT, check=False)
    medians = {
        name: {f: statistics.median(r[f] for r in rs) for f in ("events_per_s", "cpu_us_per_event")}
        for name, rs in runs.items()
    }
    ratios = {f: round(medians["this"][f] / medians["base"][f], 3) for f in ("events_per_s", "cpu_us_per_event")}
    learner = "the ensemble" if args.ensemble else "River alone"
    print(f"\n{learner}, {args.events} events, {args.pairs} pairs, medians:")
    print(f"  {args.rev}: {medians['base']['events_per_s']:.0f} events/s, {medians['base']['cpu_us_per_event']} µs CPU")
    print(f"  this tree: {medians['this']['events_per_s']:.0f} events/s, {medians['this']['cpu_us_per_event']} µs CPU")
    print(f"  this / {args.rev}: events/s {ratios['events_per_s']}, CPU per event {ratios['cpu_us_per_event']}")
    print(json.dumps({"rev": args.rev, "events": args.events, "runs": runs, "medians": medians, "ratios": ratios}))


if __name__ == "__main__":
    main()
