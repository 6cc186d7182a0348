"""Benchmark: a long run of the real job with recovery, to show whether its cost grows with the state it holds.

    python -m bench.soak [--events 1000000] [--snapshot-s 2] [--events-per-second 100] [--no-ensemble]
                         [--label-delay 30] [--keep] [--timeout-min 60]

Issue 13 ("State that scales"): a flow whose windows fill slows down if every recovery snapshot pickles all
of its state and every insert copies the whole index. This benchmark runs what a user runs and watches it
from outside:

1. the synthetic transactions stream, packed to `--events-per-second` events per second of event time (100:
   a 1M-event run spans under 3 h of event time, so every event stays in the 24 h windows), is published to
   fresh 3-partition topics, each label on the labels topic `--label-delay` event-seconds after its event;
2. `python -m bytewax.run -r DIR -s SNAPSHOT_S -b 0 dataflows.main` (EDDY_TAIL=false, DIR a fresh recovery
   directory) runs to the end of that input, its output in a log file;
3. meanwhile a consumer thread reads the predictions topic as the flow writes it, and every 0.5 s the flow's
   memory (/proc), the size of DIR and the snapshots Bytewax stored are sampled.

Figures: wall-clock events/s over each tenth of the events (from the predictions' Kafka timestamps, i.e.
when the flow produced them) and last tenth / first tenth (target >= 0.8); snapshot time and bytes per epoch
early and late (the first and last tenth of the epochs while the flow scores) and late / early (target
<= 1.5), from eddy's own log DIR/eddy-state.sqlite3 (table `snapshot_log`) when this eddy records one, else
bytes only, from Bytewax's `snaps` table; RSS and the size of DIR at 25 %, 50 % and 100 % of the events
scored, the peak RSS and the bytes of RSS per event held in the windows. Prints figures for people, then
one JSON object on the last line. Topics and DIR are deleted at the end unless `--keep` (DIR is kept, with
the flow's log, when the flow fails).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from tqdm import tqdm

from bench.flow import flow_env, fresh_topics
from dataflows.broker.admin import BrokerError, check_broker, delete_topics
from dataflows.flow.config import REPO_ROOT, Topics, load_config
from dataflows.tools import datasets
from dataflows.tools.replay import ReplayResult, make_producer, replay
from features.catalog import require_catalog

PARTITIONS = 3
SAMPLE_S = 0.5
MEMORY_POINTS = (0.25, 0.5, 1.0)
THROUGHPUT_TARGET = 0.8
SNAPSHOT_TARGET = 1.5
SNAPSHOT_LOG = "eddy-state.sqlite3"
EPOCH_GAP_S = 0.5
"""Snapshots of one epoch follow one another on the worker; a longer gap starts the next epoch."""
LOG_TAIL_LINES = 40


class SoakError(RuntimeError):
    """The run cannot go on; the message says why."""


# -- input -------------------------------------------------------------------------------------------------


def publish(bootstrap: str, topics: Topics, args: argparse.Namespace) -> ReplayResult:
    """The dense transactions stream onto the events topic, labels `--label-delay` event-seconds later."""
    events = datasets.transactions(args.events, events_per_second=args.events_per_second)
    delayed = args.label_delay > 0
    producer = make_producer(bootstrap)
    with tqdm(total=args.events, unit="ev", desc="replay", file=sys.stderr, mininterval=1.0) as bar:
        # Labels are sent as soon as their event (no wall-clock wait); their `ts` places them in event time.
        result = replay(
            events,
            producer,
            topics.events,
            topics.labels,
            0.0 if delayed else None,
            label_event_delay_s=args.label_delay if delayed else None,
            progress=bar,
        )
    producer.close()
    return result


# -- the flow ----------------------------------------------------------------------------------------------


def init_recovery(directory: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "dataflows.flow.recovery", "init", str(directory)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )


def start_flow(topics: Topics, bootstrap: str, recovery: Path, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    env = flow_env(topics, bootstrap, tail=False, mode="event_time", ensemble=args.ensemble)
    command = [sys.executable, "-m", "bytewax.run", "-r", str(recovery), "-s", f"{args.snapshot_s:g}", "-b", "0"]
    with log.open("wb") as out:
        return subprocess.Popen([*command, "dataflows.main"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out)


def stop_flow(flow: subprocess.Popen) -> None:
    """SIGINT (Bytewax stops at the next epoch), then SIGKILL if it does not within 30 s."""
    if flow.poll() is not None:
        return
    flow.send_signal(signal.SIGINT)
    try:
        flow.wait(timeout=30)
    except subprocess.TimeoutExpired:
        flow.kill()
        flow.wait()


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


# -- watching it from outside ------------------------------------------------------------------------------


class PredictionClock:
    """The Kafka timestamps (ms) of the predictions, read by a background thread as the flow writes them.

    A prediction's timestamp is taken when the flow hands it to its producer, so these are the flow's own
    times, whenever this thread reads them."""

    def __init__(self, bootstrap: str, topic: str):
        self.timestamps: list[int] = []
        self._stopping = threading.Event()
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"soak-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
        self._thread = threading.Thread(target=self._read, name="soak-predictions", daemon=True)
        self._thread.start()

    @property
    def count(self) -> int:
        return len(self.timestamps)

    def _read(self) -> None:
        while not self._stopping.is_set():
            for message in self._consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is None:
                    self.timestamps.append(message.timestamp()[1])
        self._consumer.close()

    def drain(self, expected: int, quiet_s: float = 10.0) -> None:
        """Wait until `expected` predictions are read, or none came for `quiet_s`; then stop reading."""
        last, changed = self.count, time.monotonic()
        while self.count < expected and time.monotonic() - changed < quiet_s:
            time.sleep(0.2)
            if self.count != last:
                last, changed = self.count, time.monotonic()
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class Sample:
    at: float  # unix seconds
    scored: int  # predictions read so far
    rss_flow: int  # bytes: the bytewax.run process
    rss_children: int  # its other descendants, the refit worker excluded
    rss_refit: int  # the LightGBM refit worker and the forkserver that starts it
    hwm_flow: int  # the kernel's peak RSS of the bytewax.run process
    dir_bytes: int  # every file of the recovery directory
    load: float  # the machine's 1-minute load average: other work competing for the cores

    @property
    def rss_with_children(self) -> int:
        return self.rss_flow + self.rss_children


def _status_bytes(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _is_refit_worker(pid: int) -> bool:
    """models.refit's pool runs under multiprocessing's forkserver: the server and the worker it forks carry
    its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"multiprocessing.forkserver" in cmdline.read()
    except OSError:
        return False


