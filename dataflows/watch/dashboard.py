"""The live dashboard: a local page that follows the metrics topic of any running (or finished) flow.

python -m dataflows.watch.dashboard [--port 8050] [--topic metrics] [--bootstrap-servers localhost:9092]

A background consumer keeps the newest `--keep` metrics messages, another the alerts topic's messages; the
page polls `/api/metrics` (the chart series, marks and summary, see `dataflows.watch.report.chart_data`, and the
alerts firing and recent, see `dataflows.watch.alerts.alert_view`) every two seconds and draws them as SVG.
`/api/messages` returns the raw messages. No network beyond the broker: the page has no external assets.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from dataflows.broker.security import KafkaSecurity
from dataflows.flow.config import ConfigError, load_config
from dataflows.flow.logs import configure_logging
from dataflows.flow.runs import runs_of
from dataflows.watch.alerts import alert_view
from dataflows.watch.report import DEFAULT_DRIFT_AT, PAGE, chart_data, read_registry

log = logging.getLogger("eddy.dashboard")


class MetricsFeed:
    """The newest `keep` JSON messages of a topic (metrics, or alerts), read by a daemon thread from the
    beginning on."""

    def __init__(self, bootstrap_servers: str, topic: str, keep: int = 5_000, security: KafkaSecurity | None = None):
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        self.topic = topic
        self.messages: deque[dict] = deque(maxlen=keep)
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsFeed:
        self._thread = threading.Thread(target=self._run, name="eddy-dashboard-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def add(self, message: dict) -> None:
        with self._lock:
            self.messages.append(message)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.messages)

    def _run(self) -> None:
        from dataflows.broker.consumer import assigned_consumer, poll_json_objects

        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer, partitions = assigned_consumer(
                        self.bootstrap_servers, self.topic, "beginning", self.security
                    )
                    if not partitions:
                        raise RuntimeError(f"topic '{self.topic}' does not exist (yet)")
                    self.error = None
                    log.info(
                        "following topic '%s' (%d partitions) on %s",
                        self.topic,
                        len(partitions),
                        self.bootstrap_servers,
                    )
                for message in poll_json_objects(consumer):
                    self.add(message)
            except Exception as exc:  # broker down or topic missing: say so on the page and retry
                if self.error != str(exc):
                    log.warning("metrics feed: %s; retrying", exc)
                self.error = str(exc)
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(2.0)
        if consumer is not None:
            consumer.close()


def make_server(
    feed: MetricsFeed,
    host: str = "127.0.0.1",
    port: int = 8050,
    drift_at: str | None = DEFAULT_DRIFT_AT,
    registry_dir: str | None = None,
    alerts: MetricsFeed | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server for the page and its JSON; `port=0` picks a free port (see `server.server_address`).
    `alerts` follows the alerts topic (None: the page shows no alerts card)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", PAGE.read_bytes())
            elif path == "/api/metrics":
                messages = feed.snapshot()
                registry = read_registry(registry_dir, runs_of(messages))
                data: dict[str, Any] = chart_data(messages, drift_at, registry)
                data["source"] = {"topic": feed.topic, "bootstrap_servers": feed.bootstrap_servers, "error": feed.error}
                if alerts is not None:
                    data["alerts"] = {**alert_view(alerts.snapshot()), "topic": alerts.topic, "error": alerts.error}
                self._send(200, "application/json", json.dumps(data, default=str).encode())
            elif path == "/api/messages":
                self._send(200, "application/json", orjson.dumps(feed.snapshot()))
            elif path == "/healthz":
                self._send(200, "text/plain", b"ok\n")
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return ThreadingHTTPServer((host, port), Handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dataflows.watch.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8050, help="HTTP port (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--topic", help="metrics topic (default: from eddy.toml / EDDY_METRICS_TOPIC)")
    parser.add_argument("--alerts-topic", help="alerts topic (default: from eddy.toml / EDDY_ALERTS_TOPIC)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: from eddy.toml)")
    parser.add_argument("--registry-dir", help="model registry to mark refits from (default: [ensemble] registry_dir)")
    parser.add_argument(
        "--drift-at",
        default=DEFAULT_DRIFT_AT,
        help="where to mark the drift: a fraction of the stream (0.5: the transactions generator's), "
        "an event count, or 'none' (default: %(default)s)",
    )
    parser.add_argument("--keep", type=int, default=5_000, help="metrics messages kept (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging(kafka_level=logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bootstrap = args.bootstrap_servers or config.bootstrap_servers
    topic = args.topic or config.topics.metrics
    from dataflows.broker.admin import BrokerError, check_broker

    try:
        check_broker(bootstrap, timeout_s=5, security=config.kafka_security)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    feed = MetricsFeed(bootstrap, topic, args.keep, config.kafka_security).start()
    alerts = MetricsFeed(bootstrap, args.alerts_topic or config.topics.alerts, args.keep, config.kafka_security).start()
    try:
        server = make_server(
            feed, args.host, args.port, args.drift_at, args.registry_dir or config.ensemble.get("registry_dir"), alerts
        )
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc} (try --port)", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(
        f"eddy dashboard: http://{host}:{port}/  (metrics topic '{topic}' on {bootstrap}; Ctrl-C stops it)", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        feed.stop()
        alerts.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
