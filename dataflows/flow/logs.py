"""One logging set-up for eddy's commands: eddy's own messages at INFO, the Kafka client's only when they matter."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure_logging(kafka_level: int = logging.WARNING) -> None:
    """eddy's logs at INFO on stderr; kafka-python's at `kafka_level` (at INFO it logs every connection and
    metadata refresh, dozens of lines for one read of a topic)."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    logging.getLogger("kafka").setLevel(kafka_level)
