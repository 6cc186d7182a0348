"""Create eddy's topics (events, labels, predictions, metrics, dead-letters, alerts), idempotently.

python -m dataflows.tools.topics [--partitions N] [--reset]
"""

from __future__ import annotations

import argparse
import sys

from dataflows.broker.admin import BrokerError, delete_topics, ensure_topics
from dataflows.flow.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    config = load_config()
    parser = argparse.ArgumentParser(
        prog="python -m dataflows.tools.topics",
        description="Create eddy's topics on the broker if they do not exist yet (safe to run twice).",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=config.bootstrap_servers,
        help="Kafka bootstrap servers (default: %(default)s, from KAFKA_BOOTSTRAP_SERVERS/eddy.toml)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=config.partitions,
        help="partitions for each new topic (default: %(default)s, EDDY_PARTITIONS)",
    )
    parser.add_argument("--reset", action="store_true", help="delete the topics first (all their messages are lost)")
    args = parser.parse_args(argv)
    names = config.topics.all()
    try:
        if args.reset:
            delete_topics(args.bootstrap_servers, names, security=config.kafka_security)
            print(f"deleted: {', '.join(names)}")
        for name, what in ensure_topics(
            args.bootstrap_servers, names, args.partitions, security=config.kafka_security
        ).items():
            print(f"{name:<14} {what}")
    except (BrokerError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
