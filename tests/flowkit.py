"""Running eddy's real dataflow against the real broker, in-process or as `python -m bytewax.run`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson
from bytewax.testing import run_main
from kafka import KafkaProducer

from dataflows.flow.config import Config, Topics, load_config, topics_env
from dataflows.flow.wiring import build_flow
from models.registry import flush_writes
from tests.kafka_io import read_topic

REPO = Path(__file__).resolve().parents[1]
PHISHING_CONFIG = REPO / "configs" / "phishing.toml"


def config_for(topics: Topics, bootstrap: str, config_path: Path | None = None, **flow) -> Config:
    """The repository's config (or another file) pointed at test topics, with [flow] overrides."""
    base = load_config(config_path, env={})
    return replace(
        base,
        bootstrap_servers=bootstrap,
        topics=topics,
        tail=False,
        flow=replace(base.flow, idle_timeout_s=flow.pop("idle_timeout_s", 1.0), **flow),
    )


def publish(bootstrap: str, topic: str, messages: list, key=lambda m: None, partition=None) -> None:
    """Send dicts (as JSON) or raw bytes, in order; `partition(i, message)` pins partitions when given."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 * 1024 * 1024)
    for i, message in enumerate(messages):
        value = message if isinstance(message, bytes) else orjson.dumps(message)
        k = key(message)
        producer.send(
            topic,
            value=value,
            key=None if k is None else str(k).encode(),
            partition=None if partition is None else partition(i, message),
        )
    producer.flush()
    producer.close()


def run_flow(config: Config) -> None:
    """Run the flow in this process to the end of its input, registry files written."""
    run_main(build_flow(config))
    flush_writes()


def outputs(bootstrap: str, topics: Topics) -> tuple[list[dict], list[dict], list]:
    """(predictions, metrics, dead-letter records) currently on the topics: each read to its end, the
    deadline only a bound for a broker that stops answering (a loaded machine reads 80k records in more
    than 10 s, and a cut-short read would look like lost predictions)."""
    predictions = [orjson.loads(r.value) for r in read_topic(bootstrap, topics.predictions, timeout_s=180)]
    metrics = [orjson.loads(r.value) for r in read_topic(bootstrap, topics.metrics, timeout_s=180)]
    dead = read_topic(bootstrap, topics.dead_letters, timeout_s=180)
    return predictions, metrics, dead


def flow_env(topics: Topics, bootstrap: str, config_path: Path | None = None, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        **topics_env(topics, bootstrap),
        "EDDY_TAIL": "false",
        **extra,
    }
    if config_path is not None:
        env["EDDY_CONFIG"] = str(config_path)
    return env


def start_flow_process(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", *args, "dataflows.main"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_flow_process(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    proc = start_flow_process(env, *args)
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"flow exited with {proc.returncode}:\n{out[-4000:]}")
    return out


def by_id(predictions: list[dict]) -> dict[str, dict]:
    return {p["event_id"]: p for p in predictions}


def dead_letter_reasons(records) -> list[tuple[str, str]]:
    """(reason, error) of each dead-letter record, from its headers."""
    out = []
    for r in records:
        headers = {k: v.decode() for k, v in r.headers}
        out.append((headers["reason"], headers["error"]))
    return out


# --- recovery and scale tests: isolated configs, input with delayed labels, watching a running flow ---


def isolated_config(directory: Path, source: Path | None = None) -> Path:
    """A copy of eddy.toml (or `source`) in `directory` whose relative paths are made absolute, and whose
    model registry lives in `directory`: a test run writes nothing into the repository's `.eddy/`."""
    import re

    source = source or REPO / "eddy.toml"
    text = source.read_text()

    def absolute(match: re.Match) -> str:
        return f'{match.group(1)}"{(source.parent / match.group(2)).resolve()}"'

    text = re.sub(r'(?m)^(sql_dir\s*=\s*)"([^"]*)"', absolute, text)
    text = re.sub(r'(?m)^(registry_dir\s*=\s*)"[^"]*"', lambda m: f'{m.group(1)}"{directory / "registry"}"', text)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "eddy.toml"
    path.write_text(text)
    return path


