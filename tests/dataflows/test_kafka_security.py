"""Kafka TLS/SASL settings: read once from eddy.toml and the environment, passed to every client eddy makes.

The integration tests start their own broker (scripts/kafka.sh on free ports, in a temporary home) with a
SASL_PLAINTEXT listener using the PLAIN mechanism and a TLS listener whose certificate a CA made here with
openssl signed, and talk to those listeners only: a client without the settings cannot use them at all.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from dataflows.broker.admin import BrokerError, delete_topics, ensure_topics, require_topics
from dataflows.broker.consumer import read_to_end
from dataflows.broker.security import KafkaSecurity, kafka_python_settings, librdkafka_settings
from dataflows.flow.config import ConfigError, Topics, load_config
from dataflows.tools import datasets
from dataflows.tools.replay import make_producer
from tests.flowkit import flow_env, start_flow_process

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka.sh"
USER, PASSWORD = "eddy-test", "right-horse-battery"
KEYSTORE_PASSWORD = "broker-key-password"

SASL_ENV = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": USER}


# ---------------------------------------------------------------- configuration


def test_plaintext_by_default_and_no_client_settings():
    config = load_config(env={})
    assert config.kafka_security == KafkaSecurity()
    assert librdkafka_settings(config.kafka_security) == {} and kafka_python_settings(config.kafka_security) == {}


def test_environment_sets_sasl_and_the_password_stays_out_of_every_repr():
    config = load_config(env={**SASL_ENV, "KAFKA_SASL_PASSWORD": PASSWORD, "KAFKA_SASL_MECHANISM": "scram-sha-256"})
    security = config.kafka_security
    assert (security.protocol, security.sasl_mechanism, security.sasl_username) == (
        "SASL_PLAINTEXT",
        "SCRAM-SHA-256",
        USER,
    )
    assert PASSWORD not in repr(config) and PASSWORD not in security.describe()
    assert librdkafka_settings(security) == {
        "security.protocol": "sasl_plaintext",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": USER,
        "sasl.password": PASSWORD,
    }
    assert kafka_python_settings(security) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": USER,
        "sasl_plain_password": PASSWORD,
    }


def test_file_settings_tls_paths_relative_to_the_file(tmp_path: Path):
    (tmp_path / "certs").mkdir()
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / "certs" / name).write_text("not checked here")
    path = tmp_path / "eddy.toml"
    path.write_text(
        '[kafka]\nsecurity_protocol = "SSL"\nssl_ca_location = "certs/ca.pem"\n'
        'ssl_certificate_location = "certs/client.pem"\nssl_key_location = "certs/client.key"\n'
    )
    security = load_config(path, env={"KAFKA_SSL_KEY_PASSWORD": "key-secret"}).kafka_security
    assert security.tls and not security.sasl
    assert librdkafka_settings(security) == {
        "security.protocol": "ssl",
        "ssl.ca.location": str(tmp_path / "certs" / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "certs" / "client.pem"),
        "ssl.key.location": str(tmp_path / "certs" / "client.key"),
        "ssl.key.password": "key-secret",
    }
    assert kafka_python_settings(security)["ssl_cafile"] == str(tmp_path / "certs" / "ca.pem")
    assert "key-secret" not in repr(security)


def test_a_relative_path_in_the_environment_is_from_the_working_directory(tmp_path: Path, monkeypatch):
    (tmp_path / "ca.pem").write_text("not checked here")
    monkeypatch.chdir(tmp_path)
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "ca.pem"}
    assert load_config(env=env).kafka_security.ssl_ca_location == str(tmp_path / "ca.pem")


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ('[kafka]\nsasl_password = "oops"\n', {}, "set the environment variable KAFKA_SASL_PASSWORD instead"),
        ('[kafka]\nssl_key_password = "oops"\n', {}, "KAFKA_SSL_KEY_PASSWORD instead"),
        ('[kafka]\nsecurity_protocl = "SSL"\n', {}, "unknown [kafka] key(s) ['security_protocl']"),
        ("", {"KAFKA_SECURITY_PROTOCOL": "SASL"}, "is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ("", SASL_ENV, "SASL_PLAINTEXT needs KAFKA_SASL_PASSWORD"),
        ("", {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME (or [kafka] sasl_username) and"),
        ("", {**SASL_ENV, "KAFKA_SASL_PASSWORD": "x", "KAFKA_SASL_MECHANISM": "GSSAPI"}, "'GSSAPI' is not one of"),
        ("", {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/nowhere/ca.pem"}, "is not a file"),
        ("", {"KAFKA_SSL_CA_LOCATION": __file__}, "TLS files are set but security_protocol is PLAINTEXT"),
    ],
)
def test_settings_that_cannot_work_fail_with_what_to_do(tmp_path: Path, toml: str, env: dict, message: str):
    path = tmp_path / "eddy.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as error:
        load_config(path, env=env)
    assert message in str(error.value)
    assert "oops" not in str(error.value)


# ---------------------------------------------------------------- against a broker with SASL and TLS listeners


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    assert shutil.which("openssl"), "openssl is missing: `apt-get install -y openssl` (scripts/task test installs it)"
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _certificates(directory: Path) -> None:
    """ca.pem (the CA), other-ca.pem (a CA that signed nothing here), server.pem (the broker's key, encrypted
    PKCS#8 with a cipher Java reads, then its certificate for localhost, signed by ca.pem)."""
    (directory / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, subject in (("ca", "/CN=eddy test CA"), ("other-ca", "/CN=someone else")):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
                 "-days", "2", "-subj", subject, cwd=directory)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "san.cnf", cwd=directory)  # fmt: skip
    _openssl("pkcs8", "-topk8", "-in", "server.key", "-out", "server.p8", "-v1", "PBE-SHA1-3DES",
             "-passout", f"pass:{KEYSTORE_PASSWORD}", cwd=directory)  # fmt: skip
    (directory / "server.pem").write_text(
        (directory / "server.p8").read_text() + (directory / "server.crt").read_text()
    )


