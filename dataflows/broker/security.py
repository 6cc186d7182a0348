"""Kafka TLS and SASL settings: read once from `[kafka]` in eddy.toml and the environment, then spelled for
each client library eddy uses (librdkafka through confluent-kafka and Bytewax, and kafka-python).

Secrets (the SASL password, the TLS key's password) come from environment variables only: a config file is
committed and copied around, so one holding a secret is refused. They are kept out of `repr`, so a logged
or printed configuration never shows them.

>>> s = KafkaSecurity(protocol="SASL_SSL", sasl_username="eddy", sasl_password="s3cret", ssl_ca_location="/ca.pem")
>>> "s3cret" in repr(s)
False
>>> librdkafka_settings(s)["sasl.password"], kafka_python_settings(s)["sasl_plain_password"]
('s3cret', 's3cret')
>>> librdkafka_settings(KafkaSecurity()), kafka_python_settings(None)
({}, {})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

SECRET_ENV = {"sasl_password": "KAFKA_SASL_PASSWORD", "ssl_key_password": "KAFKA_SSL_KEY_PASSWORD"}
"""Each secret and the one environment variable it is read from."""

SETTING_ENV = {
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "ssl_ca_location": "KAFKA_SSL_CA_LOCATION",
    "ssl_certificate_location": "KAFKA_SSL_CERTIFICATE_LOCATION",
    "ssl_key_location": "KAFKA_SSL_KEY_LOCATION",
}
"""`[kafka]` keys of eddy.toml and the environment variable that overrides each."""


class SecurityConfigError(ValueError):
    """Kafka security settings that cannot work; the message names the setting and what to do."""


@dataclass(frozen=True)
class KafkaSecurity:
    """How eddy's Kafka clients authenticate and encrypt; the default is what a local broker needs."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def describe(self) -> str:
        """One line for logs: the protocol, the mechanism and user, the CA; never a secret."""
        parts = [self.protocol]
        if self.sasl:
            parts.append(f"{self.sasl_mechanism} as '{self.sasl_username}'")
        if self.tls:
            parts.append(f"CA {self.ssl_ca_location or 'system default'}")
            if self.ssl_certificate_location:
                parts.append(f"client certificate {self.ssl_certificate_location}")
        return ", ".join(parts)


def security_from(table: dict, env: dict[str, str], source: str, base: Path) -> KafkaSecurity:
    """The settings of the `[kafka]` table `table` (of the file `source`, its relative paths against `base`)
    with the environment's overrides (relative paths against the working directory); a setting that cannot
    work raises `SecurityConfigError`."""
    for name, variable in SECRET_ENV.items():
        if name in table:
            raise SecurityConfigError(
                f"{source}: [kafka] {name} is a secret and is not read from a file; set the environment "
                f"variable {variable} instead (and remove the key from the file)"
            )
    values: dict[str, Any] = {}
    directories: dict[str, Path] = {}
    for key, variable in SETTING_ENV.items():
        value, directories[key] = (env[variable], Path.cwd()) if env.get(variable) else (table.get(key), base)
        if value is not None and value != "":
            if not isinstance(value, str):
                raise SecurityConfigError(f"{source}: [kafka] {key} must be a string, got {value!r}")
            values[key] = value
    protocol = values.pop("security_protocol", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise SecurityConfigError(
            f"Kafka security_protocol {protocol!r} ({SETTING_ENV['security_protocol']} or [kafka] in {source}) "
            f"is not one of {', '.join(PROTOCOLS)}"
        )
    for key in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
        if key in values:
            path = (directories[key] / values[key]).resolve()
            if not path.is_file():
                raise SecurityConfigError(
                    f"Kafka {key} {values[key]!r} ({SETTING_ENV[key]} or [kafka] in {source}) is not a file"
                )
            values[key] = str(path)
    security = KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=values.pop("sasl_mechanism", "PLAIN").upper(),
        sasl_password=env.get(SECRET_ENV["sasl_password"]) or None,
        ssl_key_password=env.get(SECRET_ENV["ssl_key_password"]) or None,
        **values,
    )
    _check(security, source)
    return security


def _check(s: KafkaSecurity, source: str) -> None:
    if s.sasl:
        if s.sasl_mechanism not in MECHANISMS:
            raise SecurityConfigError(
                f"Kafka sasl_mechanism {s.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)} "
                f"({SETTING_ENV['sasl_mechanism']} or [kafka] in {source})"
            )
        missing = [
            name
            for name, value in (
                (f"{SETTING_ENV['sasl_username']} (or [kafka] sasl_username)", s.sasl_username),
                (SECRET_ENV["sasl_password"], s.sasl_password),
            )
            if not value
        ]
        if missing:
            raise SecurityConfigError(f"Kafka security_protocol {s.protocol} needs {' and '.join(missing)}")
    if not s.tls and (s.ssl_ca_location or s.ssl_certificate_location or s.ssl_key_location):
        raise SecurityConfigError(
            f"Kafka TLS files are set but security_protocol is {s.protocol}; use SSL or SASL_SSL "
            f"({SETTING_ENV['security_protocol']} or [kafka] in {source})"
        )
    if bool(s.ssl_certificate_location) != bool(s.ssl_key_location):
        raise SecurityConfigError(
            "a Kafka TLS client certificate needs both ssl_certificate_location and ssl_key_location"
        )


def librdkafka_settings(security: KafkaSecurity | None) -> dict[str, str]:
    """The settings for confluent-kafka's `Producer`/`Consumer`/`AdminClient` and Bytewax's `add_config`."""
    if security is None or security.protocol == "PLAINTEXT":
        return {}
    out = {"security.protocol": security.protocol.lower()}
    if security.sasl:
        out.update(
            {
                "sasl.mechanism": security.sasl_mechanism,
                "sasl.username": security.sasl_username or "",
                "sasl.password": security.sasl_password or "",
            }
        )
    for key, name in (
        ("ssl_ca_location", "ssl.ca.location"),
        ("ssl_certificate_location", "ssl.certificate.location"),
        ("ssl_key_location", "ssl.key.location"),
        ("ssl_key_password", "ssl.key.password"),
    ):
        if getattr(security, key):
            out[name] = getattr(security, key)
    return out


def kafka_python_settings(security: KafkaSecurity | None) -> dict[str, Any]:
    """The keyword arguments for kafka-python's `KafkaProducer`, `KafkaConsumer` and `KafkaAdminClient`."""
    if security is None or security.protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": security.protocol}
    if security.sasl:
        out.update(
            {
                "sasl_mechanism": security.sasl_mechanism,
                "sasl_plain_username": security.sasl_username,
                "sasl_plain_password": security.sasl_password,
            }
        )
    for key, name in (
        ("ssl_ca_location", "ssl_cafile"),
        ("ssl_certificate_location", "ssl_certfile"),
        ("ssl_key_location", "ssl_keyfile"),
        ("ssl_key_password", "ssl_password"),
    ):
        if getattr(security, key):
            out[name] = getattr(security, key)
    return out
