"""The live dashboard, in a real headless browser (Debian's Chromium), on the metrics of a short real run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from dataflows.tools import datasets
from dataflows.watch.dashboard import MetricsFeed, main, make_server
from tests.flowkit import REPO, config_for, publish, run_flow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts"
ENSEMBLE = {"enabled": True, "refit_every": 500, "window": 2000, "lag": 100, "background": "none", "keep": 3}


@pytest.fixture(scope="module")
def short_run(kafka_bootstrap, tmp_path_factory):
    """A short real run: 3,000 transactions (drift at half) and a few broken messages, through the flow."""
    from dataflows.broker.admin import delete_topics, ensure_topics
    from dataflows.flow.config import Topics

    suffix = f"{time.time_ns() % 10**10}"
    topics = Topics(
        *(f"test-{name}-dash{suffix}" for name in ("events", "labels", "predictions", "metrics", "dlq", "alerts"))
    )
    ensure_topics(kafka_bootstrap, topics.all(), 1)
    events = list(datasets.transactions(3_000, seed=3))
    broken = [b"not json", b'{"event_id": "x"}', b'{"event_id": "y", "ts": "yesterday"}']
    publish(kafka_bootstrap, topics.events, [*events[:1_000], *broken, *events[1_000:]])
    registry = tmp_path_factory.mktemp("registry")
    config = config_for(topics, kafka_bootstrap, metrics_every_events=200)
    run_flow(replace(config, ensemble={**ENSEMBLE, "registry_dir": str(registry)}))
    yield topics, registry
    delete_topics(kafka_bootstrap, topics.all())


@pytest.fixture
def dashboard(short_run, kafka_bootstrap):
    topics, registry = short_run
    feed = MetricsFeed(kafka_bootstrap, topics.metrics).start()
    server = make_server(feed, "127.0.0.1", 0, "0.5", str(registry))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not any(m.get("type") == "final" for m in feed.snapshot()):
        assert time.monotonic() < deadline, f"the dashboard read no final metrics message ({feed.error})"
        time.sleep(0.2)
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    feed.stop()


@pytest.mark.kafka
def test_api_serves_the_runs_series(dashboard):
    with urllib.request.urlopen(dashboard + "api/metrics", timeout=10) as response:
        data = json.load(response)
    assert data["latest"]["type"] == "final" and data["latest"]["events"] == 3_000
    assert data["members"] == ["score", "river", "lightgbm"]
    assert len(data["x"]) == data["messages"] >= 15
    assert sum(v is not None for v in data["quality"]["roc_auc_rolling"]["lightgbm"]) > 0
    assert {m["kind"] for m in data["marks"]} >= {"drift", "refit_accepted"}
    assert set(data["dead_letters"]) == {"invalid_ts", "missing_field", "not_json"}
    with urllib.request.urlopen(dashboard, timeout=10) as response:
        page = response.read().decode()
    assert "<svg" not in page and "api/metrics" in page  # the page draws its charts itself
    assert not re.search(r"""(src|href)=["']?https?:""", page), "the page must not load anything from the network"


@pytest.mark.kafka
def test_page_renders_in_headless_chromium(dashboard, tmp_path):
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`; CI's .ci/run does)"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    flags = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000",
        "--virtual-time-budget=10000",
    ]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", dashboard], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:2000]
    assert 'data-rendered="5"' in body.group(0), f"every chart should render: {body.group(0)}"
    assert len(re.findall(r'<path[^>]*class="series"', dom.stdout)) >= 3 + 3 + 1 + 2 + 3
    assert "mark-drift" in dom.stdout and "mark-refit_accepted" in dom.stdout
    assert "3,000 events" in dom.stdout and "run finished" in dom.stdout

    shot = subprocess.run(
        [*flags, f"--screenshot={screenshot}", dashboard], capture_output=True, text=True, timeout=120
    )
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 30_000


def test_help_and_broker_down(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--drift-at" in capsys.readouterr().out
    assert main(["--bootstrap-servers", "127.0.0.1:1", "--port", "0"]) == 1
    assert "127.0.0.1:1" in capsys.readouterr().err


def test_chromium_is_installed():
    """CI installs Debian's chromium; the browser test above needs it."""
    assert shutil.which(str(CHROMIUM)), f"{CHROMIUM} is missing: `apt-get install -y chromium` (add it to .ci/run)"


def test_report_html_renders_offline_in_chromium(tmp_path):
    """The report is one file: opened from disk, with no server, its charts draw from the inlined data."""
    from dataflows.watch.report import write_report
    from tests.dataflows.test_report import run

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `apt-get install -y chromium` (add it to .ci/run)"
    paths = write_report(run(), tmp_path, drift_at="0.5", title="offline report")
    dom = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", paths["html"].as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(r'<body[^>]*data-rendered="5"', dom.stdout), dom.stdout[:1500]
    assert "<h1>offline report</h1>" in dom.stdout and "mark-drift" in dom.stdout


@pytest.mark.kafka
def test_alerts_show_on_the_page_as_text(kafka_bootstrap, make_topics, tmp_path):
    """Alerts the flow publishes show on the page: those firing, and the recent ones; a summary holding markup
    (whoever can write the topic wrote it) is shown as text, never run."""
    from dataflows.watch.alerts import AlertEvaluator
    from tests.dataflows.test_alerts import CASES

    topics = make_topics(partitions=1)
    evaluator = AlertEvaluator()
    messages = []
    for rule in ("dead_letter_rate", "consumer_lag"):
        for i, report in enumerate(CASES[rule][:2] if rule == "consumer_lag" else CASES[rule]):
            messages.extend(evaluator.evaluate(report, 1_767_225_600_000 + i))
    hostile = "FIRING: <img src=x onerror=\"document.body.setAttribute('data-pwned','1')\"> disk full"
    messages.append({**messages[0], "rule": "registry_write_failed", "severity": "critical", "summary": hostile})
    publish(kafka_bootstrap, topics.alerts, messages)
    feed = MetricsFeed(kafka_bootstrap, topics.metrics).start()
    alerts = MetricsFeed(kafka_bootstrap, topics.alerts).start()
    server = make_server(feed, "127.0.0.1", 0, "none", None, alerts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        deadline = time.monotonic() + 30
        while len(alerts.snapshot()) < len(messages):
            assert time.monotonic() < deadline, f"the dashboard read {len(alerts.snapshot())} alerts ({alerts.error})"
            time.sleep(0.2)
        with urllib.request.urlopen(url + "api/metrics", timeout=10) as response:
            view = json.load(response)["alerts"]
        assert [a["rule"] for a in view["active"]] == ["consumer_lag", "registry_write_failed"]
        assert [(a["rule"], a["state"]) for a in view["recent"]][-2:] == [
            ("dead_letter_rate", "resolved"),
            ("dead_letter_rate", "firing"),
        ]
        assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `apt-get install -y chromium`"
        dom = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert dom.returncode == 0, dom.stderr[-2000:]
    finally:
        server.shutdown()
        server.server_close()
        feed.stop()
        alerts.stop()
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert 'data-alerts="2"' in body and "data-pwned" not in body, body
    card = dom.stdout[dom.stdout.index('id="alerts-card"') :]
    assert "<img" not in card and "&lt;img src=x" in card
    assert 'data-rule="consumer_lag"' in card and "messages behind the input topics" in card
