"""Every socket eddy listens on binds 127.0.0.1 unless a person configures another address."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from dataflows.flow.config import load_config
from dataflows.watch import dashboard, prometheus
from dataflows.watch.dashboard import MetricsFeed, make_server
from dataflows.watch.prometheus import PrometheusExporter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                packed = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, packed[::-1]))
                else:
                    words = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_the_flows_prometheus_endpoint_listens_on_loopback_by_default():
    config = load_config(env={})
    assert config.flow.prometheus_host == "127.0.0.1"
    port = _free_port()
    exporter = PrometheusExporter(port, config.flow.prometheus_host)
    assert _listening_addresses(port) == {"127.0.0.1"}
    with urllib.request.urlopen(exporter.url, timeout=5) as response:
        assert response.status == 200
    assert exporter.url == f"http://127.0.0.1:{port}/metrics"


def test_an_exporter_made_without_an_address_listens_on_loopback():
    port = _free_port()
    PrometheusExporter(port)
    assert _listening_addresses(port) == {"127.0.0.1"}


def test_every_interface_only_when_configured():
    config = load_config(env={"EDDY_PROMETHEUS_HOST": "0.0.0.0", "EDDY_PROMETHEUS_PORT": "9999"})
    assert (config.flow.prometheus_host, config.flow.prometheus_port) == ("0.0.0.0", 9999)


def test_the_dashboard_defaults_to_loopback():
    assert dashboard.build_parser().parse_args([]).host == "127.0.0.1"
    server = make_server(MetricsFeed("localhost:1", "metrics"), port=0)
    try:
        assert _listening_addresses(server.server_address[1]) == {"127.0.0.1"}
    finally:
        server.server_close()


def test_the_prometheus_command_defaults_to_loopback(capsys):
    with pytest.raises(SystemExit) as exit_:
        prometheus.main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--addr ADDR address to listen on (default: 127.0.0.1" in out


def test_the_scoring_gateway_listens_on_loopback_by_default(tmp_path):
    import os
    import subprocess
    import sys
    import time

    assert load_config(env={}).serve.host == "127.0.0.1"
    port = _free_port()
    # No broker is needed to listen: the gateway answers /healthz, and 503 elsewhere until one is reachable.
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "localhost:1"}
    repo = Path(__file__).resolve().parents[2]
    with (tmp_path / "gateway.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dataflows.serve", "--port", str(port)], env=env, cwd=repo, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while not _listening_addresses(port):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
            time.sleep(0.1)
        assert _listening_addresses(port) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
