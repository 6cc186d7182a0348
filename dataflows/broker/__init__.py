"""Kafka I/O. The flow's hot path (`source`, `sink`, `offsets`) uses confluent-kafka (librdkafka), the client
Bytewax's Kafka connectors are built on; the tools and watchers beside it (`consumer`, most of `admin`, replay's
producer) use kafka-python, which needs no native library. `security` gives both the same TLS/SASL settings."""
