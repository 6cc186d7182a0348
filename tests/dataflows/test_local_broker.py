"""`task kafka:up` / `kafka:down` / `kafka:status`: a broker from nothing, twice-safe, stopped by pid."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from dataflows.broker.admin import BrokerError, check_broker, ensure_topics

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka.sh"
pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=180)


def test_a_broker_starts_from_nothing_twice_harmlessly_and_stops(tmp_path):
    port, controller = _free_port(), _free_port()
    env = {
        **os.environ,
        "EDDY_KAFKA_HOME": str(tmp_path / "kafka"),
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller),
    }
    bootstrap = f"localhost:{port}"
    try:
        first = _run("up", env)
        assert first.returncode == 0, first.stderr
        assert f"ready on localhost:{port}" in first.stdout
        assert "log: " in first.stdout
        pid = (tmp_path / "kafka" / "broker.pid").read_text().strip()

        second = _run("up", env)
        assert second.returncode == 0
        assert f"already running (pid {pid})" in second.stdout

        check_broker(bootstrap)
        ensure_topics(bootstrap, ["smoke"], partitions=1)
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send("smoke", b"hello").get(timeout=30)
        producer.close()
        consumer = KafkaConsumer(
            "smoke", bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=10_000
        )
        assert [m.value for m in consumer][:1] == [b"hello"]
        consumer.close()

        assert _run("status", env).returncode == 0
    finally:
        stopped = _run("down", env)
    assert f"stopped (pid {pid})" in stopped.stdout
    status = _run("status", env)
    assert status.returncode == 1
    assert "not running" in status.stdout
    with pytest.raises(BrokerError):
        check_broker(bootstrap, timeout_s=2)


def test_a_port_in_use_is_refused_with_advice(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "EDDY_KAFKA_HOME": str(tmp_path / "kafka"), "KAFKA_PORT": str(port)}
        result = _run("up", env)
    assert result.returncode == 1
    assert f"port {port} is already in use" in result.stderr


def _path_without_java(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed", "head", "cat", "grep", "mkdir", "dirname", "rm", "mv", "tail", "sleep", "seq"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def test_missing_java_is_said_in_one_line(tmp_path):
    env = {
        **os.environ,
        "EDDY_KAFKA_HOME": str(tmp_path / "kafka"),
        "KAFKA_PORT": str(_free_port()),
        "PATH": str(_path_without_java(tmp_path)),
    }
    result = _run("up", env)
    assert result.returncode == 1
    assert "Java 17 or newer is needed" in result.stderr
    assert "'java' is not on PATH" in result.stderr


def test_an_old_java_is_said_in_one_line(tmp_path):
    bin_dir = _path_without_java(tmp_path)
    (bin_dir / "java").write_text("#!/bin/bash\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    (bin_dir / "java").chmod(0o755)
    env = {
        **os.environ,
        "EDDY_KAFKA_HOME": str(tmp_path / "kafka"),
        "KAFKA_PORT": str(_free_port()),
        "PATH": str(bin_dir),
    }
    result = _run("up", env)
    assert result.returncode == 1
    assert result.stderr.strip() == "kafka: error: Kafka 4.1.1 needs Java 17 or newer; 'java' here is version 11."