@dataclass(frozen=True)
class SecureBroker:
    sasl: str  # localhost:PORT of the SASL_PLAINTEXT listener
    tls: str  # localhost:PORT of the SSL listener
    certs: Path


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory) -> SecureBroker:
    """A broker of its own with a SASL_PLAINTEXT (PLAIN) and a TLS listener, stopped afterwards."""
    certs = tmp_path_factory.mktemp("certs")
    _certificates(certs)
    env = {
        **os.environ,
        "EDDY_KAFKA_HOME": str(tmp_path_factory.mktemp("secure-kafka")),
        "KAFKA_PORT": str(_free_port()),
        "KAFKA_CONTROLLER_PORT": str(_free_port()),
        "KAFKA_SASL_PORT": str(_free_port()),
        "KAFKA_SASL_USERS": f"{USER}:{PASSWORD},someone-else:other",
        "KAFKA_SSL_PORT": str(_free_port()),
        "KAFKA_SSL_KEYSTORE": str(certs / "server.pem"),
        "KAFKA_SSL_KEYSTORE_PASSWORD": KEYSTORE_PASSWORD,
    }

    def script(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=180)

    try:
        started = script("up")
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"SASL_PLAINTEXT (PLAIN) listener on localhost:{env['KAFKA_SASL_PORT']}" in started.stdout
        assert f"SSL listener on localhost:{env['KAFKA_SSL_PORT']}" in started.stdout
        yield SecureBroker(f"localhost:{env['KAFKA_SASL_PORT']}", f"localhost:{env['KAFKA_SSL_PORT']}", certs)
    finally:
        script("down")


def _sasl(password: str) -> KafkaSecurity:
    return KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_username=USER, sasl_password=password)


def _tls(ca: Path) -> KafkaSecurity:
    return KafkaSecurity(protocol="SSL", ssl_ca_location=str(ca))


