"""The dashboard and the report show what the metrics topic carries as text: markup in a message never runs.

Whoever can write to the metrics topic (any producer the broker lets in) controls the strings the page
shows: dead-letter reasons, topic names, versions, figures. Each carries a payload here that sets
`data-pwned` on the page's body if the browser ever treats it as markup; the test reads the page's DOM from
headless Chromium and checks that no payload ran and that each is shown literally.
"""

from __future__ import annotations

import html
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dataflows.watch.dashboard import MetricsFeed, make_server
from dataflows.watch.report import write_report
from tests.flowkit import publish

CHROMIUM = Path("/usr/bin/chromium")


def payload(field: str) -> str:
    return f"<img src=x onerror=\"document.body.setAttribute('data-pwned','{field}')\">{field}"


SCRIPT = "</script><script>document.body.setAttribute('data-pwned','script')</script>"
SVG = "<svg onload=\"document.body.setAttribute('data-pwned','svg')\"></svg>"
SHOWN = {  # where each field appears on the page
    "dead_letter_reason": "legend of the dead-letter chart and the summary",
    "lag_topic": "legend of the consumer-lag chart",
    "features_version": "summary",
    "latency": "summary",
    "labels_received": "summary",
    "dead_letters_total": "summary",
    "events_per_s_run": "summary",
    "lightgbm_version": "refit mark on every chart",
    "events": "status line and summary",
}


def messages() -> list[dict]:
    def message(i: int, hostile: bool) -> dict:
        text = payload if hostile else (lambda _field: None)
        return {
            "type": "final" if hostile else "metrics",
            "event_time": f"2026-01-01T00:{10 + i:02d}:00+00:00",
            "at": f"2026-06-01T12:00:{i:02d}+00:00",
            "events": text("events") or 1_000 * (i + 1),
            "events_per_s": 500.0,
            "labels_received": text("labels_received") or 10 * i,
            "dead_letters": {payload("dead_letter_reason"): i + 1, SCRIPT: 1, SVG: 1},
            "dead_letters_total": text("dead_letters_total") or i + 3,
            "events_per_s_run": text("events_per_s_run") or 480.0,
            "latency_ms_p50": text("latency") or 5.0,
            "latency_ms_p99": 9.0,
            "consumer_lag": {payload("lag_topic"): 100 - i},
            "features_version": text("features_version") or "abc",
            "model": {"river": 10 * i, "lightgbm": payload("lightgbm_version") if hostile else None},
            "quality": {
                "score": {"labels": 10 * (i + 1), "roc_auc_rolling": 0.7 + i / 100, "log_loss_rolling": 0.4},
                "river": {"labels": 10 * (i + 1), "roc_auc_rolling": 0.6 + i / 100, "log_loss_rolling": 0.5},
            },
        }

    return [message(0, False), message(1, False), message(2, True)]


def dump_dom(url: str, profile: Path) -> str:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `apt-get install -y chromium` (scripts/task test installs it)"
    dom = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--virtual-time-budget=8000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def assert_shown_as_text(dom: str) -> None:
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:2000]
    assert "data-pwned" not in body.group(0), f"a payload ran: {body.group(0)}"
    assert 'data-rendered="5"' in body.group(0), f"every chart should still render: {body.group(0)}"
    assert not re.search(r"<img[^>]*onerror", dom) and "<svg onload" not in dom
    for field in SHOWN:
        assert html.escape(payload(field), quote=False) in dom, f"{field} ({SHOWN[field]}) is not shown as text"
    assert html.escape(SCRIPT, quote=False) in dom and html.escape(SVG, quote=False) in dom


@pytest.mark.kafka
def test_the_live_dashboard_shows_topic_strings_as_text(make_topics, kafka_bootstrap, tmp_path):
    topics = make_topics()
    publish(kafka_bootstrap, topics.metrics, messages())
    feed = MetricsFeed(kafka_bootstrap, topics.metrics).start()
    server = make_server(feed, "127.0.0.1", 0, "0.5")  # the drift mark reads the event counts too
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for _ in range(150):  # the feed reads the topic in the background
            if len(feed.snapshot()) == 3:
                break
            time.sleep(0.2)
        assert len(feed.snapshot()) == 3, feed.error
        assert_shown_as_text(dump_dom(f"http://127.0.0.1:{server.server_address[1]}/", tmp_path / "profile"))
    finally:
        server.shutdown()
        server.server_close()
        feed.stop()


def test_the_report_file_shows_topic_strings_as_text(tmp_path):
    paths = write_report(messages(), tmp_path, drift_at="0.5", title="<b>untrusted</b> report")
    page = paths["html"].read_text()
    assert "<b>untrusted</b>" not in page
    assert_shown_as_text(dump_dom(paths["html"].as_uri(), tmp_path / "profile"))