def directory_bytes(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size if path.is_file() else 0
    return total


def sample(flow_pid: int, scored: int, recovery: Path) -> Sample:
    children = refit = 0
    for pid in _descendants(flow_pid):
        rss = _status_bytes(pid, "VmRSS")
        if _is_refit_worker(pid):
            refit += rss
        else:
            children += rss
    return Sample(
        at=time.time(),
        scored=scored,
        rss_flow=_status_bytes(flow_pid, "VmRSS"),
        rss_children=children,
        rss_refit=refit,
        hwm_flow=_status_bytes(flow_pid, "VmHWM"),
        dir_bytes=directory_bytes(recovery),
        load=os.getloadavg()[0],
    )


@dataclass
class Epoch:
    at: float  # unix seconds: the epoch's first snapshot (or when it was first seen, from outside)
    bytes: int  # summed over the steps
    seconds_max: float | None  # the slowest step's snapshot (None: not known from outside)
    seconds_sum: float | None  # every step's, one after another on the worker


class BytewaxSnapshots:
    """Bytes of every epoch's snapshots as Bytewax stores them (`snaps` in DIR/part-*.sqlite3), polled.

    With `-b 0` Bytewax deletes a key's older snapshots once a newer one is committed, so each epoch's rows
    live about one snapshot interval: polling every 0.5 s sees them. The time a step spends snapshotting
    cannot be seen from here. The parts are in WAL mode: a short read does not block the flow's writes."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._sizes: dict[int, dict[tuple[str, str], int]] = {}
        self._seen_at: dict[int, float] = {}

    def poll(self) -> None:
        newest = max(self._sizes, default=-1)
        for part in sorted(self.directory.glob("part-*.sqlite3")):
            try:
                with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=1)) as db:
                    rows = db.execute(
                        "SELECT step_id, state_key, snap_epoch, length(ser_change) FROM snaps WHERE snap_epoch >= ?",
                        (newest,),
                    ).fetchall()
            except sqlite3.Error:
                continue
            for step, key, epoch, size in rows:
                self._sizes.setdefault(epoch, {})[(step, key)] = size or 0
                self._seen_at.setdefault(epoch, time.time())

    def epochs(self) -> list[Epoch]:
        return [
            Epoch(at=self._seen_at[e], bytes=sum(self._sizes[e].values()), seconds_max=None, seconds_sum=None)
            for e in sorted(self._sizes)
        ]


def watch(
    flow: subprocess.Popen, clock: PredictionClock, recovery: Path, snaps: BytewaxSnapshots, deadline: float
) -> tuple[list[Sample], bool]:
    """Samples every `SAMPLE_S` until the flow exits (True) or the deadline passes (False, flow stopped)."""
    samples: list[Sample] = []
    next_at = time.monotonic()
    while flow.poll() is None:
        if time.monotonic() > deadline:
            stop_flow(flow)
            return samples, False
        taken = sample(flow.pid, clock.count, recovery)
        if taken.rss_flow:  # 0: the process is already gone
            samples.append(taken)
        snaps.poll()
        next_at += SAMPLE_S
        time.sleep(max(0.0, next_at - time.monotonic()))
    snaps.poll()
    return samples, True


# -- eddy's own snapshot log -------------------------------------------------------------------------------


def read_snapshot_log(recovery: Path) -> list[tuple] | None:
    """Rows (step, key, seq, at, seconds, bytes) of DIR/eddy-state.sqlite3's `snapshot_log`; None if this eddy
    keeps no such log."""
    path = recovery / SNAPSHOT_LOG
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute("SELECT step, key, seq, at, seconds, bytes FROM snapshot_log ORDER BY at, seq").fetchall()
    except sqlite3.Error:
        return None


def epochs_from_log(rows: list[tuple]) -> list[Epoch]:
    """Rows grouped by epoch: the steps snapshot back to back at an epoch's end, so a row starts a new epoch
    when it comes after a gap or when its step (and key) already snapshotted in the current one."""
    epochs: list[Epoch] = []
    group: list[tuple] = []
    for row in rows:
        step, key, _seq, at, _seconds, _size = row
        previous = group[-1] if group else None
        repeated = any((r[0], r[1]) == (step, key) for r in group)
        if previous is not None and (repeated or at - (previous[3] + previous[4]) > EPOCH_GAP_S):
            epochs.append(_epoch(group))
            group = []
        group.append(row)
    if group:
        epochs.append(_epoch(group))
    return epochs


def _epoch(rows: list[tuple]) -> Epoch:
    return Epoch(
        at=rows[0][3],
        bytes=sum(r[5] for r in rows),
        seconds_max=max(r[4] for r in rows),
        seconds_sum=sum(r[4] for r in rows),
    )


# -- figures -----------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def ratio(late: float | None, early: float | None) -> float | None:
    return round(late / early, 3) if late is not None and early else None


def throughput_figures(timestamps_ms: list[int], run_s: float) -> dict:
    """Events/s of each tenth of the predictions: its events over the time from its first to its last; and the
    longest pause between two predictions in each tenth (the worker writes none while it snapshots)."""
    ordered = sorted(timestamps_ms)
    n = len(ordered)
    tenths: list[float | None] = []
    pauses: list[int | None] = []
    for k in range(10):
        part = ordered[k * n // 10 : (k + 1) * n // 10]
        span_s = (part[-1] - part[0]) / 1000 if len(part) > 1 else 0.0
        tenths.append(round(len(part) / span_s) if span_s > 0 else None)
        pauses.append(max((b - a for a, b in itertools.pairwise(part)), default=None))
    scoring_s = (ordered[-1] - ordered[0]) / 1000 if n > 1 else 0.0
    return {
        "predictions": n,
        "events_per_s_tenths": tenths,
        "events_per_s_first_tenth": tenths[0],
        "events_per_s_last_tenth": tenths[-1],
        "ratio_last_to_first_tenth": ratio(tenths[-1], tenths[0]),
        "longest_pause_ms_tenths": pauses,
        "events_per_s_run": round(n / run_s) if run_s > 0 else None,
        "events_per_s_scoring": round(n / scoring_s) if scoring_s > 0 else None,
        "scoring_s": round(scoring_s, 1),
        "first_prediction_unix_s": ordered[0] / 1000 if n else None,
    }


def _epoch_stats(epochs: list[Epoch]) -> dict:
    seconds = [e.seconds_max for e in epochs if e.seconds_max is not None]
    seconds_sum = [e.seconds_sum for e in epochs if e.seconds_sum is not None]
    sizes = [e.bytes for e in epochs]
    return {
        "epochs": len(epochs),
        "seconds_p50": _round(pct(seconds, 0.5), 4),
        "seconds_p99": _round(pct(seconds, 0.99), 4),
        "seconds_sum_p50": _round(pct(seconds_sum, 0.5), 4),
        "seconds_sum_p99": _round(pct(seconds_sum, 0.99), 4),
        "bytes_p50": pct(sizes, 0.5),
        "bytes_p99": pct(sizes, 0.99),
    }


def snapshot_figures(epochs: list[Epoch], source: str, scoring_from: float | None) -> dict:
    """Early = the first tenth of the epochs taken while the flow scores, late = the last tenth."""
    during = [e for e in epochs if scoring_from is None or e.at >= scoring_from] or epochs
    k = max(1, len(during) // 10)
    early, late = _epoch_stats(during[:k]), _epoch_stats(during[-k:])
    return {
        "source": source,
        "epochs": len(during),
        "bytes_total": sum(e.bytes for e in during),
        "early": early,
        "late": late,
        "ratio_seconds_p50": ratio(late["seconds_p50"], early["seconds_p50"]),
        "ratio_seconds_p99": ratio(late["seconds_p99"], early["seconds_p99"]),
        "ratio_seconds_sum_p50": ratio(late["seconds_sum_p50"], early["seconds_sum_p50"]),
        "ratio_bytes_p50": ratio(late["bytes_p50"], early["bytes_p50"]),
        "ratio_bytes_p99": ratio(late["bytes_p99"], early["bytes_p99"]),
    }


def held_events(scored: int, horizon_s: float, events_per_second: float) -> int:
    """Events still inside the longest window after `scored` events (the stream's rate is constant)."""
    return min(scored, int(horizon_s * events_per_second))


def memory_figures(samples: list[Sample], events: int, horizon_s: float, events_per_second: float) -> dict:
    """RSS and DIR size at each share of the events scored: the first sample that reached it (the last sample
    for 100 % if the flow exited before the consumer caught up); bytes of RSS per event held."""
    points: dict[str, dict | None] = {}
    for share in MEMORY_POINTS:
        reached = next((s for s in samples if s.scored >= share * events), None)
        if reached is None and share == 1.0 and samples:
            reached = samples[-1]
        points[f"{share:.0%}"] = None if reached is None else _memory_point(reached)
    first, last = points["25%"], points["100%"]
    per_event = per_event_alone = None
    if first and last:
        held = held_events(last["scored"], horizon_s, events_per_second) - held_events(
            first["scored"], horizon_s, events_per_second
        )
        if held > 0:
            per_event = round((last["rss_with_children"] - first["rss_with_children"]) / held)
            per_event_alone = round((last["rss_flow"] - first["rss_flow"]) / held)
    span = [s for s in samples if MEMORY_POINTS[0] * events <= s.scored]
    held = [held_events(s.scored, horizon_s, events_per_second) for s in span]
    return {
        "at": points,
        "peak_rss_with_children": max((s.rss_with_children for s in samples), default=None),
        "peak_rss_flow": max((s.hwm_flow for s in samples), default=None),
        "peak_rss_refit_worker": max((s.rss_refit for s in samples), default=None),
        "peak_dir_bytes": max((s.dir_bytes for s in samples), default=None),
        "bytes_per_held_event": per_event,
        "bytes_per_held_event_flow_alone": per_event_alone,
        "bytes_per_held_event_fitted": _slope(held, [s.rss_with_children for s in span]),
        "load_mean": _round(sum(s.load for s in samples) / len(samples), 2) if samples else None,
        "load_max": _round(max((s.load for s in samples), default=None), 2),
        "cores": os.cpu_count(),
    }


def _slope(xs: list[int], ys: list[int]) -> int | None:
    """Least-squares slope of ys over xs: RSS rises and falls by tens of MB as snapshots are pickled and freed,
    so two samples alone can even give a negative growth; the fit uses every sample of the span."""
    if len(xs) < 3:
        return None
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return round(cov / var) if var else None


def _memory_point(s: Sample) -> dict:
    return {
        "scored": s.scored,
        "rss_flow": s.rss_flow,
        "rss_with_children": s.rss_with_children,
        "rss_refit_worker": s.rss_refit,
        "dir_bytes": s.dir_bytes,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- report ------------------------------------------------------------------------------------------------


def num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:,.1f} MB"


def secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:,.0f} ms"


def print_report(figures: dict) -> None:
    t, s, m = figures["throughput"], figures["snapshots"], figures["memory"]
    print(
        f"soak: {figures['events']:,} events at {figures['events_per_second']:g} events per event-second, "
        f"labels {figures['label_delay_s']:g} s later, {'ensemble' if figures['ensemble'] else 'River alone'}, "
        f"snapshots every {figures['snapshot_s']:g} s"
        + ("" if figures["completed"] else f"; STOPPED after {figures['run_s']:.0f} s, figures so far")
    )
    print(
        f"replay {figures['replay_s']:.1f} s; run {figures['run_s']:.1f} s (first prediction after "
        f"{figures['start_up_s']} s); {t['predictions']:,} predictions: {num(t['events_per_s_run'])} events/s "
        f"over the run, {num(t['events_per_s_scoring'])} over the {t['scoring_s']} s of scoring"
    )
    print(
        f"machine load (1-min average) during the run: mean {num(m['load_mean'])}, max {num(m['load_max'])} "
        f"on {m['cores']} cores"
    )
    print(f"events/s by tenth of the events: {', '.join(num(r) for r in t['events_per_s_tenths'])}")
    pauses = ", ".join(num(p) for p in t["longest_pause_ms_tenths"])
    print(f"longest pause between two predictions by tenth (ms): {pauses}")
    print(
        f"first tenth {num(t['events_per_s_first_tenth'])} events/s, last tenth "
        f"{num(t['events_per_s_last_tenth'])}: ratio {num(t['ratio_last_to_first_tenth'])} "
        f"(target >= {THROUGHPUT_TARGET})"
    )
    if s["source"] == "bytewax snaps table":
        print("snapshot log: not recorded by this eddy (bytes from Bytewax's snaps table; no snapshot times)")
    for name in ("early", "late"):
        e = s[name]
        print(
            f"snapshots {name:<5} ({e['epochs']} epochs): time p50 {secs(e['seconds_p50'])} / p99 "
            f"{secs(e['seconds_p99'])} (steps summed: {secs(e['seconds_sum_p50'])} / {secs(e['seconds_sum_p99'])}); "
            f"bytes p50 {mb(e['bytes_p50'])} / p99 {mb(e['bytes_p99'])}"
        )
    print(
        f"snapshots late / early: time p50 {num(s['ratio_seconds_p50'])}, p99 {num(s['ratio_seconds_p99'])}, "
        f"bytes p50 {num(s['ratio_bytes_p50'])} (target <= {SNAPSHOT_TARGET}); {s['epochs']} epochs while scoring, "
        f"{mb(s['bytes_total'])} written"
    )
    for share, point in m["at"].items():
        if point is None:
            print(f"at {share:>4}: not reached")
            continue
        print(
            f"at {share:>4} ({point['scored']:,} scored): RSS {mb(point['rss_with_children'])} with children "
            f"({mb(point['rss_flow'])} the flow alone; refit worker {mb(point['rss_refit_worker'])} not counted), "
            f"recovery store {mb(point['dir_bytes'])}"
        )
    print(
        f"peak RSS: {mb(m['peak_rss_with_children'])} with children (sampled), {mb(m['peak_rss_flow'])} the flow "
        f"alone (the kernel's VmHWM), refit worker {mb(m['peak_rss_refit_worker'])}; recovery store peak "
        f"{mb(m['peak_dir_bytes'])}"
    )
    print(
        f"RSS growth per event held in the windows, 25 % -> 100 %: {num(m['bytes_per_held_event'])} bytes "
        f"({num(m['bytes_per_held_event_flow_alone'])} the flow alone); fitted over every sample of that span: "
        f"{num(m['bytes_per_held_event_fitted'])} bytes"
    )


# -- main --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events to replay (default: %(default)s)")
    parser.add_argument(
        "--snapshot-s", type=float, default=2, help="bytewax.run's -s: seconds between snapshots (default: %(default)s)"
    )
    parser.add_argument(
        "--events-per-second",
        type=float,
        default=100,
        help="events per second of event time, how full the windows get (default: %(default)s)",
    )
    parser.add_argument(
        "--ensemble",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="LightGBM refits blended with River, as configured (default), or River alone",
    )
    parser.add_argument(
        "--label-delay",
        type=float,
        default=30,
        metavar="SECONDS",
        help="labels on the labels topic this many event-seconds after their event, as in the demo "
        "(default: %(default)s; 0: labels inline)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the topics and the recovery directory")
    parser.add_argument(
        "--timeout-min",
        type=float,
        default=60,
        help="stop the flow after this many minutes and report what was measured (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.events < 20 or args.snapshot_s <= 0 or args.events_per_second <= 0 or args.label_delay < 0:
        parser.error("--events must be >= 20; --snapshot-s and --events-per-second > 0; --label-delay >= 0")
    return args


def soak(bootstrap: str, topics: Topics, workdir: Path, args: argparse.Namespace) -> dict:
    """Replay, run the flow while watching it, and compute the figures; raises SoakError if the flow fails."""
    recovery, log = workdir / "recovery", workdir / "flow.log"
    print(f"replaying {args.events:,} events to {topics.events} ...", file=sys.stderr)
    replayed = publish(bootstrap, topics, args)
    init_recovery(recovery)
    clock = PredictionClock(bootstrap, topics.predictions)
    snaps = BytewaxSnapshots(recovery)
    print(f"running the flow (recovery {recovery}, log {log}) ...", file=sys.stderr)
    started_unix, started = time.time(), time.monotonic()
    flow = start_flow(topics, bootstrap, recovery, args, log)
    try:
        samples, completed = watch(flow, clock, recovery, snaps, started + args.timeout_min * 60)
    finally:
        stop_flow(flow)
        run_s = time.monotonic() - started
        clock.drain(args.events, quiet_s=10.0 if flow.returncode == 0 else 2.0)
    if completed and flow.returncode != 0:
        raise SoakError(f"the flow failed (exit {flow.returncode}); last lines of {log}:\n{log_tail(log)}")
    throughput = throughput_figures(clock.timestamps, run_s)
    log_rows = read_snapshot_log(recovery)
    if log_rows:
        epochs, source = epochs_from_log(log_rows), f"eddy {SNAPSHOT_LOG}"
    else:
        epochs, source = snaps.epochs(), "bytewax snaps table"
    config = load_config()
    horizon_s = require_catalog(config.sql_dir, config.fields).horizon_ms / 1000
    first = throughput["first_prediction_unix_s"]
    return {
        "benchmark": "soak",
        "events": args.events,
        "events_per_second": args.events_per_second,
        "label_delay_s": args.label_delay,
        "ensemble": args.ensemble,
        "snapshot_s": args.snapshot_s,
        "completed": completed,
        "replay_s": round(replayed.seconds, 1),
        "run_s": round(run_s, 1),
        "start_up_s": None if first is None else round(first - started_unix, 1),
        "window_horizon_s": horizon_s,
        "throughput": throughput,
        "snapshots": snapshot_figures(epochs, source, first),
        "memory": memory_figures(samples, args.events, horizon_s, args.events_per_second),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bootstrap = load_config().bootstrap_servers
    try:
        check_broker(bootstrap)
        topics = fresh_topics(bootstrap, PARTITIONS)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workdir = REPO_ROOT / ".eddy" / f"soak-{topics.events.rsplit('-', 1)[-1]}"
    workdir.mkdir(parents=True)
    failed = True
    try:
        figures = soak(bootstrap, topics, workdir, args)
        failed = False
    except SoakError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            delete_topics(bootstrap, topics.all())
        if failed or args.keep:
            why = "" if args.keep else " (the flow's log and recovery directory)"
            print(f"kept {workdir}{why}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        if args.keep:
            print(f"kept topics {', '.join(topics.all())}", file=sys.stderr)
    print_report(figures)
    print(json.dumps(figures, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