def transactions_input(
    n: int,
    seed: int = 42,
    label_delay_s: tuple[float, float] | None = None,
    delayed_share: float = 1.0,
    events_per_second: float = 1.0,
):
    """(events, labels) from `dataflows.tools.datasets.transactions`: inline labels when `label_delay_s` is None;
    else a seeded random `delayed_share` of the labels go to the labels topic, each with a `ts` (epoch ms) its
    event's plus a seeded random delay in that range (seconds), sorted by that `ts` (none is late in its
    partition); the other events keep their label inline. `events_per_second` makes the stream denser in
    event time (`dataflows.tools.datasets.transactions`)."""
    import random
    from datetime import datetime

    from dataflows.tools.datasets import transactions

    events = list(transactions(n=n, seed=seed, events_per_second=events_per_second))
    if label_delay_s is None:
        return events, []
    rng = random.Random(seed)
    labels = []
    for event in events:
        if rng.random() >= delayed_share:
            continue
        ts_ms = int(datetime.fromisoformat(event["ts"]).timestamp() * 1000)
        delay_ms = int(rng.uniform(*label_delay_s) * 1000)
        labels.append({"event_id": event["event_id"], "label": event.pop("label"), "ts": ts_ms + delay_ms})
    labels.sort(key=lambda m: (m["ts"], m["event_id"]))
    return events, labels


def publish_input(bootstrap: str, topics: Topics, events: list[dict], labels: list[dict], partitions: int) -> None:
    """Events and labels spread round-robin over `partitions` partitions (each partition stays in ts order)."""
    publish(bootstrap, topics.events, events, partition=lambda i, _: i % partitions)
    if labels:
        publish(bootstrap, topics.labels, labels, partition=lambda i, _: i % partitions)


def start_flow_logged(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    """`python -m bytewax.run ... dataflows.main` with its output appended to `log_path` (no pipe to fill)."""
    with log_path.open("a") as log:
        log.write(f"\n=== bytewax.run {' '.join(args)}\n")
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", *args, "dataflows.main"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_until_started(log_path: Path, timeout_s: float = 60) -> None:
    """Until the flow has logged its features (its sources are then being read), or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while "features:" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)


def flow_that_fails(env: dict[str, str]) -> subprocess.CompletedProcess:
    """A flow expected to refuse to start: its exit status and output, within a minute."""
    return subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.main"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def committed_epoch(recovery_dir: Path) -> int:
    """The epoch a resume would start from: the lowest commit over the recovery partitions (0 if none)."""
    import sqlite3

    epochs = []
    for part in sorted(recovery_dir.glob("part-*.sqlite3")):
        db = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=10)
        try:
            epochs.append(db.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()[0] or 0)
        finally:
            db.close()
    return min(epochs, default=0)


class TopicTail:
    """Reads a topic incrementally while a flow writes it: `poll()` returns the records that arrived since."""

    def __init__(self, bootstrap: str, topic: str):
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        deadline = time.monotonic() + 10
        parts = self.consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.1)
            parts = self.consumer.partitions_for_topic(topic)
        self.partitions = [TopicPartition(topic, p) for p in sorted(parts or [])]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)

    def poll(self, timeout_ms: int = 200) -> list:
        return [r for batch in self.consumer.poll(timeout_ms=timeout_ms, max_records=50_000).values() for r in batch]

    def drain(self) -> list:
        """Everything up to the topic's current end."""
        end = self.consumer.end_offsets(self.partitions)
        out: list = []
        deadline = time.monotonic() + 30
        while any(self.consumer.position(tp) < end[tp] for tp in self.partitions) and time.monotonic() < deadline:
            out.extend(self.poll())
        return out

    def close(self) -> None:
        self.consumer.close()