def _run_flow_through(bootstrap: str, security: KafkaSecurity, env: dict[str, str]) -> str:
    """Events published, the flow run to their end as `python -m bytewax.run dataflows.main` configured by
    `env` alone, and every output read back, all through `bootstrap`; returns the flow's log."""
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(
        *(f"secure-{name}-{suffix}" for name in ("events", "labels", "predictions", "metrics", "dlq", "alerts"))
    )
    ensure_topics(bootstrap, topics.all(), 2, security=security)
    try:
        events = list(datasets.transactions(300, seed=5))
        producer = make_producer(bootstrap, security=security)
        for event in events:
            producer.send(topics.events, orjson.dumps(event))
        producer.send(topics.events, b"not json")
        producer.flush()
        producer.close()

        flow = start_flow_process(flow_env(topics, bootstrap, **env, EDDY_ENSEMBLE="false", EDDY_PROMETHEUS_PORT="0"))
        out, _ = flow.communicate(timeout=240)
        assert flow.returncode == 0, out[-4000:]

        predictions = [orjson.loads(r.value) for r in read_to_end(bootstrap, topics.predictions, security=security)]
        assert sorted(p["event_id"] for p in predictions) == sorted(e["event_id"] for e in events)
        assert len(read_to_end(bootstrap, topics.dead_letters, security=security)) == 1
        assert read_to_end(bootstrap, topics.metrics, security=security)
        return out
    finally:
        delete_topics(bootstrap, topics.all(), security=security)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_right_sasl_credentials_run_the_flow_end_to_end(secure_broker):
    out = _run_flow_through(secure_broker.sasl, _sasl(PASSWORD), {**SASL_ENV, "KAFKA_SASL_PASSWORD": PASSWORD})
    assert "Kafka clients connect with SASL_PLAINTEXT, PLAIN as 'eddy-test'" in out
    assert PASSWORD not in out


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tls_with_the_brokers_ca_runs_the_flow_end_to_end(secure_broker):
    ca = secure_broker.certs / "ca.pem"
    out = _run_flow_through(
        secure_broker.tls, _tls(ca), {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": str(ca)}
    )
    assert f"Kafka clients connect with SSL, CA {ca}" in out


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_wrong_credentials_fail_at_once_with_a_clear_message(secure_broker):
    with pytest.raises(BrokerError) as error:
        require_topics(secure_broker.sasl, ["events"], security=_sasl("wrong-password"))
    message = str(error.value)
    assert f"the Kafka broker at {secure_broker.sasl} refused eddy's SASL login" in message
    assert "Invalid username or password" in message
    assert "check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD" in message
    assert "wrong-password" not in message

    # The job itself: it stops before building the flow, with the same sentence and exit status 2.
    env = flow_env(Topics(), secure_broker.sasl, **SASL_ENV, KAFKA_SASL_PASSWORD="wrong-password")
    flow = start_flow_process(env)
    out, _ = flow.communicate(timeout=90)
    assert flow.returncode == 2, out[-4000:]
    assert "refused eddy's SASL login" in out and "Invalid username or password" in out
    assert "wrong-password" not in out


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_broker_certificate_from_another_ca_is_refused_with_a_clear_message(secure_broker):
    with pytest.raises(BrokerError) as error:
        require_topics(secure_broker.tls, ["events"], security=_tls(secure_broker.certs / "other-ca.pem"))
    message = str(error.value)
    assert f"the TLS handshake with the Kafka broker at {secure_broker.tls} failed" in message
    assert "certificate verify failed" in message and "check KAFKA_SSL_CA_LOCATION" in message


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_client_without_settings_cannot_use_either_listener(secure_broker):
    """The listeners really ask for a login and TLS: what the flow did above needed the settings passed on."""
    for bootstrap in (secure_broker.sasl, secure_broker.tls):
        with pytest.raises(BrokerError) as error:
            require_topics(bootstrap, ["events"], timeout_s=3)
        assert "does not answer as a Kafka broker over PLAINTEXT" in str(error.value)
        assert "set KAFKA_SECURITY_PROTOCOL" in str(error.value)
