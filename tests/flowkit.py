"""Running eddy's real dataflow against the real broker, in-process or as `python -m bytewax.run`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import orjson
from bytewax.testing import run_main
from kafka import KafkaProducer

from dataflows.config import Config, Topics, load_config
from dataflows.flow import build_flow
from tests.kafka_io import read_topic

REPO = Path(__file__).resolve().parents[1]
PHISHING_CONFIG = REPO / "configs" / "phishing.toml"


def config_for(topics: Topics, bootstrap: str, config_path: Path | None = None, **flow) -> Config:
    """The repository's config (or another file) pointed at test topics, with [flow] overrides."""
    base = load_config(config_path, env={})
    return replace(base, bootstrap_servers=bootstrap, topics=topics, tail=False,
                   flow=replace(base.flow, idle_timeout_s=flow.pop("idle_timeout_s", 1.0), **flow))


def publish(bootstrap: str, topic: str, messages: list, key=lambda m: None, partition=None) -> None:
    """Send dicts (as JSON) or raw bytes, in order; `partition(i, message)` pins partitions when given."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 * 1024 * 1024)
    for i, message in enumerate(messages):
        value = message if isinstance(message, bytes) else orjson.dumps(message)
        k = key(message)
        producer.send(topic, value=value, key=None if k is None else str(k).encode(),
                      partition=None if partition is None else partition(i, message))
    producer.flush()
    producer.close()


def run_flow(config: Config) -> None:
    run_main(build_flow(config))


def outputs(bootstrap: str, topics: Topics) -> tuple[list[dict], list[dict], list]:
    """(predictions, metrics, dead-letter records) currently on the topics."""
    predictions = [orjson.loads(r.value) for r in read_topic(bootstrap, topics.predictions, timeout_s=10)]
    metrics = [orjson.loads(r.value) for r in read_topic(bootstrap, topics.metrics, timeout_s=10)]
    dead = read_topic(bootstrap, topics.dead_letters, timeout_s=10)
    return predictions, metrics, dead


def flow_env(topics: Topics, bootstrap: str, config_path: Path | None = None, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "EDDY_EVENTS_TOPIC": topics.events,
        "EDDY_LABELS_TOPIC": topics.labels,
        "EDDY_PREDICTIONS_TOPIC": topics.predictions,
        "EDDY_METRICS_TOPIC": topics.metrics,
        "EDDY_DEAD_LETTERS_TOPIC": topics.dead_letters,
        "EDDY_TAIL": "false",
        **extra,
    }
    if config_path is not None:
        env["EDDY_CONFIG"] = str(config_path)
    return env


def start_flow_process(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bytewax.run", *args, "dataflows.main"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
